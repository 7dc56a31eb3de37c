"""Uncertainty: seed summaries, bootstrap intervals over the test set, paired comparisons and a
multiple-comparison correction.

Bootstrap recipe (documented because tests and readers must be able to reproduce it): for a test
set of ``n`` images, ``rng = default_rng(SeedSequence([seed, crc32(key), n]))`` with ``key`` the
dataset name, and resample ``b`` is ``rng.integers(0, n, size=n)``, drawn one resample after the
other. Every model evaluated on the same test set is therefore resampled with the *same* indices
(a paired bootstrap). For each resample the metric is computed for every seed's scores and
averaged over seeds; the interval is the 2.5 and 97.5 percentiles (numpy's linear interpolation)
of the resamples that could be scored (AUC is undefined when a class is absent from a resample).

Metrics follow ``bench.metrics`` (medmnist.Evaluator). ACC and AUC use vectorised equivalents on
resample counts (tested equal to ``bench.metrics``): sklearn's ``roc_auc_score`` costs milliseconds
per call, which for 1000 resamples x seeds x models x datasets would take hours. Other metrics call
``bench.metrics.evaluate`` per resample.
"""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import stats as sps

from .. import metrics as M

CHUNK_CELLS = 4_000_000  # resamples x images held in memory at once
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


def bootstrap_counts(n: int, n_boot: int, seed: int, key: str) -> Iterator[np.ndarray]:
    """Chunks of resamples as counts: row b, column i = how often image i was drawn in resample b."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode()), n]))
    rows = max(1, min(n_boot, CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        idx = np.stack([rng.integers(0, n, size=n) for _ in range(b)])
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n)
        done += b


def _auc_counts(pos: np.ndarray, score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Weighted Mann-Whitney AUC (ties count one half, as roc_auc_score) for count matrices;
    NaN where a resample has no positive or no negative."""
    order = np.argsort(score, kind="mergesort")
    s, p = score[order], pos[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])

    def f(w: np.ndarray) -> np.ndarray:
        ws = w[:, order].astype(float)
        gp = np.add.reduceat(ws * p, starts, axis=1)
        gn = np.add.reduceat(ws * ~p, starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        npos, nneg = gp.sum(1), gn.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (gp * (below + 0.5 * gn)).sum(1) / (npos * nneg)
        out[(npos == 0) | (nneg == 0)] = np.nan
        return out

    return f


def _fast(name: str, task: str, y_true: np.ndarray, y_score: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    y, sc = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if name == "acc":
        pred = M.predictions(task, sc)
        correct = (pred == y).mean(axis=1) if M.is_multilabel(task) else (pred == y).astype(float)
        return lambda w: (w @ correct) / w.sum(1)
    if name != "auc":
        return None
    if M.is_multilabel(task):
        parts = [_auc_counts(y[:, i] == 1, sc[:, i]) for i in range(sc.shape[1])]
    elif task == "binary-class":
        parts = [_auc_counts(y == 1, sc[:, -1] if sc.ndim == 2 else sc)]
    else:
        parts = [_auc_counts(y == i, sc[:, i]) for i in range(sc.shape[1])]
    # a NaN in any class makes the mean NaN, as roc_auc_score raising does in bench.metrics
    return lambda w: np.mean([f(w) for f in parts], axis=0)


def _slow(name: str, task: str, y_true: np.ndarray, y_score: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    fn = metric_fn(name)
    arange = np.arange(len(y_true))

    def f(w: np.ndarray) -> np.ndarray:
        out = np.full(len(w), np.nan)
        with warnings.catch_warnings():  # undefined AUCs of unlucky resamples are expected, not news
            warnings.simplefilter("ignore")
            for b, row in enumerate(w):
                ix = np.repeat(arange, row)  # every metric here is invariant to the order of images
                try:
                    out[b] = fn(task, y_true[ix], y_score[ix])
                except ValueError:
                    pass
        return out

    return f


def bootstrap_samples(name: str, task: str, y_true: np.ndarray, scores: Sequence[np.ndarray], n_boot: int,
                      seed: int, key: str) -> np.ndarray:
    """Seed-averaged metric ``name`` on each resample; NaN where a resample cannot be scored."""
    fns = [_fast(name, task, y_true, s) or _slow(name, task, y_true, s) for s in scores]
    chunks = [np.mean([f(w) for f in fns], axis=0) for w in bootstrap_counts(len(y_true), n_boot, seed, key)]
    return np.concatenate(chunks) if chunks else np.full(0, np.nan)


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
