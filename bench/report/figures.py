"""Figures with seaborn on the Agg backend (no display needed). Each builder returns a Figure, or
None plus a note saying why there was nothing to plot."""
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
from .tables import (Analysis, SectionKey, dataset_label, dataset_order, gains, protocol_label,  # noqa: E402
                     section_title, setting_label)
from .load import unfreeze_order  # noqa: E402

DPI = 110


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _theme() -> None:
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def gain_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Mean relative gain over the baseline per model, grouped by protocol (paper Figure 1 style)."""
    recs = []
    for sec in a.sections():
        g = gains(a, sec).dropna(subset=["rel_gain_pct"])
        for m, gm in g.groupby("model"):
            recs.append({"model": m, "protocol": protocol_label(sec.head, sec.unfreeze),
                         "setting": setting_label(sec), "gain": gm.rel_gain_pct.mean(),
                         "datasets": gm.dataset.nunique()})
    if not recs:
        return None, (f"Gain figure skipped: no model shares a dataset with the baseline {a.baseline!r} "
                      f"in any section.")
    df = pd.DataFrame(recs)
    _theme()
    settings = list(dict.fromkeys(df.setting))
    n_models = df.model.nunique()
    g = sns.catplot(df, kind="bar", x="gain", y="model", hue="protocol", col="setting", col_order=settings,
                    col_wrap=min(2, len(settings)), orient="h", height=max(2.6, 0.45 * n_models + 1.4),
                    aspect=1.5, sharex=False, legend_out=False)
    for ax in g.axes.flat:
        ax.axvline(0, color="0.2", lw=1)
        ax.set_xlabel(f"relative gain in test {a.metric.upper()} (%)")
        ax.set_ylabel("")
        for c in ax.containers:
            ax.bar_label(c, fmt="%+.1f%%", fontsize=8, padding=3)
        # room on both sides of zero so the value labels of negative bars clear the model names
        lo, hi = ax.get_xlim()
        span = max(hi - lo, 1e-9)
        ax.set_xlim(min(lo, 0) - 0.22 * span, max(hi, 0) + 0.22 * span)
    g.set_titles(col_template="{col_name}")
    if g.legend is not None:
        sns.move_legend(g, "lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, title=None, frameon=False)
    return Figure("gain_over_baseline", f"Gain over {a.baseline}", _png(g.figure),
                  f"Mean over datasets of 100 × (model − {a.baseline}) / {a.baseline}, per protocol; "
                  f"computed on seed means. Bars do not show uncertainty: see the paired comparisons."), None


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
    fig, ax = plt.subplots(figsize=(1.1 * len(datasets) + 2.8, 0.5 * len(models) + 1.6))
    ax.set_facecolor("#d9d9d9")  # missing cells show as grey, labelled below; never as a colour value
    sns.heatmap(mat, annot=True, fmt=".3f", cmap="viridis", ax=ax, linewidths=0.5, linecolor="white",
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
    return Figure(f"heatmap_{sec.slug}", f"Heatmap — {section_title(sec)}", _png(fig),
                  f"Seed mean of test {a.metric.upper()}; grey cells had no run."), None


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
    g = sns.relplot(df, kind="line", x="x", y="value", hue="model", col="panel", marker="o",
                    col_wrap=min(3, df.panel.nunique()), height=3.2, aspect=1.3, facet_kws={"sharey": False})
    for ax, (_, pd_) in zip(g.axes.flat, df.groupby("panel", sort=False)):
        ticks = pd_.drop_duplicates("x").sort_values("x")
        ax.set_xticks(ticks.x)
        ax.set_xticklabels([f"{int(b)}" if u != "all" else f"all ({int(b)})" if math.isfinite(b) else "all"
                            for b, u in zip(ticks.blocks.fillna(np.nan), ticks.unfreeze)])
    g.set_axis_labels("unfrozen blocks", f"test {a.metric.upper()} (mean over datasets)")
    g.set_titles(col_template="{col_name}")
    return Figure("metric_vs_unfrozen_blocks", "Metric against unfrozen blocks", _png(g.figure),
                  "Seed means averaged over the datasets that every plotted level of a model covers."), None


def resolution_figure(a: Analysis) -> tuple[Figure | None, str | None]:
    """Metric against image size per protocol, averaged over datasets common to all sizes."""
    s = a.summary.dropna(subset=["mean"])
    recs = []
    for proto, grp in s.groupby(s.section.map(lambda k: protocol_label(k.head, k.unfreeze))):
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
    g = sns.relplot(df, kind="line", x="size", y="value", hue="model", col="protocol", marker="o",
                    col_wrap=min(3, df.protocol.nunique()), height=3.2, aspect=1.3, facet_kws={"sharey": False})
    for ax in g.axes.flat:
        ax.set_xscale("log", base=2)
        ticks = sorted(df["size"].unique())
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    g.set_axis_labels("image size (px)", f"test {a.metric.upper()} (mean over datasets)")
    g.set_titles(col_template="{col_name}")
    return Figure("metric_vs_resolution", "Metric against resolution", _png(g.figure),
                  "Seed means averaged over the datasets every plotted size of a model covers."), None
