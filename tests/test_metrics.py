"""ACC/AUC parity with medmnist.Evaluator's own functions, on every task type."""
import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC

from bench import metrics

TASKS = [("binary-class", 2), ("multi-class", 9), ("ordinal-regression", 5), ("multi-label, binary-class", 14)]


@pytest.mark.parametrize("task,n", TASKS)
def test_acc_auc_identical_to_medmnist(task, n):
    rng = np.random.default_rng(n)
    size = 300
    if task.startswith("multi-label"):
        y_true = (rng.random((size, n)) < 0.3).astype(int)
        y_score = rng.random((size, n))
    else:
        y_true = rng.integers(0, n, (size, 1))
        y_score = rng.random((size, n))
        y_score /= y_score.sum(1, keepdims=True)
        # make the scores informative so the numbers are not all near chance
        y_score[np.arange(size), y_true[:, 0]] += rng.random(size)
    assert metrics.acc(task, y_true, y_score) == getACC(y_true, y_score, task)
    assert metrics.auc(task, y_true, y_score) == getAUC(y_true, y_score, task)
    out = metrics.evaluate(task, y_true[:, 0] if not task.startswith("multi-label") else y_true, y_score)
    assert out["auc"] == getAUC(y_true, y_score, task)
    assert {f"recall_{i}" for i in range(n)} <= set(out)
    assert ("kappa" in out) == (task == "ordinal-regression")


def test_balanced_accuracy_and_recall_show_a_failing_class():
    y_true = np.array([0] * 90 + [1] * 10)
    y_score = np.tile([0.9, 0.1], (100, 1))  # always predicts class 0
    out = metrics.evaluate("binary-class", y_true, y_score)
    assert out["acc"] == pytest.approx(0.9)
    assert out["balanced_acc"] == pytest.approx(0.5)
    assert out["recall_0"] == 1.0 and out["recall_1"] == 0.0


def test_auc_is_nan_when_split_has_one_class():
    out = metrics.evaluate("binary-class", np.zeros(5, int), np.tile([0.6, 0.4], (5, 1)))
    assert np.isnan(out["auc"]) and out["acc"] == 1.0
