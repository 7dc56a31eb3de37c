"""Comparisons across datasets, with datasets as the units (Demsar 2006).

Seeds of one dataset share its test set, so they are averaged first: every model contributes one
number per dataset (the seed mean of ``Analysis.summary``). On those numbers: the exact Wilcoxon
signed-rank test of each model against the baseline (Holm-corrected), and the ranking of all
models: mean rank per model, the Friedman test and the Nemenyi critical difference for the
critical-difference diagram. Within-dataset uncertainty is the paired bootstrap's job (tables.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats as S
from .doc import Cell, Table
from .tables import ALPHA, Analysis, SectionKey, dataset_label, dataset_order, fmt, section_title, verdict

MIN_SIGNED_RANK_N = next(n for n in range(1, 64) if S.min_signed_rank_p(n) < ALPHA)  # 6 at alpha 0.05


def dataset_means(a: Analysis, sec: SectionKey) -> pd.DataFrame:
    """Datasets x models: the seed mean of each cell (NaN where a model did not run or the metric
    is undefined), datasets in MedMNIST order."""
    sub = a.summary[a.summary.section == sec]
    mat = sub.pivot_table(index="dataset", columns="model", values="mean", aggfunc="first", dropna=False)
    return mat.reindex(index=dataset_order(sub.dataset), columns=a.models(sec))


def wilcoxon_table(a: Analysis, sec: SectionKey) -> Table | None:
    """Each model against the baseline over the datasets both ran (one seed mean per dataset)."""
    base = a.baseline_model(sec)
    if base is None:
        return None
    mat = dataset_means(a, sec)
    recs = []
    for m in [m for m in mat.columns if m != base]:
        both = mat[[m, base]].dropna()
        d = (both[m] - both[base]).to_numpy(float)
        p, used = S.signed_rank_p(d)
        n = int(d.size)
        recs.append({"model": m, "baseline": base, "datasets": n, "nonzero": used,
                     "median_delta": float(np.median(d)) if n else float("nan"),
                     "wins": int(sum(a.better(x) for x in d)), "losses": int(sum(a.better(-x) for x in d)),
                     "p": p, "min_p": S.min_signed_rank_p(used), "testable": bool(used and S.min_signed_rank_p(used) < ALPHA)})
    df = pd.DataFrame(recs, columns=["model", "baseline", "datasets", "nonzero", "median_delta", "wins", "losses",
                                     "p", "min_p", "testable"])
    df["p_holm"] = S.holm(df.p.where(df.testable).tolist()) if len(df) else []
    rows = []
    for r in df.itertuples():
        if r.testable:
            reading = verdict(a, r.median_delta, r.p_holm)
        elif r.nonzero:
            reading = f"too few datasets: {r.nonzero} cannot reach p < {ALPHA} (smallest p {S.fmt_p(r.min_p)})"
        else:
            reading = "not tested"
        rows.append([Cell(r.model), Cell(str(r.datasets)),
                     Cell(f"{r.median_delta:+.3f}") if math.isfinite(r.median_delta) else Cell.empty(),
                     Cell(f"{r.wins}/{r.losses}"), Cell(S.fmt_p(r.p)),
                     Cell(S.fmt_p(r.p_holm)) if r.testable else Cell.empty(), Cell(reading)])
    return Table(f"wilcoxon_{sec.slug}", f"Signed-rank test against {base} across datasets",
                 ["model", "datasets", "median Δ", "wins/losses", "p", "p (Holm)", "reading"], rows,
                 caption=f"One pair per dataset: the seed means of test {a.metric} of the model and {base} (seeds "
                         f"of one dataset share its test set, so they are averaged, never counted as independent "
                         f"samples). Exact two-sided Wilcoxon signed-rank test, zero differences dropped; Holm "
                         f"correction over the models that can be tested. It needs at least {MIN_SIGNED_RANK_N} "
                         f"datasets with a non-zero difference to reach p < {ALPHA} at all.",
                 legend=["wins/losses: datasets where the model is better/worse", "— not computed"], data=df)


@dataclass
class Ranking:
    """Mean ranks and tests of one section, shared by the tables and the CD diagram."""

    section: SectionKey | None   # None: a ranking of another table's values (e.g. one severity of a shift)
    models: list[str]            # in order of mean rank, best first
    mean_ranks: np.ndarray
    datasets: list[str]
    friedman: S.Friedman | None  # None with fewer than 2 datasets or 2 models
    cd: float                    # Nemenyi critical difference (NaN when not computable)
    left_out: list[str]          # models without a value on every ranked dataset


def ranking(a: Analysis, sec: SectionKey) -> tuple[Ranking | None, list[str]]:
    """Rank the models on the datasets where all of them ran. A model missing a dataset is left
    out (said in a note) unless that would leave fewer than two models, then the dataset goes."""
    return rank_matrix(dataset_means(a, sec), a.higher_is_better, sec, section_title(sec))


def rank_matrix(mat: pd.DataFrame, higher_is_better: bool, sec: SectionKey | None, title: str
                ) -> tuple[Ranking | None, list[str]]:
    """``ranking`` of any datasets x models matrix of seed means (``title`` names it in the notes)."""
    notes: list[str] = []
    if mat.shape[1] < 2:
        return None, []
    full = [m for m in mat.columns if mat[m].notna().all()]
    if len(full) >= 2:
        left_out = [m for m in mat.columns if m not in full]
        mat = mat[full]
    else:
        left_out = []
        mat = mat.dropna()
    if len(mat) < 2:
        notes.append(f"No ranking across datasets in {title}: it needs at least two datasets on which "
                     f"every ranked model ran ({len(mat)} here).")
        return None, notes
    if left_out:
        notes.append(f"Ranking leaves out {', '.join(left_out)}: not run on every dataset of the section.")
    v = mat.to_numpy(float)
    f = S.friedman(v, higher_is_better)
    order = np.argsort(f.mean_ranks, kind="stable")
    n, k = v.shape
    cd = S.nemenyi_cd(k, n, ALPHA) if k >= 2 else float("nan")
    return Ranking(sec, [mat.columns[i] for i in order], f.mean_ranks[order], list(mat.index), f, cd,
                   left_out), notes


def min_friedman_p(n: int, k: int) -> float:
    """The smallest exact Friedman p of ``n`` datasets and ``k`` models (every dataset ranks the
    models alike): (1 / k!)^(n - 1)."""
    return float((1 / math.factorial(k)) ** (n - 1))


def ranking_tables(a: Analysis, sec: SectionKey) -> tuple[list[Table], list[str], Ranking | None]:
    """The mean-rank table and the Friedman/Nemenyi summary of one section."""
    rk, notes = ranking(a, sec)
    if rk is None:
        return [], notes, None
    mat = dataset_means(a, sec)[rk.models].loc[rk.datasets]
    ranks = S.rank_rows(mat.to_numpy(float), a.higher_is_better)
    best = rk.mean_ranks.min()
    rows, recs = [], []
    for j, m in enumerate(rk.models):
        row = [Cell(m), Cell(f"{rk.mean_ranks[j]:.2f}", bold=bool(np.isclose(rk.mean_ranks[j], best)))]
        row += [Cell(f"{ranks[i, j]:g} ({fmt(mat.iloc[i, j])})") for i in range(len(rk.datasets))]
        rows.append(row)
        recs += [{"model": m, "dataset": d, "value": float(mat.iloc[i, j]), "rank": float(ranks[i, j]),
                  "mean_rank": float(rk.mean_ranks[j])} for i, d in enumerate(rk.datasets)]
    n, k = len(rk.datasets), len(rk.models)
    rank_t = Table(f"ranking_{sec.slug}", f"Ranking across datasets ({n} datasets, {k} models)",
                   ["model", "mean rank", *map(dataset_label, rk.datasets)], rows,
                   caption=f"Rank of each model within each dataset by the seed mean of test {a.metric} (1 = best, "
                           f"ties share the mean rank; value in brackets), and the mean over datasets.",
                   legend=["bold: best mean rank"], data=pd.DataFrame(recs))
    f = rk.friedman
    small = min_friedman_p(n, k) if f.p_exact is not None else float("nan")
    summary = {"datasets": n, "models": k, "chi2": f.statistic, "p_chi2": f.p, "p_exact": f.p_exact,
               "iman_davenport_f": f.iman_davenport, "p_iman_davenport": f.p_iman_davenport,
               "nemenyi_cd": rk.cd, "alpha": ALPHA, "smallest_exact_p": small}
    p_main, _ = f.headline()
    if math.isfinite(small) and small >= ALPHA:
        reading = f"too few datasets: {n} cannot reach p < {ALPHA} (smallest exact p {S.fmt_p(small)})"
    elif p_main < ALPHA:
        reading = f"the models differ (p < {ALPHA}); pairs further apart than the CD differ by Nemenyi"
    else:
        reading = "no evidence that the models differ"
    cells = [Cell(str(n)), Cell(str(k)), Cell(f"{f.statistic:.2f}") if math.isfinite(f.statistic) else Cell.empty(),
             Cell(S.fmt_p(f.p)), Cell(S.fmt_p(f.p_exact)) if f.p_exact is not None else Cell.empty(),
             Cell(S.fmt_p(f.p_iman_davenport)) if math.isfinite(f.p_iman_davenport) else Cell.empty(),
             Cell(f"{rk.cd:.2f}"), Cell(reading)]
    fr_t = Table(f"friedman_{sec.slug}", "Friedman test and Nemenyi critical difference",
                 ["datasets", "models", "χ²", "p (χ²)", "p (exact)", "p (Iman-Davenport)", f"CD (α={ALPHA})",
                  "reading"], [cells],
                 caption="Friedman test of equal mean ranks (tie-corrected χ² as scipy; the exact p enumerates every "
                         "within-dataset permutation where that is feasible; Iman-Davenport's F is Demsar's "
                         "recommended form). Nemenyi: two models differ at α when their mean ranks are at least CD "
                         "apart, CD = q_α √(k(k+1)/(6N)). With few datasets these tests have little power: read the "
                         "ranks as description, not as a finding.",
                 data=pd.DataFrame([summary]))
    return [rank_t, fr_t], notes, rk
