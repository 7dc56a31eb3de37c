"""The results store: one tidy CSV per run, and beside it (never in runs/) its provenance, test
scores and curves.

Layout under the results folder::

    runs/<run_id>.csv          tidy rows: config columns, split, metric, value (written last:
                               its presence means the run is complete). Only these are in runs/,
                               so ``pd.concat(map(pd.read_csv, glob("results/runs/*.csv")))`` is right.
    meta/<run_id>.json         resolved config, task, seeds, versions, git revision, timings
    scores/<run_id>.npz        test split y_true / y_score, for bootstrap intervals in reports, with
                               ``split`` ("test") and ``ids`` (each image's id: own data, its path
                               as the manifest names it; MedMNIST, "test/<index>"); runs saved
                               before ids were recorded lack both (bench.audit rebuilds them)
    curves/<run_id>.csv        per-epoch (or per-head) validation curves
    failures/<run_id>.json     runs that raised, with the error (sweeps)
    models/<run_id>/           head.safetensors (every run that trains a head; bench explain) and
                               backbone.safetensors (a trained backbone, --save-model), written with
                               the run;  checkpoints/, locks/: in-flight state

Every file is written to a temporary name in the same folder and renamed into place. Folders
written before this layout (JSON, scores and curves inside runs/) still load: the store falls
back to the old names, and ``migrate()`` moves them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .run_config import RunConfig
from .env import now
from .errors import UserError
from .fsio import atomic_write_text, check_creatable, remove_stale, write_all_then_swap

if TYPE_CHECKING:
    import pandas as pd

ROW_COLUMNS = ("run_id", "backbone", "variant", "weights", "dataset", "size", "input_size", "resize",
               "head", "unfreeze", "seed", "limit", "split", "metric", "value")



# where each kind of file lives: (folder, suffix), and where the layout before 0.2 kept it
LAYOUT = {"csv": ("runs", ".csv"), "meta": ("meta", ".json"), "scores": ("scores", ".npz"),
          "curves": ("curves", ".csv"), "failure": ("failures", ".json")}
LEGACY = {"meta": ("runs", ".json"), "scores": ("runs", ".scores.npz"), "curves": ("runs", ".curves.csv")}


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.failures = self.root / "failures"

    def path(self, kind: str, run_id: str) -> Path:
        """Where a run's file of this kind is (the pre-0.2 name if only that exists)."""
        folder, suffix = LAYOUT[kind]
        path = self.root / folder / f"{run_id}{suffix}"
        if kind in LEGACY and not path.exists():
            old = self.root / LEGACY[kind][0] / f"{run_id}{LEGACY[kind][1]}"
            if old.exists():
                return old
        return path

    def _new_path(self, kind: str, run_id: str) -> Path:
        folder, suffix = LAYOUT[kind]
        return self.root / folder / f"{run_id}{suffix}"

    def result_csvs(self) -> list[Path]:
        """Every completed run's CSV (curves of the old layout, also in runs/, left out)."""
        if not self.runs.is_dir():
            return []
        return sorted(p for p in self.runs.glob("*.csv") if not p.name.endswith(".curves.csv"))

    def run_ids(self) -> list[str]:
        return [p.stem for p in self.result_csvs()]

    def legacy_files(self) -> list[Path]:
        if not self.runs.is_dir():
            return []
        return sorted(p for p in self.runs.iterdir() if p.name.endswith((".json", ".scores.npz", ".curves.csv")))

    def migrate(self) -> int:
        """Move files of the old layout to their folders (atomic renames); returns how many."""
        moved = 0
        for p in self.legacy_files():
            # longest suffix first: x.scores.npz is scores, x.json is provenance
            kind = next(k for k in ("scores", "curves", "meta") if p.name.endswith(LEGACY[k][1]))
            target = self._new_path(kind, p.name[: -len(LEGACY[kind][1])])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
            moved += 1
        return moved

    def read_meta(self, run_id: str) -> dict:
        path = self.path("meta", run_id)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg}); delete the run or rerun it") from None

    def read_scores(self, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.path("scores", run_id)
        if not path.exists():
            return None
        with np.load(path) as z:
            return np.asarray(z["y_true"]), np.asarray(z["y_score"])

    def read_ids(self, run_id: str) -> tuple[str, np.ndarray] | None:
        """(split, each scored image's id) as the run saved them; None for a run saved before ids
        were recorded (bench.audit.test_ids rebuilds those) or without saved scores."""
        path = self.path("scores", run_id)
        if not path.exists():
            return None
        with np.load(path) as z:
            if "ids" not in z.files:
                return None
            return str(z["split"]) if "split" in z.files else "test", np.asarray(z["ids"]).astype(str)

    def check_writable(self) -> None:
        """Fail early, in one line, where results could not be written (creates nothing)."""
        check_creatable(self.root, "results folder", "--results-dir")

    def remove_stale(self, run_id: str) -> int:
        """Temporaries of this run left by a killed process (call while holding the run's lock)."""
        return sum(remove_stale(self.root / folder, run_id) for folder, _ in LAYOUT.values()) + \
            remove_stale(self.root / "checkpoints", run_id) + remove_stale(self.root / "models" / run_id, "")

    def lock(self, run_id: str):
        """The lock a run executes under (locks/<run_id>.lock; released by the OS if the process
        dies): bench run and every sweep worker take this one."""
        from filelock import FileLock

        path = self.root / "locks" / f"{run_id}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from .fsio import disk_error

            raise disk_error(e, "lock file", path) from None
        return FileLock(str(path), thread_local=False)

    def model_path(self, run_id: str, name: str) -> Path:
        """models/<run_id>/<name>.safetensors: "head" (saved with every run that trains one) and
        "backbone" (a trained backbone, with --save-model)."""
        return self.root / "models" / run_id / f"{name}.safetensors"

    def csv_path(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.csv"

    def is_done(self, run_id: str) -> bool:
        """A run is done when its CSV is there with at least one metric row (a header alone,
        e.g. from a copy that was cut short, is not a result)."""
        path = self.csv_path(run_id)
        try:
            with open(path, "rb") as f:
                return f.readline().startswith(b"run_id,") and bool(f.readline().strip())
        except OSError:
            return False

    def write_run(self, cfg: RunConfig, metrics_by_split: dict[str, dict[str, float]], meta: dict,
                  test_scores: tuple[np.ndarray, np.ndarray], curves: list[dict] | None = None,
                  layers: dict[int, tuple[dict[str, dict[str, float]], np.ndarray]] | None = None,
                  model_files: dict[str, tuple[dict, dict]] | None = None,
                  test_ids: "np.ndarray | list[str] | None" = None) -> Path:
        """Write every file of a run. A rerun (--force) stages all new files first and swaps
        them in after, CSV last: the old result stays complete until the new one is.

        ``layers`` (layer-wise probes): per block, its metrics by split and its test scores; the
        CSV then has a ``layer`` column (empty on the rows of the layer selected on val, which
        ``metrics_by_split`` holds) and the scores file ``y_score_layer<k>`` arrays.

        ``test_ids``: each test image's id (Dataset.image_ids), saved with the scores as ``ids``
        beside ``split``, so reports join per-image attributes (subgroups) without rerunning."""
        run_id = cfg.run_id
        buf = io.BytesIO()
        per_layer = {f"y_score_layer{k}": s for k, (_, s) in (layers or {}).items()}
        ids = {} if test_ids is None else {"split": np.array("test"), "ids": np.asarray(test_ids, dtype=str)}
        if ids and len(ids["ids"]) != len(test_scores[0]):
            raise ValueError(f"{len(ids['ids'])} image ids for {len(test_scores[0])} test scores")
        np.savez_compressed(buf, y_true=test_scores[0], y_score=test_scores[1], **ids, **per_layer)
        rows = [dict(_config_columns(cfg, run_id), split=split, metric=name, value=value)
                for split, ms in metrics_by_split.items() for name, value in ms.items()]
        rows += [dict(_config_columns(cfg, run_id), layer=k, split=split, metric=name, value=value)
                 for k, (by_split, _) in (layers or {}).items() for split, ms in by_split.items()
                 for name, value in ms.items()]
        columns = list(ROW_COLUMNS) + (["layer"] if layers else [])  # other runs' CSVs stay as they were
        files = [(self._new_path("scores", run_id), buf.getvalue())]
        if curves:
            files.append((self._new_path("curves", run_id), _csv(curves, list(curves[0])).encode()))
        # what rebuilds the model (a head, a trained backbone): safetensors in models/<run_id>/
        files += [(self.model_path(run_id, name), _safetensors(sd, md)) for name, (sd, md) in (model_files or {}).items()]
        files.append((self._new_path("meta", run_id), json.dumps(meta, indent=1, default=str).encode()))
        files.append((self.csv_path(run_id), _csv(rows, columns).encode()))
        write_all_then_swap(files, "the results of " + run_id)
        if not curves:  # a rerun that has none must not leave the old run's curves beside it
            self._new_path("curves", run_id).unlink(missing_ok=True)
        for kind in LEGACY:  # a rerun of an old-layout run: its stale files must not linger in runs/
            (self.root / LEGACY[kind][0] / f"{run_id}{LEGACY[kind][1]}").unlink(missing_ok=True)
        (self.failures / f"{run_id}.json").unlink(missing_ok=True)  # a retry that succeeded supersedes it
        return self.csv_path(run_id)

    def write_failure(self, cfg: RunConfig, error: BaseException, tb: str, kind: str = "run") -> Path:
        """Record a failed run. ``kind`` "environment" (disk full, read-only...) is retried by the
        next sweep without --retry-failed; "run" (the run itself failed) is not."""
        path = self.failures / f"{cfg.run_id}.json"
        atomic_write_text(path, json.dumps({
            "run_id": cfg.run_id, "config": cfg.to_dict(), "error": f"{type(error).__name__}: {error}",
            "kind": kind, "traceback": tb, "created": now()}, indent=1, default=str), "failure record")
        return path

    def failure_kind(self, run_id: str) -> str | None:
        """"run" or "environment" for a recorded failure, None when there is none."""
        try:
            return str(json.loads((self.failures / f"{run_id}.json").read_text()).get("kind", "run"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            return "run"


def _safetensors(sd: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    seen: set[int] = set()
    tensors = {}
    for k, v in sd.items():  # safetensors refuses tensors sharing memory: clone them apart
        v = v.detach().cpu().contiguous()
        tensors[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    return save(tensors, metadata={k: str(v) for k, v in metadata.items()})


def _config_columns(cfg: RunConfig, run_id: str) -> dict:
    d = cfg.to_dict()
    return {k: ("" if d.get(k) is None else d.get(k)) for k in ROW_COLUMNS[1:-3]} | {"run_id": run_id}


def _csv(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


@dataclass
class RunResult:
    """One run's outcome, the same whether it ran now or was read back from disk.

    ``status``: "done" (ran in this call) or "existing" (already complete: read back).
    ``metrics``: the tidy rows of runs/<run_id>.csv as a DataFrame (split, metric, value and the
    config columns)."""

    run_id: str
    status: str
    config: RunConfig
    metrics: "pd.DataFrame"
    meta: dict
    paths: dict[str, Path]

    @classmethod
    def read(cls, store: ResultStore, run_id: str, status: str = "existing") -> "RunResult":
        import pandas as pd

        meta = store.read_meta(run_id)
        config = RunConfig.from_dict(meta["config"]) if "config" in meta else None
        paths = {k: store.path(k, run_id) for k in ("csv", "meta", "scores", "curves")}
        return cls(run_id, status, config, pd.read_csv(paths["csv"], keep_default_na=False, na_values=[""]),
                   meta, {k: p for k, p in paths.items() if p.exists()})

    def metric(self, name: str, split: str = "test") -> float:
        m = self.metrics
        hit = m[(m["split"] == split) & (m["metric"] == name)]
        if hit.empty:
            raise KeyError(f"no {split} {name} in {self.run_id}")
        return float(hit["value"].iloc[0])

    def table(self) -> "pd.DataFrame":
        """Metrics as a split x metric table."""
        return self.metrics.pivot(index="split", columns="metric", values="value")

    @property
    def selected(self) -> dict:
        return self.meta.get("selected", {})

    @property
    def timings(self) -> dict:
        return self.meta.get("timings", {})

    def test_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(y_true, y_score) of the test split."""
        got = ResultStore(self.paths["csv"].parent.parent).read_scores(self.run_id)
        if got is None:
            raise FileNotFoundError(f"no saved test scores for {self.run_id}")
        return got

    @property
    def path(self) -> Path:
        return self.paths["csv"]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={self.metric(k):.4f}" for k in ("auc", "acc") if
                          not self.metrics[(self.metrics.metric == k) & (self.metrics.split == "test")].empty)
        return f"RunResult({self.run_id}, {self.status}, test {shown})"
