"""Zero-shot runs in a report: the 0-label point of the label-efficiency curves, and how much the
result moves between prompt templates (each template alone, as the run's JSON records it)."""
from __future__ import annotations

import math

import pandas as pd

from .doc import Cell, Section, Table
from .tables import Analysis, dataset_label, fmt


def is_zeroshot(meta: dict) -> bool:
    return (meta.get("config") or {}).get("head") == "zeroshot"


def _identity(meta: dict) -> tuple:
    cfg = meta.get("config") or {}
    return (cfg.get("backbone"), cfg.get("variant"), cfg.get("weights"), cfg.get("dataset"), cfg.get("size"))


def zero_label_rows(a: Analysis, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Test rows of zero-shot runs, one copy per label-budget curve of the same backbone (family,
    variant, weights) and dataset: the curve's model and protocol, so it starts at 0 labels."""
    zs = a.rs.rows[(a.rs.rows["head"] == "zeroshot") & (a.rs.rows.split == "test") & (a.rs.rows.metric == a.metric)]
    if zs.empty or rows.empty:
        return pd.DataFrame()
    curves = rows.drop_duplicates(keys)
    out = []
    for z in zs.itertuples():
        ident = _identity(a.rs.meta.get(z.run_id, {}))
        for c in curves.itertuples():
            if _identity(a.rs.meta.get(c.run_id, {})) == ident and c.head != "zeroshot":
                out.append({**{k: getattr(c, k) for k in keys}, "run_id": z.run_id, "value": z.value,
                            "split": "test", "metric": a.metric})
    return pd.DataFrame(out)


def template_data(a: Analysis) -> pd.DataFrame:
    """Per zero-shot run: the test metric of the prompt ensemble and the min / max over templates."""
    recs = []
    rows = a.rs.rows[(a.rs.rows["head"] == "zeroshot") & (a.rs.rows.split == "test") & (a.rs.rows.metric == a.metric)]
    for r in rows.itertuples():
        zs = a.rs.meta.get(r.run_id, {}).get("zeroshot") or {}
        spread = (zs.get("template_spread") or {}).get(f"test_{a.metric}") or {}
        recs.append({"model": r.model, "dataset": r.dataset, "run_id": r.run_id, "value": r.value,
                     "templates": len(zs.get("templates") or []), "min": spread.get("min", math.nan),
                     "max": spread.get("max", math.nan), "prompts": zs.get("prompts_hash", ""),
                     "logit_scale": zs.get("logit_scale", math.nan)})
    return pd.DataFrame(recs)


def zeroshot_section(a: Analysis) -> Section | None:
    df = template_data(a)
    if df.empty:
        return None
    rows = []
    for r in df.sort_values(["dataset", "model"]).itertuples():
        spread = f"[{fmt(r.min)}, {fmt(r.max)}]" if math.isfinite(r.min) else "—"
        rows.append([Cell(r.model), Cell(dataset_label(r.dataset)), Cell(fmt(r.value)), Cell(spread),
                     Cell(str(r.templates)), Cell(f"{r.logit_scale:g}"), Cell(r.prompts)])
    table = Table("zeroshot_templates", "Zero-shot: the prompt ensemble and each template alone",
                  ["model", "dataset", f"test {a.metric}", "templates alone (min, max)", "templates", "logit scale",
                   "prompts"], rows,
                  caption=f"Test {a.metric} of the zero-shot classifier (mean of the templates' normalised text "
                          f"embeddings per class, as CLIP), and the range over the same classifier built from one "
                          f"template at a time: how much the result moves between templates.",
                  data=df, text_cols=(1,))
    s = Section("Zero labels: zero-shot from prompts",
                intro="--head zeroshot: no train image, no trained parameter; the class names and templates of "
                      "bench ls prompts DATASET against the cached image embeddings.")
    s.tables.append(table)
    return s
