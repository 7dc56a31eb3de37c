"""Marks beside a run's numbers: what the run did other than asked, or what its numbers cannot
vouch for. A mark is a short tag in brackets after the number (``0.512 [k cut]``), explained in the
table's legend; the CSV behind every table has them in a ``caveats`` column.

Each mark is read from the run's JSON (its ``warnings``, written by the run as it said them, and
its config, selection and counts, so runs written before the warnings existed are marked alike)
and, for ``constant scores``, from its saved test scores.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..metrics import is_multilabel

MIN_VAL = 20  # bench.assemble.MIN_VAL: a val split with fewer images, or one class, is too small to select on

# tag -> what it means (the legend line)
CAVEATS = {
    "small val": f"chosen on a val split too small to select on (fewer than {MIN_VAL} images or one class)",
    "k cut": "kNN k cut to below the smallest class's train count (the k used is the run's selected k)",
    "k too large": "kNN with k not below the smallest class's train count (a run from before k was cut): "
                   "the smallest class is outvoted, and once k reaches every train image all scores are equal",
    "hard votes": "AUC of one-hot majority votes (--knn-vote majority): one threshold, not a ranking; not meaningful",
    "few images": "--shots / --train-fraction asked more (or less) of a class than it has: the counts used are "
                  "in the run's JSON (train_subset)",
    "constant scores": "every test image got the same scores: an AUC of 0.5 by construction",
}
# the run's warning kinds (bench.context.RunContext.warn) -> their tag
_KIND_TAG = {"small_val": "small val", "knn_k": "k cut", "hard_votes": "hard votes", "train_subset": "few images"}
_AUC_ONLY = {"hard votes", "constant scores"}  # these make a ranking metric meaningless, not acc or F1


def run_caveats(meta: dict, metric: str | None = "auc",
                scores: Callable[[], "tuple[np.ndarray, np.ndarray] | None"] | None = None) -> list[str]:
    """The tags of one run for ``metric`` (None: those that hold for every metric), in CAVEATS order.
    ``scores``: returns the run's saved (y_true, y_score), for ``constant scores``."""
    meta = meta or {}
    cfg = meta.get("config") or {}
    sel = meta.get("selected") or {}
    tags = {_KIND_TAG.get(w.get("kind"), str(w.get("kind"))) for w in meta.get("warnings") or []
            if isinstance(w, dict) and w.get("kind")}
    knn = cfg.get("head") == "knn"
    multilabel = is_multilabel(str(meta.get("task") or ""))
    subset = meta.get("train_subset") or {}
    counts = subset.get("per_class") or (meta.get("dataset") or {}).get("train_per_class")
    # runs from before the warnings: the same conditions, from what their JSON recorded
    if knn and "k cut" not in tags and "k_asked" not in sel and counts and not multilabel:
        k = sel.get("k") or cfg.get("knn_k")
        present = [n for n in counts if n > 0]
        if isinstance(k, int) and present and k >= min(present) and max(1, min(present) - 1) != k:
            tags.add("k too large")
    full = (meta.get("dataset") or {}).get("train_per_class")
    if cfg.get("shots") and full and any(0 < n < cfg["shots"] for n in full):
        tags.add("few images")
    n_val = ((meta.get("dataset") or {}).get("n") or {}).get("val")
    selects = not (knn and not cfg.get("layers"))  # a plain kNN chooses nothing on val
    if selects and isinstance(n_val, int) and n_val < MIN_VAL:
        tags.add("small val")
    if knn and cfg.get("knn_vote") == "majority":
        tags.add("hard votes")
    if metric == "auc" and scores is not None and constant(scores()):
        tags.add("constant scores")
    if metric != "auc":
        tags -= _AUC_ONLY
    return sorted(tags, key=lambda t: (list(CAVEATS).index(t) if t in CAVEATS else len(CAVEATS), t))


def constant(got: "tuple[np.ndarray, np.ndarray] | None") -> bool:
    """Are the saved test scores the same for every image?"""
    if got is None:
        return False
    y_score = np.asarray(got[1])
    return y_score.ndim == 2 and len(y_score) > 1 and bool(np.all(y_score.max(0) - y_score.min(0) == 0))


def mark(text: str, tags: list[str] | set[str]) -> str:
    """A cell's text with its tags: ``0.512 [k cut, small val]``."""
    tags = sorted(tags, key=lambda t: (list(CAVEATS).index(t) if t in CAVEATS else len(CAVEATS), t))
    return f"{text} [{', '.join(tags)}]" if tags else text


def legend(tags) -> list[str]:
    """Legend lines for the tags a table shows."""
    tags = set(tags)
    return [f"[{t}]: {text}" for t, text in CAVEATS.items() if t in tags] + \
        [f"[{t}]: see the run's JSON (warnings)" for t in sorted(tags - set(CAVEATS))]
