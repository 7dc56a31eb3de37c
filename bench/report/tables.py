"""The report's tables, computed from the tidy rows with pandas.

A *section* is one protocol (head x unfreeze) at one setting (image size, input size, resize
policy, image limit); every table inside a section compares models on the same footing.
Conventions: seed statistics are mean and sample std (ddof=1) over seeds; a cell with no run is
missing (never zero); a cell with fewer seeds than the section's seed set is flagged. ECE and
Brier are lower-is-better: "best", gains and rankings follow each metric's direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import metrics as M
from ..errors import UserError, did_you_mean
from . import stats as S
from .caveats import legend as caveat_legend
from .caveats import mark
from .doc import Cell, Table
from ..labels import protocol_label
from .load import SECTION_KEYS, RunSet, model_table, unfreeze_order

ALPHA = 0.05
LOW_RECALL = 0.5          # a class recall below this is flagged ...
RECALL_GAP = 0.25         # ... and so is one this far below the model's balanced accuracy
FLAG_SEEDS = "† fewer seeds than the section's seed set (n = seeds present / seeds in section)"
# the ImageNet references a default baseline is taken from, in this order (the paper's Figure 1
# compares against ResNet-50)
DEFAULT_BASELINES = ("resnet50", "resnet152", "deit", "resnet18")
MODEL_COLUMNS = ("backbone", "variant", "weights", "recipe")


@dataclass(frozen=True)
class SectionKey:
    head: str
    unfreeze: str
    size: int
    input_size: int | None
    resize: str
    limit: str
    adapt: str = ""   # --adapt lora|bitfit ("" for none): LoRA runs are their own section, so titled

    @property
    def protocol(self) -> tuple[str, str, str]:
        return (self.head, self.unfreeze, self.adapt)

    @property
    def sort_key(self) -> tuple:
        return (_HEAD_ORDER.get(self.head, 9), self.head, unfreeze_order(self.unfreeze), self.adapt, self.size,
                self.input_size or 0, self.resize, self.limit)

    def __lt__(self, other: "SectionKey") -> bool:  # pandas sorts group keys
        return self.sort_key < other.sort_key

    @property
    def slug(self) -> str:
        parts = [self.head, self.unfreeze, self.adapt, str(self.size)]
        if self.input_size:
            parts.append(f"in{self.input_size}")
        parts.append(self.resize)
        if self.limit:
            parts.append(f"limit{self.limit}")
        return "_".join(p.replace("/", "-") for p in parts if p)


_HEAD_ORDER = {"linear": 0, "knn": 1, "mlp": 2, "deit": 3}


def _adapt(v: object) -> str:
    return "" if v is None or str(v) in ("", "none", "nan", "None", "<NA>") else str(v)


def setting_label(k: SectionKey) -> str:
    extra = []
    if k.input_size and k.input_size != k.size:
        extra.append(f"input {k.input_size} px")
    if k.resize and k.resize != "resize":
        extra.append(f"resize={k.resize}")
    if k.limit:
        extra.append(f"limit {k.limit} images/split")
    return f"{k.size} px" + (f" ({', '.join(extra)})" if extra else "")


def section_title(k: SectionKey) -> str:
    return f"{protocol_label(k.head, k.unfreeze, k.adapt)} · {setting_label(k)}"


# MedMNIST's own order and names (medmnist.INFO), kept here so a report never imports torch
MEDMNIST = {"pathmnist": "PathMNIST", "chestmnist": "ChestMNIST", "dermamnist": "DermaMNIST",
            "octmnist": "OCTMNIST", "pneumoniamnist": "PneumoniaMNIST", "retinamnist": "RetinaMNIST",
            "breastmnist": "BreastMNIST", "bloodmnist": "BloodMNIST", "tissuemnist": "TissueMNIST",
            "organamnist": "OrganAMNIST", "organcmnist": "OrganCMNIST", "organsmnist": "OrganSMNIST",
            "organmnist3d": "OrganMNIST3D", "nodulemnist3d": "NoduleMNIST3D",
            "adrenalmnist3d": "AdrenalMNIST3D", "fracturemnist3d": "FractureMNIST3D",
            "vesselmnist3d": "VesselMNIST3D", "synapsemnist3d": "SynapseMNIST3D"}
_ORDER = {f: i for i, f in enumerate(MEDMNIST)}


def dataset_order(flags) -> list[str]:
    return sorted(set(flags), key=lambda f: (_ORDER.get(f, len(_ORDER)), f))


def dataset_label(flag: str) -> str:
    return MEDMNIST.get(flag, flag)


def fmt(v: float, digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt_pct(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:+.1f}%"


@dataclass
class Analysis:
    """Numbers shared by the tables and figures of one report."""

    rs: RunSet
    metric: str
    baseline: str | None             # a model label or backbone; None: nothing to compare against
    n_boot: int = 1000
    seed: int = 0
    require_baseline: bool = True  # False for the default baseline: report without gains if absent
    baseline_why: str = ""          # how the baseline was chosen, for the report's header
    summary: pd.DataFrame = field(init=False)       # one row per (section, model, dataset)
    rows: pd.DataFrame = field(init=False)          # all tidy rows with a section column
    per_seed: pd.DataFrame = field(init=False)      # test rows of the chosen metric
    _boot: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        test = self.rs.rows[self.rs.rows.split == "test"]
        present = sorted(set(test.metric))
        if self.metric not in present:
            raise UserError(f"no test results for metric {self.metric!r}; {did_you_mean(self.metric, present)}")
        models = set(self.rs.rows.model) | set(self.rs.rows.backbone)
        models |= {unmarked(m) for m in models}  # a test model may be named without its marks
        if self.baseline is not None and self.baseline not in models and self.require_baseline:
            raise UserError(f"unknown baseline {self.baseline!r}: no runs of it in the results; "
                            f"{did_you_mean(self.baseline, sorted(models))}")
        self.higher_is_better = self.metric not in M.LOWER_IS_BETTER
        self.model_info = model_table(self.rs)
        self._backbone = dict(zip(self.rs.rows.model, self.rs.rows.backbone))
        # every row learns its section once; tables then select with a plain comparison
        self.rows = self.rs.rows.assign(section=[self.key_of(r) for r in self.rs.rows.itertuples()])
        ps = self.rows[(self.rows.split == "test") & (self.rows.metric == self.metric)]
        self.per_seed = ps
        keys = [*SECTION_KEYS, "model", "dataset"]
        g = ps.groupby(keys, dropna=False)
        summ = g.value.agg(lambda v: S.seed_summary(list(v))).apply(pd.Series)
        summ.columns = ["mean", "std", "n"]
        summ["n"] = summ["n"].astype(int)
        summ["seeds"] = g.seed.agg(lambda s: sorted(int(x) for x in s))
        summ["run_ids"] = g.run_id.agg(list)
        summ = summ.reset_index()
        summ["section"] = [self.key_of(r) for r in summ.itertuples()]
        sec_seeds = summ.groupby("section").seeds.agg(lambda ss: sorted({s for x in ss for s in x}))
        summ["expected_n"] = summ.section.map(sec_seeds.map(len))
        self.summary = summ

    @staticmethod
    def key_of(r) -> SectionKey:
        ins = r.input_size
        return SectionKey(str(r.head), str(r.unfreeze), int(r.size),
                          None if ins is None or pd.isna(ins) else int(ins), str(r.resize),
                          "" if str(r.limit) in ("", "<NA>", "nan", "None") else str(r.limit),
                          _adapt(getattr(r, "adapt", "")))

    def sections(self) -> list[SectionKey]:
        return sorted(set(self.summary.section), key=lambda k: k.sort_key)

    def best(self, values) -> float:
        """The best of some values in this metric's direction (NaN when none is finite)."""
        v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
        if v.size == 0:
            return float("nan")
        return float(v.max() if self.higher_is_better else v.min())

    def better(self, delta: float) -> bool:
        return delta > 0 if self.higher_is_better else delta < 0

    def baseline_model(self, sec: SectionKey) -> str | None:
        """The baseline's label in a section: an exact label, else the only model of that backbone."""
        if self.baseline is None:
            return None
        models = sorted(set(self.summary[self.summary.section == sec].model))
        if self.baseline in models:
            return self.baseline
        # a test model named without its marks ("dummy tiny" for "dummy tiny (random) (test model)")
        marked = [m for m in models if m != unmarked(m) and unmarked(m) == self.baseline]
        if len(marked) == 1:
            return marked[0]
        same = [m for m in models if self._backbone.get(m) == self.baseline]
        if len(same) > 1:
            raise UserError(f"baseline {self.baseline!r} is ambiguous in {section_title(sec)}: "
                            f"{', '.join(same)}; pass one of these labels to --baseline")
        return same[0] if same else None

    @property
    def baseline_label(self) -> str:
        """The baseline as the tables name it (``resnet18 (random)`` for ``--baseline resnet18``):
        the labels it resolves to in the sections, or the name given when it resolves nowhere."""
        if self.baseline is None:
            return ""
        found = sorted({m for s in self.sections() if (m := self.baseline_model(s)) is not None})
        return " / ".join(found) or self.baseline

    def models(self, sec: SectionKey) -> list[str]:
        """Baseline first, then alphabetical."""
        ms = sorted(set(self.summary[self.summary.section == sec].model))
        base = self.baseline_model(sec)
        return ([base] if base in ms else []) + [m for m in ms if m != base]

    def cell(self, sec: SectionKey, model: str, dataset: str) -> pd.Series | None:
        s = self.summary
        hit = s[(s.section == sec) & (s.model == model) & (s.dataset == dataset)]
        return None if hit.empty else hit.iloc[0]

    def caveats(self, run_ids) -> list[str]:
        """The marks of the runs behind a number of this report's metric (bench.report.caveats)."""
        return self.rs.cell_caveats(run_ids, self.metric)

    # -- bootstrap ---------------------------------------------------------------------------
    def boot(self, sec: SectionKey, model: str, dataset: str) -> dict | None:
        """Bootstrap distribution of the seed-averaged test metric of one cell (cached)."""
        key = (sec, model, dataset)
        if key in self._boot:
            return self._boot[key]
        c = self.cell(sec, model, dataset)
        out = None
        if c is not None:
            y_true, scores, task, missing = None, [], None, 0
            for rid in c.run_ids:
                got = self.rs.scores(rid)
                task = task or self.rs.task(rid)
                if got is None:
                    missing += 1
                    continue
                yt, ys = got
                if y_true is None:
                    y_true = yt
                elif not np.array_equal(y_true, yt):  # seeds must share the test set
                    missing += 1
                    continue
                scores.append(ys)
            if scores and task:
                samples = S.bootstrap_samples(self.metric, task, y_true, scores, self.n_boot, self.seed, dataset)
                out = {"samples": samples, "n_seeds": len(scores), "missing": missing, "y_true": y_true,
                       "valid": int(np.isfinite(samples).sum())}
        self._boot[key] = out
        return out


# -- tables ------------------------------------------------------------------------------------

def seed_table(a: Analysis, sec: SectionKey) -> Table:
    """Model x dataset: mean ± std over seeds (n), best per column in bold."""
    sub = a.summary[a.summary.section == sec]
    datasets = dataset_order(sub.dataset)
    models = a.models(sec)
    best = {d: a.best(sub[sub.dataset == d]["mean"]) for d in datasets}
    rows, flagged, undefined, marked = [], False, False, set()
    for m in models:
        row = [Cell(m)]
        for d in datasets:
            c = a.cell(sec, m, d)
            if c is None:
                row.append(Cell.empty())
                continue
            tags = a.caveats(c["run_ids"])
            marked |= set(tags)
            if not math.isfinite(c["mean"]):  # runs exist but the metric is undefined for all of them
                undefined = True
                row.append(Cell(mark("undefined", tags), missing=True))
                continue
            partial = c["n"] < c["expected_n"]
            flagged |= partial
            n = f"n={c['n']}/{c['expected_n']}" if partial else f"n={c['n']}"
            sd = f" ± {fmt(c['std'])}" if math.isfinite(c["std"]) else ""
            row.append(Cell(mark(f"{fmt(c['mean'])}{sd} ({n})", tags), bold=bool(np.isclose(c["mean"], best[d])),
                            flag=bool(partial)))
        rows.append(row)
    legend = [f"bold: best mean in the column ({direction(a)})", "— no run for this cell"] + \
        ([FLAG_SEEDS] if flagged else [])
    if undefined:
        legend.append("undefined: the metric could not be computed (e.g. AUC with a single class in the test split)")
    legend += caveat_legend(marked)
    data = sub.drop(columns=["section", "run_ids"]).assign(seeds=sub.seeds.map(lambda s: " ".join(map(str, s))),
                                                           caveats=sub.run_ids.map(lambda r: "; ".join(a.caveats(r))))
    return Table(f"seeds_{sec.slug}", f"{a.metric.upper()} by model and dataset",
                 ["model", *map(dataset_label, datasets)], rows,
                 caption=f"Test {a.metric}, mean ± std over seeds (n seeds).", legend=legend, data=data)


def average_tables(a: Analysis) -> list[Table]:
    """Per protocol: model x setting, the mean over datasets of the per-dataset seed means
    (the MedMNIST+ layout). Averages over fewer datasets than the setting holds are flagged."""
    out = []
    secs = a.sections()
    for proto in sorted({s.protocol for s in secs}, key=lambda p: (_HEAD_ORDER.get(p[0], 9), p[0],
                                                                  unfreeze_order(p[1]))):
        psecs = [s for s in secs if s.protocol == proto]
        models = sorted(set(a.summary[a.summary.section.isin(psecs)].model))
        recs, table = [], {}
        for s in psecs:
            sub = a.summary[(a.summary.section == s) & a.summary["mean"].notna()]
            k_all = sub.dataset.nunique()
            for m in models:
                ms = sub[sub.model == m]
                if ms.empty:
                    continue
                tags = a.caveats([r for ids in ms.run_ids for r in ids])
                table[(m, s)] = (float(ms["mean"].mean()), ms.dataset.nunique(), k_all, tags)
                recs.append({"head": s.head, "unfreeze": s.unfreeze, "setting": setting_label(s), "model": m,
                             "mean_over_datasets": table[(m, s)][0], "datasets": table[(m, s)][1],
                             "datasets_in_setting": k_all, "caveats": "; ".join(tags)})
        rows, flagged, marked = [], False, set()
        for m in models:
            row = [Cell(m)]
            for s in psecs:
                if (m, s) not in table:
                    row.append(Cell.empty())
                    continue
                v, k, kk, tags = table[(m, s)]
                marked |= set(tags)
                complete = [t[0] for (mm, ss), t in table.items() if ss == s and t[1] == t[2]]
                partial = k < kk
                flagged |= partial
                row.append(Cell(mark(f"{fmt(v)} ({k}/{kk} datasets)" if partial else
                                     f"{fmt(v)} ({k} dataset{'s' if k > 1 else ''})", tags),
                                bold=bool(not partial and complete and np.isclose(v, a.best(complete))), flag=partial))
            rows.append(row)
        legend = [f"bold: best among models with every dataset of the setting ({direction(a)})", "— no run"]
        if flagged:
            legend.append("† averaged over fewer datasets than the setting holds: not comparable")
        legend += [f"{line} (in at least one dataset averaged)" for line in caveat_legend(marked)]
        out.append(Table(f"average_{proto[0]}_{proto[1]}", f"Average {a.metric.upper()} over datasets — "
                         f"{protocol_label(*proto)}", ["model", *[setting_label(s) for s in psecs]], rows,
                         caption=f"Mean over datasets of the per-dataset seed means of test {a.metric}.",
                         legend=legend, data=pd.DataFrame(recs)))
    return out


def direction(a: Analysis) -> str:
    return "higher is better" if a.higher_is_better else f"lower is better for {a.metric.upper()}"


def _rel_gain(a: Analysis, model: np.ndarray | float, base: np.ndarray | float) -> np.ndarray | float:
    # positive = better in the metric's direction: for ECE/Brier a reduction is a gain
    sign = 1.0 if a.higher_is_better else -1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return sign * 100 * (np.asarray(model, float) - base) / base


def gains(a: Analysis, sec: SectionKey) -> pd.DataFrame:
    """Per (model, dataset): baseline mean, model mean, absolute and relative gain (%, positive =
    better)."""
    base = a.baseline_model(sec)
    cols = ["model", "dataset", "baseline", "baseline_mean", "mean", "delta", "rel_gain_pct"]
    if base is None:
        return pd.DataFrame(columns=cols)
    sub = a.summary[a.summary.section == sec]
    b = sub[sub.model == base].set_index("dataset")["mean"]
    recs = []
    for r in sub[sub.model != base].itertuples():
        bm = b.get(r.dataset, float("nan"))
        delta = r.mean - bm
        rel = float(_rel_gain(a, r.mean, bm)) if math.isfinite(bm) and bm != 0 else float("nan")
        recs.append([r.model, r.dataset, base, bm, r.mean, delta, rel])
    return pd.DataFrame(recs, columns=cols)


def mean_gains(a: Analysis, sec: SectionKey) -> pd.DataFrame:
    """Per model: the mean over datasets of the relative gain, with a 95% paired-bootstrap
    interval (each dataset resampled on its own, the same resample for model and baseline; the
    b-th resamples are averaged over datasets). NaN interval when a dataset lacks saved scores."""
    g = gains(a, sec).dropna(subset=["rel_gain_pct"])
    base = a.baseline_model(sec)
    recs = []
    for m, gm in g.groupby("model", sort=False):
        per_ds = []
        for d in gm.dataset:
            bm, bb = a.boot(sec, m, d), a.boot(sec, base, d)
            if not (bm and bb and np.array_equal(bm["y_true"], bb["y_true"])):
                per_ds = None
                break
            per_ds.append(_rel_gain(a, bm["samples"], bb["samples"]))
        lo = hi = float("nan")
        if per_ds:
            lo, hi = S.percentile_ci(np.mean(per_ds, axis=0))  # NaN in any dataset drops that resample
        recs.append({"model": m, "baseline": base, "mean_rel_gain_pct": float(gm.rel_gain_pct.mean()),
                     "ci_low": lo, "ci_high": hi, "datasets": int(gm.dataset.nunique()), "n_boot": a.n_boot})
    return pd.DataFrame(recs, columns=["model", "baseline", "mean_rel_gain_pct", "ci_low", "ci_high", "datasets",
                                       "n_boot"])


def gain_table(a: Analysis, sec: SectionKey) -> tuple[Table, list[str]]:
    base = a.baseline_model(sec)
    g = gains(a, sec)
    mg = mean_gains(a, sec).set_index("model") if base else pd.DataFrame()
    notes = []
    if base is None and a.baseline is not None:
        notes.append(f"No comparison in this section: the baseline {a.baseline_label} has no runs here.")
    datasets = dataset_order(a.summary[a.summary.section == sec].dataset)
    rows = []
    for m in [m for m in a.models(sec) if m != base] if base else []:
        gm = g[g.model == m].set_index("dataset")
        row = [Cell(m)]
        for d in datasets:
            v = gm["rel_gain_pct"].get(d, float("nan"))
            row.append(Cell(fmt_pct(v)) if math.isfinite(v) else Cell.empty())
        if m in mg.index:
            r = mg.loc[m]
            ci = f" [{fmt_pct(r.ci_low)}, {fmt_pct(r.ci_high)}]" if math.isfinite(r.ci_low) else ""
            row.append(Cell(f"{fmt_pct(r.mean_rel_gain_pct)}{ci} ({int(r.datasets)})"))
        else:
            row.append(Cell.empty())
        rows.append(row)
    sign = "model − {b}" if a.higher_is_better else "{b} − model"
    expr = sign.format(b=base or a.baseline_label)
    t = Table(f"gain_{sec.slug}", f"Relative gain over {base or a.baseline_label}",
              ["model", *map(dataset_label, datasets), "mean (datasets)"], rows,
              caption=f"100 × ({expr}) / {base or a.baseline_label} on the seed means of test {a.metric} (positive = "
                      f"better); the last column averages the per-dataset gains over the datasets where both ran "
                      f"(count in brackets), with a 95% paired-bootstrap interval of that mean (test-set "
                      f"sampling only) where every dataset has saved scores.",
              legend=["— no run of the model or the baseline on that dataset"], data=g)
    return t, notes


def ci_table(a: Analysis, sec: SectionKey) -> tuple[Table, list[str]]:
    """Model x dataset: seed mean with a 95% bootstrap interval from the saved test scores."""
    sub = a.summary[a.summary.section == sec]
    datasets = dataset_order(sub.dataset)
    rows, recs, notes, flagged, no_scores, marked = [], [], [], False, [], set()
    for m in a.models(sec):
        row = [Cell(m)]
        for d in datasets:
            c = a.cell(sec, m, d)
            bt = a.boot(sec, m, d) if c is not None else None
            if c is None or bt is None:
                row.append(Cell.empty())
                if c is not None:
                    no_scores.append(f"{m} on {dataset_label(d)}")
                continue
            lo, hi = S.percentile_ci(bt["samples"])
            partial = bt["n_seeds"] < c["n"]
            flagged |= partial
            tags = a.caveats(c["run_ids"])
            marked |= set(tags)
            row.append(Cell(mark(f"{fmt(c['mean'])} [{fmt(lo)}, {fmt(hi)}]", tags), flag=partial))
            recs.append({"model": m, "dataset": d, "mean": c["mean"], "ci_low": lo, "ci_high": hi,
                         "seeds_with_scores": bt["n_seeds"], "seeds": c["n"], "valid_resamples": bt["valid"],
                         "n_boot": a.n_boot, "caveats": "; ".join(tags)})
            if bt["valid"] < 0.9 * a.n_boot:
                notes.append(f"{m} on {dataset_label(d)}: only {bt['valid']}/{a.n_boot} resamples could be "
                             f"scored (a class missing from the resample); the interval is approximate.")
        rows.append(row)
    if no_scores and not recs:
        notes.append("No saved test scores (.scores.npz) in this section: no bootstrap intervals and no paired "
                     "bootstrap tests; rerun with a current `bench run` to get them.")
        rows = []
    elif no_scores:
        notes.append(f"No saved test scores, so no interval, for: {'; '.join(no_scores)}.")
    legend = ["— no run or no saved scores"] + (["† interval from fewer seeds than the mean"] if flagged else []) + \
        caveat_legend(marked)
    t = Table(f"ci_{sec.slug}", "95% bootstrap intervals", ["model", *map(dataset_label, datasets)], rows,
              caption=f"Seed mean of test {a.metric} [2.5%, 97.5%] percentiles over {a.n_boot} bootstrap "
                      f"resamples of the test set (metric averaged over seeds in each resample). The interval "
                      f"reflects test-set sampling; the ± in the first table reflects seed variation.",
              legend=legend, data=pd.DataFrame(recs))
    return t, notes


def paired_table(a: Analysis, sec: SectionKey) -> Table | None:
    """Each model against the baseline on each dataset: paired bootstrap of the difference."""
    base = a.baseline_model(sec)
    if base is None:
        return None
    recs = []
    for m in [m for m in a.models(sec) if m != base]:
        for d in dataset_order(a.summary[a.summary.section == sec].dataset):
            c, cb = a.cell(sec, m, d), a.cell(sec, base, d)
            if c is None or cb is None:
                continue
            bm, bb = a.boot(sec, m, d), a.boot(sec, base, d)
            delta = c["mean"] - cb["mean"]
            lo = hi = p = float("nan")
            if bm and bb and np.array_equal(bm["y_true"], bb["y_true"]):
                diffs = bm["samples"] - bb["samples"]  # same resample indices: a paired bootstrap
                lo, hi = S.percentile_ci(diffs)
                p = S.bootstrap_p(diffs)
            recs.append({"model": m, "dataset": d, "delta": delta, "ci_low": lo, "ci_high": hi, "p": p})
    df = pd.DataFrame(recs, columns=["model", "dataset", "delta", "ci_low", "ci_high", "p"])
    df["p_holm"] = S.holm(df.p.tolist()) if len(df) else []
    rows = []
    for r in df.itertuples():
        rows.append([Cell(r.model), Cell(dataset_label(r.dataset)), Cell(f"{r.delta:+.3f}"),
                     Cell(f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]") if math.isfinite(r.ci_low) else Cell.empty(),
                     Cell(S.fmt_p(r.p)), Cell(S.fmt_p(r.p_holm)), Cell(verdict(a, r.delta, r.p_holm))])
    return Table(f"paired_{sec.slug}", f"Paired bootstrap against {base}",
                 ["model", "dataset", "Δ", "95% CI of Δ", "p", "p (Holm)", "reading"], rows,
                 caption=f"Δ = model − {base} (seed means of test {a.metric}); interval and two-sided p from "
                         f"the same {a.n_boot} test-set resamples for both models; Holm correction over every "
                         f"comparison in this table.",
                 legend=[f"reading: better/worse when the Holm-adjusted p < {ALPHA}", "— no saved scores"], data=df)


def verdict(a: Analysis, delta: float, p_holm: float) -> str:
    if not (math.isfinite(p_holm) and math.isfinite(delta)):
        return "not tested"
    if p_holm >= ALPHA:
        return "no clear difference"
    return "better" if a.better(delta) else "worse"


def recall_table(a: Analysis, sec: SectionKey) -> tuple[Table | None, int]:
    """Per-class test recall where a class falls well below the macro picture."""
    rows_all = a.rows[(a.rows.split == "test") & (a.rows.section == sec)]
    rec = rows_all[rows_all.metric.str.fullmatch(r"recall_\d+")]
    if rec.empty:
        return None, 0
    bal = rows_all[rows_all.metric == "balanced_acc"].groupby(["model", "dataset"]).value.mean()
    recs = []
    for (m, d, metric), g in rec.groupby(["model", "dataset", "metric"]):
        mean, std, n = S.seed_summary(list(g.value))
        cls = metric.split("_", 1)[1]
        labels = a.rs.labels(g.run_id.iloc[0])
        macro = float(bal.get((m, d), float("nan")))
        low = math.isfinite(mean) and (mean < LOW_RECALL or (math.isfinite(macro) and mean <= macro - RECALL_GAP))
        recs.append({"model": m, "dataset": d, "class": int(cls), "class_name": labels.get(cls, ""),
                     "recall_mean": mean, "recall_std": std, "seeds": n, "balanced_acc": macro, "flagged": low})
    df = pd.DataFrame(recs).sort_values(["model", "dataset", "class"], key=_dataset_sort)
    shown = df[df.flagged]
    rows = [[Cell(r.model), Cell(dataset_label(r.dataset)),
             Cell(f"{r[2]}: {r.class_name}" if r.class_name else str(r[2])),
             Cell(fmt(r.recall_mean) + (f" ± {fmt(r.recall_std)}" if math.isfinite(r.recall_std) else "")),
             Cell(fmt(r.balanced_acc))] for r in shown.itertuples(index=False)]
    t = Table(f"recall_{sec.slug}", "Classes a macro number hides", ["model", "dataset", "class",
              "class recall", "balanced acc"], rows,
              caption=f"Test recall per class (mean ± std over seeds), listed when below {LOW_RECALL} or at least "
                      f"{RECALL_GAP} below the model's balanced accuracy on that dataset; "
                      f"{len(df)} class recalls checked, all of them in the CSV export.",
              data=df, text_cols=(2,))
    return t, len(df)


def _dataset_sort(col: pd.Series) -> pd.Series:
    if col.name == "dataset":
        order = {d: i for i, d in enumerate(dataset_order(col))}
        return col.map(order)
    return col


def reference_table(a: Analysis, ref: pd.DataFrame) -> tuple[Table, list[str]]:
    """The user's seed means next to the published MedMNIST v2 numbers, per dataset."""
    notes = []
    metric = a.metric
    if metric not in set(ref.metric):
        notes.append(f"The published table reports only {', '.join(sorted(set(ref.metric)))}; "
                     f"showing ACC next to your {metric.upper()} would mislead, so your rows are omitted.")
        metric_ref = "auc"
    else:
        metric_ref = metric
    user = a.summary
    ref_ds = set(ref.dataset) - {"average"}
    datasets = dataset_order(set(user.dataset) & ref_ds) or dataset_order(ref_ds)
    rows, recs = [], []
    if metric_ref == metric:
        for sec in a.sections():
            for m in a.models(sec):
                row = [Cell(f"{m} · {protocol_label(sec.head, sec.unfreeze, sec.adapt)} · {setting_label(sec)}")]
                for d in datasets:
                    c = a.cell(sec, m, d)
                    row.append(Cell(fmt(c["mean"])) if c is not None and math.isfinite(c["mean"]) else Cell.empty())
                    recs.append({"row": row[0].text, "model": m, "dataset": d,
                                 "value": None if c is None else c["mean"], "source": "this report"})
                rows.append(row)
    r = ref[(ref.metric == metric_ref) & (ref.dataset.isin(datasets))]
    unverified = 0
    for method in dict.fromkeys(ref[ref.dataset != "average"].method):
        mr = r[r.method == method].set_index("dataset")
        row = [Cell(f"{method} [published]")]
        for d in datasets:
            v = mr["value"].get(d, float("nan")) if d in mr.index else float("nan")
            unverified += int(d in mr.index and not math.isfinite(v))
            row.append(Cell(fmt(v)) if math.isfinite(v) else Cell.empty())
            recs.append({"row": row[0].text, "model": "", "dataset": d, "value": v,
                         "source": mr["source"].get(d, "") if d in mr.index else ""})
        rows.append(row)
    src = "; ".join(sorted(set(r.source)))
    legend = ["— not run, or a published number left out because it could not be verified "
              "(see the note column of bench/reference/medmnist_reference.csv)"]
    if unverified:
        notes.append(f"{unverified} published cell(s) for these datasets are blank: they could not be verified "
                     f"against the 2023 journal table.")
    notes.append("MedMNIST+ averages (Doerrich et al. 2025) are not included: they could not be verified as text.")
    notes.append("Published MedMNIST v2 baselines train ResNets end to end (and AutoML tools) on the official "
                 "splits; compare protocols, not only numbers.")
    return Table("reference", f"Published reference ({metric_ref.upper()}, test split)",
                 ["row", *map(dataset_label, datasets)], rows, caption=f"Sources: {src}.", legend=legend,
                 data=pd.DataFrame(recs)), notes


# -- calibration, model columns, default baseline ----------------------------------------------

CALIBRATION = ("ece", "brier")


def calibration_table(a: Analysis, sec: SectionKey) -> tuple[Table | None, list[str]]:
    """Model x dataset: test ECE and Brier score (mean ± std over seeds), lowest per column in bold."""
    rows_all = a.rows[(a.rows.split == "test") & (a.rows.section == sec) & a.rows.metric.isin(CALIBRATION)]
    if rows_all.empty:
        return None, ["No calibration metrics (ECE, Brier) in this section: the runs predate them; rerun with a "
                      "current `bench run` to get them."]
    datasets = dataset_order(a.summary[a.summary.section == sec].dataset)
    recs = []
    for (m, d, metric), g in rows_all.groupby(["model", "dataset", "metric"]):
        mean, std, n = S.seed_summary(list(g.value))
        recs.append({"model": m, "dataset": d, "metric": metric, "mean": mean, "std": std, "seeds": n})
    df = pd.DataFrame(recs)
    cols = [(d, metric) for d in datasets for metric in CALIBRATION]
    best = {c: df[(df.dataset == c[0]) & (df.metric == c[1])]["mean"].min() for c in cols}
    rows = []
    for m in a.models(sec):
        row = [Cell(m)]
        for d, metric in cols:
            hit = df[(df.model == m) & (df.dataset == d) & (df.metric == metric)]
            if hit.empty or not math.isfinite(hit["mean"].iloc[0]):
                row.append(Cell.empty())
                continue
            r = hit.iloc[0]
            sd = f" ± {fmt(r['std'])}" if math.isfinite(r["std"]) else ""
            row.append(Cell(f"{fmt(r['mean'])}{sd}", bold=bool(np.isclose(r["mean"], best[(d, metric)]))))
        rows.append(row)
    t = Table(f"calibration_{sec.slug}", "Calibration: can the scores be read as probabilities?",
              ["model", *[f"{dataset_label(d)} {metric.upper() if metric == 'ece' else 'Brier'}"
                          for d, metric in cols]], rows,
              caption=f"Test expected calibration error ({M.ECE_BINS} equal-width confidence bins, top label) and "
                      f"Brier score (binary: (p − y)²; multi-class: summed over classes), mean ± std over seeds. "
                      f"Both lower is better; a high AUC with a high ECE ranks well but its probabilities "
                      f"should not be quoted as risks.",
              legend=["bold: lowest in the column", "— no run"], data=df)
    return t, []


def with_model_columns(df: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """``df`` with backbone, variant, weights and recipe right after its ``model`` column
    (empty for rows whose model is not a run label, e.g. published references)."""
    if "model" not in df.columns:
        return df
    out = df.drop(columns=[c for c in MODEL_COLUMNS if c in df.columns])
    at = list(out.columns).index("model") + 1
    for i, c in enumerate(MODEL_COLUMNS):
        out.insert(at + i, c, out["model"].map(info[c]).fillna("") if len(info) else "")
    return out


def unmarked(label: str) -> str:
    """A test model's label without its marks ("dummy tiny (random) (test model)" -> "dummy tiny")."""
    if not label.endswith(" (test model)"):
        return label
    return label.removesuffix(" (test model)").removesuffix(" (random)")


def default_baseline(rs: RunSet) -> str | None:
    """The first ImageNet reference (DEFAULT_BASELINES, default weights) with runs, as its model
    label: the default variant where it ran, else the variant with the most runs."""
    info = model_table(rs)
    counts = rs.runs.model.value_counts()
    for backbone in DEFAULT_BASELINES:
        cands = info[(info.backbone == backbone) & (info.weights == "default")]
        if cands.empty:
            continue
        if backbone in cands.index:  # the label is the bare name: default variant and weights
            return backbone
        return max(cands.index, key=lambda m: (counts.get(m, 0), m))
    return None
