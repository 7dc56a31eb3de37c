"""Which images to explain: per class the most confident correct, the most confident wrong and the
least confident prediction; ties broken, and any further images drawn, with a seeded generator."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError, did_you_mean

KINDS = ("most confident correct", "most confident wrong", "least confident")


@dataclass(frozen=True)
class Pick:
    index: int          # row in the split
    kind: str           # one of KINDS, or "random"
    label: int          # the class it was picked for (its true class; multi-label: a positive label)
    prediction: int     # argmax of the scores: what the model decided
    score: float        # the score of that prediction
    correct: bool
    target: int         # the class its heatmap explains and its caption names: the prediction;
                        # multi-label: ``label`` (labels are decided one by one, not by the argmax)
    target_score: float  # the score of ``target``

    def record(self) -> dict:
        return asdict(self)


def parse_classes(given: list[str] | None, names: list[str]) -> list[int]:
    """--classes as names or indices (comma-separated or repeated); all classes when not given."""
    if not given:
        return list(range(len(names)))
    out = []
    for item in (p.strip() for g in given for p in g.split(",")):
        if not item:
            continue
        if item.isdigit() and int(item) < len(names):
            out.append(int(item))
        elif item in names:
            out.append(names.index(item))
        else:
            raise UserError(f"--classes: no class {item!r} in this dataset; {did_you_mean(item, names)} "
                            f"(or an index 0..{len(names) - 1})")
    return list(dict.fromkeys(out))


def choose(scores: np.ndarray, labels: np.ndarray, classes: list[int], n_images: int | None,
           seed: int, multilabel: bool = False) -> list[Pick]:
    """Picks, kind by kind over ``classes`` (first every class's most confident correct, ...),
    cut to ``n_images`` or filled up to it with seeded random images of those classes.

    ``scores``: (N, C) probabilities; ``labels``: (N, 1) class indices or (N, C) multi-label."""
    rng = np.random.default_rng(seed)
    tie = rng.random(len(scores))
    pred = scores.argmax(1)
    conf = scores[np.arange(len(scores)), pred]
    # multi-label: 1 is positive; 0 and an unknown -1 (--uncertain ignore) are not
    positive = (labels == 1) if multilabel else np.eye(scores.shape[1], dtype=bool)[labels[:, 0]]
    correct = positive[np.arange(len(scores)), pred]
    taken: set[int] = set()
    picks: list[Pick] = []

    def take(i: int, kind: str, c: int) -> None:
        taken.add(int(i))
        target = c if multilabel else int(pred[i])
        picks.append(Pick(int(i), kind, int(c), int(pred[i]), float(conf[i]), bool(correct[i]), int(target),
                          float(scores[i, target])))

    for kind in KINDS:
        for c in classes:
            if multilabel:
                pool = positive[:, c] & ((pred == c) if kind == KINDS[0] else (pred != c) if kind == KINDS[1] else True)
            else:
                pool = positive[:, c] & (correct if kind == KINDS[0] else ~correct if kind == KINDS[1] else True)
            cand = [i for i in np.flatnonzero(pool) if i not in taken]
            if not cand:
                continue
            cand = np.asarray(cand)
            key = conf[cand] if kind != KINDS[2] else -conf[cand]  # highest first; least confident: lowest
            take(cand[np.lexsort((tie[cand], -key))[0]], kind, c)
    if n_images is not None:
        picks = picks[:n_images]
        rest = [i for i in np.flatnonzero(positive[:, classes].any(1)) if i not in taken]
        for i in rng.permutation(rest)[:max(0, n_images - len(picks))]:
            c = next(c for c in classes if positive[i, c])
            take(i, "random", c)
    return picks
