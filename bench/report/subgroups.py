"""Subgroup audit (``--subgroups``): per-group performance of every model, the gaps between
groups, and whether one model's gap differs from another's, all from saved test scores.

Groups are attributes of the test images (bench.datasets.attributes), joined through the image
ids saved with each run's scores (bench.audit): adding a column never reruns a model.

Per section (protocol x setting), model, dataset, attribute and group: size, positives, AUC, ACC
and ECE as bench.metrics defines them; for each binary target (the positive class of a binary
task, each label of a multi-label task, each class one-vs-rest of a multi-class or ordinal task)
TPR and FPR at the run's own decision rule (p > 0.5; argmax for multi-class). Per attribute:
worst-group value and largest gap (max - min over the groups where the metric is defined; the
``(missing)`` group is shown but not compared), and the
equalised-odds difference EOD = max(TPR range, FPR range) over groups (Hardt et al. 2016; the
definition of fairlearn's ``equalized_odds_difference``). FairMedFM (utils/metrics.py) reports
worst-group AUC and the AUC gap the same way; its ``eod`` is 1 - (TPR gap + TNR gap) / 2 at a
best-F1 threshold, which these columns give too (the TNR gap is the FPR gap).

Uncertainty follows bench.report.stats: resample b draws the test images with the recipe there
(key: the dataset name), so every model and every group of one dataset sees the same resample as
the report's other intervals; within a resample each metric is averaged over seeds (seeds share the
test set). Intervals are the 2.5/97.5 percentiles; the paired gap test compares two models' gaps on
the same resamples (two-sided bootstrap p, Holm-corrected per table). Groups under MIN_IMAGES
images or MIN_POSITIVES positives (multi-label and multi-class: of their rarest label or class) are
shown and flagged, never hidden.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import metrics as M
from ..audit import Auditor
from ..datasets.attributes import MISSING, Subgroup, groups, parse
from ..errors import UserError, did_you_mean
from . import stats as S
from .doc import Cell, Section, Table
from .tables import Analysis, SectionKey, dataset_label, dataset_order, fmt, section_title

METRICS = ("auc", "acc", "ece")
MIN_IMAGES, MIN_POSITIVES = 30, 10
COLUMNS = ["kind", "section", "head", "unfreeze", "adapt", "size", "input_size", "resize", "limit", "model",
           "other_model", "dataset", "attribute", "bins", "group", "target", "metric", "value", "ci_low", "ci_high",
           "valid_resamples", "p", "p_holm", "n", "positives", "negatives", "small", "seeds", "ids", "run_ids", "n_boot"]
FLAG_SMALL = f"† fewer than {MIN_IMAGES} images or {MIN_POSITIVES} positives: shown, never hidden; unstable"

Fn = Callable[[np.ndarray], np.ndarray]


def requested(rs, subgroups: str | None) -> list[Subgroup]:
    """``--subgroups`` as given, else what the runs recorded (bench run/sweep --subgroups)."""
    if subgroups:
        return parse(subgroups)
    recorded = [m.get("subgroups") for m in rs.meta.values() if isinstance(m, dict) and m.get("subgroups")]
    return parse(",".join(dict.fromkeys(recorded))) if recorded else []


def lower_is_better(metric: str) -> bool:
    return metric in M.LOWER_IS_BETTER


# -- metrics on bootstrap count matrices (as bench.report.stats; rows: resamples, columns: images) --

def ece_counts(task: str, y_true: np.ndarray, y_score: np.ndarray) -> Fn:
    """bench.metrics.ece for count matrices: each image's bin and (correct - confidence) are fixed,
    so a resample's ECE is sum over bins |sum w (correct - conf)| / sum w."""
    y, sc = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if M.is_multilabel(task):
        y2 = y.reshape(len(y), -1)
        s2 = sc.reshape(len(sc), -1)
        known = [np.flatnonzero(y2[:, i] != M.UNKNOWN) for i in range(s2.shape[1])]
        parts = [ece_counts("binary-class", y2[k, i], s2[k, i]) for i, k in enumerate(known)]
        return lambda w: np.mean([f(w[:, k]) for f, k in zip(parts, known)], axis=0)
    pred = M.predictions(task, sc)
    if task == "binary-class":
        p1 = sc[:, -1] if sc.ndim == 2 else sc
        conf = np.where(pred == 1, p1, 1 - p1)
    else:
        conf = sc.max(axis=-1)
    conf = np.atleast_1d(conf).astype(float)
    b = np.clip(np.ceil(conf * M.ECE_BINS).astype(int) - 1, 0, M.ECE_BINS - 1)
    d = np.zeros((len(conf), M.ECE_BINS))
    d[np.arange(len(conf)), b] = (np.atleast_1d(pred == y)).astype(float) - conf

    def f(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(w @ d).sum(1) / w.sum(1)

    return f


def metric_counts(name: str, task: str, y_true: np.ndarray, y_score: np.ndarray) -> Fn:
    if name == "ece":
        return ece_counts(task, y_true, y_score)
    fast = S._fast(name, task, y_true, y_score) or S._slow(name, task, y_true, y_score)

    def f(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return fast(w)

    return f


@dataclass(frozen=True)
class Target:
    """One binary question of a task: which images are known for it, positive, and predicted so."""

    name: str
    known: np.ndarray
    pos: np.ndarray


def targets(task: str, label_names: dict[str, str], y_true: np.ndarray, n_outputs: int) -> list[Target]:
    """Binary: the positive class; multi-label: each label; multi-class/ordinal: each class vs rest."""
    y = np.asarray(y_true)
    name = lambda i: f"{i}: {label_names[str(i)]}" if str(i) in label_names else str(i)  # noqa: E731
    if M.is_multilabel(task):
        y2 = y.reshape(len(y), -1)
        return [Target(name(i), y2[:, i] != M.UNKNOWN, y2[:, i] == 1) for i in range(y2.shape[1])]
    y = y.reshape(-1)
    if task == "binary-class":
        return [Target(name(1), np.ones(len(y), bool), y == 1)]
    return [Target(name(c), np.ones(len(y), bool), y == c) for c in range(n_outputs)]


def predicted(task: str, y_score: np.ndarray, n_targets: int) -> np.ndarray:
    """(N, targets) bool: what the run predicts for each target at its decision rule."""
    pred = M.predictions(task, y_score)
    if M.is_multilabel(task):
        return pred.reshape(len(pred), -1).astype(bool)
    if task == "binary-class":
        return (pred == 1)[:, None]
    return pred[:, None] == np.arange(n_targets)[None, :]


def rate_counts(t: Target, pred: np.ndarray) -> tuple[Fn, Fn]:
    """TPR and FPR of one target for count matrices (NaN where a resample has no positive / negative)."""
    tp, pos = (t.pos & pred).astype(float), t.pos.astype(float)
    neg_mask = t.known & ~t.pos
    fp, neg = (neg_mask & pred).astype(float), neg_mask.astype(float)

    def tpr(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ tp) / (w @ pos)

    def fpr(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ fp) / (w @ neg)

    return tpr, fpr


# -- one model on one dataset, its seeds on the same test images ---------------------------------

@dataclass
class ModelCell:
    sec: SectionKey
    model: str
    dataset: str
    task: str
    labels: dict[str, str]
    y_true: np.ndarray
    scores: list[np.ndarray]
    ids: np.ndarray
    run_ids: list[str]
    how_ids: str
    meta: dict


def gather(a: Analysis, auditor: Auditor, sec: SectionKey, model: str, dataset: str, notes: list[str],
           rebuilt: set[str]) -> ModelCell | None:
    c = a.cell(sec, model, dataset)
    if c is None:
        return None
    y_true = ids = None
    scores, used, how = [], [], set()
    first_meta: dict = {}
    for rid in c["run_ids"]:
        got = a.rs.scores(rid)
        meta = a.rs.meta.get(rid, {})
        if got is None:
            notes.append(f"{model} on {dataset_label(dataset)}, run {rid}: no saved test scores; left out.")
            continue
        rid_ids, where = auditor.test_ids(rid, meta, len(got[0]))
        if rid_ids is None:
            notes.append(f"{model} on {dataset_label(dataset)}, run {rid}: no image ids: {where}.")
            continue
        if y_true is None:
            y_true, ids, first_meta = got[0], rid_ids, meta
        elif not (np.array_equal(y_true, got[0]) and np.array_equal(ids, rid_ids)):
            notes.append(f"{model} on {dataset_label(dataset)}, run {rid}: its test images differ from its other "
                         f"seeds'; left out.")
            continue
        scores.append(got[1])
        used.append(rid)
        how.add(where)
        if where == "rebuilt":
            rebuilt.add(rid)
    if not scores:
        return None
    task = a.rs.task(used[0]) or ""
    return ModelCell(sec, model, dataset, task, a.rs.labels(used[0]), np.asarray(y_true), scores,
                     np.asarray(ids).astype(str), used, "+".join(sorted(how)), first_meta)


@dataclass
class Grouping:
    attribute: str
    labels: np.ndarray          # each test image's group
    order: list[str]            # groups in display order
    how: str                    # how the groups were formed (bins)
    unmatched: int = 0          # test images the attribute table does not name


def groupings(auditor: Auditor, cell: ModelCell, specs: list[Subgroup], notes: list[str],
              memo: dict) -> list[Grouping]:
    """The requested attributes of this cell's test images, grouped (memoised per dataset and ids)."""
    key = (cell.dataset, str((cell.meta.get("dataset") or {}).get("path")), hash(cell.ids.tobytes()))
    if key in memo:
        return memo[key]
    where = dataset_label(cell.dataset)
    table = auditor.attributes(cell.meta, cell.ids)
    out: list[Grouping] = []
    if isinstance(table, str):
        notes.append(f"{where}: no subgroups: {table}.")
    elif table is None or not table.columns:
        notes.append(f"{where}: no per-image attributes (MedMNIST files carry none; a csv: dataset's columns, "
                     f"DICOM tags and the CheXpert/ISIC metadata do).")
    else:
        for s in specs:
            if s.column not in table.columns:
                notes.append(f"{where}: no column {s.column!r}; {did_you_mean(s.column, list(table.columns))}.")
                continue
            values, unmatched = table.lookup(s.column, cell.ids.tolist())
            labels, order, how = groups(values, s, f" of {where}")
            if unmatched:
                notes.append(f"{where}: {unmatched} test image(s) are not in the attribute table; they are "
                             f"grouped as (missing) under {s.column}.")
            out.append(Grouping(s.column, labels, order, how, unmatched))
    memo[key] = out
    return out


@dataclass
class CellStats:
    """Points (the seed means) and bootstrap samples of one model cell, keyed by
    (attribute, group, metric) and (attribute, group, target, "tpr"|"fpr")."""

    points: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)   # (attribute, group[, target]) -> (n, positives, negatives)
    targets: list[str] = field(default_factory=list)


def analyse(cell: ModelCell, gs: list[Grouping], n_boot: int, seed: int) -> CellStats:
    y = cell.y_true
    n_out = cell.scores[0].shape[-1] if cell.scores[0].ndim == 2 else 2
    tg = targets(cell.task, cell.labels, y, n_out)
    preds = [predicted(cell.task, s, len(tg)) for s in cell.scores]
    st = CellStats(targets=[t.name for t in tg])
    fns: dict[tuple, tuple[np.ndarray, list[Fn]]] = {}
    for g in gs:
        for grp in g.order:
            idx = np.flatnonzero(g.labels == grp)
            pos = [int(t.pos[idx].sum()) for t in tg]
            st.sizes[(g.attribute, grp)] = (len(idx), pos[0] if len(tg) == 1 else min(pos), None)
            for m in METRICS:
                fns[(g.attribute, grp, m)] = (idx, [metric_counts(m, cell.task, y[idx], s[idx]) for s in cell.scores])
            for k, t in enumerate(tg):
                sub = Target(t.name, t.known[idx], t.pos[idx])
                rates = [rate_counts(sub, p[idx, k]) for p in preds]
                st.sizes[(g.attribute, grp, t.name)] = (int(sub.known.sum()), int(sub.pos.sum()),
                                                       int((sub.known & ~sub.pos).sum()))
                fns[(g.attribute, grp, t.name, "tpr")] = (idx, [r[0] for r in rates])
                fns[(g.attribute, grp, t.name, "fpr")] = (idx, [r[1] for r in rates])
    by_group: dict[tuple, list[tuple]] = {}  # each group's images are cut out of a resample once
    for key, (idx, fs) in fns.items():
        by_group.setdefault(key[:2], []).append((key, idx, fs))
    ones = np.ones((1, len(y)))
    chunks: dict[tuple, list[np.ndarray]] = {k: [] for k in fns}
    for key, (idx, fs) in fns.items():
        st.points[key] = float(np.mean([f(ones[:, idx]) for f in fs], axis=0)[0])
    for w in S.bootstrap_counts(len(y), n_boot, seed, cell.dataset):
        for members in by_group.values():
            wg = w[:, members[0][1]]
            for key, _, fs in members:
                chunks[key].append(np.mean([f(wg) for f in fs], axis=0))
    st.samples = {k: np.concatenate(v) if v else np.full(0, np.nan) for k, v in chunks.items()}
    return st


# -- summaries over groups -------------------------------------------------------------------------

def counted(order: list[str]) -> list[str]:
    """The groups worst-group values, gaps and EOD compare: every group but (missing), which is
    shown but is no group of patients."""
    return [g for g in order if g != MISSING]


def spread(points: dict, samples: dict, keys: list[tuple], worst_low: bool) -> dict | None:
    """Worst value and range (max - min) over the groups whose point value is defined; samples of both
    (a resample where any of those groups is undefined gives NaN, dropped from the interval)."""
    keys = [k for k in keys if math.isfinite(points[k])]
    if len(keys) < 2:
        return None
    v = np.array([points[k] for k in keys])
    mat = np.stack([samples[k] for k in keys])
    return {"worst": float(v.min() if worst_low else v.max()), "gap": float(v.max() - v.min()),
            "worst_s": mat.min(0) if worst_low else mat.max(0), "gap_s": mat.max(0) - mat.min(0), "groups": len(keys)}


def _row(cell: ModelCell, **kw) -> dict:
    sec = cell.sec
    base = {"section": section_title(sec), "head": sec.head, "unfreeze": sec.unfreeze, "adapt": sec.adapt,
            "size": sec.size, "input_size": sec.input_size, "resize": sec.resize, "limit": sec.limit,
            "model": cell.model, "dataset": cell.dataset, "seeds": len(cell.run_ids), "ids": cell.how_ids,
            "run_ids": " ".join(cell.run_ids)}
    return {**base, **kw}


def _ci(samples: np.ndarray) -> dict:
    lo, hi = S.percentile_ci(samples)
    return {"ci_low": lo, "ci_high": hi, "valid_resamples": int(np.isfinite(samples).sum())}


@dataclass
class Audit:
    frame: pd.DataFrame
    notes: list[str]
    specs: list[Subgroup]
    headline: str
    rebuilt: set[str] = field(default_factory=set)   # runs whose image ids were rebuilt (saved before ids)


def audit(a: Analysis, specs: list[Subgroup], data_root: Path | None = None) -> Audit:
    """Every subgroup number of the report's runs as one long table (``COLUMNS``; ``kind``: group,
    rate, summary, paired) and the notes on what could not be joined."""
    auditor = Auditor(_store(a), data_root)
    notes: list[str] = []
    recs: list[dict] = []
    memo: dict = {}
    rebuilt: set[str] = set()
    for sec in a.sections():
        sub = a.summary[a.summary.section == sec]
        cells: dict[tuple[str, str], tuple[ModelCell, list[Grouping], CellStats]] = {}
        for d in dataset_order(sub.dataset):
            for m in a.models(sec):
                cell = gather(a, auditor, sec, m, d, notes, rebuilt)
                if cell is None:
                    continue
                gs = groupings(auditor, cell, specs, notes, memo)
                if not gs:
                    continue
                st = analyse(cell, gs, a.n_boot, a.seed)
                cells[(m, d)] = (cell, gs, st)
                recs += _cell_rows(cell, gs, st, a.n_boot)
        recs += _paired_rows(a, sec, cells)
    frame = pd.DataFrame(recs, columns=COLUMNS)
    if len(frame):
        paired = frame.kind == "paired"
        for (_, metric), idx in frame[paired].groupby(["section", "metric"]).groups.items():
            frame.loc[idx, "p_holm"] = S.holm(frame.loc[idx, "p"].tolist())
    return Audit(frame, list(dict.fromkeys(notes)), specs, a.metric if a.metric in METRICS else "auc", rebuilt)


def _store(a: Analysis):
    from ..results import ResultStore

    return ResultStore(a.rs.root)


def _cell_rows(cell: ModelCell, gs: list[Grouping], st: CellStats, n_boot: int) -> list[dict]:
    out = []
    for g in gs:
        for grp in g.order:
            n, pos, _ = st.sizes[(g.attribute, grp)]
            small = n < MIN_IMAGES or pos < MIN_POSITIVES
            for m in METRICS:
                key = (g.attribute, grp, m)
                out.append(_row(cell, kind="group", attribute=g.attribute, bins=g.how, group=grp, target="", metric=m,
                                value=st.points[key], **_ci(st.samples[key]), n=n, positives=pos, small=small,
                                n_boot=n_boot))
            for t in st.targets:
                n_t, pos_t, neg_t = st.sizes[(g.attribute, grp, t)]
                for r in ("tpr", "fpr"):
                    key = (g.attribute, grp, t, r)
                    out.append(_row(cell, kind="rate", attribute=g.attribute, bins=g.how, group=grp, target=t,
                                    metric=r, value=st.points[key], **_ci(st.samples[key]), n=n_t, positives=pos_t,
                                    negatives=neg_t, small=n_t < MIN_IMAGES or pos_t < MIN_POSITIVES, n_boot=n_boot))
        compared = counted(g.order)
        n_groups = len(compared)
        for m in METRICS:
            sp = spread(st.points, st.samples, [(g.attribute, grp, m) for grp in compared], not lower_is_better(m))
            if sp is None:
                continue
            flagged = sum(1 for grp in compared if _small(st, g.attribute, grp))
            for what, key in (("worst", "worst"), ("gap", "gap")):
                out.append(_row(cell, kind="summary", attribute=g.attribute, bins=g.how, group="", target="",
                                metric=f"{m}_{what}", value=sp[key], **_ci(sp[key + "_s"]), n=sp["groups"],
                                n_boot=n_boot, small=flagged > 0))
        eods = []
        for t in st.targets:
            tp = spread(st.points, st.samples, [(g.attribute, grp, t, "tpr") for grp in compared], True)
            fp = spread(st.points, st.samples, [(g.attribute, grp, t, "fpr") for grp in compared], True)
            if tp is None or fp is None:
                continue
            eod, eod_s = max(tp["gap"], fp["gap"]), np.maximum(tp["gap_s"], fp["gap_s"])
            eods.append((eod, eod_s))
            for metric, v, s in (("tpr_gap", tp["gap"], tp["gap_s"]), ("fpr_gap", fp["gap"], fp["gap_s"]),
                                 ("eod", eod, eod_s)):
                out.append(_row(cell, kind="summary", attribute=g.attribute, bins=g.how, group="", target=t,
                                metric=metric, value=v, **_ci(s), n=n_groups, n_boot=n_boot))
        if len(st.targets) > 1 and eods:  # the worst label / class: the one number a multi-target task has
            k = int(np.argmax([e for e, _ in eods]))
            out.append(_row(cell, kind="summary", attribute=g.attribute, bins=g.how, group="", target="(max)",
                            metric="eod", value=eods[k][0], **_ci(np.max(np.stack([s for _, s in eods]), axis=0)),
                            n=n_groups, n_boot=n_boot))
    return out


def _small(st: CellStats, attribute: str, grp: str) -> bool:
    n, pos, _ = st.sizes[(attribute, grp)]
    return n < MIN_IMAGES or pos < MIN_POSITIVES


def _pairs(a: Analysis, sec: SectionKey, models: list[str]) -> list[tuple[str, str]]:
    """Each model against the section's baseline where it has one, else every pair."""
    base = a.baseline_model(sec)
    if base in models:
        return [(m, base) for m in models if m != base]
    return list(itertools.combinations(models, 2))


def _paired_rows(a: Analysis, sec: SectionKey, cells: dict) -> list[dict]:
    out = []
    for d in dict.fromkeys(d for _, d in cells):
        models = [m for m in a.models(sec) if (m, d) in cells]
        for m1, m2 in _pairs(a, sec, models):
            c1, g1, s1 = cells[(m1, d)]
            c2, g2, s2 = cells[(m2, d)]
            if not (np.array_equal(c1.y_true, c2.y_true) and np.array_equal(c1.ids, c2.ids)):
                continue  # not the same images: no paired test
            for ga, gb in zip(g1, g2):
                for m in METRICS:
                    keys = [(ga.attribute, grp, m) for grp in counted(ga.order)]
                    sp1 = spread(s1.points, s1.samples, keys, not lower_is_better(m))
                    sp2 = spread(s2.points, s2.samples, keys, not lower_is_better(m))
                    if sp1 is None or sp2 is None:
                        continue
                    diffs = sp1["gap_s"] - sp2["gap_s"]
                    lo, hi = S.percentile_ci(diffs)
                    out.append(_row(c1, kind="paired", other_model=m2, attribute=ga.attribute, bins=ga.how, group="",
                                    target="", metric=f"{m}_gap", value=sp1["gap"] - sp2["gap"], ci_low=lo, ci_high=hi,
                                    valid_resamples=int(np.isfinite(diffs).sum()), p=S.bootstrap_p(diffs),
                                    n=sp1["groups"], n_boot=a.n_boot,
                                    run_ids=" ".join(c1.run_ids + c2.run_ids)))
    return out


# -- the report section ------------------------------------------------------------------------------

def _interval(r) -> str:
    if not math.isfinite(r.value):
        return "—"
    ci = f" [{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if math.isfinite(r.ci_low) else ""
    return f"{fmt(r.value)}{ci}"


def _where(r) -> str:
    return f"{dataset_label(r.dataset)} · {r.attribute}"


def section_tables(au: Audit, sec: SectionKey) -> list[Table]:
    df = au.frame[au.frame.section == section_title(sec)]
    if df.empty:
        return []
    hm = au.headline
    slug = sec.slug
    tables = []
    g = df[df.kind == "group"]
    rows, flagged = [], False
    for (ds, attr, grp, model), part in g.groupby(["dataset", "attribute", "group", "model"], sort=False):
        by = part.set_index("metric")
        r0 = part.iloc[0]
        flagged |= bool(r0.small)
        rows.append([Cell(_where(r0)), Cell(str(grp), flag=bool(r0.small)), Cell(model), Cell(str(int(r0.n))),
                     Cell(str(int(r0.positives)))] + [Cell(_interval(by.loc[m])) for m in METRICS])
    tables.append(Table(f"subgroups_{slug}", "Performance per subgroup",
                        ["dataset · attribute", "group", "model", "n", "positives",
                         *[f"{m.upper()} [95% CI]" for m in METRICS]], rows,
                        caption=f"Test metrics of each model on the test images of each group: seed mean [2.5%, 97.5%] "
                                f"over {int(df.n_boot.iloc[0])} resamples of the test set (the same resamples for every "
                                f"model and group). Positives: of the positive class (multi-label / multi-class: the "
                                f"rarest label or class in the group).",
                        legend=[FLAG_SMALL] if flagged else [], data=g, text_cols=(1, 2)))
    s = df[df.kind == "summary"]
    rows = []
    for (ds, attr, model), part in s.groupby(["dataset", "attribute", "model"], sort=False):
        by = {(r.metric, r.target): r for r in part.itertuples()}
        eod = by.get(("eod", "(max)")) or next((r for (m, t), r in by.items() if m == "eod"), None)
        worst, gap = by.get((f"{hm}_worst", "")), by.get((f"{hm}_gap", ""))
        r0 = part.iloc[0]
        rows.append([Cell(_where(r0)), Cell(model),
                     Cell(_interval(worst)) if worst is not None else Cell.empty(),
                     Cell(_interval(gap), flag=bool(gap.small)) if gap is not None else Cell.empty(),
                     Cell(_interval(eod)) if eod is not None else Cell.empty()])
    if rows:
        tables.append(Table(f"subgroup_gaps_{slug}", "Gaps between subgroups",
                            ["dataset · attribute", "model", f"worst-group {hm.upper()}", f"largest {hm.upper()} gap",
                             "EOD"], rows,
                            caption=f"Worst group and largest gap (max − min over the groups where {hm.upper()} is "
                                    f"defined), and the equalised-odds difference EOD = max(TPR gap, FPR gap) over "
                                    f"groups at the run's decision rule (multi-label / multi-class: its largest label or "
                                    f"class); seed means with 95% bootstrap intervals. ACC and ECE gaps, and the TPR and "
                                    f"FPR gaps of every target, are in the CSV.",
                            legend=["† the gap includes a flagged group (few images or positives)", "— fewer than two "
                                    "groups where the metric is defined"], data=s))
    p = df[(df.kind == "paired") & (df.metric == f"{hm}_gap")]
    if len(p):
        rows = [[Cell(_where(r)), Cell(r.model), Cell(r.other_model), Cell(f"{r.value:+.3f}"),
                 Cell(f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]") if math.isfinite(r.ci_low) else Cell.empty(),
                 Cell(S.fmt_p(r.p)), Cell(S.fmt_p(r.p_holm)), Cell(_reading(r.value, r.p_holm))]
                for r in p.itertuples()]
        tables.append(Table(f"subgroup_paired_{slug}", f"Paired test of the {hm.upper()} gap between models",
                            ["dataset · attribute", "model", "against", "Δ gap", "95% CI of Δ", "p", "p (Holm)",
                             "reading"], rows,
                            caption=f"Δ = the model's largest {hm.upper()} gap between groups − the other's, on the same "
                                    f"test images and the same {int(p.n_boot.iloc[0])} resamples (a paired bootstrap); "
                                    f"two-sided p, Holm-corrected over this table.",
                            legend=["reading: a smaller or larger gap when the Holm-adjusted p < 0.05"],
                            data=df[df.kind == "paired"], text_cols=(1, 2)))
    r = df[df.kind == "rate"]
    rows, flagged = [], False
    for (ds, attr, grp, model, target), part in r.groupby(["dataset", "attribute", "group", "model", "target"],
                                                          sort=False):
        by = part.set_index("metric")
        r0 = part.iloc[0]
        flagged |= bool(r0.small)
        rows.append([Cell(_where(r0)), Cell(str(grp), flag=bool(r0.small)), Cell(model), Cell(str(target)),
                     Cell(str(int(r0.n))), Cell(str(int(r0.positives))), Cell(_interval(by.loc["tpr"])),
                     Cell(_interval(by.loc["fpr"]))])
    if rows:
        tables.append(Table(f"subgroup_rates_{slug}", "True and false positive rates per subgroup",
                            ["dataset · attribute", "group", "model", "target", "n", "positives", "TPR [95% CI]",
                             "FPR [95% CI]"], rows,
                            caption="At each run's own decision rule (p > 0.5; multi-class: the argmax, one class "
                                    "against the rest); seed means with 95% bootstrap intervals.",
                            legend=[FLAG_SMALL] if flagged else [], data=r, text_cols=(1, 2, 3)))
    return tables


def _reading(delta: float, p_holm: float) -> str:
    if not (math.isfinite(delta) and math.isfinite(p_holm)):
        return "not tested"
    if p_holm >= 0.05:
        return "no clear difference"
    return "smaller gap" if delta < 0 else "larger gap"


def subgroups_sections(a: Analysis, specs: list[Subgroup], figures: bool = True, data_root: Path | None = None,
                       au: Audit | None = None) -> list[Section]:
    """The report's "Subgroups" section (intro, figure, notes) and one sub-section per protocol section."""
    au = au or audit(a, specs, data_root)
    head = Section("Subgroups", intro=(
        f"Performance per group of test images ({', '.join(map(str, specs))}), joined through the image ids saved "
        f"with each run's scores: no model was rerun. Groups under {MIN_IMAGES} images or {MIN_POSITIVES} positives "
        f"are flagged (†), never hidden. Intervals resample test images (seed means first); the paired test compares "
        f"two models' gaps on the same resamples. Definitions: docs/auditing.md."))
    bins = au.frame.drop_duplicates(["dataset", "attribute"])[["dataset", "attribute", "bins"]] if len(au.frame) else []
    for r in (bins.itertuples() if len(bins) else []):
        head.notes.append(f"{dataset_label(r.dataset)} · {r.attribute}: {r.bins}.")
    head.notes += au.notes
    if au.rebuilt:
        head.notes.append(f"{len(au.rebuilt)} run(s) were saved before image ids were recorded: their ids were rebuilt from "
                          f"their dataset, whose fingerprint is the one they recorded.")
    if au.frame.empty:
        head.notes.append("No subgroup could be formed for any run of this report (see the notes above).")
        return [head]
    if figures:
        from .figures import subgroup_figure

        fig, note = subgroup_figure(a, au)
        head.figures += [fig] if fig else []
        head.notes += [note] if note else []
    out = [head]
    for sec in a.sections():
        tables = section_tables(au, sec)
        if tables:
            out.append(Section(f"Subgroups — {section_title(sec)}", tables=tables, level=3))
    return out


def audit_of(a: Analysis, subgroups: str | None, data_root: Path | None = None) -> Audit | None:
    """The audit a report or export asks for: ``--subgroups`` as given (nothing groupable in any run
    is one line: likely a typo), else what the runs recorded; None when neither names a column."""
    specs = requested(a.rs, subgroups)
    if not specs:
        return None
    au = audit(a, specs, data_root)
    if au.frame.empty and subgroups:
        raise UserError(f"--subgroups {','.join(map(str, specs))}: no run in these results could be grouped: "
                        + (au.notes[0] if au.notes else "no run has saved scores"))
    return au
