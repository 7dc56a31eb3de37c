"""Read a results folder (written by `bench run`) into one tidy frame plus per-run metadata.

Each run contributes ``runs/<run_id>.csv`` (tidy rows), ``meta/<run_id>.json`` (provenance) and
``scores/<run_id>.npz`` (test scores), located by bench.results.ResultStore (which also reads
folders of the older layout). Failed runs sit in ``failures/`` and are only counted.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError, did_you_mean
from ..labels import default_variant, model_label

ROW_COLUMNS = ("run_id", "backbone", "variant", "weights", "dataset", "size", "input_size", "resize",
               "head", "unfreeze", "seed", "limit", "split", "metric", "value")
CONFIG_COLUMNS = ROW_COLUMNS[1:12]
# a protocol is (head, unfreeze); the rest of a section key are settings that change the numbers
SECTION_KEYS = ("head", "unfreeze", "adapt", "size", "input_size", "resize", "limit")
# keys of the JSON config that never distinguish models: they are the cell's row/column or seed
_NOT_MODEL_KEYS = {"dataset", "seed", "weights_fingerprint", *SECTION_KEYS}
# what makes a run part of the depth or label-budget study (bench.report.transfer): such runs get
# their own report sections, and these keys are their axes there, never part of a model's name
STUDY_KEYS = ("layers", "train_fraction", "shots")


def run_kind(cfg: dict) -> str:
    """What kind of run a config is, for `bench results ls` and the export: ``standard``, or its
    parts joined by '+': ``layers``, ``shots``, ``fraction``, and the adapter (``lora``, ``bitfit``)."""
    parts = ["layers"] * bool(cfg.get("layers")) + ["shots"] * bool(cfg.get("shots")) + \
        ["fraction"] * ((cfg.get("train_fraction") or 1.0) < 1.0 and not cfg.get("shots"))
    adapt = cfg.get("adapt")
    parts += [str(adapt)] if adapt and adapt != "none" else []
    return "+".join(parts) or "standard"


def study_run(cfg: dict) -> bool:
    """A layer-wise probe (--layers) or a run on a train subset (--train-fraction / --shots)."""
    return bool(cfg.get("layers")) or (cfg.get("train_fraction") or 1.0) < 1.0 or bool(cfg.get("shots"))


@dataclass
class RunSet:
    """Every completed run that passed the filters.

    ``rows``: tidy metric rows with a ``model`` label column (backbone plus whatever distinguishes
    runs of the same backbone, e.g. ``resnet50 (random)``). ``runs``: one row per run.
    """

    root: Path
    rows: pd.DataFrame
    runs: pd.DataFrame
    meta: dict[str, dict]
    failures: list[dict] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)
    n_total_runs: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"run_id", "file", "reason"}: invalid inputs left out
    # the depth and label-budget studies, kept out of ``rows`` (their models are not others' rivals)
    # unless nothing else ran: per-layer rows of --layers runs (a ``layer`` column), and every row
    # of the runs on a train subset; both with the ``model`` column of ``rows``
    layer_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    subset_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    # every row of every run that passed the filters, whatever its kind (ordinary, layer-wise with
    # its ``layer`` column, train subsets, LoRA/BitFit): what `bench results export` and `ls` cover;
    # ``model`` is the label without the study keys (those are columns of their own)
    all_rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    _caveats: dict = field(default_factory=dict, repr=False)

    def scores(self, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        from ..results import ResultStore

        return ResultStore(self.root).read_scores(run_id)

    def caveats(self, run_id: str, metric: str | None = "auc") -> list[str]:
        """The marks beside this run's numbers of ``metric`` (bench.report.caveats)."""
        from .caveats import run_caveats

        key = (run_id, metric)
        if key not in self._caveats:
            self._caveats[key] = run_caveats(self.meta.get(run_id, {}), metric, lambda: self.scores(run_id))
        return self._caveats[key]

    def cell_caveats(self, run_ids, metric: str | None = "auc") -> list[str]:
        """The marks of several runs together (a cell averaging seeds), each once."""
        return list(dict.fromkeys(t for r in run_ids for t in self.caveats(r, metric)))

    def task(self, run_id: str) -> str | None:
        return self.meta.get(run_id, {}).get("task")

    def labels(self, run_id: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.meta.get(run_id, {}).get("labels") or {}).items()}


def load_results(results_dir: Path, filters: list[str] | tuple[str, ...] = (), *, all_definitions: bool = False
                 ) -> RunSet:
    from ..results import ResultStore

    root = Path(results_dir)
    store = ResultStore(root)
    runs_dir = store.runs
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; run `bench run ...` first "
                        f"or pass --results-dir to the folder holding runs/")
    files = store.result_csvs()
    failures = _read_failures(root / "failures")
    if not files and not runs_dir.is_dir() and any(root.glob("*.csv")):
        raise UserError(f"{root} looks like the runs/ folder itself; pass its parent: --results-dir {root.parent}")
    if not files:
        extra = f" ({len(failures)} failed run(s) in {root / 'failures'})" if failures else ""
        raise UserError(f"no completed runs in {runs_dir}{extra}; run `bench run ...` first "
                        f"or pass --results-dir to the folder holding runs/")
    frames, meta, skipped = _valid_runs(store, files)
    if not frames:
        raise UserError(f"no valid runs in {runs_dir}: {len(skipped)} skipped, e.g. {skipped[0]['file']}: "
                        f"{skipped[0]['reason']}")
    rows = pd.concat(frames, ignore_index=True)
    if not all_definitions:  # a report compares; an export lists every run (its config has `definitions`)
        rows = newest_definitions(rows, meta)
    # --adapt is in the run's config, not its rows: LoRA and BitFit runs get sections of their own
    adapt = {r: _norm(((meta.get(r) or {}).get("config") or {}).get("adapt")) for r in rows.run_id.unique()}
    rows = rows.assign(adapt=rows.run_id.map(lambda r: "" if adapt[r] in ("", "none") else adapt[r]))
    n_total = rows.run_id.nunique()
    rows = apply_filters(rows, filters)
    study = rows.run_id.map(lambda r: study_run((meta.get(r) or {}).get("config") or {}))
    alone = bool(study.all())  # nothing but study runs: they fill the ordinary sections, named by their keys
    plain = rows[rows.layer == ""]  # every run has these rows (a --layers run: its layer chosen on val)
    label = dict(zip(plain.run_id, model_labels(plain, meta, study_keys=alone)))
    # the transfer sections (depth, label budget) name runs without the study keys: their axes are
    # those keys, so every layer and every fraction of one model is one curve
    curve = label if not alone else dict(zip(plain.run_id, model_labels(plain, meta)))
    study_rows = rows.assign(model=rows.run_id.map(curve))
    rows = rows.assign(model=rows.run_id.map(label))
    layer_rows = study_rows[study_rows.layer != ""].assign(layer=lambda d: d.layer.astype(int))
    subset_rows = study_rows[(study_rows.layer == "") & study & ~study_rows.run_id.isin(layer_rows.run_id)]
    rows = rows[(rows.layer == "") & (alone | ~study)].drop(columns="layer")
    runs = (rows.drop(columns=["split", "metric", "value"]).drop_duplicates("run_id")
            .set_index("run_id", drop=False))
    runs = runs.assign(task=[meta.get(r, {}).get("task") for r in runs.run_id],
                       created=[meta.get(r, {}).get("created") for r in runs.run_id])
    return RunSet(root, rows.reset_index(drop=True), runs, meta, failures, list(filters), n_total, skipped,
                  layer_rows.reset_index(drop=True), subset_rows.drop(columns="layer").reset_index(drop=True),
                  study_rows.reset_index(drop=True))


def _definition_age(definitions: str) -> int:
    """How far a run's definitions are bumped ("backbone:simplecnn@default=2,dataset:folder=2" -> 2)."""
    return sum(int(d.rpartition("=")[2]) - 1 for d in definitions.split(",") if "=" in d)


def newest_definitions(rows: pd.DataFrame, meta: dict[str, dict]) -> pd.DataFrame:
    """Rows of runs made with older versions of a definition than another run of the same config
    left out, with one line saying so: a bumped definition computes something else, so its runs
    and the old ones are never merged as seeds of one model (the old files stay on disk)."""
    import sys

    newest: dict[str, tuple[int, str]] = {}
    keyed = {}
    for rid in rows.run_id.unique():
        cfg = dict((meta.get(rid) or {}).get("config") or {})
        definitions = str(cfg.pop("definitions", "") or "")
        cfg.pop("data_fingerprint", None)
        key = json.dumps(cfg, sort_keys=True, default=str)
        keyed[rid] = (key, definitions)
        age = _definition_age(definitions)
        if key not in newest or age > newest[key][0]:
            newest[key] = (age, definitions)
    old = {rid for rid, (key, d) in keyed.items() if _definition_age(d) < newest[key][0]}
    if old:
        now = sorted({newest[keyed[r][0]][1] for r in old})
        print(f"bench: report: left out {len(old)} run(s) made before a definition changed ({'; '.join(now)}); "
              f"their files stay in the results folder", file=sys.stderr)
    return rows[~rows.run_id.isin(old)]


# metrics that are fractions (a value outside [0, 1] is a corrupt or foreign file); kappa is [-1, 1]
_UNIT_METRICS = ("acc", "auc", "balanced_acc", "macro_f1", "ece", "brier")


def _valid_runs(store, files: list[Path]) -> tuple[list[pd.DataFrame], dict[str, dict], list[dict]]:
    """Each run's rows and provenance, checked: a run whose files are not what `bench run` writes
    is left out and listed (one line each on stderr), never averaged in or allowed to crash the
    report."""
    import sys

    frames, meta, skipped, seen = [], {}, [], {}
    for path in files:
        try:
            df = _read_run_csv(path)
            rid = _check_run(store, path, df, seen)
            got = store.read_meta(rid)
            if got and not isinstance(got, dict):
                raise UserError(f"{store.path('meta', rid).name} holds a {type(got).__name__}, not a mapping")
            _check_scores(store, rid, got)
        except UserError as e:
            reason = str(e).replace(str(path), path.name)
            skipped.append({"run_id": path.stem, "file": str(path), "reason": reason})
            print(f"bench: report: skipping {path.name}: {reason}", file=sys.stderr)
            continue
        seen[rid] = path
        frames.append(df)
        if got:
            meta[rid] = got
    return frames, meta, skipped


def _check_run(store, path: Path, df: pd.DataFrame, seen: dict[str, Path]) -> str:
    ids = df.run_id.unique()
    if len(ids) != 1 or ids[0] != path.stem:
        raise UserError(f"holds run id(s) {', '.join(map(str, ids[:3]))} but is named {path.stem} "
                        f"(a copied or merged file); keep one file per run")
    rid = str(ids[0])
    if rid in seen:
        raise UserError(f"run {rid} is already read from {seen[rid].name}")
    dup = df.duplicated(["layer", "split", "metric"])
    if dup.any():
        row = df[dup].iloc[0]
        raise UserError(f"{row.split} {row.metric} is written twice (a duplicated row would count as a seed)")
    lo = df.metric.map(lambda m: -1.0 if m == "kappa" else 0.0)
    # a multi-class Brier score sums over classes (bench.metrics.brier): up to 2, e.g. one-hot kNN votes
    hi = df.metric.map(lambda m: 2.0 if m == "brier" else 1.0)
    checked = (df.metric.isin(_UNIT_METRICS) | (df.metric == "kappa") | df.metric.str.startswith("recall_")) \
        & df.value.notna()
    bad = df[checked & ((df.value < lo) | (df.value > hi))]
    if not bad.empty:
        row = bad.iloc[0]
        raise UserError(f"{row.split} {row.metric} = {row.value:g} is out of its range")
    return rid


def _check_scores(store, rid: str, meta: dict) -> None:
    try:
        got = store.read_scores(rid)
    except Exception as e:  # a garbage or truncated npz
        raise UserError(f"{store.path('scores', rid).name} is unreadable ({type(e).__name__})") from None
    if got is None:
        return
    y_true, y_score = got
    n_test = ((meta or {}).get("dataset") or (meta or {}).get("dataset_file") or {}).get("n", {}).get("test")
    if len(y_true) != len(y_score) or (n_test is not None and len(y_true) != n_test) or y_score.ndim != 2:
        raise UserError(f"{store.path('scores', rid).name} has {len(y_true)} labels and {y_score.shape} scores; "
                        f"the test split has {n_test}")


def _read_run_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a results CSV ({e}); delete it or rerun the run") from None
    missing = [c for c in ROW_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; it was not written by `bench run`")
    df = df[list(ROW_COLUMNS)].assign(layer=df["layer"] if "layer" in df.columns else "")  # --layers runs
    _check_numbers(df)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")  # "nan" stays NaN, never 0
    for col in ("size", "input_size", "seed"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


# columns the report reads as integers: the ones every row has, and the ones that may be empty (a
# run without --input-size record or --limit; a layer-wise run's rows of the layer it selected)
_INTEGERS, _INTEGERS_OR_EMPTY = ("size", "seed"), ("input_size", "limit", "layer")


def _check_numbers(df: pd.DataFrame) -> None:
    """Every value the report reads as a number is one (an edited or damaged CSV is named, never a
    traceback): ``value`` a number, "nan" or empty (a metric with none); sizes, seed, limit and
    layer integers."""
    text = df["value"].str.strip()
    bad = pd.to_numeric(text, errors="coerce").isna() & ~text.str.lower().isin(["", "nan"])
    if bad.any():
        row = df[bad].iloc[0]
        raise UserError(f"{row.split} {row.metric} = {row.value!r} is not a number")
    for col in _INTEGERS + _INTEGERS_OR_EMPTY:
        text = df[col].str.strip()
        given = text != "" if col in _INTEGERS_OR_EMPTY else pd.Series(True, index=df.index)
        whole = text.map(lambda t: bool(re.fullmatch(r"-?\d{1,19}", t)) and abs(int(t)) < 2 ** 63)
        bad = given & ~whole  # as bench writes them: no 28.0, no 1e400, within int64
        if bad.any():
            raise UserError(f"column {col} holds {df.loc[bad, col].iloc[0]!r}, not an integer")


def _read_failures(folder: Path) -> list[dict]:
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            out.append({"run_id": p.stem, "error": "unreadable failure record"})
    return out


def read_failures(results_dir: Path) -> list[dict]:
    """The failure records of a results folder (empty when none), without needing completed runs."""
    from ..results import ResultStore

    return _read_failures(ResultStore(Path(results_dir)).failures)


def parse_filters(filters: list[str] | tuple[str, ...]) -> list[tuple[str, set[str]]]:
    """``KEY=V1,V2`` (values OR-ed); separate filters are AND-ed."""
    parsed = []
    for f in filters:
        key, sep, value = f.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or not key or not value:
            raise UserError(f"malformed --filter {f!r}; use KEY=VALUE, e.g. dataset=breastmnist or head=linear")
        if key not in CONFIG_COLUMNS:
            raise UserError(f"unknown --filter key {key!r}; {did_you_mean(key, CONFIG_COLUMNS)}")
        parsed.append((key, {v.strip() for v in value.split(",") if v.strip()}))
    return parsed


def apply_filters(rows: pd.DataFrame, filters: list[str] | tuple[str, ...]) -> pd.DataFrame:
    for key, values in parse_filters(filters):
        col = rows[key].astype(str).replace({"<NA>": ""})
        if key == "limit":
            values = {"" if v in ("none", "all") else v for v in values}
        kept = rows[col.isin(values)]
        if kept.empty:
            present = sorted(set(col.replace({"": "none"} if key == "limit" else {})))
            wanted = ", ".join(sorted(values))
            hint = did_you_mean(sorted(values)[0], present) if len(values) == 1 else \
                f"present: {', '.join(present[:15])}"
            raise UserError(f"no runs match --filter {key}={wanted}; {hint}")
        rows = kept
    return rows


def model_labels(rows: pd.DataFrame, meta: dict[str, dict], study_keys: bool = False) -> pd.Series:
    """A display name per row, the same in every section and figure: the backbone; its variant
    when it is not the backbone's default or several variants ran; its weights when not the
    default (``resnet18 (random)``, a local file by its name); the recipe when the results hold
    several; then any other config value that tells apart runs of one backbone in one section
    (readout, hyper-parameters...) as ``key=value``."""
    per_run = rows.drop_duplicates("run_id").set_index("run_id")
    info = run_identity(per_run, meta)
    configs: dict[str, dict] = {}
    for rid in per_run.index:
        cfg = dict(meta.get(rid, {}).get("config") or {})
        configs[rid] = {k: v for k, v in cfg.items() if k not in _NOT_MODEL_KEYS and k not in _IDENTITY_KEYS
                        and (study_keys or k not in STUDY_KEYS)}
    label: dict[str, str] = {rid: info.loc[rid, "label"] for rid in per_run.index}
    groups = per_run.groupby(["backbone", *SECTION_KEYS], dropna=False).groups
    for _, rids in groups.items():
        rids = list(rids)
        keys = sorted({k for rid in rids for k in configs[rid]})
        differing = [k for k in keys if len({_norm(configs[r].get(k)) for r in rids}) > 1]
        # a knob that some runs did not read (None: --lora-rank of a run without LoRA) names runs only
        # where runs that read it differ in it; another key (--adapt) already tells the rest apart
        read = [k for k in differing if all(configs[r].get(k) is not None for r in rids)
                or len({_norm(configs[r].get(k)) for r in rids if configs[r].get(k) is not None}) > 1]
        differing = read or differing
        for rid in rids:
            label[rid] = " ".join([label[rid], *[f"{k}={_norm(configs[rid].get(k)) or 'none'}" for k in differing]])
    return rows.run_id.map(label)


_IDENTITY_KEYS = {"backbone", "variant", "weights", "recipe"}


def run_identity(per_run: pd.DataFrame, meta: dict[str, dict]) -> pd.DataFrame:
    """Per run (index: run_id): backbone, variant, weights (``default``, ``random`` or a file
    name, never a path), recipe ("" when none) and the label those give (bench.labels)."""
    recipes = {rid: _norm((meta.get(rid, {}).get("config") or {}).get("recipe")) for rid in per_run.index}
    several_recipes = len(set(recipes.values())) > 1
    variants = per_run.groupby("backbone").variant.agg(lambda v: set(map(_norm, v)))
    recs = {}
    for rid, r in per_run.iterrows():
        backbone, variant = str(r["backbone"]), _norm(r["variant"])
        show = len(variants[backbone]) > 1 or variant != default_variant(backbone)
        label, weights = model_label(backbone, variant, r["weights"], show_variant=show,
                                     recipe=recipes[rid] if several_recipes else None)
        recs[rid] = {"backbone": backbone, "variant": variant, "weights": weights, "recipe": recipes[rid],
                     "label": label}
    return pd.DataFrame.from_dict(recs, orient="index",
                                  columns=["backbone", "variant", "weights", "recipe", "label"])


def model_table(rs: RunSet) -> pd.DataFrame:
    """One row per model label (index): backbone, variant, weights, recipe, the columns every table
    CSV carries. A label covering several values (only via the key=value parts) joins them by '|'."""
    per_run = rs.rows.drop_duplicates("run_id").set_index("run_id")
    ident = run_identity(per_run, rs.meta).assign(model=per_run["model"])
    return ident.groupby("model")[["backbone", "variant", "weights", "recipe"]].agg(
        lambda v: "|".join(sorted(set(map(str, v)))))


def _norm(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


_LAST = re.compile(r"last(\d+)")


def unfreeze_order(value: str) -> tuple[int, int]:
    """Sort key: none < last1 < last2 < ... < all."""
    if value == "none":
        return (0, 0)
    if value == "all":
        return (2, 0)
    m = _LAST.fullmatch(value)
    return (1, int(m.group(1))) if m else (3, 0)
