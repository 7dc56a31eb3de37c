"""Label efficiency: the train subset of ``--train-fraction F`` / ``--shots N``.

Seeded by the run's seed, stratified per class, and nested: each class's train images are put in
one seeded order, and a subset takes a prefix of it, so for one seed the 1% subset lies inside the
10% one, and 5 shots inside 10. Multi-label: one seeded order of all images; a fraction is its
prefix plus each label's first positive, N shots each label's first N positives. Val and test are never touched.
Only the train split's rows change; frozen features are computed on the whole split (one cached
pass serves every fraction) and the subset's rows are taken from them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    from .run_config import RunConfig
    from .datasets import Dataset

_STREAM = 0x5B5E7  # a seed stream of its own: the subset does not move when heads draw differently


def active(cfg: "RunConfig") -> bool:
    return (cfg.train_fraction or 1.0) < 1.0 or bool(cfg.shots)


def check(cfg: "RunConfig") -> None:
    if (cfg.train_fraction or 1.0) < 1.0 and cfg.shots:
        raise UserError(f"--train-fraction {cfg.train_fraction} and --shots {cfg.shots} both choose the train "
                        f"subset; give one of them")


def per_class(labels: np.ndarray, multilabel: bool, n_classes: int) -> np.ndarray:
    """Images per class, every class counted (0 where the split has none); multi-label: positives
    per label (an unknown -1 is not a positive)."""
    if multilabel:
        return (labels == 1).sum(0)
    return np.bincount(labels.reshape(-1).astype(int), minlength=n_classes)


def class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per class, its row indices in one seeded order (the same for every fraction)."""
    rng = np.random.default_rng([seed, _STREAM])
    ids = labels.reshape(-1).astype(int)
    return [rng.permutation(np.flatnonzero(ids == c)) for c in range(int(ids.max()) + 1)]


def take(n_class: int, fraction: float = 1.0, shots: int = 0) -> int:
    """How many images of a class of ``n_class`` a subset keeps (monotone in fraction and shots,
    which makes subsets nested; at least one per class)."""
    if shots:
        return min(shots, n_class)
    return min(n_class, max(1, round(fraction * n_class)))


def _multilabel_indices(labels: np.ndarray, seed: int, fraction: float, shots: int) -> np.ndarray:
    # Strata of distinct label rows would keep one image of each of hundreds of rare combinations
    # (ChestMNIST: a 1% subset several times too big). Instead one seeded order over all rows:
    # a fraction is its prefix plus each label's first positive in that order (so every label keeps
    # one), N shots are each label's first N positives. Both grow monotonically: nested.
    order = np.random.default_rng([seed, _STREAM]).permutation(len(labels))
    positive = labels[order] == 1
    if shots:
        keep = np.zeros(len(order), bool)
        for j in range(labels.shape[1]):
            keep[np.flatnonzero(positive[:, j])[:shots]] = True
        return order[keep]
    n = min(len(order), max(1, round(fraction * len(order))))
    firsts = [np.flatnonzero(positive[:, j])[:1] for j in range(labels.shape[1])]
    return np.union1d(order[:n], order[np.concatenate(firsts).astype(int)])


def indices(labels: np.ndarray, seed: int, fraction: float = 1.0, shots: int = 0,
            multilabel: bool | None = None) -> np.ndarray:
    """Sorted train row indices of the subset (``multilabel``: the task's; None: more than one
    label column)."""
    if multilabel is None:
        multilabel = labels.ndim == 2 and labels.shape[1] > 1
    if multilabel:
        return np.sort(_multilabel_indices(labels, seed, fraction, shots))
    parts = [order[:take(len(order), fraction, shots)] for order in class_orders(labels, seed)]
    return np.sort(np.concatenate(parts))


def expected_size(n_train: int, n_classes: int | None, fraction: float = 1.0, shots: int = 0) -> int:
    """Subset size without the labels (cost estimates): shots x classes, or the fraction."""
    if shots:
        return min(n_train, shots * (n_classes or 2))
    return max(1, math.ceil(fraction * n_train)) if fraction < 1.0 else n_train


def shortfall(labels: np.ndarray, multilabel: bool, n_classes: int, fraction: float = 1.0,
              shots: int = 0) -> dict[int, dict]:
    """Classes of the train split that cannot give what the subset asks, {class: {"asked", "used",
    "available"}} in images: fewer images than ``shots`` (all of them are used), or a fraction that
    rounds below one image of the class (one is kept). Classes the split lacks are left out (nothing to take); multi-label
    fractions keep one order over all images, so only shots are checked per label."""
    out: dict[int, dict] = {}
    for c, n in enumerate(per_class(labels, multilabel, n_classes).tolist()):
        if n == 0:
            continue
        if shots and n < shots:
            out[c] = {"asked": int(shots), "used": int(n), "available": int(n)}
        elif not shots and not multilabel and fraction < 1.0 and round(fraction * n) < 1:
            out[c] = {"asked": round(fraction * n, 3), "used": 1, "available": int(n)}
    return out


def shortfall_message(cfg: "RunConfig", short: dict[int, dict], names: dict[str, str], used: int,
                      full: int) -> str:
    """One line for a subset some classes cannot fill."""
    shown = "; ".join(f"{names.get(str(c), c)}: {v['available']}" for c, v in list(short.items())[:6])
    more = f"; {len(short) - 6} more" if len(short) > 6 else ""
    whole = ", the whole train split" if used == full else ""
    if cfg.shots:
        return (f"--shots {cfg.shots}: {len(short)} class(es) have fewer train images ({shown}{more}): all of "
                f"theirs are used ({used} images in all{whole})")
    return (f"--train-fraction {cfg.train_fraction}: {len(short)} class(es) are too small for it ({shown}{more} "
            f"images): one image of each is kept, more than the fraction")


@dataclass(frozen=True)
class TrainSubset:
    index: np.ndarray     # rows of the full train split, sorted
    full: int             # rows of the full train split

    def record(self, cfg: "RunConfig", ds: "Dataset") -> dict:
        """What a run's JSON keeps: how it was drawn, per-class counts and the indices themselves."""
        labels = ds.splits["train"].labels[self.index]
        full = ds.splits["train"].labels
        short = shortfall(full, ds.multilabel, ds.n_outputs, cfg.train_fraction or 1.0, cfg.shots or 0)
        return {"train_fraction": cfg.train_fraction, "shots": cfg.shots, "seed": cfg.seed, "n": int(len(self.index)),
                "n_full": self.full, "per_class": per_class(labels, ds.multilabel, ds.n_outputs).tolist(),
                **({"short": {str(c): v for c, v in short.items()}} if short else {}),
                "indices": self.index.tolist()}

    def warning(self, cfg: "RunConfig", ds: "Dataset") -> str | None:
        """The line to warn with when some class cannot give what --shots / --train-fraction asks
        (``ds``: the whole dataset)."""
        short = shortfall(ds.splits["train"].labels, ds.multilabel, ds.n_outputs, cfg.train_fraction or 1.0,
                          cfg.shots or 0)
        return shortfall_message(cfg, short, ds.label_names, len(self.index), self.full) if short else None


def apply(cfg: "RunConfig", ds: "Dataset") -> tuple["Dataset", TrainSubset | None]:
    """The dataset a run trains on (the train split cut to the subset) and the subset (None: all)."""
    if not active(cfg):
        return ds, None
    check(cfg)
    from .datasets.base import Split

    train = ds.splits["train"]
    idx = indices(train.labels, cfg.seed, cfg.train_fraction or 1.0, cfg.shots or 0, multilabel=ds.multilabel)
    cut = Split(np.asarray(train.images[idx]), train.labels[idx])
    return replace(ds, splits={**ds.splits, "train": cut}), TrainSubset(idx, len(train))
