"""Figures with seaborn/matplotlib on the Agg backend (no display needed). Each builder returns a
Figure (200 dpi PNG plus SVG), or None plus a note saying why there was nothing to plot. A model
has the same colour in every figure of a report (``model_colors``)."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .doc import Figure  # noqa: E402
from .ranking import Ranking  # noqa: E402
from ..labels import protocol_label  # noqa: E402
from .tables import (Analysis, SectionKey, dataset_label, dataset_order, mean_gains,  # noqa: E402
                     section_title, setting_label)
from .load import unfreeze_order  # noqa: E402

DPI = 200
matplotlib.rcParams["svg.hashsalt"] = "medfm-bench"  # stable ids: the same figure gives the same SVG
matplotlib.rcParams["svg.fonttype"] = "none"          # text stays text (searchable, editable)


def _render(fig: plt.Figure) -> tuple[bytes, bytes]:
    """PNG and SVG of a figure, then closed."""
    out = []
    for fmt, kw in (("png", {"dpi": DPI}), ("svg", {"metadata": {"Date": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", facecolor="white", **kw)
        out.append(buf.getvalue())
    plt.close(fig)
    return out[0], out[1]


def _figure(name: str, title: str, fig: plt.Figure, caption: str) -> Figure:
    png, svg = _render(fig)
    return Figure(name, title, png, caption, svg)


def model_colors(a: Analysis, extra=()) -> dict[str, tuple]:
    """One colour per model label of the whole report (sorted labels, colour-blind palette; more
    than ten models continue with husl colours). ``extra``: names only some figures draw (a curve
    per label budget, runs of the transfer sections), coloured after the report's own."""
    models = sorted(set(a.rs.rows.model))
    models += sorted(set(extra) - set(models))
    base = sns.color_palette("colorblind", 10)
    extra = sns.color_palette("husl", max(len(models) - 10, 0)) if len(models) > 10 else []
    return dict(zip(models, list(base) + list(extra)))


def _theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def gain_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Mean relative gain over the baseline per model and section (paper Figure 1 style), with
    95% paired-bootstrap intervals of that mean."""
    panels = []
    for sec in a.sections():
        mg = mean_gains(a, sec)
        if len(mg):
            panels.append((sec, mg))
    if not panels:
        return None, (f"Gain figure skipped: no model shares a dataset with the baseline {a.baseline_label} in any "
                      f"section.")
    colors = model_colors(a)
    _theme()
    n_models = max(len(mg) for _, mg in panels)
    ncol = min(2, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, (0.42 * n_models + 1.3) * nrow), squeeze=False)
    no_ci = False
    for ax, (sec, mg) in zip(axes.flat, panels):
        mg = mg.iloc[::-1]  # first model on top
        y = np.arange(len(mg))
        err = np.array([mg.mean_rel_gain_pct - mg.ci_low, mg.ci_high - mg.mean_rel_gain_pct])
        ax.barh(y, mg.mean_rel_gain_pct, color=[colors[m] for m in mg.model], height=0.6)
        ok = np.isfinite(err).all(axis=0)
        no_ci |= not ok.all()
        ax.errorbar(mg.mean_rel_gain_pct[ok], y[ok], xerr=err[:, ok], fmt="none", ecolor="0.15", capsize=3, lw=1)
        for yi, (v, hi, lo) in enumerate(zip(mg.mean_rel_gain_pct, mg.ci_high, mg.ci_low)):
            end_ = (hi if v >= 0 else lo) if math.isfinite(hi) else v
            # past the whisker's cap (capsize 3 points), never on it
            ax.annotate(f"{v:+.1f}%", (end_, yi), xytext=(7 if v >= 0 else -7, 0), textcoords="offset points",
                        ha="left" if v >= 0 else "right", va="center", fontsize=8)
        ax.set_yticks(y, [f"{m} ({d})" for m, d in zip(mg.model, mg.datasets)])
        ax.axvline(0, color="0.2", lw=1)
        lo_, hi_ = ax.get_xlim()
        span = max(hi_ - lo_, 1e-9)
        ax.set_xlim(min(lo_, 0) - 0.18 * span, max(hi_, 0) + 0.18 * span)  # room for the value labels
        ax.set_xlabel(f"relative gain in test {a.metric.upper()} (%)")
        ax.set_title(section_title(sec), fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    direction = "" if a.higher_is_better else " (a reduction counts as a gain: lower is better)"
    caption = (f"Mean over datasets (count in brackets) of the relative gain over {a.baseline_label} on seed means"
               f"{direction}. Whiskers: 95% paired-bootstrap interval of that mean ({a.n_boot} test-set "
               f"resamples per dataset); they show test-set sampling only, not seed or dataset variation.")
    if no_ci:
        caption += " Bars without whiskers lack saved test scores on some dataset."
    return _figure("gain_over_baseline", f"Gain over {a.baseline_label}", fig, caption), None


def cd_figure(a: Analysis, rk: Ranking, name: str | None = None, title: str | None = None,
              what: str | None = None) -> Figure:
    """Critical-difference diagram (Demsar 2006): mean ranks on an axis, best at the left; models
    joined by a bar do not differ by the Nemenyi test at alpha 0.05."""
    from . import stats as S

    colors = model_colors(a)
    k = len(rk.models)
    half = math.ceil(k / 2)
    _theme()
    sns.set_style("white")
    fig, ax = plt.subplots(figsize=(7.5, 1.1 + 0.3 * half))
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.6, max(hi, lo + rk.cd if math.isfinite(rk.cd) else hi) + 0.6)  # the CD bar fits
    ax.set_ylim(-(0.55 * half + 0.35), 1.6)
    ax.hlines(0, lo, hi, color="0.2", lw=1)
    for r in range(lo, hi + 1):
        ax.vlines(r, 0, 0.12, color="0.2", lw=1)
        ax.text(r, 0.2, str(r), ha="center", va="bottom", fontsize=8)
    for i, (m, r) in enumerate(zip(rk.models, rk.mean_ranks)):
        left = i < half
        row = -(i + 1) if left else -(k - i)
        x_text = lo - 0.5 if left else hi + 0.5
        ax.plot([r, r, x_text], [0, row * 0.55, row * 0.55], color=colors.get(m, "0.3"), lw=1.2)
        ax.text(x_text, row * 0.55, f"{m}  {r:.2f}" if left else f"{r:.2f}  {m}", ha="right" if left else "left",
                va="center", fontsize=8, color="0.1")
    for j, (i0, i1) in enumerate(S.cd_groups(rk.mean_ranks, rk.cd)):
        yy = -0.18 - 0.14 * j
        ax.hlines(yy, rk.mean_ranks[i0] - 0.03, rk.mean_ranks[i1] + 0.03, color="0.1", lw=3)
    if math.isfinite(rk.cd):
        ax.hlines(1.15, lo, lo + rk.cd, color="0.1", lw=1.5)
        ax.vlines([lo, lo + rk.cd], 1.05, 1.25, color="0.1", lw=1.5)
        ax.text(lo + rk.cd / 2, 1.3, f"CD = {rk.cd:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axis("off")
    f = rk.friedman
    p, kind = f.headline()
    caption = (f"Mean rank of {what or f'test {a.metric.upper()}'} over {len(rk.datasets)} datasets (1 = best). "
               f"Models joined by a thick bar are within the Nemenyi critical difference (α = 0.05) of each other. "
               f"Friedman p = {S.fmt_p(p)} ({kind}).")
    return _figure(name or f"cd_{rk.section.slug}", title or f"Critical difference — {section_title(rk.section)}",
                   fig, caption)


def heatmap_figure(a: Analysis, sec: SectionKey) -> tuple[Figure | None, str | None]:
    sub = a.summary[a.summary.section == sec]
    if sub["mean"].notna().sum() == 0:
        return None, f"Heatmap skipped for {section_title(sec)}: no finite values."
    datasets = dataset_order(sub.dataset)
    models = a.models(sec)
    mat = (sub.pivot_table(index="model", columns="dataset", values="mean", aggfunc="first")
           .reindex(index=models, columns=datasets))
    mat.columns = [dataset_label(d) for d in mat.columns]
    _theme()
    sns.set_style("white")  # no grid lines across the grey 'no run' cells
    one_cell = int(np.isfinite(mat.to_numpy(dtype=float)).sum()) <= 1
    # the size follows the cells: a 2x1 map is small, as its table is
    fig, ax = plt.subplots(figsize=(0.95 * len(datasets) + 2.4 + (0 if one_cell else 0.9), 0.42 * len(models) + 1.0))
    ax.set_facecolor("#d9d9d9")  # missing cells show as grey, labelled below; never as a colour value
    vmin, vmax = color_range(a)
    sns.heatmap(mat, annot=True, fmt=".3f", cmap="viridis" if a.higher_is_better else "viridis_r", ax=ax,
                linewidths=0.5, linecolor="white", vmin=vmin, vmax=vmax, cbar=not one_cell,
                cbar_kws={"label": f"test {a.metric.upper()}"}, annot_kws={"fontsize": 8})
    for i, m in enumerate(mat.index):
        for j, d in enumerate(mat.columns):
            if not np.isfinite(mat.iloc[i, j]):
                ax.text(j + 0.5, i + 0.5, "no run", ha="center", va="center", fontsize=7, color="0.35")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title(section_title(sec), fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    scale = (f"one colour scale for {a.metric.upper()} across the report, {vmin:.2f} to {vmax:.2f}"
             + (" (below 0.5 is below chance and shows as 0.5)" if a.metric == "auc" else "")
             + "; colour differences are not significance: the paired tests are in the tables")
    return _figure(f"heatmap_{sec.slug}", f"Heatmap — {section_title(sec)}", fig,
                   f"Seed mean of test {a.metric.upper()}; grey cells had no run; {scale}."), None


# metrics whose range is fixed: colours span it, so no heatmap stretches a small difference
FIXED_RANGE = {"auc": (0.5, 1.0), "acc": (0.0, 1.0), "balanced_acc": (0.0, 1.0), "macro_f1": (0.0, 1.0),
               "kappa": (-1.0, 1.0)}


def color_range(a: Analysis) -> tuple[float, float]:
    """One colour scale per metric for every heatmap of a report: the metric's fixed range where it
    has one (AUC from chance, 0.5, to 1), else the range of all the report's cells of that metric."""
    if a.metric in FIXED_RANGE:
        return FIXED_RANGE[a.metric]
    v = a.summary["mean"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1e-9


def _blocks(a: Analysis, run_ids: list[str]) -> int | None:
    for rid in run_ids:
        b = (a.rs.meta.get(rid, {}).get("backbone") or {}).get("blocks")
        if isinstance(b, int):
            return b
    return None


def unfreeze_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Metric against the number of unfrozen blocks, per head and setting, averaged over the
    datasets every unfreeze level of that model covers (so points stay comparable)."""
    s = a.summary.dropna(subset=["mean"])
    recs = []
    for (head, setting), grp in s.groupby([s.section.map(lambda k: k.head), s.section.map(setting_label)]):
        if grp.section.map(lambda k: k.unfreeze).nunique() < 2:
            continue
        for m, gm in grp.groupby("model"):
            levels = gm.section.map(lambda k: k.unfreeze)
            common = set.intersection(*[set(gm[levels == u].dataset) for u in set(levels)])
            if len(set(levels)) < 2 or not common:
                continue
            for u in sorted(set(levels), key=unfreeze_order):
                cell = gm[(levels == u) & gm.dataset.isin(common)]
                n = {"none": 0}.get(u)
                if n is None:
                    n = int(u[4:]) if u.startswith("last") else _blocks(a, [r for ids in cell.run_ids for r in ids])
                recs.append({"head": head, "setting": setting, "model": m, "unfreeze": u,
                             "blocks": n, "value": cell["mean"].mean(), "datasets": len(common)})
    if not recs:
        return None, ("Unfreeze figure skipped: no model was run with two or more unfreeze levels "
                      "(none, lastN, all) under the same head and setting.")
    df = pd.DataFrame(recs)
    # 'all' without a known block count is drawn one step past the largest lastN
    top = df.blocks.dropna().max() if df.blocks.notna().any() else 0
    df["x"] = df.blocks.fillna(top + 1)
    df["panel"] = df["head"] + " head · " + df["setting"]
    _theme()
    colors = model_colors(a)
    g = sns.relplot(df, kind="line", x="x", y="value", hue="model", col="panel", marker="o",
                    hue_order=[m for m in colors if m in set(df.model)], palette=colors,
                    col_wrap=min(3, df.panel.nunique()), height=3.2, aspect=1.3, facet_kws={"sharey": False})
    for ax, (_, pd_) in zip(g.axes.flat, df.groupby("panel", sort=False)):
        ticks = pd_.drop_duplicates("x").sort_values("x")
        ax.set_xticks(ticks.x)
        ax.set_xticklabels([f"{int(b)}" if u != "all" else f"all ({int(b)})" if math.isfinite(b) else "all"
                            for b, u in zip(ticks.blocks.fillna(np.nan), ticks.unfreeze)])
    g.set_axis_labels("unfrozen blocks", f"test {a.metric.upper()} (mean over datasets)")
    g.set_titles(col_template="{col_name}")
    return _figure("metric_vs_unfrozen_blocks", "Metric against unfrozen blocks", g.figure,
                   "Seed means averaged over the datasets that every plotted level of a model covers."), None


def resolution_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Metric against image size per protocol, averaged over datasets common to all sizes."""
    s = a.summary.dropna(subset=["mean"])
    recs = []
    for proto, grp in s.groupby(s.section.map(lambda k: protocol_label(k.head, k.unfreeze, k.adapt))):
        sizes = grp.section.map(lambda k: k.size)
        if sizes.nunique() < 2:
            continue
        for m, gm in grp.groupby("model"):
            msz = gm.section.map(lambda k: k.size)
            if msz.nunique() < 2:
                continue
            common = set.intersection(*[set(gm[msz == z].dataset) for z in set(msz)])
            for z in sorted(set(msz)):
                cell = gm[(msz == z) & gm.dataset.isin(common)]
                if common:
                    recs.append({"protocol": proto, "model": m, "size": z, "value": cell["mean"].mean(),
                                 "datasets": len(common)})
    if not recs:
        return None, "Resolution figure skipped: no model was run at two or more image sizes under one protocol."
    df = pd.DataFrame(recs)
    _theme()
    colors = model_colors(a)
    g = sns.relplot(df, kind="line", x="size", y="value", hue="model", col="protocol", marker="o",
                    hue_order=[m for m in colors if m in set(df.model)], palette=colors,
                    col_wrap=min(3, df.protocol.nunique()), height=3.2, aspect=1.3, facet_kws={"sharey": False})
    for ax in g.axes.flat:
        ax.set_xscale("log", base=2)
        ticks = sorted(df["size"].unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    g.set_axis_labels("image size (px)", f"test {a.metric.upper()} (mean over datasets)")
    g.set_titles(col_template="{col_name}")
    return _figure("metric_vs_resolution", "Metric against resolution", g.figure,
                   "Seed means averaged over the datasets every plotted size of a model covers."), None


# the ways of adapting a backbone, from least to most trained (the legend's order)
ADAPTATION_ORDER = ("zero-shot", "linear probe (zero-shot init)", "linear probe", "MLP head", "DeiT head", "BitFit", "LoRA", "last-N", "full fine-tuning")


def adaptation_kind(cfg: dict) -> str | None:
    """How a run adapted its backbone, from its config; None for what trains nothing (kNN) or is
    not a point of this trade-off (layer-wise probes, label subsets)."""
    head, unfreeze, adapt = cfg.get("head"), cfg.get("unfreeze"), cfg.get("adapt") or "none"
    if head == "knn" or cfg.get("layers") or (cfg.get("train_fraction") or 1.0) < 1.0 or cfg.get("shots"):
        return None
    if head == "zeroshot":
        return "zero-shot"  # 0 trainable parameters: the start of the axis
    if unfreeze == "none" and head == "linear" and cfg.get("init") == "zeroshot":
        return "linear probe (zero-shot init)"
    if unfreeze == "none":
        return {"linear": "linear probe", "mlp": "MLP head", "deit": "DeiT head"}.get(head, f"{head} head")
    kind = {"lora": "LoRA", "bitfit": "BitFit"}.get(adapt) or ("full fine-tuning" if unfreeze == "all" else "last-N")
    return kind if head == "linear" else f"{kind} + {head} head"


def trainable_total(meta: dict) -> int | None:
    """Trainable parameters of a run (head included) as its JSON records them."""
    n = (meta.get("trainable_parameters") or {}).get("total")
    if n is None:  # fine-tunes recorded before the counts had their own entry
        n = (meta.get("selected") or {}).get("trainable_params")
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def adaptation_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Per dataset: the test metric against trainable parameters (log axis) of every way a backbone
    was adapted (linear probe, DeiT head, last-N, LoRA, BitFit, full fine-tuning), and the
    efficient frontier: the best seed mean reached with at most that many trainable parameters."""
    from .load import run_identity

    per_run = a.rs.rows.drop_duplicates("run_id").set_index("run_id")
    backbone = run_identity(per_run, a.rs.meta)["label"]
    recs, uncounted = [], 0
    for r in a.summary.dropna(subset=["mean"]).itertuples():
        meta = a.rs.meta.get(r.run_ids[0], {})
        kind = adaptation_kind(meta.get("config") or {})
        if kind is None:
            continue
        n = 0 if kind == "zero-shot" else trainable_total(meta)
        if n is None:
            uncounted += 1
            continue
        recs.append({"dataset": r.dataset, "setting": setting_label(r.section), "method": kind,
                     "backbone": backbone[r.run_ids[0]], "params": n, "value": r.mean})
    df = pd.DataFrame(recs)
    if df.empty or df.groupby(["dataset", "setting"]).method.nunique().max() < 2:
        return None, ("Adaptation figure skipped: no dataset has runs of two or more ways of adapting a "
                      "backbone (linear probe, DeiT head, last-N, LoRA, BitFit, full fine-tuning) with recorded "
                      "trainable-parameter counts.")
    several = df.setting.nunique() > 1
    df["panel"] = [dataset_label(d) + (f" · {s}" if several else "") for d, s in zip(df.dataset, df.setting)]
    order = [p for d in dataset_order(df.dataset) for p in sorted(set(df[df.dataset == d].panel))]
    methods = [m for m in ADAPTATION_ORDER if m in set(df.method)] + sorted(set(df.method) - set(ADAPTATION_ORDER))
    _theme()
    g = sns.relplot(df, kind="scatter", x="params", y="value", hue="method", hue_order=methods,
                    palette=dict(zip(methods, sns.color_palette("colorblind", len(methods)))),
                    style="backbone", col="panel", col_order=order, col_wrap=min(3, len(order)), s=70,
                    height=3.2, aspect=1.3, facet_kws={"sharey": False, "sharex": False})
    for ax, panel in zip(g.axes.flat, order):
        pts = df[df.panel == panel].sort_values(["params", "value"], ascending=[True, not a.higher_is_better])
        best, xs, ys = None, [], []
        for x, y in zip(pts.params, pts.value):  # a point is on the frontier when it beats every cheaper one
            if best is None or a.better(y - best):
                best = y
                xs.append(x)
                ys.append(y)
        ax.step(xs, ys, where="post", color="0.45", linestyle="--", linewidth=1, zorder=0)
        ax.set_xscale("symlog", linthresh=1) if (pts.params == 0).any() else ax.set_xscale("log")
    g.set_axis_labels("trainable parameters (log; zero-shot at 0)", f"test {a.metric.upper()} (seed mean)")
    g.set_titles(col_template="{col_name}")
    note = (f"{uncounted} cell(s) left out: their runs do not record trainable-parameter counts (rerun them "
            f"to include them)." if uncounted else None)
    return _figure("metric_vs_trainable_parameters", "How much adaptation", g.figure,
                   "Seed means per dataset; dashed: the efficient frontier (the best metric reached with at most "
                   "that many trainable parameters). kNN probes train nothing and are left out."), note


def subgroup_figure(a: Analysis, au) -> tuple[Figure | None, str | None]:
    """The headline metric per subgroup and model with its 95% bootstrap interval: one panel per
    section x dataset x attribute (bench.report.subgroups; flagged small groups drawn hollow)."""
    df = au.frame[(au.frame.kind == "group") & (au.frame.metric == au.headline)]
    if df.empty or not np.isfinite(df.value.to_numpy(float)).any():
        return None, f"Subgroup figure skipped: no finite {au.headline.upper()} in any group."
    panels = list(df.groupby(["section", "dataset", "attribute"], sort=False))
    shown, more = panels[:12], len(panels) - 12
    colors = model_colors(a)
    _theme()
    ncol = min(2, len(shown))
    nrow = math.ceil(len(shown) / ncol)
    width = max(len(p.group.unique()) for _, p in shown)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(4.5, 0.9 * width + 2.5) * ncol, 3.4 * nrow), squeeze=False)
    for ax, ((sec, d, attr), p) in zip(axes.flat, shown):
        order = list(dict.fromkeys(p.group))
        models = list(dict.fromkeys(p.model))
        step = 0.7 / max(len(models), 1)
        for k, m in enumerate(models):
            pm = p[p.model == m].set_index("group").reindex(order)
            x = np.arange(len(order)) - 0.35 + step * (k + 0.5)
            v, lo, hi = (pm[c].to_numpy(float) for c in ("value", "ci_low", "ci_high"))
            err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
            ax.errorbar(x, v, yerr=err, fmt="none", ecolor=colors.get(m), elinewidth=1.2, capsize=2)
            small = pm["small"].fillna(False).to_numpy(bool)
            ax.scatter(x[~small], v[~small], color=colors.get(m), s=28, label=m, zorder=3)
            ax.scatter(x[small], v[small], facecolors="white", edgecolors=colors.get(m), s=28, zorder=3,
                       label=None)
        ax.set_xticks(np.arange(len(order)))
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xticklabels([f"{g}\n(n={int(n)})" for g, n in zip(order, p.drop_duplicates("group").set_index("group")
                                                                     .reindex(order)["n"])], fontsize=8)
        ax.set_ylabel(f"test {au.headline.upper()}")
        ax.set_title(f"{dataset_label(d)} · {attr}\n{sec}", fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=min(4, len(seen)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * math.ceil(len(seen) / 4)))
    fig.tight_layout()
    note = f"The subgroup figure shows the first 12 of {len(panels)} panels; every number is in the tables." \
        if more > 0 else None
    return _figure("subgroups", f"Test {au.headline.upper()} per subgroup", fig,
                   f"Seed mean of test {au.headline.upper()} per group of test images, with 95% bootstrap intervals "
                   f"(test images resampled); hollow markers: groups under 30 images or 10 positives."), note
