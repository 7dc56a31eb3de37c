"""Zero-shot heads from a text tower (``backbones.base.TextTower``) and prompts (``bench.prompts``).

Class embeddings are built as CLIP does (CLIP_benchmark's ``zero_shot_classifier``): each class's
prompts (one per template) are encoded, L2-normalised, averaged, and the mean renormalised.
Scores are ``softmax(logit_scale * cos(image, class))`` over the classes, with the model's own
logit scale; a multi-label task scores each label's positive prompt against its negative one
(softmax over the pair = ``sigmoid(logit_scale * (cos_pos - cos_neg))``).

``--init zeroshot`` (:func:`train_from_zeroshot`): a linear head on the L2-normalised features whose
weights start at ``logit_scale x`` the class embeddings (multi-label: ``logit_scale x (pos - neg)``)
and bias 0, so its epoch-0 scores are the zero-shot scores; a small grid of learning rates and
weight decays trains, and the head and epoch are chosen on val as the linear probe's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics


@dataclass
class ZeroShotClassifier:
    weights: torch.Tensor                 # (C, D) single-label; (L, 2, D) multi-label: [negative, positive]
    per_template: list[torch.Tensor]      # the same, from each template alone (the spread between templates)
    logit_scale: float
    multilabel: bool

    def scores(self, feats: np.ndarray | torch.Tensor, weights: torch.Tensor | None = None) -> np.ndarray:
        """(N, C) class probabilities (single-label) or per-label probabilities (multi-label)."""
        return _scores(self.weights if weights is None else weights, feats, self.logit_scale, self.multilabel)

    def linear_init(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C, D), bias (C,)) of a linear head on normalised features with the same scores."""
        w = self.weights[:, 1] - self.weights[:, 0] if self.multilabel else self.weights
        return self.logit_scale * w, torch.zeros(w.shape[0])


def _scores(w: torch.Tensor, feats, scale: float, multilabel: bool) -> np.ndarray:
    f = F.normalize(torch.as_tensor(np.asarray(feats), dtype=torch.float32), dim=-1)
    with torch.no_grad():
        if multilabel:
            logits = scale * torch.einsum("nd,lkd->nlk", f, w)
            return logits.softmax(-1)[..., 1].numpy()
        return (scale * f @ w.t()).softmax(-1).numpy()


def class_embedding(encode: Callable[[list[str]], torch.Tensor], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ensemble embedding (D,), per-template normalised embeddings (T, D)) of one class."""
    with torch.no_grad():
        e = F.normalize(encode(texts).float().cpu(), dim=-1)
        mean = e.mean(dim=0)
        return mean / mean.norm(), e


def build_classifier(encode: Callable[[list[str]], torch.Tensor], classes: tuple, templates: tuple[str, ...],
                     logit_scale: float) -> ZeroShotClassifier:
    """The zero-shot classifier of a prompt set: classes in label order (names, or (positive, negative)
    pairs for multi-label), each ``{c}`` template filled."""
    multilabel = bool(classes) and all(isinstance(c, tuple) for c in classes)
    names = [n for c in classes for n in (c[::-1] if multilabel else (c,))]  # multi-label: negative first
    ens, per = zip(*(class_embedding(encode, [t.format(c=n) for t in templates]) for n in names))
    weights = torch.stack(ens)
    per_t = [torch.stack([p[t] for p in per]) for t in range(len(templates))]
    if multilabel:
        weights = weights.reshape(len(classes), 2, -1)
        per_t = [w.reshape(len(classes), 2, -1) for w in per_t]
    return ZeroShotClassifier(weights, per_t, float(logit_scale), multilabel)


def template_spread(clf: ZeroShotClassifier, templates: tuple[str, ...], task: str,
                    y: dict[str, np.ndarray], feats: dict[str, np.ndarray]) -> list[dict]:
    """Each template on its own: its ACC and AUC per split (how much the result moves between templates)."""
    out = []
    for t, w in zip(templates, clf.per_template):
        row: dict = {"template": t}
        for split in y:
            s = clf.scores(feats[split], w)
            row[split] = {"acc": metrics.acc(task, y[split], s), "auc": _auc(task, y[split], s)}
        out.append(row)
    return out


def _auc(task: str, y: np.ndarray, s: np.ndarray) -> float:
    try:
        return metrics.auc(task, y, s)
    except ValueError:  # a split with one class
        return float("nan")


def spread(rows: list[dict], split: str = "test", metric: str = "auc") -> dict:
    """min / max / mean of a metric over the templates (the report's interval)."""
    v = np.array([r[split][metric] for r in rows], dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {}
    return {"min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "n": int(len(v))}


# ------------------------------------------------------------------------------ --init zeroshot


INIT_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
INIT_WDS = (0.0, 1e-4)


@dataclass
class InitResult:
    weight: torch.Tensor
    bias: torch.Tensor
    lr: float
    wd: float
    epoch: int
    val_value: float
    grid: list[dict] = field(default_factory=list)
    multilabel: bool = False

    def scores(self, feats: np.ndarray) -> np.ndarray:
        f = F.normalize(torch.as_tensor(np.asarray(feats), dtype=torch.float32), dim=-1)
        with torch.no_grad():
            logits = f @ self.weight.t() + self.bias
            return (logits.sigmoid() if self.multilabel else logits.softmax(-1)).numpy()


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-head mean loss, logits (H, N, C)."""
    if multilabel:
        known = (y != metrics.UNKNOWN).float()
        l = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float().expand_as(logits), reduction="none")
        return (l * known).sum((1, 2)) / known.sum().clamp(min=1)
    h, n, c = logits.shape
    return F.cross_entropy(logits.reshape(h * n, c), y.repeat(h), reduction="none").reshape(h, n).mean(1)


def train_from_zeroshot(clf: ZeroShotClassifier, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                        y_val: np.ndarray, task: str, *, epochs: int, batch_size: int, select: str, seed: int,
                        lrs: tuple[float, ...] = INIT_LRS, wds: tuple[float, ...] = INIT_WDS) -> InitResult:
    """A grid of linear heads (``lrs`` x ``wds``, AdamW) on L2-normalised features, every one starting
    at the zero-shot classifier; val is scored before training (epoch 0: the zero-shot scores) and
    after each epoch, and the head and epoch best on ``select`` win (ties: lower val loss, then the
    earlier epoch)."""
    multilabel = clf.multilabel
    w0, b0 = clf.linear_init()
    grid = [(lr, wd) for lr in lrs for wd in wds]
    h = len(grid)
    g = torch.Generator().manual_seed(seed)
    xt = F.normalize(torch.as_tensor(np.asarray(x_train), dtype=torch.float32), dim=-1)
    xv = F.normalize(torch.as_tensor(np.asarray(x_val), dtype=torch.float32), dim=-1)
    yt = torch.as_tensor(np.asarray(y_train)).long()
    yv = torch.as_tensor(np.asarray(y_val)).long()
    if not multilabel:
        yt, yv = yt.reshape(-1), yv.reshape(-1)
    w = w0.unsqueeze(0).repeat(h, 1, 1).clone().requires_grad_(True)
    b = b0.unsqueeze(0).repeat(h, 1).clone().requires_grad_(True)
    lr_t = torch.tensor([lr for lr, _ in grid]).view(h, 1, 1)
    wd_t = torch.tensor([wd for _, wd in grid]).view(h, 1, 1)
    m = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)}
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0

    def evaluate(epoch: int) -> list[dict]:
        with torch.no_grad():
            logits = torch.einsum("nd,hcd->hnc", xv, w) + b.unsqueeze(1)
            losses = _loss(logits, yv, multilabel)
            probs = (logits.sigmoid() if multilabel else logits.softmax(-1)).numpy()
        rows = []
        for i, (lr, wd) in enumerate(grid):
            rows.append({"lr": lr, "wd": wd, "epoch": epoch, "val_loss": float(losses[i]),
                         "val_acc": metrics.acc(task, y_val, probs[i]), "val_auc": _auc(task, y_val, probs[i])})
        return rows

    records = evaluate(0)
    best = _pick(records, select)
    i = grid.index((best["lr"], best["wd"]))
    best_w, best_b = w[i].detach().clone(), b[i].detach().clone()
    n = len(xt)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = torch.einsum("nd,hcd->hnc", xt[idx], w) + b.unsqueeze(1)
            loss = _loss(logits, yt[idx], multilabel).sum()
            gw, gb = torch.autograd.grad(loss, (w, b))
            step += 1
            with torch.no_grad():  # AdamW, one lr / weight decay per head
                for p, grad, lr_p, wd_p in ((w, gw, lr_t, wd_t), (b, gb, lr_t.view(h, 1), wd_t.view(h, 1) * 0)):
                    m1, m2 = m[id(p)]
                    p.mul_(1 - lr_p * wd_p)
                    m1.mul_(beta1).add_(grad, alpha=1 - beta1)
                    m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (m2 / (1 - beta2 ** step)).sqrt().add_(eps)
                    p.sub_(lr_p * (m1 / (1 - beta1 ** step)) / denom)
        rows = evaluate(epoch)
        records += rows
        cand = _pick(rows, select)
        if _better(cand, best, select):
            best = cand
            i = grid.index((best["lr"], best["wd"]))
            best_w, best_b = w[i].detach().clone(), b[i].detach().clone()
    return InitResult(best_w, best_b, best["lr"], best["wd"], best["epoch"], best[f"val_{select}"], records, multilabel)


def _key(r: dict, select: str) -> tuple:
    v = r[f"val_{select}"]
    v = -np.inf if not np.isfinite(v) else v
    return ((-v if select == "loss" else v), -r["val_loss"], -r["epoch"])


def _pick(rows: list[dict], select: str) -> dict:
    return max(rows, key=lambda r: _key(r, select))


def _better(a: dict, b: dict, select: str) -> bool:
    ka, kb = _key(a, select), _key(b, select)
    return ka[:2] > kb[:2]
