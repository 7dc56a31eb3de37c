"""Classification metrics, with ACC and AUC defined exactly as ``medmnist.Evaluator`` does.

Conventions (same as MedMNIST): ``y_true`` is (N,) class indices, or (N, L) 0/1 for multi-label;
``y_score`` is (N, C) probabilities (softmax for single-label, sigmoid for multi-label).
Binary tasks score the last column, threshold 0.5; multi-class and ordinal use argmax and the
one-vs-rest mean AUC; multi-label averages per label. A multi-label entry of -1 is unknown (an
uncertain label under ``--uncertain ignore``, CheXpert's U-Ignore): each label's metric is taken over
the images where that label is known, and losses leave it out (``bench.heads.loss_fn``).

Calibration ("can the scores be read as probabilities"): ``ece`` is the top-label expected
calibration error over ``ECE_BINS`` equal-width confidence bins (Guo et al. 2017; a bin is
(lo, hi]); ``brier`` is the mean squared error of the probabilities: binary and per label
(p_positive - y)^2, as sklearn's brier_score_loss; multi-class and ordinal the sum over classes
of (p_c - [y = c])^2 (Brier 1950, range 0..2). Both: lower is better.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (balanced_accuracy_score, cohen_kappa_score, f1_score, recall_score,
                             roc_auc_score)

TASKS = ("binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class")
ECE_BINS = 15
LOWER_IS_BETTER = frozenset({"ece", "brier"})  # every other metric here: higher is better


def is_multilabel(task: str) -> bool:
    return task.startswith("multi-label")


def _prep(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()


UNKNOWN = -1  # a multi-label entry left out of losses and metrics


def has_unknown(y_true: np.ndarray) -> bool:
    return bool((np.asarray(y_true) == UNKNOWN).any())


def per_label(fn, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean over labels of ``fn(y, score)`` (binary, 1-D), each over the images where it is known."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    vals = []
    for i in range(y_score.shape[1]):
        k = y_true[:, i] != UNKNOWN
        vals.append(fn(y_true[k, i], y_score[k, i]))
    return float(np.mean(vals))


def auc(task: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
    y_true, y_score = _prep(y_true, y_score)
    if is_multilabel(task):
        return per_label(roc_auc_score, y_true, y_score)
    if task == "binary-class":
        return float(roc_auc_score(y_true, y_score[:, -1] if y_score.ndim == 2 else y_score))
    return float(np.mean([roc_auc_score((y_true == i).astype(float), y_score[:, i])
                          for i in range(y_score.shape[1])]))


def auc_batched(task: str, y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of many score sets at once, scores (H, N, C) -> (H,); same definition as ``auc``.

    Uses the rank-sum (Mann-Whitney) form with tied ranks averaged, which equals sklearn's
    roc_auc_score; it lets the head grid select among all heads without a Python loop per head.
    NaN where a class (or label) has no positives or no negatives.
    """
    from scipy.stats import rankdata

    y_true = np.asarray(y_true).squeeze()
    scores = np.asarray(scores, dtype=np.float64)
    known = None
    if is_multilabel(task):
        pos = y_true == 1  # (N, L)
        known = y_true != UNKNOWN if has_unknown(y_true) else None
    elif task == "binary-class":
        pos = (y_true == 1)[:, None]
        scores = scores[..., -1:]
    else:
        pos = y_true[:, None] == np.arange(scores.shape[-1])[None, :]
    if known is not None:  # each label ranked over the images where it is known
        return np.mean([auc_batched("binary-class", y_true[known[:, i], i], scores[:, known[:, i], i:i + 1])
                        for i in range(scores.shape[-1])], axis=0)
    ranks = rankdata(scores, axis=1)  # (H, N, C), ties averaged
    n_pos = pos.sum(0).astype(np.float64)  # (C,)
    n_neg = pos.shape[0] - n_pos
    rank_sum = (ranks * pos[None]).sum(1)  # (H, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    per_class[:, (n_pos == 0) | (n_neg == 0)] = np.nan
    return per_class.mean(1)


def predictions(task: str, y_score: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    y_score = np.asarray(y_score).squeeze()
    if is_multilabel(task):
        return (y_score > threshold).astype(int)
    if task == "binary-class":
        return ((y_score[:, -1] if y_score.ndim == 2 else y_score) > threshold).astype(int)
    return np.argmax(y_score, axis=-1)


def acc(task: str, y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> float:
    y_true, _ = _prep(y_true, y_score)
    pred = predictions(task, y_score, threshold)
    if is_multilabel(task):
        return per_label(lambda y, p: (y == p).mean(), y_true, pred)
    return float((y_true == pred).mean())


def _ece_from(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> float:
    # bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins the first bin
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(b, correct, n_bins) - np.bincount(b, conf, n_bins))  # sums, not means
    return float(gap.sum() / max(len(conf), 1))


def ece(task: str, y_true: np.ndarray, y_score: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: sum over bins of |B|/N x |accuracy(B) - confidence(B)|.
    Binary: the predicted class is p > 0.5 with confidence max(p, 1 - p); multi-label: per label,
    averaged."""
    y_true, y_score = _prep(y_true, y_score)
    if is_multilabel(task):
        return per_label(lambda y, p: ece("binary-class", y, p, n_bins), y_true, y_score)
    pred = predictions(task, y_score)
    if task == "binary-class":
        p1 = y_score[:, -1] if y_score.ndim == 2 else y_score
        conf = np.where(pred == 1, p1, 1 - p1)
    else:
        conf = y_score.max(axis=-1)
    return _ece_from((pred == y_true).astype(float), conf.astype(float), n_bins)


def brier(task: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean squared error of the predicted probabilities (see the module docstring for the forms)."""
    y_true, y_score = _prep(y_true, y_score)
    if is_multilabel(task):
        if has_unknown(y_true):
            return per_label(lambda y, p: np.mean((p - y) ** 2), y_true, y_score)
        return float(np.mean((y_score - y_true) ** 2))  # = mean over labels of the binary score
    if task == "binary-class":
        p1 = y_score[:, -1] if y_score.ndim == 2 else y_score
        return float(np.mean((p1 - (y_true == 1)) ** 2))
    onehot = y_true[:, None] == np.arange(y_score.shape[-1])[None, :]
    return float(np.mean(((y_score - onehot) ** 2).sum(axis=1)))


def evaluate(task: str, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """All metrics of one split: acc, auc (MedMNIST), balanced_acc, macro_f1, recall_<class>,
    quadratic kappa for ordinal tasks, ece and brier. AUC is NaN when a split holds a single class."""
    y_true_s, _ = _prep(y_true, y_score)
    out = {"acc": acc(task, y_true, y_score)}
    try:
        with warnings.catch_warnings():  # newer sklearn warns and returns NaN instead of raising
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            out["auc"] = auc(task, y_true, y_score)
    except ValueError:  # one class only in y_true (tiny --limit runs)
        out["auc"] = float("nan")
    pred = predictions(task, y_score)
    if is_multilabel(task):
        y2, p2 = np.asarray(y_true_s).reshape(len(pred), -1), pred.reshape(len(pred), -1)
        cols = [(y2[y2[:, i] != UNKNOWN, i], p2[y2[:, i] != UNKNOWN, i]) for i in range(y2.shape[1])]
        out["macro_f1"] = float(np.mean([f1_score(y, p, zero_division=0) for y, p in cols]))
        per = np.array([recall_score(y, p, zero_division=0) for y, p in cols])
        # balanced accuracy per label (mean of sensitivity and specificity), then averaged
        spec = np.array([recall_score(1 - y, 1 - p, zero_division=0) for y, p in cols])
        out["balanced_acc"] = float(np.mean((per + spec) / 2))
    else:
        n_classes = np.asarray(y_score).shape[-1] if np.asarray(y_score).ndim == 2 else 2
        labels = list(range(max(n_classes, 2)))
        out["balanced_acc"] = float(balanced_accuracy_score(y_true_s, pred)) if len(np.unique(y_true_s)) > 1 \
            else float((y_true_s == pred).mean())
        out["macro_f1"] = float(f1_score(y_true_s, pred, labels=labels, average="macro", zero_division=0))
        per = recall_score(y_true_s, pred, labels=labels, average=None, zero_division=0)
        if task == "ordinal-regression":
            out["kappa"] = float(cohen_kappa_score(y_true_s, pred, labels=labels, weights="quadratic"))
    for i, r in enumerate(np.atleast_1d(per)):
        out[f"recall_{i}"] = float(r)
    out["ece"] = ece(task, y_true, y_score)
    out["brier"] = brier(task, y_true, y_score)
    return out
