"""`bench results export` and `bench results ls`: every run as one tidy table, and what a results
folder holds per model x dataset (done, failed).

The export is CLIP_benchmark's ``build`` step: one row per (run, split, metric) with every config
column of the run, so a notebook can pivot it without knowing the folder layout.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError
from .load import ROW_COLUMNS, load_results, read_failures, run_identity, run_kind
from .tables import dataset_order

EXPORT_FORMATS = (".csv", ".parquet")
# provenance worth a column next to the config (nested parts such as versions stay in the JSON)
_META_COLUMNS = ("task", "created", "git", "device", "subgroups")  # subgroups: what bench run --subgroups recorded


def tidy_table(results_dir: Path, filters: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (run, layer, split, metric) of every run kind (ordinary, layer-wise, train
    subsets, LoRA/BitFit): the result columns of the run CSV, the model label the report uses
    (without the study keys, which are columns), the run's ``kind`` (bench.report.load.run_kind),
    every other key of the run's config (e.g. recipe, readout, lr, layers, shots, train_fraction,
    adapt), its task, creation date, git revision and device, ``layer`` (a layer-wise run's block;
    empty on the rows of the layer it selected) and ``caveats`` (the report's marks for that
    metric, bench.report.caveats). Config keys a run lacks are empty."""
    rs = load_results(Path(results_dir), list(filters), all_definitions=True)
    rows = rs.all_rows
    cfg_keys = sorted({k for m in rs.meta.values() for k in (m.get("config") or {})} - set(ROW_COLUMNS))
    per_run = {}
    for rid in rows.run_id.unique():
        m = rs.meta.get(rid, {})
        cfg = m.get("config") or {}
        per_run[rid] = {"kind": run_kind(cfg), **{k: _cell(cfg.get(k)) for k in cfg_keys},
                        **{k: _cell(m.get(k)) for k in _META_COLUMNS}}
    # object columns built one by one: an integer option that some runs do not read stays 8, not 8.0
    columns = list(dict.fromkeys(["kind", *cfg_keys, *_META_COLUMNS]))
    extra = pd.DataFrame({c: pd.Series([v.get(c) for v in per_run.values()], index=list(per_run), dtype=object)
                          for c in columns}, index=list(per_run), columns=columns)
    extra = extra.loc[:, ~extra.columns.duplicated()]
    if "recipe" not in extra.columns:  # always present, empty where recipes are not recorded
        extra["recipe"] = ""
    head = ["run_id", "model", *ROW_COLUMNS[1:12]]
    out = rows[head].join(extra, on="run_id")
    caveats = ["; ".join(rs.caveats(r, m)) for r, m in zip(rows.run_id, rows.metric)]
    out = pd.concat([out, rows[["layer", "split", "metric", "value"]].assign(caveats=caveats)], axis=1)
    return out.reset_index(drop=True)


def _cell(v: object) -> object:
    # nested values (lists, dicts) become their text so every column is a plain scalar
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def subgroup_table(results_dir: Path, filters: list[str] | tuple[str, ...] = (), subgroups: str = "",
                   n_boot: int = 1000, seed: int = 0, data_root: Path | None = None) -> pd.DataFrame:
    """The numbers of the report's "Subgroups" section (bench.report.subgroups.COLUMNS, with the
    model columns), for the same runs, bootstrap resamples and seed as `bench report`."""
    from . import tables as T
    from .subgroups import audit_of

    rs = load_results(Path(results_dir), list(filters))
    a = T.Analysis(rs, "auc", T.default_baseline(rs), n_boot=n_boot, seed=seed, require_baseline=False)
    au = audit_of(a, subgroups, data_root)
    if au is None:
        raise UserError("--subgroups names no column; e.g. --subgroups sex,age:0,40,60,120")
    return T.with_model_columns(au.frame, a.model_info).assign(run_ids=lambda d: d.run_ids.astype(str))


def export(results_dir: Path, out: Path, filters: list[str] | tuple[str, ...] = (), *, subgroups: str | None = None,
           predictions: bool = False, n_boot: int = 1000, seed: int = 0,
           data_root: Path | None = None) -> tuple[Path, int, int]:
    """Write the tidy table to ``out`` (.csv or .parquet); returns (path, rows, runs).
    ``predictions``: one row per scored test image instead (bench.report.predictions; with
    ``subgroups``, each image's group per column); else ``subgroups``: the report's subgroup
    numbers (bench.report.subgroups) instead of the metric rows."""
    import io

    from ..fsio import atomic_write_bytes, check_creatable

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise UserError(f"--out {out}: use a .csv or .parquet file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .csv or .parquet")
    check_creatable(out.parent, "export folder", "--out")  # unwritable: one line before the table is built
    if predictions:
        from .predictions import predictions_table

        df = predictions_table(results_dir, filters, subgroups, data_root)
    elif subgroups:
        df = subgroup_table(results_dir, filters, subgroups, n_boot, seed, data_root)
    else:
        df = tidy_table(results_dir, filters)
    if suffix == ".csv":
        data = df.to_csv(index=False).encode()
    else:
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, index=False)
        except ImportError:
            raise UserError("writing .parquet needs pyarrow (pip install pyarrow); or use --out FILE.csv") from None
        data = buf.getvalue()
    atomic_write_bytes(out, data, "export")  # whole or not at all; a full or read-only disk is one line
    n_runs = len({r for ids in df.run_ids for r in str(ids).split()}) if "run_ids" in df.columns else \
        int(df.run_id.nunique())
    return out, len(df), n_runs


def status_table(results_dir: Path) -> pd.DataFrame:
    """Per (model, dataset, size): runs done, runs failed, and the seeds done. Models are labelled
    as in the report (backbone, non-default variant, non-default weights)."""
    from ..results import ResultStore

    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; run `bench run ...` or `bench sweep ...` first")
    frames, meta, status = [], {}, {}
    if ResultStore(root).result_csvs():
        rs = load_results(root, all_definitions=True)
        runs = rs.all_rows.drop_duplicates("run_id").set_index("run_id")  # every kind of run
        frames.append(runs[list(ROW_COLUMNS[1:12])])
        meta.update(rs.meta)
        status.update({rid: "done" for rid in runs.index})
    records = read_failures(root)
    failures = [f for f in records if isinstance(f.get("config"), dict) and f.get("run_id")]
    if failures:
        frames.append(pd.DataFrame([{c: f["config"].get(c) for c in ROW_COLUMNS[1:12]} for f in failures],
                                   index=[f["run_id"] for f in failures]))
        meta.update({f["run_id"]: {"config": f["config"]} for f in failures if f["run_id"] not in status})
        status.update({f["run_id"]: "failed" for f in failures if f["run_id"] not in status})
    unplaced = len(records) - len(failures)  # unreadable, or written before records held the config
    recs = []
    if frames:
        per_run = pd.concat(frames)
        per_run = per_run[~per_run.index.duplicated()]  # a run done after a failure counts as done
        ident = run_identity(per_run, meta)  # one labelling for done and failed runs alike
        for rid, r in per_run.iterrows():
            size = pd.to_numeric(r["size"], errors="coerce")
            seed = pd.to_numeric(r["seed"], errors="coerce")
            recs.append({"model": ident.loc[rid, "label"], "dataset": r.dataset,
                         "size": int(size) if pd.notna(size) else 0, "status": status[rid],
                         "seed": int(seed) if pd.notna(seed) else None,
                         "kind": run_kind((meta.get(rid) or {}).get("config") or {})})
    if not recs:
        extra = f" ({unplaced} failure record(s) without a config)" if unplaced else ""
        raise UserError(f"nothing in {root}: no completed or failed runs{extra}")
    df = pd.DataFrame(recs)
    g = df.groupby(["model", "dataset", "size"])
    out = pd.DataFrame({"done": g.status.agg(lambda s: int((s == "done").sum())),
                        "failed": g.status.agg(lambda s: int((s == "failed").sum())),
                        "seeds_done": g.apply(lambda x: " ".join(str(int(s)) for s in sorted(
                            set(x[x.status == "done"].seed.dropna()))), include_groups=False),
                        "kinds": g.apply(lambda x: _kinds(x[x.status == "done"].kind), include_groups=False),
                        }).reset_index()
    order = {d: i for i, d in enumerate(dataset_order(out.dataset))}
    out = out.sort_values(["model", "dataset", "size"], key=lambda c: c.map(order) if c.name == "dataset" else c)
    out.attrs["unplaced_failures"] = unplaced
    store = ResultStore(root)
    scored = [rid for rid, st in status.items() if st == "done" and store.path("scores", rid).exists()]
    out.attrs["scored"] = (len(scored), sum(store.read_ids(rid) is not None for rid in scored))
    out.attrs["robust"] = _robust_counts(root, set(status))
    out.attrs["kinds"] = _kinds(df[df.status == "done"].kind)
    return out.reset_index(drop=True)


def _robust_counts(root: Path, run_ids: set[str]) -> dict:
    """Runs scored under shift by `bench robust` (robust/<run_id>.csv): how many, by shift kind, and
    how many of those files belong to no run listed here (a run deleted since)."""
    from ..robust.files import RobustStore

    store = RobustStore(root)
    ids = store.run_ids()
    kinds: dict[str, int] = {}
    for rid in ids:
        for kind in (store.read_meta(rid).get("shifts") or {}):
            kinds[kind.split("-", 1)[0]] = kinds.get(kind.split("-", 1)[0], 0) + 1
    return {"runs": len([r for r in ids if r in run_ids]), "orphans": len([r for r in ids if r not in run_ids]),
            "kinds": kinds}


def _kinds(kinds: pd.Series) -> str:
    """Runs per kind, standard first: ``standard 4, layers 1, shots 2``."""
    counts = kinds.value_counts()
    order = sorted(counts.index, key=lambda k: (k != "standard", k))
    return ", ".join(f"{k} {int(counts[k])}" for k in order)


def format_status(df: pd.DataFrame) -> str:
    """Model rows x dataset@size columns; a cell is 'done' or 'done/failed' ('·' where nothing ran),
    then totals."""
    df = df.assign(where=[f"{d}@{s}" for d, s in zip(df.dataset, df["size"])])
    order = {d: i for i, d in enumerate(dataset_order(df.dataset))}
    cols = [f"{d}@{s}" for s, d in sorted({(int(s), d) for d, s in zip(df.dataset, df["size"])},
                                         key=lambda t: (t[0], order[t[1]]))]
    grid = pd.DataFrame("·", index=list(dict.fromkeys(df.model)), columns=cols)
    for r in df.itertuples():
        grid.loc[r.model, r.where] = f"{r.done}" + (f"/{r.failed} failed" if r.failed else "")
    grid.index.name = "model"
    lines = [grid.to_string(), "",
             f"{int(df.done.sum())} run(s) done, {int(df.failed.sum())} failed, in {len(df)} model x dataset cell(s)"
             " (a cell: runs done, '/N failed' when some failed)."]
    if df.attrs.get("kinds"):
        lines.append(f"Runs done by kind: {df.attrs['kinds']} (every kind counted in the cells).")
    scored, with_ids = df.attrs.get("scored") or (0, 0)
    if scored:
        lines.append(f"Runs with saved test scores: {scored}; with image ids (--subgroups, --predictions): {with_ids}"
                     + (f" (the other {scored - with_ids} predate them: rebuilt where their data is unchanged)"
                        if with_ids < scored else "") + ".")
    rb = df.attrs.get("robust") or {}
    if rb.get("runs") or rb.get("orphans"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(rb.get("kinds", {}).items()))
        lines.append(f"Scored under shift (bench robust, robust/): {rb['runs']} run(s)" + (f" ({kinds})" if kinds else "")
                     + (f"; {rb['orphans']} file(s) of runs no longer here" if rb.get("orphans") else "") + ".")
    if df.attrs.get("unplaced_failures"):
        lines.append(f"{df.attrs['unplaced_failures']} more failure record(s) without a readable config.")
    return "\n".join(lines)
