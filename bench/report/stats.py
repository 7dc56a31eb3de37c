"""Uncertainty: seed summaries, bootstrap intervals over the test set, paired comparisons, tests
over datasets (exact signed-rank, Friedman, Nemenyi) and a multiple-comparison correction.

Units: within a dataset the test images are the sample (paired bootstrap); across datasets the
datasets are (seed means first: seeds of one dataset share its test set and are not independent).

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

import itertools
import math
import warnings
import zlib
from dataclasses import dataclass
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
    if name in ("ece", "brier"):
        return getattr(M, name)

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
    if M.is_multilabel(task) and M.has_unknown(y):  # per label over its known images (bench.metrics)
        known = [np.flatnonzero(y[:, i] != M.UNKNOWN) for i in range(y.shape[1])]
        parts = [_fast(name, "binary-class", y[k, i], sc[k, i]) for i, k in enumerate(known)]
        if any(f is None for f in parts):
            return None
        return lambda w: np.mean([f(w[:, k]) for f, k in zip(parts, known)], axis=0)
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


def signed_rank_p(diffs: Sequence[float]) -> tuple[float, int]:
    """Exact two-sided Wilcoxon signed-rank p of paired differences, and the number of non-zero
    differences used. Zero differences are dropped (scipy's default), tied |d| get mid-ranks, and
    the null distribution of the positive rank sum is enumerated exactly (all 2^n sign patterns, by
    convolution), so the p-value is exact for any n and with ties; p = 2 x the smaller tail,
    capped at 1, as scipy.stats.wilcoxon(method="exact"). NaN with no non-zero difference."""
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d) & (d != 0)]
    n = int(d.size)
    if n == 0:
        return float("nan"), 0
    r2 = np.rint(2 * sps.rankdata(np.abs(d))).astype(int)  # mid-ranks are halves: double them
    counts = np.zeros(int(r2.sum()) + 1)
    counts[0] = 1.0
    for r in r2:  # each rank joins the positive sum or not, with probability 1/2
        counts[r:] += counts[:-r].copy()  # r >= 2: doubled ranks are never 0
    pmf = counts / counts.sum()
    t = int(r2[d > 0].sum())
    p = 2 * min(pmf[: t + 1].sum(), pmf[t:].sum())
    return float(min(1.0, p)), n


def min_signed_rank_p(n: int) -> float:
    """The smallest two-sided signed-rank p that ``n`` pairs can give (all differences of one
    sign): 2 / 2^n. Below 0.05 only from n = 6 on."""
    return float(min(1.0, 2.0 / 2.0 ** n)) if n > 0 else float("nan")


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, int]:
    """Exact two-sided signed-rank p for paired values ``a`` and ``b`` (see ``signed_rank_p``),
    and the number of finite pairs."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    return signed_rank_p(d)[0], int(d.size)


# -- comparing several models over many datasets (Demsar 2006) ----------------------------------

def rank_rows(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank the models (columns) within each dataset (row): 1 = best, ties get the mean rank."""
    v = np.asarray(values, float)
    return sps.rankdata(-v if higher_is_better else v, axis=1)


@dataclass(frozen=True)
class Friedman:
    n: int                     # datasets (blocks)
    k: int                     # models
    mean_ranks: np.ndarray     # per model, 1 = best
    statistic: float           # chi-square_F, tie-corrected as scipy.stats.friedmanchisquare
    p: float                   # from the chi-square approximation (k - 1 df)
    p_exact: float | None      # by enumerating every within-dataset permutation, when feasible
    iman_davenport: float      # F_F = (N-1) chi2 / (N(k-1) - chi2), Demsar's recommendation
    p_iman_davenport: float    # F distribution with (k-1), (k-1)(N-1) df

    def headline(self) -> tuple[float, str]:
        """The p-value to read, and its kind: exact where enumerated, else Iman-Davenport's F,
        else the chi-square approximation."""
        if self.p_exact is not None:
            return self.p_exact, "exact"
        if math.isfinite(self.p_iman_davenport):
            return self.p_iman_davenport, "Iman-Davenport"
        return self.p, "chi-square"


def friedman_statistic(mean_ranks: Sequence[float], n: int) -> float:
    """chi-square_F from mean ranks, without tie correction (Demsar 2006, eq. before Table 5)."""
    r = np.asarray(mean_ranks, float)
    k = r.size
    return float(12 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4))


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    denom = n * (k - 1) - chi2
    if denom <= 1e-12 or n < 2:  # every dataset ranks the models alike: F is undefined (infinite)
        return float("nan"), float("nan")
    f = (n - 1) * chi2 / denom
    return float(f), float(sps.f.sf(f, k - 1, (k - 1) * (n - 1)))


EXACT_WORK = 200_000  # give up the exact Friedman p beyond this many (state, permutation) steps


def friedman(values: np.ndarray, higher_is_better: bool = True) -> Friedman:
    """Friedman test of ``values`` (datasets x models, no missing cells; k >= 2, N >= 2)."""
    v = np.asarray(values, float)
    n, k = v.shape
    ranks = rank_rows(v, higher_is_better)
    sums = ranks.sum(0)
    # tie correction of scipy.stats.friedmanchisquare: 1 - sum(t^3 - t) / (N k (k^2 - 1))
    ties = sum(float(np.sum(c ** 3 - c)) for row in ranks for c in [np.unique(row, return_counts=True)[1]])
    corr = 1 - ties / (n * k * (k * k - 1))
    chi2 = (12 / (n * k * (k + 1)) * np.sum(sums ** 2) - 3 * n * (k + 1)) / corr if corr > 0 else float("nan")
    p = float(sps.chi2.sf(chi2, k - 1)) if np.isfinite(chi2) else float("nan")
    ff, p_ff = iman_davenport(chi2, n, k) if np.isfinite(chi2) else (float("nan"), float("nan"))
    return Friedman(n, k, sums / n, float(chi2), p, _friedman_exact(ranks), ff, p_ff)


def _friedman_exact(ranks: np.ndarray) -> float | None:
    """P(sum of squared rank sums >= observed) when each dataset's ranks are permuted uniformly
    and independently (the null of the Friedman test); None when too many states to enumerate."""
    r2 = np.rint(2 * ranks).astype(int)  # mid-ranks are halves
    obs = int(np.sum(r2.sum(0) ** 2))
    # the first dataset can stay fixed: relabelling the models does not change the statistic
    states: dict[tuple[int, ...], int] = {tuple(r2[0]): 1}
    for row in r2[1:]:
        perms = {tuple(row[list(p)]) for p in itertools.permutations(range(len(row)))}
        if len(states) * len(perms) > EXACT_WORK:
            return None
        nxt: dict[tuple[int, ...], int] = {}
        for st, c in states.items():
            for pm in perms:
                key = tuple(a + b for a, b in zip(st, pm))
                nxt[key] = nxt.get(key, 0) + c
        states = nxt
    total = sum(states.values())
    hit = sum(c for st, c in states.items() if sum(x * x for x in st) >= obs)
    return hit / total


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_alpha of the Nemenyi test: the studentized range quantile over sqrt(2) (Demsar 2006, Table 5a)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Critical difference of mean ranks: q_alpha sqrt(k (k + 1) / (6 N))."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def cd_groups(mean_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last index in rank order) of models whose mean ranks differ by less
    than ``cd``: the bars of a critical-difference diagram. Only runs of two or more."""
    r = np.sort(np.asarray(mean_ranks, float))
    out: list[tuple[int, int]] = []
    for i in range(len(r)):
        j = int(np.searchsorted(r, r[i] + cd - 1e-12, side="left")) - 1  # last with r[j] - r[i] < cd
        if j > i and not (out and out[-1][1] >= j):
            out.append((i, j))
    return out


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
