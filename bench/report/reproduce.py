"""Reproductions: each published number beside the runs here that reproduce it.

A reference row (bench/report/reference.py) names the runs that reproduce it in ``ours``
(``backbone=simplecnn recipe=primer unfreeze=all size=28``: keys of the run config), matched on the
row's dataset. Ours is the seed mean of the test metric with the report's 95% bootstrap interval
over test images (the seeds share the test set: each resample scores every seed and averages them;
bench.report.stats), and the reading says whether the published number lies inside that interval.
A published number of a single run (``runs`` 1) is compared as one run: the reading also says
where it falls among our single runs, since the interval of a mean leaves seed variation out.
A published row whose dataset none of our runs covered says "not run here".
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import stats as S
from .doc import Cell, Table
from .tables import Analysis, dataset_label, dataset_order, fmt

MAX_NOT_RUN_ROWS = 3  # a publication's datasets not run here: rows up to this many, else one note


def parse_ours(spec: str) -> dict[str, str]:
    """``"backbone=simplecnn recipe=primer"`` -> {"backbone": "simplecnn", "recipe": "primer"}."""
    out = {}
    for part in str(spec or "").split():
        key, sep, value = part.partition("=")
        if sep and key:
            out[key] = value
    return out


def _matches(config: dict, want: dict[str, str]) -> bool:
    return all(str(config.get(k)) == v for k, v in want.items())


def matching_runs(a: Analysis, want: dict[str, str], dataset: str, metric: str) -> pd.DataFrame:
    """Test rows of ``metric`` of the runs whose config has every ``want`` value, on ``dataset``."""
    rows = a.rs.rows
    rows = rows[(rows.split == "test") & (rows.metric == metric) & (rows.dataset == dataset)]
    keep = [_matches((a.rs.meta.get(r, {}) or {}).get("config") or {}, want) for r in rows.run_id]
    return rows[np.asarray(keep, bool)] if len(rows) else rows


def ours(a: Analysis, runs: pd.DataFrame, metric: str, dataset: str) -> dict:
    """Seed mean, single runs and the bootstrap interval of the seed mean over test images."""
    runs = runs.drop_duplicates("run_id")
    values = [float(v) for v in runs.value]
    mean = float(np.mean(values)) if values else float("nan")
    y_true, scores, task = None, [], None
    for rid in runs.run_id:
        got = a.rs.scores(rid)
        task = task or a.rs.task(rid)
        if got is None:
            continue
        yt, ys = got
        if y_true is None:
            y_true = yt
        elif not np.array_equal(y_true, yt):  # seeds must share the test set
            continue
        scores.append(ys)
    lo = hi = float("nan")
    if scores and task:
        lo, hi = S.percentile_ci(S.bootstrap_samples(metric, task, y_true, scores, a.n_boot, a.seed, dataset))
    return {"mean": mean, "values": values, "seeds": sorted(int(s) for s in runs.seed),
            "ci_low": lo, "ci_high": hi, "seeds_with_scores": len(scores), "run_ids": list(runs.run_id)}


def reading(published: float, o: dict, single: bool) -> str:
    """Plain words: the published number inside or outside our interval (and our single runs)."""
    if not math.isfinite(published):
        return "no published number"
    if not o["values"]:
        return "not run here"
    lo, hi = o["ci_low"], o["ci_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        text = "no interval (no saved test scores)"
    elif lo <= published <= hi:
        text = "published inside our interval"
    else:
        text = f"published {'above' if published > hi else 'below'} our interval"
    if single:
        vmin, vmax = min(o["values"]), max(o["values"])
        where = "within" if vmin <= published <= vmax else ("above" if published > vmax else "below")
        n = len(o["values"])
        text += (f"; a single published run, compared as one: {where} our {n} single run{'s' if n != 1 else ''} "
                 f"({fmt(vmin)}–{fmt(vmax)})")
    return text


def reproduction_table(a: Analysis, ref: pd.DataFrame) -> tuple[Table | None, list[str]]:
    """Publication x dataset x metric: the published number, ours (seed mean, interval, single
    runs) and the reading; None when no run here reproduces any reference row."""
    ref = ref[ref.ours.astype(str).str.strip() != ""]
    rows, recs, notes, absent = [], [], [], []
    for method, mr in ref.groupby("method", sort=False):
        want = parse_ours(mr.ours.iloc[0])
        metrics = list(dict.fromkeys(mr.metric))
        ran = {d for d in set(a.rs.rows.dataset) for m in metrics if not matching_runs(a, want, d, m).empty}
        if not ran:
            absent.append(f"{method} ({mr.ours.iloc[0]})")
            continue
        published_ds = [d for d in dataset_order(mr.dataset) if d not in ran]
        shown_not_run = published_ds if len(published_ds) <= MAX_NOT_RUN_ROWS else []
        if published_ds and not shown_not_run:
            notes.append(f"{method} is also published on {len(published_ds)} dataset(s) not run here: "
                         f"{', '.join(map(dataset_label, published_ds))}.")
        for d in dataset_order(ran) + shown_not_run:
            for m in metrics:
                hit = mr[(mr.dataset == d) & (mr.metric == m)]
                pub = float(hit.value.iloc[0]) if not hit.empty and pd.notna(hit.value.iloc[0]) else float("nan")
                runs = str(hit.runs.iloc[0]) if not hit.empty else ""
                single = runs == "1"
                o = ours(a, matching_runs(a, want, d, m), m, d)
                text = reading(pub, o, single)
                n = len(o["values"])
                pub_text = fmt(pub, 4 if math.isfinite(pub) and round(pub, 3) != pub else 3)
                if math.isfinite(pub) and single:
                    pub_text += " (1 run)"
                rows.append([Cell(method), Cell(dataset_label(d)), Cell(m.upper()),
                             Cell(pub_text) if math.isfinite(pub) else Cell.empty(),
                             Cell(f"{fmt(o['mean'])} (n={n})") if n else Cell("not run here"),
                             Cell(f"[{fmt(o['ci_low'])}, {fmt(o['ci_high'])}]") if n else Cell.empty(),
                             Cell(", ".join(fmt(v) for v in o["values"])) if n else Cell.empty(),
                             Cell(text)])
                recs.append({"method": method, "dataset": d, "metric": m, "published": pub,
                             "published_runs": runs, "source": hit.source.iloc[0] if not hit.empty else "",
                             "ours": mr.ours.iloc[0], "mean": o["mean"], "ci_low": o["ci_low"],
                             "ci_high": o["ci_high"], "seeds": " ".join(map(str, o["seeds"])),
                             "single_runs": " ".join(f"{v:.6f}" for v in o["values"]),
                             "seeds_with_scores": o["seeds_with_scores"], "n_boot": a.n_boot,
                             "reading": text, "run_ids": " ".join(o["run_ids"])})
    if not rows:
        return None, []
    if absent:
        notes.append(f"No runs here reproduce: {'; '.join(absent)}.")
    sources = "; ".join(dict.fromkeys(s for s in (r["source"] for r in recs) if s))
    t = Table("reproductions", "Published numbers beside ours",
              ["publication", "dataset", "metric", "published", "ours: seed mean", "95% interval",
               "our single runs", "reading"], rows,
              caption=(f"Ours: the runs named in the reference's `ours` column (bench/reference/"
                       f"medmnist_reference.csv), seed mean of the test metric with the 2.5 and 97.5 percentiles "
                       f"over {a.n_boot} bootstrap resamples of the test images (the seeds share the test set: "
                       f"each resample scores every seed, then averages them). The interval reflects test-set "
                       f"sampling only, not seed variation or a different implementation. Sources: {sources}."),
              legend=["— no published number for this cell, or no run here",
                      "(1 run): the publication reports a single run; it is compared as one, with our single runs"],
              data=pd.DataFrame(recs), text_cols=(0, 7))
    return t, notes
