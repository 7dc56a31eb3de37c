"""The results store: one tidy CSV per run, its provenance JSON and its test scores.

Layout under the results folder::

    runs/<run_id>.csv          tidy rows: config columns, split, metric, value (written last:
                               its presence means the run is complete)
    runs/<run_id>.json         resolved config, task, seeds, versions, git revision, timings
    runs/<run_id>.scores.npz   test split y_true / y_score, for bootstrap intervals in reports
    runs/<run_id>.curves.csv   per-epoch curves of trained runs
    failures/<run_id>.json     runs that raised, with the error (sweeps)

Every file is written to a temporary name in the same folder and renamed into place.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from .config import RunConfig
from .errors import UserError

ROW_COLUMNS = ("run_id", "backbone", "variant", "weights", "dataset", "size", "input_size", "resize",
               "head", "unfreeze", "seed", "limit", "split", "metric", "value")
PACKAGES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "segment-anything",
            "medmnist", "numpy", "scikit-learn", "pandas", "medfm-bench")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class ResultStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.failures = self.root / "failures"

    def check_writable(self) -> None:
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
            probe = self.runs / f".write-test{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"results folder {self.root} is not writable ({e.strerror}); "
                            f"pass --results-dir to a writable folder") from None

    def csv_path(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.csv"

    def is_done(self, run_id: str) -> bool:
        return self.csv_path(run_id).exists()

    def write_run(self, cfg: RunConfig, metrics_by_split: dict[str, dict[str, float]], meta: dict,
                  test_scores: tuple[np.ndarray, np.ndarray], curves: list[dict] | None = None) -> Path:
        run_id = cfg.run_id
        # a rerun (--force) drops the old completion marker first: a crash mid-write must not
        # leave old metrics beside new scores
        self.csv_path(run_id).unlink(missing_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, y_true=test_scores[0], y_score=test_scores[1])
        atomic_write_bytes(self.runs / f"{run_id}.scores.npz", buf.getvalue())
        if curves:
            atomic_write_text(self.runs / f"{run_id}.curves.csv", _csv(curves, list(curves[0])))
        atomic_write_text(self.runs / f"{run_id}.json", json.dumps(meta, indent=1, default=str))
        rows = [dict(_config_columns(cfg, run_id), split=split, metric=name, value=value)
                for split, ms in metrics_by_split.items() for name, value in ms.items()]
        path = self.csv_path(run_id)
        atomic_write_text(path, _csv(rows, list(ROW_COLUMNS)))
        failure = self.failures / f"{run_id}.json"
        if failure.exists():  # a retry that succeeded supersedes the recorded failure
            failure.unlink()
        return path

    def write_failure(self, cfg: RunConfig, error: BaseException, tb: str) -> Path:
        path = self.failures / f"{cfg.run_id}.json"
        atomic_write_text(path, json.dumps({
            "run_id": cfg.run_id, "config": cfg.to_dict(), "error": f"{type(error).__name__}: {error}",
            "traceback": tb, "created": now()}, indent=1, default=str))
        return path


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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    import torch

    out["torch"] = torch.__version__  # carries the build tag (+cu130, +cpu)
    return tuple(out.items())


def versions() -> dict[str, str]:
    return dict(_versions())


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define backbones (part of the feature-cache key)."""
    v = versions()
    return {k: v[k] for k in ("torch", "timm", "transformers", "open_clip_torch", "segment-anything") if k in v}


def git_revision() -> str | None:
    """Revision of the checkout this code runs from (with -dirty), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
