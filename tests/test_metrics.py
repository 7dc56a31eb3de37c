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


# -- calibration: ECE (15 bins) and Brier -------------------------------------------------------

def _ece_by_loop(correct, conf, n_bins=15):
    """Guo et al. (2017) written out: bins (lo, hi], |B|/N x |acc(B) - conf(B)|."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("task,n", TASKS)
def test_ece_matches_the_written_out_definition(task, n):
    rng = np.random.default_rng(100 + n)
    size = 400
    if task.startswith("multi-label"):
        y = (rng.random((size, n)) < 0.3).astype(int)
        sc = rng.random((size, n))
        want = np.mean([_ece_by_loop(((sc[:, i] > 0.5) == y[:, i]).astype(float),
                                     np.maximum(sc[:, i], 1 - sc[:, i])) for i in range(n)])
    else:
        y = rng.integers(0, n, size)
        sc = rng.dirichlet(np.ones(n), size)
        if task == "binary-class":
            pred, conf = (sc[:, 1] > 0.5).astype(int), np.maximum(sc[:, 1], sc[:, 0])
        else:
            pred, conf = sc.argmax(1), sc.max(1)
        want = _ece_by_loop((pred == y).astype(float), conf)
    assert metrics.ece(task, y, sc) == pytest.approx(want, abs=1e-12)
    assert metrics.evaluate(task, y, sc)["ece"] == pytest.approx(want, abs=1e-12)


def test_ece_by_hand():
    # every image predicted positive at 0.9 confidence, 8 of 10 right: one bin, |0.8 - 0.9| = 0.1
    y = np.array([1] * 8 + [0] * 2)
    sc = np.tile([0.1, 0.9], (10, 1))
    assert metrics.ece("binary-class", y, sc) == pytest.approx(0.1)
    # perfectly calibrated halves: 0.7 confident and 70% right, 0.2 for class 1 (0.8 confident
    # in class 0) and 80% right -> 0
    y = np.array([1] * 7 + [0] * 3 + [0] * 8 + [1] * 2)
    p1 = np.array([0.7] * 10 + [0.2] * 10)
    assert metrics.ece("binary-class", y, np.stack([1 - p1, p1], 1)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("task,n", TASKS)
def test_brier_matches_sklearn(task, n):
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(200 + n)
    size = 300
    if task.startswith("multi-label"):
        y = (rng.random((size, n)) < 0.3).astype(int)
        sc = rng.random((size, n))
        want = np.mean([brier_score_loss(y[:, i], sc[:, i]) for i in range(n)])
    else:
        y = rng.integers(0, n, size)
        sc = rng.dirichlet(np.ones(n), size)
        # sklearn: binary (p1 - y)^2; multi-class sum over classes (Brier 1950)
        want = brier_score_loss(y, sc[:, 1]) if n == 2 else brier_score_loss(y, sc, labels=list(range(n)))
    assert metrics.brier(task, y, sc) == pytest.approx(want, abs=1e-12)
    assert metrics.evaluate(task, y, sc)["brier"] == pytest.approx(want, abs=1e-12)
    if n == 2:  # by hand: always 0.9 on the positive class, half of them positive
        assert metrics.brier(task, np.array([1, 0]), np.array([[0.1, 0.9], [0.1, 0.9]])) == pytest.approx(
            (0.01 + 0.81) / 2)


def _with_unknowns(seed: int = 0, n: int = 60, labels: int = 4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, labels)) < 0.4).astype(np.int64)
    y[:, 0] = np.arange(n) % 2  # both values in every label
    unknown = rng.random((n, labels)) < 0.2
    unknown[:4] = False
    y[unknown] = -1
    return y, rng.random((n, labels)), unknown


def test_unknown_multilabel_entries_are_left_out_of_every_metric():
    """--uncertain ignore (U-Ignore): each label is scored over the images where it is known, so the
    score given to an unknown entry cannot move any metric, and each equals its per-label form."""
    from sklearn.metrics import roc_auc_score

    task = "multi-label, binary-class"
    y, sc, unknown = _with_unknowns()
    got = metrics.evaluate(task, y, sc)
    moved = sc.copy()
    moved[unknown] = 1 - moved[unknown]
    assert metrics.evaluate(task, y, moved) == got
    known = [y[:, i] != -1 for i in range(y.shape[1])]
    assert got["auc"] == pytest.approx(np.mean([roc_auc_score(y[k, i], sc[k, i]) for i, k in enumerate(known)]))
    assert got["acc"] == pytest.approx(np.mean([((sc[k, i] > .5) == y[k, i]).mean() for i, k in enumerate(known)]))
    assert got["brier"] == pytest.approx(np.mean([((sc[k, i] - y[k, i]) ** 2).mean() for i, k in enumerate(known)]))
    batched = metrics.auc_batched(task, y, np.stack([sc, moved]))
    assert batched == pytest.approx([got["auc"]] * 2)
    full = np.where(unknown, 0, y)  # without unknowns the fast paths are unchanged
    assert metrics.auc_batched(task, full, sc[None])[0] == pytest.approx(metrics.auc(task, full, sc))


def test_unknown_labels_carry_no_loss_no_gradient_and_no_knn_vote():
    import torch

    from bench import heads
    from bench.report import stats

    task = "multi-label, binary-class"
    y, _, unknown = _with_unknowns(1, n=12, labels=3)
    logits = torch.randn(12, 3, requires_grad=True)
    yt = torch.from_numpy(y)
    loss = heads.loss_fn(task, logits, yt)
    loss.backward()
    assert (logits.grad[torch.from_numpy(unknown)] == 0).all() and (logits.grad[~torch.from_numpy(unknown)] != 0).all()
    k = torch.from_numpy(~unknown)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[k], yt[k].float())
    assert loss.item() == pytest.approx(ref.item())
    grid = heads._per_head_loss(task, logits.detach()[None].repeat(2, 1, 1), yt)
    assert grid.tolist() == pytest.approx([ref.item()] * 2)
    # kNN: neighbours vote only on the labels they know (k = all 4 training images)
    x = np.eye(4, dtype=np.float32)
    y_train = np.array([[1, -1], [1, 0], [0, -1], [-1, -1]])
    votes = heads.knn_scores(x, y_train, x[:1], task, 2, k=4, metric="euclidean")
    assert votes[0].tolist() == pytest.approx([2 / 3, 0.0])
    # the bootstrap's fast path agrees with the metric on data with unknowns
    y, sc, _ = _with_unknowns(2)
    w = np.ones((1, len(y)), dtype=np.int64)
    for name in ("acc", "auc"):
        assert stats._fast(name, task, y, sc)(w)[0] == pytest.approx(metrics.evaluate(task, y, sc)[name])
        assert stats._slow(name, task, y, sc)(w)[0] == pytest.approx(metrics.evaluate(task, y, sc)[name])
