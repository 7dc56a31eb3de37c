"""The depth and label-budget studies in the report: where transfer breaks (``--layers`` runs:
metric against depth, best layer marked) and how many labels are needed (``--train-fraction`` /
``--shots`` runs: metric against labels per class, log axis, with intervals).

Both read what bench.report.load sets aside (``RunSet.layer_rows``, ``RunSet.subset_rows``); each
section appears only when such runs exist. Seeds are averaged within a dataset; the label figure's
intervals are the percentile bootstrap of that seed mean over the test images (bench.report.stats,
every seed's scores resampled with the same indices), because seeds of one dataset share its test
set and are not independent samples.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import stats as S
from .caveats import legend as caveat_legend
from .caveats import mark
from .doc import Cell, Figure, Section, Table
from ..labels import RANDOM_INIT_NOTE, protocol_label
from .tables import Analysis, dataset_label, dataset_order, fmt

# -- depth ---------------------------------------------------------------------------------------


def _blocks(a: Analysis, run_id: str) -> int | None:
    b = (a.rs.meta.get(run_id, {}).get("backbone") or {}).get("blocks")
    return b if isinstance(b, int) and b > 0 else None


def depth_data(a: Analysis) -> pd.DataFrame:
    """Per model x dataset x head x layer: seed means of the test metric and of the val one (which
    picks the best layer), the depth as a fraction of the backbone's blocks, and the seeds."""
    lr = a.rs.layer_rows
    if lr.empty:
        return pd.DataFrame()
    lr = lr[(lr.metric == a.metric) & lr.split.isin(("val", "test"))]
    keys = ["model", "dataset", "head", "layer"]
    wide = lr.pivot_table(index=keys + ["run_id", "seed"], columns="split", values="value", aggfunc="first")
    wide = wide.reset_index()
    if "test" not in wide or "val" not in wide:
        return pd.DataFrame()
    # layers of runs on different label budgets are separate curves, never averaged together
    budget = wide.run_id.map(lambda r: _budget_label(a.rs.meta.get(r, {})))
    wide["model"] = wide.model + budget
    g = wide.groupby(keys)
    out = g.agg(test=("test", "mean"), val=("val", "mean"), seeds=("seed", "nunique"),
                run_id=("run_id", "first")).reset_index()
    out["blocks"] = out.run_id.map(lambda r: _blocks(a, r))
    out["depth"] = out.layer / out.blocks
    best = out.dropna(subset=["val"]).groupby(["model", "dataset", "head"]).val
    pick = best.idxmax() if a.higher_is_better else best.idxmin()
    out["best"] = out.index.isin(pick.values)
    return out.drop(columns="run_id")


def depth_table(a: Analysis, df: pd.DataFrame) -> Table:
    """Per model x dataset x head: the best layer (chosen on val), its test metric, and the last
    layer's (the ordinary probe) for comparison."""
    rows, recs = [], []
    for (model, dataset, head), g in df.groupby(["model", "dataset", "head"], sort=False):
        b, last = g[g.best], g[g.layer == g.layer.max()]
        if b.empty:
            continue
        b, last = b.iloc[0], last.iloc[0]
        blocks = "" if pd.isna(b.blocks) else f" / {int(b.blocks)}"
        recs.append({"model": model, "dataset": dataset, "head": head, "best_layer": int(b.layer),
                     "blocks": b.blocks, "best_test": b.test, "last_layer": int(last.layer), "last_test": last.test,
                     "seeds": int(b.seeds)})
        rows.append([Cell(model), Cell(dataset_label(dataset)), Cell(head), Cell(f"{int(b.layer)}{blocks}"),
                     Cell(fmt(b.test)), Cell(fmt(last.test)), Cell(f"{b.test - last.test:+.3f}"),
                     Cell(str(int(b.seeds)))])
    return Table("layers_best", "Best layer per backbone and dataset",
                 ["model", "dataset", "head", "best layer (val)", f"test {a.metric}", f"last layer {a.metric}",
                  "difference", "seeds"], rows,
                 caption=f"The layer whose seed-mean val {a.metric} is best, its test {a.metric} (seed mean) and "
                         f"the last layer's (what an ordinary probe reads).", data=pd.DataFrame(recs),
                 text_cols=(1, 2))


def depth_figure(a: Analysis, df: pd.DataFrame) -> Figure:
    import matplotlib.pyplot as plt

    from .figures import _figure, _theme, model_colors

    _theme()
    colors = model_colors(a, extra=df.model)
    datasets = dataset_order(df.dataset)
    heads = sorted(set(df["head"]))
    ncol = min(3, len(datasets))
    nrow = math.ceil(len(datasets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.3 * nrow), squeeze=False)
    styles = dict(zip(heads, ["-", "--", ":", "-."]))
    for ax, d in zip(axes.flat, datasets):
        for (model, head), g in df[df.dataset == d].groupby(["model", "head"]):
            g = g.sort_values("layer")
            x = g.depth.where(g.depth.notna(), g.layer)
            label = model + (f" · {head}" if len(heads) > 1 else "")
            ax.plot(x, g.test, styles[head], marker="o", ms=3, color=colors.get(model), label=label)
            b = g[g.best]
            ax.plot(x[b.index], b.test, "*", ms=13, color=colors.get(model), markeredgecolor="black", zorder=5)
        ax.set_title(dataset_label(d))
        known = df.depth.notna().all()  # else (no block count recorded) the block number itself
        ax.set_xlabel("depth (block / blocks)" if known else "block")
        ax.set_ylabel(f"test {a.metric.upper()}")
        if known:
            ax.set_xlim(0, 1.05)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    _legend_below(fig, list(axes.flat)[:len(datasets)])
    return _figure("metric_vs_depth", "Metric against depth", fig,
                   f"Test {a.metric.upper()} of a probe on the pooled readout after each block (seed means), "
                   f"depth as a fraction of the backbone's blocks; the star marks the layer with the best "
                   f"seed-mean val {a.metric.upper()} (the one a layer-wise probe selects).")


def _legend_below(fig, axes: list) -> None:
    """One legend under the panels for every model any of them draws (each label once)."""
    seen: dict = {}
    for ax in axes:
        seen.update(dict(zip(*ax.get_legend_handles_labels()[::-1])))
    fig.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(4, max(1, len(seen))), frameon=False)
    fig.tight_layout()


def depth_section(a: Analysis, figures: bool) -> Section | None:
    df = depth_data(a)
    if df.empty:
        return None
    s = Section("Where transfer breaks: layer-wise probes",
                intro="A probe on the frozen features after each block (--layers): early layers that match or "
                      "beat the last one are where a natural-domain backbone's features transfer.")
    s.tables.append(depth_table(a, df))
    if figures:
        s.figures.append(depth_figure(a, df))
    if df.model.str.contains(r"\(random\)", regex=True).any():
        s.notes.append(RANDOM_INIT_NOTE)
    return s


# -- labels --------------------------------------------------------------------------------------

def _budget(meta: dict) -> tuple[str, float] | None:
    cfg = meta.get("config") or {}
    if cfg.get("head") == "zeroshot":  # the 0-label point (bench.report.zeroshot)
        return "zeroshot", 0.0
    if cfg.get("shots"):
        return "shots", float(cfg["shots"])
    f = cfg.get("train_fraction") or 1.0
    return ("fraction", float(f)) if f < 1.0 else ("all", 1.0)


def _budget_label(meta: dict) -> str:
    kind, amount = _budget(meta)
    return {"zeroshot": " (zero-shot)", "all": "", "shots": f" ({amount:g} shots)", "fraction": f" ({amount * 100:g}% of train)"}[kind]


def _per_class(meta: dict) -> float | None:
    """Train labels per class the run learned from: the mean over classes of its images per class
    (multi-label: positives per label), from the subset or the whole train split; runs written
    before those counts were recorded: images / classes."""
    if (meta.get("config") or {}).get("head") == "zeroshot":
        return 0.0  # no train label
    counts = (meta.get("train_subset") or {}).get("per_class") or (meta.get("dataset") or {}).get("train_per_class")
    if counts:
        return float(np.mean(counts))
    n_classes = len(meta.get("labels") or {})
    n = (meta.get("train_subset") or {}).get("n") or ((meta.get("dataset") or {}).get("n") or {}).get("train")
    return n / n_classes if n and n_classes else None


def labels_data(a: Analysis) -> pd.DataFrame:
    """Per model x dataset x protocol x label budget: the seed mean of the test metric, labels per
    class, and a 95% bootstrap interval of that seed mean over the test images."""
    sub = a.rs.subset_rows
    if sub.empty:
        return pd.DataFrame()
    keys = ["model", "dataset", "head", "unfreeze", "size"]
    full = a.rs.rows.merge(sub[keys].drop_duplicates(), on=keys)  # the all-labels runs of the same models
    full = full[~full.run_id.isin(sub.run_id)]
    rows = pd.concat([sub, full], ignore_index=True)
    rows = rows[(rows.split == "test") & (rows.metric == a.metric)]
    from .zeroshot import zero_label_rows  # zero-shot runs of the same backbone: each curve's 0-label point

    rows = pd.concat([rows, zero_label_rows(a, rows, keys)], ignore_index=True)
    recs = []
    for r in rows.itertuples():
        meta = a.rs.meta.get(r.run_id, {})
        recs.append({**{k: getattr(r, k) for k in keys}, "run_id": r.run_id, "value": r.value,
                     "budget": _budget(meta), "per_class": _per_class(meta)})
    df = pd.DataFrame(recs).dropna(subset=["per_class"])
    out = []
    for group, g in df.groupby([*[df[c] for c in keys], df.budget.map(str)]):
        k, ids = group[:len(keys)], list(g.run_id)
        lo, hi = _interval(a, ids, g.dataset.iloc[0])
        out.append({**dict(zip(keys, k)), "budget": g.budget.iloc[0][0], "amount": g.budget.iloc[0][1],
                    "per_class": float(g.per_class.mean()), "mean": float(g.value.mean()), "ci_low": lo,
                    "ci_high": hi, "seeds": len(ids), "caveats": "; ".join(a.caveats(ids))})
    return pd.DataFrame(out)


def _interval(a: Analysis, run_ids: list[str], dataset: str) -> tuple[float, float]:
    y_true, scores, task = None, [], None
    for rid in run_ids:
        got = a.rs.scores(rid)
        task = task or a.rs.task(rid)
        if got is None or (y_true is not None and not np.array_equal(y_true, got[0])):
            continue  # no saved scores, or not the same test set: left out of the interval
        y_true = got[0] if y_true is None else y_true
        scores.append(got[1])
    if not scores or not task:
        return float("nan"), float("nan")
    return S.percentile_ci(S.bootstrap_samples(a.metric, task, y_true, scores, a.n_boot, a.seed, dataset))


def labels_table(a: Analysis, df: pd.DataFrame) -> Table:
    rows, marked = [], set()
    for r in df.sort_values(["dataset", "model", "head", "unfreeze", "per_class"]).itertuples():
        budget = {"shots": f"{int(r.amount)} per class", "fraction": f"{r.amount:g} of train",
                  "all": "all labels", "zeroshot": "0 (zero-shot)"}[r.budget]
        ci = f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if math.isfinite(r.ci_low) else "—"
        tags = [t for t in r.caveats.split("; ") if t]
        marked |= set(tags)
        rows.append([Cell(r.model), Cell(dataset_label(r.dataset)), Cell(protocol_label(r.head, r.unfreeze, getattr(r, "adapt", ""))),
                     Cell(budget), Cell(f"{r.per_class:.1f}"), Cell(mark(fmt(r.mean), tags)), Cell(ci),
                     Cell(str(r.seeds))])
    return Table("label_efficiency", "Metric against labels per class",
                 ["model", "dataset", "protocol", "labels", "per class", f"test {a.metric}", "95% CI", "seeds"], rows,
                 caption=f"Test {a.metric} (seed mean) of runs trained on nested, stratified train subsets; the "
                         f"interval is a bootstrap over the test images of the seed mean (seeds share the test set).",
                 legend=caveat_legend(marked), data=df, text_cols=(1, 2, 3))


def labels_figure(a: Analysis, df: pd.DataFrame) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from .figures import _figure, _theme, model_colors

    _theme()
    colors = model_colors(a, extra=df.model)
    adapt = df["adapt"] if "adapt" in df.columns else [""] * len(df)
    df = df.assign(protocol=[protocol_label(h, u, a) for h, u, a in zip(df["head"], df.unfreeze, adapt)])
    datasets, protocols = dataset_order(df.dataset), sorted(set(df.protocol))
    fig, axes = plt.subplots(len(protocols), len(datasets), figsize=(4.4 * len(datasets), 3.3 * len(protocols)),
                             squeeze=False)
    markers = {"shots": "s", "fraction": "o", "all": "D", "zeroshot": "*"}
    for i, p in enumerate(protocols):
        for j, d in enumerate(datasets):
            ax = axes[i, j]
            for model, g in df[(df.protocol == p) & (df.dataset == d)].groupby("model"):
                g = g.sort_values("per_class")
                c = colors.get(model)
                ax.plot(g.per_class, g["mean"], "-", color=c, label=model, alpha=0.8)
                err = np.array([g["mean"] - g.ci_low, g.ci_high - g["mean"]])
                ok = np.isfinite(err).all(axis=0)
                ax.errorbar(g.per_class[ok], g["mean"][ok], yerr=err[:, ok], fmt="none", ecolor=c, capsize=2)
                for kind, gk in g.groupby("budget"):
                    plain, marked = gk[gk.caveats == ""], gk[gk.caveats != ""]
                    ax.plot(plain.per_class, plain["mean"], markers.get(kind, "o"), color=c, ms=4)
                    # a point with a caveat (bench.report.caveats): hollow and ringed, never like the others
                    ax.plot(marked.per_class, marked["mean"], markers.get(kind, "o"), ms=8, mfc="white",
                            mec=c, mew=1.5)
                    ax.plot(marked.per_class, marked["mean"], "x", color=c, ms=5)
            if (df.per_class == 0).any():  # zero-shot runs: the curves start at 0 labels (linear up to 1)
                ax.set_xscale("symlog", linthresh=1)
            else:
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100: not 10^k
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{dataset_label(d)} · {p}")
            ax.set_xlabel("train labels per class (log)")
            ax.set_ylabel(f"test {a.metric.upper()}")
    _legend_below(fig, list(axes.flat))
    return _figure("metric_vs_labels", "Metric against labels per class", fig,
                   f"Seed means of test {a.metric.upper()} against train labels per class (squares: N shots per "
                   f"class, circles: a fraction of the train split, diamond: all labels, star: zero-shot at 0 labels), with 95% bootstrap "
                   f"intervals over the test images of the seed mean. A hollow marker with a cross has a caveat "
                   f"(its mark in the table: e.g. a kNN k cut to the smallest class, a val split too small to "
                   f"select on, constant scores).")


def labels_section(a: Analysis, figures: bool) -> Section | None:
    df = labels_data(a)
    if df.empty:
        return None
    s = Section("How many labels: label efficiency",
                intro="Runs trained on nested, stratified subsets of each train split (--train-fraction, --shots); "
                      "val and test are the full splits.")
    s.tables.append(labels_table(a, df))
    if figures:
        s.figures.append(labels_figure(a, df))
    return s
