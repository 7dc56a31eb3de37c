"""Label efficiency: the train subset of ``--train-fraction F`` / ``--shots N``.

Seeded by the run's seed, stratified per class (multi-label: per distinct label row), and nested:
each class's train images are put in one seeded order, and a subset takes a prefix of it, so for one
seed the 1% subset lies inside the 10% one, and 5 shots inside 10. Val and test are never touched.
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
    from .config import RunConfig
    from .datasets import Dataset

_STREAM = 0x5B5E7  # a seed stream of its own: the subset does not move when heads draw differently


def active(cfg: "RunConfig") -> bool:
    return (cfg.train_fraction or 1.0) < 1.0 or bool(cfg.shots)


def check(cfg: "RunConfig") -> None:
    if (cfg.train_fraction or 1.0) < 1.0 and cfg.shots:
        raise UserError(f"--train-fraction {cfg.train_fraction} and --shots {cfg.shots} both choose the train "
                        f"subset; give one of them")


def strata(labels: np.ndarray) -> np.ndarray:
    """One stratum id per train row: the class index, or the distinct multi-label row."""
    return np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)


def class_orders(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per stratum, its row indices in one seeded order (the same for every fraction)."""
    rng = np.random.default_rng([seed, _STREAM])
    ids = strata(labels)
    return [rng.permutation(np.flatnonzero(ids == s)) for s in range(int(ids.max()) + 1)]


def take(n_class: int, fraction: float = 1.0, shots: int = 0) -> int:
    """How many images of a class of ``n_class`` a subset keeps (monotone in fraction and shots,
    which makes subsets nested; at least one per class)."""
    if shots:
        return min(shots, n_class)
    return min(n_class, max(1, round(fraction * n_class)))


def indices(labels: np.ndarray, seed: int, fraction: float = 1.0, shots: int = 0) -> np.ndarray:
    """Sorted train row indices of the subset."""
    parts = [order[:take(len(order), fraction, shots)] for order in class_orders(labels, seed)]
    return np.sort(np.concatenate(parts))


def expected_size(n_train: int, n_classes: int | None, fraction: float = 1.0, shots: int = 0) -> int:
    """Subset size without the labels (cost estimates): shots x classes, or the fraction."""
    if shots:
        return min(n_train, shots * (n_classes or 2))
    return max(1, math.ceil(fraction * n_train)) if fraction < 1.0 else n_train


@dataclass(frozen=True)
class TrainSubset:
    index: np.ndarray     # rows of the full train split, sorted
    full: int             # rows of the full train split

    def record(self, cfg: "RunConfig", labels: np.ndarray) -> dict:
        """What a run's JSON keeps: how it was drawn, per-class counts and the indices themselves."""
        kept = strata(labels)[self.index]
        return {"train_fraction": cfg.train_fraction, "shots": cfg.shots, "seed": cfg.seed, "n": int(len(self.index)),
                "n_full": self.full, "per_stratum": np.bincount(kept).tolist(), "indices": self.index.tolist()}


def apply(cfg: "RunConfig", ds: "Dataset") -> tuple["Dataset", TrainSubset | None]:
    """The dataset a run trains on (the train split cut to the subset) and the subset (None: all)."""
    if not active(cfg):
        return ds, None
    check(cfg)
    from .datasets.base import Split

    train = ds.splits["train"]
    idx = indices(train.labels, cfg.seed, cfg.train_fraction or 1.0, cfg.shots or 0)
    cut = Split(np.asarray(train.images[idx]), train.labels[idx])
    return replace(ds, splits={**ds.splits, "train": cut}), TrainSubset(idx, len(train))
