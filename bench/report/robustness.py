"""The report's "Robustness" section: the runs of the report that `bench robust` scored under shift
(``<results>/robust/``; bench.robust.files).

Units follow the rest of the report. A *model* here is a backbone under one protocol (its seeds
together); models are compared on the same images: one dataset at one size and limit. Seeds share
the test images, so their scores are averaged in every bootstrap resample (seed means first), and
the resamples draw images, the same images for the clean split and every corrupted one and for
every model (``bench.report.stats``' paired bootstrap, keyed by the dataset). Across datasets, the
datasets are the units (critical-difference ranking per severity, as ``ranking.py``).

- metric against severity per model (0 = the run's own clean test split; 1-5 the mean over the
  corruptions every model of the panel was scored under), with 95% bootstrap intervals;
- MedMNIST-C's summary (bench.shift.baselines): balanced error BE and relative rBE against the
  published AlexNet constants, beside the drop relative to a reference model of ours (the report's
  baseline under the same protocol) and the drop of the report's metric with its interval;
- the paired bootstrap of the drop between two models on the same corrupted images;
- the ranking per severity across datasets, calibration (ECE) under shift, and cross-dataset tests.

A cell of the rows made before its run was last rerun (``bench run --force`` keeps the id) is left
out, and so said.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from ..labels import protocol_label
from . import stats as S
from .doc import Cell, Figure, Section, Table
from .tables import ALPHA, Analysis, SectionKey, dataset_label, dataset_order, fmt, setting_label

SEVERITIES = (1, 2, 3, 4, 5)
MAX_ALL_PAIRS = 8  # more models than this on one dataset: each against the reference only


@dataclass
class Model:
    """One backbone under one protocol on one set of images: the runs of its seeds."""

    label: str
    sec: SectionKey
    model: str                 # the report's model label (backbone, weights...)
    run_ids: list[str]


@dataclass
class Group:
    """Runs scored on the same shifted images: one shift kind, dataset, size and limit."""

    kind: str                  # medmnistc | generic
    dataset: str
    size: int
    limit: str
    models: dict[str, Model] = field(default_factory=dict)
    corruptions: list[str] = field(default_factory=list)   # scored for every model (in the set's order)
    left_out: list[str] = field(default_factory=list)      # scored for some models only
    resize_only: bool = False                                # a resize-only cell (runs below 224 px)

    @property
    def slug(self) -> str:
        return "_".join(p for p in (self.kind, self.dataset.replace(":", "-").replace("/", "-"), str(self.size),
                                    f"limit{self.limit}" if self.limit else "") if p)

    @property
    def title(self) -> str:
        what = "MedMNIST-C" if self.kind == "medmnistc" else "generic corruptions"
        return f"{what} · {dataset_label(self.dataset)} · {self.size} px" + (f" · limit {self.limit}" if self.limit else "")


class Robustness:
    """The robustness rows of a report's runs, grouped, with their bootstrap samples (cached)."""

    def __init__(self, a: Analysis) -> None:
        from ..robust.files import RobustStore

        self.a = a
        self.store = RobustStore(a.rs.root)
        self.notes: list[str] = []
        self.rows = self._load()
        self._boot: dict = {}
        self._scores: dict = {}
        self.groups = self._groups() if not self.rows.empty else []

    # -- loading ---------------------------------------------------------------------------------
    def _load(self) -> pd.DataFrame:
        a, runs = self.a, self.a.rs.runs
        frames, stale, bad = [], 0, []
        from ..robust.files import run_stamp

        for rid in sorted(set(self.store.run_ids()) & set(runs.run_id)):
            rec = self.store.read_meta(rid)
            if rec.get("run") != run_stamp(a.rs.root, rid):
                stale += 1
                continue
            try:
                df = pd.read_csv(self.store.csv_path(rid), keep_default_na=False, na_values=[""],
                                 dtype={"limit": str, "corruption": str, "test_dataset": str, "shift": str})
                df["value"] = pd.to_numeric(df["value"], errors="coerce")
                df["severity"] = pd.to_numeric(df["severity"], errors="raise").astype(int)
            except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
                bad.append(f"{rid} ({type(e).__name__})")
                continue
            frames.append(df[df.run_id == rid])
        studies = (set(self.store.run_ids()) & set(a.rs.all_rows.run_id)) - set(runs.run_id) \
            if not a.rs.all_rows.empty else set()
        if studies:
            self.notes.append(f"{len(studies)} run(s) of the depth or label-budget studies (--layers, --train-fraction, "
                              f"--shots) were scored under shift too; like their clean numbers, they are not among "
                              f"the models compared here (their rows: results/robust/).")
        if stale:
            self.notes.append(f"Left out: the robustness rows of {stale} run(s) made before the run was last rerun "
                              f"under the same id (`bench run --force`); run `bench robust` again for them.")
        if bad:
            self.notes.append(f"Left out: unreadable robustness rows of {', '.join(bad)}.")
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        info = {}
        for r in runs.itertuples():
            sec = a.key_of(r)
            info[r.run_id] = {"model": r.model, "section": sec, "seed": int(r.seed),
                              "label": entity_label(r.model, sec)}
        for k in ("model", "section", "seed", "label"):
            df[k] = df.run_id.map(lambda rid, k=k: info[rid][k])
        df["limit"] = df["limit"].fillna("").astype(str)
        return df

    def _groups(self) -> list[Group]:
        from ..robust.files import RESIZE_ONLY

        out = []
        shifted = self.rows[self.rows["shift"].isin(["medmnistc", "generic"])]
        for (kind, dataset, size, limit), g in shifted.groupby(["shift", "dataset", "size", "limit"], sort=False):
            grp = Group(str(kind), str(dataset), int(size), str(limit))
            for label, gm in g.groupby("label"):
                ids = sorted(set(gm.run_id))
                grp.models[str(label)] = Model(str(label), gm.section.iloc[0], str(gm.model.iloc[0]), ids)
            # corruptions every run of every model was scored under, at every severity
            per_run = g[g.severity > 0].groupby("run_id").apply(
                lambda d: {c for c, dc in d.groupby("corruption") if set(dc.severity) >= set(SEVERITIES)},
                include_groups=False)
            every = set.intersection(*per_run.tolist()) if len(per_run) else set()
            present = set(g[g.severity > 0].corruption)
            order = list(dict.fromkeys(g[g.severity > 0].corruption))  # the rows keep the set's order
            grp.corruptions = [c for c in order if c in every]
            grp.left_out = [c for c in order if c in present - every]
            grp.resize_only = RESIZE_ONLY in set(g.corruption)
            if grp.corruptions:
                out.append(grp)
            if grp.left_out:
                self.notes.append(f"{grp.title}: {', '.join(grp.left_out)} left out of the means: not scored for "
                                  f"every run there (bench robust --corruptions).")
        order = {d: i for i, d in enumerate(dataset_order(self.rows.dataset))}
        return sorted(out, key=lambda gr: (gr.kind != "medmnistc", gr.size, order.get(gr.dataset, 99), gr.limit))

    # -- numbers from the rows ---------------------------------------------------------------------
    def value(self, m: Model, metric: str, corruption: str, severity: int) -> float:
        """Seed mean of ``metric`` of one cell (the clean row: corruption "clean", severity 0)."""
        r = self.rows
        hit = r[r.run_id.isin(m.run_ids) & (r.metric == metric) & (r.corruption == corruption) & (r.severity == severity)
                & (r["shift"].isin(["none", "medmnistc", "generic"]))]
        return S.seed_summary(list(hit.value))[0]

    def clean(self, m: Model, metric: str) -> float:
        return self.value(m, metric, "clean", 0)

    def at_severity(self, g: Group, m: Model, metric: str, severity: int) -> float:
        """The mean over the group's corruptions of the seed means at ``severity`` (0: clean)."""
        if severity == 0:
            return self.clean(m, metric)
        return float(np.mean([self.value(m, metric, c, severity) for c in g.corruptions]))

    def corrupted(self, g: Group, m: Model, metric: str) -> float:
        return float(np.mean([self.at_severity(g, m, metric, s) for s in SEVERITIES]))

    # -- bootstrap -------------------------------------------------------------------------------
    def _run_scores(self, rid: str, corruption: str, severity: int, kind: str):
        key = (rid, corruption, severity)
        if key not in self._scores:
            if corruption == "clean":
                got = self.a.rs.scores(rid)
            else:
                from ..robust.files import Cell as RCell

                got = self.store.read_cell(rid, RCell(kind, corruption, severity))
            self._scores[key] = got
        return self._scores[key]

    def samples(self, g: Group, m: Model, corruption: str, severity: int) -> np.ndarray | None:
        """Seed-averaged test metric of one cell on each bootstrap resample (None: scores missing)."""
        key = (g.slug, m.label, corruption, severity)
        if key in self._boot:
            return self._boot[key]
        y_true, scores, task = None, [], None
        for rid in m.run_ids:
            got = self._run_scores(rid, corruption, severity, g.kind)
            task = task or self.a.rs.task(rid)
            if got is None:
                self._boot[key] = None
                return None
            if y_true is None:
                y_true = got[0]
            elif not np.array_equal(y_true, got[0]):
                self._boot[key] = None
                return None
            scores.append(got[1])
        out = S.bootstrap_samples(self.a.metric, task, y_true, scores, self.a.n_boot, self.a.seed, g.dataset) \
            if scores and task else None
        self._boot[key] = out
        return out

    def severity_samples(self, g: Group, m: Model, severity: int) -> np.ndarray | None:
        if severity == 0:
            return self.samples(g, m, "clean", 0)
        got = [self.samples(g, m, c, severity) for c in g.corruptions]
        return None if any(x is None for x in got) else np.mean(got, axis=0)

    def drop_samples(self, g: Group, m: Model) -> np.ndarray | None:
        """Per resample: how much worse the metric is under the corruptions (mean over corruptions and
        severities) than on the clean images; positive = worse."""
        clean = self.severity_samples(g, m, 0)
        shifted = [self.severity_samples(g, m, s) for s in SEVERITIES]
        if clean is None or any(x is None for x in shifted):
            return None
        sign = 1.0 if self.a.higher_is_better else -1.0
        return sign * (clean - np.mean(shifted, axis=0))

    def reference(self, g: Group, m: Model) -> Model | None:
        """The report's baseline under the same protocol and setting, where it was scored here."""
        try:
            base = self.a.baseline_model(m.sec)
        except Exception:  # an ambiguous baseline is said in the report's own sections
            return None
        hits = [x for x in g.models.values() if x.model == base and x.sec == m.sec]
        return hits[0] if hits else None


def entity_label(model: str, sec: SectionKey) -> str:
    """A model under its protocol, as the robustness tables name it (setting only where not plain)."""
    extra = setting_label(sec).split(" (", 1)[1].rstrip(")") if " (" in setting_label(sec) else ""
    return f"{model} · {protocol_label(sec.head, sec.unfreeze, sec.adapt)}" + (f" ({extra})" if extra else "")


# -- the section -------------------------------------------------------------------------------------

def robustness_section(a: Analysis, figures: bool = True) -> Section | None:
    """The section, or None when no run of the report was scored under shift."""
    rb = Robustness(a)
    if rb.rows.empty:
        return Section("Robustness", notes=rb.notes) if rb.notes else None
    sec = Section("Robustness", intro=(
        "Runs of this report scored by `bench robust` without retraining: the model each run selected on val, on "
        "its test images under MedMNIST-C's corruptions (Di Salvo et al. 2024) at severities 1-5 (own data: the "
        "generic set of its modality), or on another dataset's test split. A model here is a backbone under one "
        "protocol, its seeds averaged; models are compared on the same images. Only test splits were read, and "
        "nothing was chosen on them."))
    for g in rb.groups:
        if figures:
            fig = severity_figure(rb, g)
            sec.figures += [fig] if fig else []
        sec.tables += [summary_table(rb, g), severity_table(rb, g)]
        paired = paired_table(rb, g)
        sec.tables += [paired] if paired is not None else []
        sec.tables.append(calibration_table(rb, g))
    rank_tables, rank_figs, notes = severity_ranking(rb, figures)
    sec.tables += rank_tables
    sec.figures += rank_figs
    sec.notes += notes
    cross = cross_dataset_table(rb)
    sec.tables += [cross] if cross is not None else []
    if any(not (rb.store.read_meta(r).get("shifts") or {}).get(g.kind, {}).get("exact", True)
           for g in rb.groups for m in g.models.values() for r in m.run_ids):
        sec.notes.append("Runs with --limit were corrupted on their first images only: the corruptions that draw "
                         "random numbers drew them over fewer images than MedMNIST-C's whole test split, so those "
                         "images are not the package's.")
    sec.notes += rb.notes
    return sec


def _ci(x: np.ndarray | None) -> tuple[float, float]:
    return S.percentile_ci(x) if x is not None else (float("nan"), float("nan"))


def _fmt_ci(lo: float, hi: float) -> str:
    return f" [{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) else ""


def summary_table(rb: Robustness, g: Group) -> Table:
    """Per model: clean and corrupted metric, the drop with its interval, MedMNIST-C's BE and rBE, and
    the drop relative to our reference."""
    from ..shift import baselines as B
    from ..shift import medmnistc as C

    a, metric = rb.a, rb.a.metric
    complete = g.kind == "medmnistc" and g.corruptions == C.corruptions(g.dataset)
    rows, recs = [], []
    for m in sorted(g.models.values(), key=lambda x: x.label):
        clean, corrupted = rb.clean(m, metric), rb.corrupted(g, m, metric)
        drop_s = rb.drop_samples(g, m)
        drop = (clean - corrupted) if a.higher_is_better else (corrupted - clean)
        lo, hi = _ci(drop_s)
        e_clean = rb.clean(m, "balanced_error")
        errors = {c: [rb.value(m, "balanced_error", c, s) for s in SEVERITIES] for c in g.corruptions}
        be = rbe = float("nan")
        if complete:
            summ = B.summary(g.dataset, errors, e_clean)["metrics"]
            be, rbe = summ["be"], summ["rbe"]
        ref = rb.reference(g, m)
        rel = float("nan")
        if ref is not None:
            mine = np.mean([np.mean(v) for v in errors.values()]) - e_clean
            theirs = np.mean([np.mean([rb.value(ref, "balanced_error", c, s) for s in SEVERITIES])
                              for c in g.corruptions]) - rb.clean(ref, "balanced_error")
            rel = float(mine / theirs) if theirs != 0 else float("nan")
        resize = (rb.value(m, metric, "resize-only", 0) if g.resize_only else float("nan"))
        rec = {"model": m.model, "entity": m.label, "dataset": g.dataset, "size": g.size, "kind": g.kind,
               f"clean_{metric}": clean, f"corrupted_{metric}": corrupted, "drop": drop, "drop_ci_low": lo,
               "drop_ci_high": hi, "clean_error": e_clean,
               "corrupted_error": float(np.mean([np.mean(v) for v in errors.values()])), "be": be, "rbe": rbe,
               "reference": ref.label if ref is not None else "", "drop_vs_reference": rel,
               f"resize_only_{metric}": resize, "seeds": len(m.run_ids), "corruptions": len(g.corruptions)}
        recs.append(rec)
        row = [Cell(m.label), Cell(fmt(clean)), Cell(fmt(corrupted)), Cell(f"{drop:+.3f}{_fmt_ci(lo, hi)}"),
               Cell(fmt(e_clean)), Cell(fmt(rec["corrupted_error"])), Cell(fmt(be)) if complete else Cell.empty(),
               Cell(fmt(rbe)) if complete else Cell.empty(),
               Cell(fmt(rel, 2) + (" (itself)" if ref is m else "")) if math.isfinite(rel) else Cell.empty()]
        if g.resize_only:
            row.append(Cell(fmt(resize)))
        rows.append(row)
    columns = ["model", f"clean {metric}", f"corrupted {metric}", "drop [95% CI]", "clean error", "corrupted error",
               "BE", "rBE", "drop vs reference"] + ([f"{metric} resize-only"] if g.resize_only else [])
    legend = ["— not computed: " + ("BE and rBE need every MedMNIST-C corruption of the dataset (bench robust "
                                     "without --corruptions); " if not complete else "")
              + "drop vs reference needs the report's baseline under the same protocol scored here"]
    caption = (f"Test {metric} on the clean split (the run's own test scores) and averaged over the "
               f"{len(g.corruptions)} corruption(s) x 5 severities; drop = how much worse (positive = worse), with a "
               f"95% bootstrap interval ({a.n_boot} resamples of the test images, the same for the clean and every "
               f"corrupted split; seeds averaged in each). Error = MedMNIST-C's balanced error, 1 − balanced accuracy "
               f"(bench.shift.baselines). BE = mean over corruptions of (mean error over severities) / AlexNet's; "
               f"rBE = mean over corruptions of (that error − clean error) / (AlexNet's − AlexNet's clean), with "
               f"MedMNIST-C's published AlexNet constants ({B.SOURCE}; AlexNet trained end to end at 224 px), as its "
               f"eval.py; below 1 is more robust than AlexNet. Drop vs reference: (corrupted − clean error) of the "
               f"model over the same of the report's baseline under the same protocol (a ratio of mean drops: "
               f"rBE's form with our run in AlexNet's place).")
    if g.resize_only:
        caption += (f" Resize-only: the clean 224-px images through the same resize to {g.size} px as the corrupted "
                    f"ones (MedMNIST-C corrupts the 224-px images), so the corruption's share of the drop can be told "
                    f"from the resize's.")
    return Table(f"robust_summary_{g.slug}", f"Under shift: {g.title}", columns, rows, caption=caption,
                 legend=legend, data=pd.DataFrame(recs))


def severity_table(rb: Robustness, g: Group) -> Table:
    """Model x severity: the metric (mean over the group's corruptions) with 95% bootstrap intervals."""
    a, metric = rb.a, rb.a.metric
    rows, recs = [], []
    for m in sorted(g.models.values(), key=lambda x: x.label):
        row = [Cell(m.label)]
        for s in (0, *SEVERITIES):
            v = rb.at_severity(g, m, metric, s)
            lo, hi = _ci(rb.severity_samples(g, m, s))
            row.append(Cell(f"{fmt(v)}{_fmt_ci(lo, hi)}"))
            recs.append({"model": m.model, "entity": m.label, "dataset": g.dataset, "size": g.size, "severity": s,
                         metric: v, "ci_low": lo, "ci_high": hi})
        rows.append(row)
    return Table(f"robust_severity_{g.slug}", f"Test {metric} by severity: {g.title}",
                 ["model", "clean", *[f"severity {s}" for s in SEVERITIES]], rows,
                 caption=f"Seed mean of test {metric}, averaged over {', '.join(g.corruptions)}; 95% bootstrap "
                         f"interval over the test images ({a.n_boot} resamples).", data=pd.DataFrame(recs))


def paired_table(rb: Robustness, g: Group) -> Table | None:
    """Two models on the same corrupted images: paired bootstrap of the difference of their drops."""
    a = rb.a
    models = sorted(g.models.values(), key=lambda x: x.label)
    if len(models) < 2:
        return None
    if len(models) <= MAX_ALL_PAIRS:
        pairs = list(combinations(models, 2))
        how = "every pair of models"
    else:
        pairs = [(m, ref) for m in models if (ref := rb.reference(g, m)) is not None and ref is not m]
        how = "each model against the report's baseline under its protocol"
    recs = []
    for m1, m2 in pairs:
        d1, d2 = rb.drop_samples(g, m1), rb.drop_samples(g, m2)
        sign = 1.0 if a.higher_is_better else -1.0
        delta = sign * ((rb.clean(m1, a.metric) - rb.corrupted(g, m1, a.metric))
                        - (rb.clean(m2, a.metric) - rb.corrupted(g, m2, a.metric)))
        lo = hi = p = float("nan")
        if d1 is not None and d2 is not None:
            diffs = d1 - d2  # the same resamples of the same images: paired
            lo, hi = S.percentile_ci(diffs)
            p = S.bootstrap_p(diffs)
        recs.append({"model_a": m1.label, "model_b": m2.label, "dataset": g.dataset, "size": g.size,
                     "delta_drop": delta, "ci_low": lo, "ci_high": hi, "p": p})
    df = pd.DataFrame(recs)
    df["p_holm"] = S.holm(df.p.tolist())
    rows = []
    for r in df.itertuples():
        reading = "not tested" if not math.isfinite(r.p_holm) else (
            "no clear difference" if r.p_holm >= ALPHA else
            ("A loses less" if r.delta_drop < 0 else "A loses more"))
        rows.append([Cell(r.model_a), Cell(r.model_b), Cell(f"{r.delta_drop:+.3f}"),
                     Cell(f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]") if math.isfinite(r.ci_low) else Cell.empty(),
                     Cell(S.fmt_p(r.p)), Cell(S.fmt_p(r.p_holm)), Cell(reading)])
    return Table(f"robust_paired_{g.slug}", f"Paired drop: {g.title}",
                 ["model A", "model B", "Δ drop (A − B)", "95% CI", "p", "p (Holm)", "reading"], rows,
                 caption=f"{how[0].upper() + how[1:]}: the drop of test {a.metric} (clean − mean over the corruptions "
                         f"and severities; positive = worse) of A minus that of B. Interval and two-sided p from the "
                         f"same {a.n_boot} resamples of the test images for both models, their clean and every "
                         f"corrupted split (a paired bootstrap; seeds averaged in each resample); Holm correction over "
                         f"the table.", legend=[f"reading: when the Holm-adjusted p < {ALPHA}", "— no saved scores"],
                 data=df)


def calibration_table(rb: Robustness, g: Group) -> Table:
    """Model x severity: ECE (mean over the group's corruptions and seeds): calibration under shift."""
    rows, recs = [], []
    for m in sorted(g.models.values(), key=lambda x: x.label):
        vals = [rb.at_severity(g, m, "ece", s) for s in (0, *SEVERITIES)]
        rows.append([Cell(m.label), *[Cell(fmt(v)) for v in vals]])
        recs += [{"model": m.model, "entity": m.label, "dataset": g.dataset, "size": g.size, "severity": s, "ece": v}
                 for s, v in zip((0, *SEVERITIES), vals)]
    from ..metrics import ECE_BINS

    return Table(f"robust_ece_{g.slug}", f"Calibration under shift (ECE): {g.title}",
                 ["model", "clean", *[f"severity {s}" for s in SEVERITIES]], rows,
                 caption=f"Test expected calibration error ({ECE_BINS} bins, top label; lower is better), seed mean, "
                         f"averaged over the corruptions: do the scores stay readable as probabilities as the images "
                         f"degrade?", data=pd.DataFrame(recs))


def severity_ranking(rb: Robustness, figures: bool) -> tuple[list[Table], list[Figure], list[str]]:
    """Per severity, the models ranked across datasets (one value per dataset: the mean over that
    dataset's corruptions of the seed means), Friedman and Nemenyi as ``ranking.py``."""
    from .ranking import rank_matrix

    a = rb.a
    tables, figs, notes = [], [], []
    by_setting: dict[tuple, list[Group]] = {}
    for g in rb.groups:
        by_setting.setdefault((g.kind, g.size, g.limit), []).append(g)
    for (kind, size, limit), groups in by_setting.items():
        if len(groups) < 2:
            continue  # one dataset: nothing to rank across (said once below)
        ranks, recs, done = {}, [], []
        for s in (0, *SEVERITIES):
            mat = pd.DataFrame({g.dataset: {m.label: rb.at_severity(g, m, a.metric, s) for m in g.models.values()}
                                for g in groups}).T
            what = "clean" if s == 0 else f"severity {s}"
            rk, more = rank_matrix(mat, a.higher_is_better, None, f"{kind} {size} px {what}")
            notes += more if s == 0 else []
            if rk is None:
                continue
            done.append(s)
            ranks[s] = dict(zip(rk.models, rk.mean_ranks))
            recs.append({"severity": s, "datasets": len(rk.datasets), "models": len(rk.models),
                         "p": rk.friedman.headline()[0], "p_kind": rk.friedman.headline()[1], "cd": rk.cd,
                         **{f"rank:{m}": r for m, r in ranks[s].items()}})
            if figures:
                from .figures import cd_figure

                slug = f"{kind}_{size}" + (f"_limit{limit}" if limit else "")
                figs.append(cd_figure(a, rk, name=f"cd_robust_{slug}_s{s}",
                                      title=f"Critical difference under shift — {kind}, {size} px, {what}",
                                      what=f"test {a.metric.upper()} ({what}, mean over corruptions)"))
        if not done:
            continue
        labels = sorted({m for r in ranks.values() for m in r})
        rows = [[Cell(m), *[Cell(f"{ranks[s][m]:.2f}") if m in ranks.get(s, {}) else Cell.empty() for s in done]]
                for m in labels]
        rows.append([Cell("Friedman p"), *[Cell(S.fmt_p(r["p"])) for r in recs]])
        rows.append([Cell("Nemenyi CD"), *[Cell(f"{r['cd']:.2f}") for r in recs]])
        tables.append(Table(f"robust_ranking_{kind}_{size}" + (f"_limit{limit}" if limit else ""),
                            f"Ranking across datasets by severity ({kind}, {size} px)",
                            ["model", *["clean" if s == 0 else f"severity {s}" for s in done]], rows,
                            caption=f"Mean rank over {len(groups)} datasets (1 = best) of test {a.metric} at each "
                                    f"severity (per dataset: the mean over its corruptions of the seed means; datasets "
                                    f"are the units). Friedman p (exact where enumerable) and the Nemenyi critical "
                                    f"difference at α = {ALPHA}; few datasets give these tests little power.",
                            data=pd.DataFrame(recs)))
    if rb.groups and not tables:
        notes.append("No ranking across datasets under shift: it needs at least two datasets scored at one size with "
                     "every model.")
    return tables, figs, notes


def cross_dataset_table(rb: Robustness) -> Table | None:
    """Runs scored on another dataset's test split (--test-dataset): own test, other test, drop."""
    a = rb.a
    cross = rb.rows[rb.rows["shift"] == "dataset"]
    if cross.empty:
        return None
    rows, recs = [], []
    for (label, other), g in cross.groupby(["label", "corruption"]):
        ids = sorted(set(g.run_id))
        own = S.seed_summary(list(rb.rows[rb.rows.run_id.isin(ids) & (rb.rows.corruption == "clean")
                                          & (rb.rows.metric == a.metric)].value))[0]
        theirs = S.seed_summary(list(g[g.metric == a.metric].value))[0]
        drop = (own - theirs) if a.higher_is_better else (theirs - own)
        dataset = str(g.dataset.iloc[0])
        rows.append([Cell(str(label)), Cell(dataset_label(dataset)), Cell(str(other)), Cell(fmt(own)), Cell(fmt(theirs)),
                     Cell(f"{drop:+.3f}"), Cell(str(len(ids)))])
        recs.append({"entity": label, "dataset": dataset, "test_dataset": other, f"own_{a.metric}": own,
                     f"other_{a.metric}": theirs, "drop": drop, "seeds": len(ids)})
    return Table("robust_cross_dataset", "Tested on another dataset",
                 ["model", "trained on", "tested on", f"own test {a.metric}", f"other test {a.metric}", "drop", "seeds"],
                 rows, caption=f"bench robust --test-dataset: the model each run selected, on another dataset's test "
                               f"split with the same task and classes; seed means; drop positive = worse.",
                 data=pd.DataFrame(recs), text_cols=(2,))


def severity_figure(rb: Robustness, g: Group) -> Figure | None:
    """Metric against severity per model, with 95% bootstrap intervals."""
    from . import figures as F
    import matplotlib.pyplot as plt

    a = rb.a
    models = sorted(g.models.values(), key=lambda x: x.label)
    F._theme()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    palette = dict(zip([m.label for m in models], __import__("seaborn").color_palette("colorblind", max(len(models), 1))))
    xs = np.arange(0, 6)
    no_ci = False
    for j, m in enumerate(models):
        ys = [rb.at_severity(g, m, a.metric, s) for s in xs]
        cis = [_ci(rb.severity_samples(g, m, int(s))) for s in xs]
        lo = np.array([c[0] for c in cis])
        hi = np.array([c[1] for c in cis])
        off = (j - (len(models) - 1) / 2) * 0.06  # intervals side by side, not on top of each other
        ax.plot(xs + off, ys, marker="o", color=palette[m.label], label=m.label, lw=1.5)
        ok = np.isfinite(lo) & np.isfinite(hi)
        no_ci |= not ok.all()
        yv = np.asarray(ys, float)
        ax.errorbar((xs + off)[ok], yv[ok], yerr=np.array([yv[ok] - lo[ok], hi[ok] - yv[ok]]), fmt="none",
                    ecolor=palette[m.label], capsize=3, lw=1)
    ax.set_xticks(xs, ["clean", *map(str, SEVERITIES)])
    ax.set_xlabel("severity")
    ax.set_ylabel(f"test {a.metric.upper()} (mean over corruptions)")
    ax.set_title(g.title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, frameon=False)
    fig.tight_layout()
    caption = (f"Seed mean of test {a.metric.upper()}; at each severity the mean over {len(g.corruptions)} "
               f"corruption(s). Whiskers: 95% bootstrap interval over the test images ({a.n_boot} resamples, "
               f"seeds averaged in each); they show test-set sampling only.")
    if no_ci:
        caption += " Points without whiskers lack saved scores."
    return F._figure(f"robust_severity_{g.slug}", f"Metric against severity — {g.title}", fig, caption)
