"""The numbers of one cell (a shifted test split) and the tidy rows of a run's robustness file."""
from __future__ import annotations

import math

import numpy as np

from .. import metrics as M
from ..run_config import RunConfig
from .files import CLEAN, RUN_COLUMNS, Cell

WORSE_WHEN_HIGHER = M.LOWER_IS_BETTER | {"balanced_error"}


def balanced_error(task: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """MedMNIST-C's error (bench.shift.baselines, ``medmnistc/eval.py``): 1 - balanced accuracy at the
    task's prediction rule. Own multi-label data with unknown (-1) labels: each label's term over the
    images where it is known, as bench.metrics takes every metric."""
    from ..shift.baselines import balanced_error as medmnistc_error

    if M.is_multilabel(task) and M.has_unknown(y_true):
        return 1.0 - M.evaluate(task, y_true, y_score)["balanced_acc"]
    return medmnistc_error(y_true, y_score, task)


def cell_metrics(task: str, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """metrics.evaluate (ACC, AUC, ECE, ... as `bench run` computes them) and MedMNIST-C's error."""
    return {**M.evaluate(task, y_true, y_score), "balanced_error": balanced_error(task, y_true, y_score)}


def drop(metric: str, clean: float, value: float) -> float:
    """How much worse the metric got under the shift (positive = worse, in the metric's own units):
    clean - shifted, or shifted - clean for the metrics where lower is better (ECE, Brier, error)."""
    if not (math.isfinite(clean) and math.isfinite(value)):
        return float("nan")
    return value - clean if metric in WORSE_WHEN_HIGHER else clean - value


def rows_for(cfg: RunConfig, run_id: str, clean: dict[str, float], cells: dict[Cell, dict[str, float]],
             test_dataset: dict[Cell, str]) -> list[dict]:
    """Tidy rows: the clean row (the run's own test scores), then every cell's metrics with its drop."""
    d = cfg.to_dict()
    base = {k: ("" if d.get(k) is None else d.get(k)) for k in RUN_COLUMNS[1:]} | {"run_id": run_id}
    out = [{**base, "shift": "none", "test_dataset": cfg.dataset, "corruption": CLEAN, "severity": 0,
            "metric": m, "value": v, "clean": v, "drop": 0.0 if math.isfinite(v) else float("nan")}
           for m, v in clean.items()]
    for cell, ms in cells.items():
        for m, v in ms.items():
            c = clean.get(m, float("nan"))
            out.append({**base, "shift": cell.shift, "test_dataset": test_dataset[cell], "corruption": cell.corruption,
                        "severity": cell.severity, "metric": m, "value": v, "clean": c, "drop": drop(m, c, v)})
    return out
