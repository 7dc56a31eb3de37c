"""Uncertainty: seed summaries, bootstrap intervals over the test set, paired comparisons and a
multiple-comparison correction.

Bootstrap recipe (documented because tests and readers must be able to reproduce it):
indices for a test set of ``n`` images are ``default_rng(SeedSequence([seed, crc32(key), n]))
.integers(0, n, size=(n_boot, n))`` with ``key`` the dataset name, so every model evaluated on
the same test set is resampled with the *same* indices (a paired bootstrap). For each resample the
metric is computed for every seed's scores with ``bench.metrics`` and averaged over seeds; the
interval is the 2.5 and 97.5 percentiles (numpy's linear interpolation) of the valid resamples.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from .. import metrics as M

MetricFn = Callable[[str, np.ndarray, np.ndarray], float]


def metric_fn(name: str) -> MetricFn:
    """The function computing ``name`` from (task, y_true, y_score), as `bench run` does."""
    if name == "acc":
        return M.acc
    if name == "auc":
        return M.auc

    def fn(task: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
        return M.evaluate(task, y_true, y_score).get(name, float("nan"))

    return fn


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for one seed) and count of finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def bootstrap_indices(n: int, n_boot: int, seed: int, key: str) -> np.ndarray:
    ss = np.random.SeedSequence([seed, zlib.crc32(key.encode()), n])
    return np.random.default_rng(ss).integers(0, n, size=(n_boot, n))


def bootstrap_samples(fn: MetricFn, task: str, y_true: np.ndarray, scores: Sequence[np.ndarray],
                      idx: np.ndarray) -> np.ndarray:
    """Seed-averaged metric on each resample; NaN where a resample cannot be scored (e.g. a
    class missing from the resample makes AUC undefined)."""
    out = np.full(len(idx), np.nan)
    for b, ix in enumerate(idx):
        vals = []
        for s in scores:
            try:
                vals.append(fn(task, y_true[ix], s[ix]))
            except ValueError:
                vals.append(float("nan"))
        if vals and np.all(np.isfinite(vals)):
            out[b] = float(np.mean(vals))
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of 'no difference' from paired bootstrap differences:
    2 x the smaller tail mass at zero, with +1 smoothing so it is never exactly 0."""
    d = diffs[np.isfinite(diffs)]
    if d.size == 0:
        return float("nan")
    below = (np.sum(d <= 0) + 1) / (d.size + 1)
    above = (np.sum(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p for paired values (zero differences dropped, scipy's
    default); NaN when fewer than one non-zero difference."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    nz = d[d != 0]
    if nz.size == 0:
        return float("nan"), int(d.size)
    return float(sps.wilcoxon(nz).pvalue), int(d.size)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs ignored and kept), monotone and capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
