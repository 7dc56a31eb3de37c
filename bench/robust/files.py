"""Where `bench robust` keeps what it computed, beside the run's own files (never in runs/)::

    robust/<run_id>.csv        tidy rows, one per (shift, test dataset, corruption, severity, metric),
                               the clean row (the run's own test scores) included; rewritten, whole,
                               from the cell files after every pass
    robust/<run_id>.json       provenance: the run's creation time it was scored against, what shifted
                               the images (MedMNIST-C port digest, sizes, resize), timings, image passes
    robust/scores/<run_id>/<shift>/<cell>.npz
                               one cell's test labels and scores (``y_true``, ``y_score``): written
                               atomically as each cell finishes, so a killed pass resumes at the next
                               cell, and read by the report's paired bootstrap

A cell made for an earlier version of the run (``bench run --force`` keeps the id; ``run_stamp``) or
of the corruption code is stale: a new pass drops it and scores it again.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsio import atomic_write_bytes, atomic_write_text

FOLDER = "robust"
# the run's identity columns (as runs/<run_id>.csv), then the shift, then the number
RUN_COLUMNS = ("run_id", "backbone", "variant", "weights", "dataset", "size", "input_size", "resize", "head",
               "unfreeze", "seed", "limit")
COLUMNS = RUN_COLUMNS + ("shift", "test_dataset", "corruption", "severity", "metric", "value", "clean", "drop")
CLEAN = "clean"              # the corruption column of the run's own test split
RESIZE_ONLY = "resize-only"  # the clean 224-px split through the resize a corrupted one goes through


@dataclass(frozen=True, order=True)
class Cell:
    """One shifted version of a run's test split."""

    shift: str        # medmnistc | generic | dataset
    corruption: str   # the corruption's name; "resize-only"; or, for --test-dataset, the other dataset
    severity: int     # 1..5; 0 where there is none (resize-only, another dataset)

    @property
    def folder(self) -> str:
        return self.shift if self.shift != "dataset" else f"dataset-{_safe(self.corruption)}"

    @property
    def stem(self) -> str:
        return f"{_safe(self.corruption)}-s{self.severity}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def run_stamp(results_dir: Path, run_id: str) -> str:
    """What a run's current results are, to tell a rerun under the same id (``bench run --force``):
    a digest of its provenance JSON and saved test scores (a rerun writes both anew, its timings and
    creation time inside)."""
    import hashlib

    from ..results import ResultStore

    store = ResultStore(results_dir)
    h = hashlib.sha256()
    for kind in ("meta", "scores"):
        try:
            h.update(store.path(kind, run_id).read_bytes())
        except OSError:
            h.update(b"-")
    return h.hexdigest()[:16]


class RobustStore:
    def __init__(self, results_dir: Path) -> None:
        self.results = Path(results_dir)
        self.root = self.results / FOLDER

    def csv_path(self, run_id: str) -> Path:
        return self.root / f"{run_id}.csv"

    def meta_path(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def cell_path(self, run_id: str, cell: Cell) -> Path:
        return self.root / "scores" / run_id / cell.folder / f"{cell.stem}.npz"

    def run_ids(self) -> list[str]:
        """Runs with robustness rows."""
        return sorted(p.stem for p in self.root.glob("*.csv")) if self.root.is_dir() else []

    def read_meta(self, run_id: str) -> dict:
        try:
            got = json.loads(self.meta_path(run_id).read_text())
        except (OSError, ValueError):
            return {}
        return got if isinstance(got, dict) else {}

    def write_cell(self, run_id: str, cell: Cell, y_true: np.ndarray, y_score: np.ndarray, record: dict) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, y_true=y_true, y_score=y_score.astype(np.float32),
                            record=np.array(json.dumps(record, default=str)))
        atomic_write_bytes(self.cell_path(run_id, cell), buf.getvalue(), "robustness scores")

    def read_cell(self, run_id: str, cell: Cell) -> tuple[np.ndarray, np.ndarray] | None:
        """(y_true, y_score) of a finished cell; None when it is missing or unreadable (said once)."""
        path = self.cell_path(run_id, cell)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                return np.asarray(z["y_true"]), np.asarray(z["y_score"])
        except Exception as e:  # truncated by a crash mid-copy, or not ours: scored again
            print(f"bench: robust: {path.name} is unreadable ({type(e).__name__}); scoring that cell again",
                  file=sys.stderr)
            return None

    def cells(self, run_id: str) -> list[tuple[Cell, dict]]:
        """Every cell file of a run with the record written inside it (what it was made against)."""
        out = []
        folder = self.root / "scores" / run_id
        for path in sorted(folder.glob("*/*.npz")) if folder.is_dir() else []:
            try:
                with np.load(path) as z:
                    rec = json.loads(str(z["record"]))
                out.append((Cell(str(rec["shift"]), str(rec["corruption"]), int(rec["severity"])), rec))
            except Exception:
                continue  # unreadable: scored again when its cell is asked for
        return out

    def drop_cell(self, run_id: str, cell: Cell) -> None:
        self.cell_path(run_id, cell).unlink(missing_ok=True)

    def write_rows(self, run_id: str, rows: list[dict], meta: dict) -> Path:
        """The run's rows and provenance, each written whole or not at all (JSON first, CSV last)."""
        atomic_write_text(self.meta_path(run_id), json.dumps(meta, indent=1, default=str), "robustness record")
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        atomic_write_text(self.csv_path(run_id), out.getvalue(), "robustness rows")
        return self.csv_path(run_id)
