"""Heads on cached features: a grid of linear probes trained in one pass, and kNN.

The linear grid follows DINOv2's eval/linear.py: every (learning rate, weight decay) pair is its
own head, all heads see the same mini-batches in one pass over the features, the best head and
epoch are chosen on val, and only that one is scored on test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .errors import TrainingDiverged
from .options import choices
from .progress import track

DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
DEFAULT_WDS = (0.0, 1e-3)
SELECT = choices("select")
# a training loss has diverged when it is NaN or infinite, or over this many times its first value
# (taken as at least LOSS_FLOOR, so a first loss near 0 does not make every later one "diverged")
DIVERGED_FACTOR = 1e6
LOSS_FLOOR = 1e-3


def diverged_why(loss: float, first: float) -> str | None:
    """How a training loss diverged ("became nan", "became 1e+16, over 1e+06 times its first
    value (0.69)"), or None while it has not."""
    if not math.isfinite(loss):
        return f"became {loss}"
    if loss > DIVERGED_FACTOR * max(first, LOSS_FLOOR):
        return f"became {loss:.3g}, over {DIVERGED_FACTOR:g} times its first value ({first:.3g})"
    return None


def scores_from_logits(task: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if metrics.is_multilabel(task) else torch.softmax(logits, dim=-1)


def loss_fn(task: str, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
            class_weight: torch.Tensor | None = None) -> torch.Tensor:
    if metrics.is_multilabel(task):
        known = y != metrics.UNKNOWN
        if bool(known.all()):
            return F.binary_cross_entropy_with_logits(logits, y.float(), reduction=reduction, pos_weight=class_weight)
        per = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float(), reduction="none",
                                                 pos_weight=class_weight)[known]
        return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per
    return F.cross_entropy(logits, y.view(-1), reduction=reduction, weight=class_weight)


def _per_head_loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of each head; logits (H, N, C) -> (H,)."""
    n_heads, _, n_out = logits.shape
    if metrics.is_multilabel(task):
        known = y != metrics.UNKNOWN
        per = F.binary_cross_entropy_with_logits(
            logits, y.clamp(min=0).float().unsqueeze(0).expand_as(logits), reduction="none")
        if bool(known.all()):
            return per.mean(dim=(1, 2))
        return (per * known).sum(dim=(1, 2)) / known.sum().clamp(min=1)  # unknown labels left out
    return F.cross_entropy(logits.reshape(-1, n_out), y.view(-1).repeat(n_heads),
                           reduction="none").view(n_heads, -1).mean(1)


def selection_values(select: str, task: str, y_true: np.ndarray, scores: np.ndarray,
                      losses: torch.Tensor) -> np.ndarray:
    """One value per head, higher is better (loss is negated). scores: (H, N, C)."""
    if select == "loss":
        return -losses.cpu().numpy()
    accs = np.array([metrics.acc(task, y_true, s) for s in scores])
    if select == "acc":
        return accs
    aucs = metrics.auc_batched(task, y_true, scores)
    # a val split with a single class (tiny --limit runs) has no AUC: fall back to accuracy
    return np.where(np.isnan(aucs), accs, aucs)


@dataclass
class LinearGridResult:
    weight: torch.Tensor  # (D, C) of the selected head, on standardised features
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    lr: float
    wd: float
    epoch: int
    val_value: float
    grid: list[dict] = field(default_factory=list)  # one row per (head, checkpoint) for the record
    # grid members left out of selection because their training loss diverged: lr, wd, epoch, why
    diverged: list[dict] = field(default_factory=list)

    def scores(self, task: str, x: np.ndarray, device: torch.device) -> np.ndarray:
        xt = (torch.from_numpy(x).to(device) - self.mean) / self.std
        return scores_from_logits(task, xt @ self.weight + self.bias).cpu().numpy()

    def head_state(self) -> dict[str, torch.Tensor]:
        """The selected head as a :class:`ProbeHead` state dict (saved with the run)."""
        return {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}


class ProbeHead(torch.nn.Module):
    """The selected linear probe as a module on readout features (logits), for bench explain."""

    wants_tokens = False

    def __init__(self, dim: int, n_out: int) -> None:
        super().__init__()
        for name, shape in (("weight", (dim, n_out)), ("bias", (n_out,)), ("mean", (dim,)), ("std", (dim,))):
            self.register_buffer(name, torch.zeros(shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.mean) / self.std) @ self.weight + self.bias


def train_linear_grid(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      task: str, n_outputs: int, *, lrs: tuple[float, ...] = DEFAULT_LRS,
                      wds: tuple[float, ...] = DEFAULT_WDS, epochs: int = 100, batch_size: int = 256,
                      select: str = "auc", seed: int = 0, device: torch.device | None = None,
                      evals: int = 20, quiet: bool = False) -> LinearGridResult:
    """Train len(lrs) x len(wds) linear heads together with Adam; pick one on val.

    A head whose training loss diverges (``diverged_why``; a non-finite val loss too) stops
    learning and is left out of selection (``diverged``); when every head diverges the run stops
    (TrainingDiverged)."""
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    xtr = torch.from_numpy(x_train).to(device)
    # standardise with train statistics so one lr grid suits every backbone's feature scale
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr = (xtr - mean) / std
    xva = (torch.from_numpy(x_val).to(device) - mean) / std
    ytr = torch.from_numpy(y_train).to(device)
    yva_np = y_val.squeeze(-1) if not metrics.is_multilabel(task) else y_val
    yva = torch.from_numpy(y_val).to(device)

    pairs = [(lr, wd) for lr in lrs for wd in wds]
    n_heads, dim = len(pairs), xtr.shape[1]
    lr_t = torch.tensor([p[0] for p in pairs], device=device).view(-1, 1, 1)
    wd_t = torch.tensor([p[1] for p in pairs], device=device).view(-1, 1, 1)
    w = (torch.randn(n_heads, dim, n_outputs, generator=gen) * 0.01).to(device)
    b = torch.zeros(n_heads, 1, n_outputs, device=device)
    params = [w, b]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    n = len(xtr)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    eval_at = set(np.unique(np.linspace(1, epochs, min(evals, epochs)).round().astype(int)).tolist())
    # each head's best (value, val loss, epoch, w, b): the choice among heads is made at the end, so
    # a head that diverges after its best evaluation is still left out
    head_best: list[tuple | None] = [None] * n_heads
    grid: list[dict] = []
    step = 0
    # divergence, kept on the device (no sync per step): the first loss of each head, which heads
    # diverged, and at which epoch with which loss; read at evaluations
    first_loss: torch.Tensor | None = None
    dead = torch.zeros(n_heads, dtype=torch.bool, device=device)
    dead_epoch = torch.zeros(n_heads, dtype=torch.long, device=device)
    dead_loss = torch.zeros(n_heads, device=device)
    diverged: dict[int, dict] = {}
    for epoch in track(range(1, epochs + 1), epochs, "linear grid", "epoch", quiet):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            w.requires_grad_(True)
            b.requires_grad_(True)
            logits = torch.einsum("nd,hdc->hnc", xtr[idx], w) + b  # every head, same batch
            loss = _per_head_loss(task, logits, ytr[idx])
            # heads are independent, so the gradient of the sum is each head's own gradient
            gw, gb = torch.autograd.grad(loss.sum(), [w, b])
            w, b = w.detach(), b.detach()
            gw = gw + wd_t * w  # L2 penalty on weights only
            step += 1
            with torch.no_grad():
                loss = loss.detach()
                first_loss = loss.clone() if first_loss is None else first_loss
                bad = ~torch.isfinite(loss) | (loss > DIVERGED_FACTOR * first_loss.clamp_min(LOSS_FLOOR))
                new = bad & ~dead
                dead_epoch = torch.where(new, epoch, dead_epoch)
                dead_loss = torch.where(new, loss, dead_loss)
                dead |= bad
                lr_live = torch.where(dead.view(-1, 1, 1), 0.0, lr_t)  # a diverged head learns no further
                for j, (p, g) in enumerate(zip((w, b), (gw, gb))):
                    m[j].mul_(beta1).add_(g, alpha=1 - beta1)
                    v[j].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    mhat = m[j] / (1 - beta1 ** step)
                    vhat = v[j] / (1 - beta2 ** step)
                    p.sub_(lr_live * mhat / (vhat.sqrt() + eps))
        if epoch in eval_at:
            with torch.no_grad():
                logits = torch.einsum("nd,hdc->hnc", xva, w) + b
                losses = _per_head_loss(task, logits, yva)
                gone = (dead | ~torch.isfinite(losses)).cpu().numpy()
                scores = scores_from_logits(task, logits).cpu().numpy()
                if gone.any():
                    scores[gone] = 0.0  # NaN scores of a diverged head must not reach the metrics
                values = selection_values(select, task, yva_np, scores, losses)
            for h in map(int, np.flatnonzero(gone)):
                if h not in diverged:
                    trained = bool(dead[h])
                    got, first = float(dead_loss[h]), float(first_loss[h])
                    why = f"the training loss {diverged_why(got, first) or f'became {got:.3g}'}" \
                        if trained else f"the val loss became {float(losses[h])}"
                    diverged[h] = {"lr": pairs[h][0], "wd": pairs[h][1],
                                   "epoch": int(dead_epoch[h]) if trained else epoch, "why": why}
            for h, (lr, wd) in enumerate(pairs):
                grid.append({"lr": lr, "wd": wd, "epoch": epoch, "val_loss": float(losses[h]),
                             f"val_{select}": float("nan") if gone[h] else float(values[h])})
                # ties on the criterion (AUC saturates on easy data) go to the lower val loss
                mine = head_best[h] or (-math.inf, math.inf)
                if h not in diverged and (values[h], -float(losses[h])) > (mine[0], -mine[1]):
                    head_best[h] = (float(values[h]), float(losses[h]), epoch, w[h].clone(), b[h, 0].clone())
    if len(diverged) == n_heads:
        d = diverged[0]
        raise TrainingDiverged(f"every member of the linear grid diverged ({n_heads} heads; e.g. lr {d['lr']:g}, "
                               f"weight decay {d['wd']:g}: {d['why']} at epoch {d['epoch']}); "
                               f"check the features for NaN or huge values")
    held = [h for h in range(n_heads) if h not in diverged and head_best[h] is not None]
    if held:  # the best value; ties to the lower val loss, then the earlier evaluation, then the earlier head
        h = max(held, key=lambda i: (head_best[i][0], -head_best[i][1], -head_best[i][2], -i))
        value, _, epoch, bw, bb = head_best[h]
    else:  # every evaluation was -inf (degenerate val split): the last state of a head that held
        h = next(i for i in range(n_heads) if i not in diverged)
        value, epoch, bw, bb = -math.inf, epochs, w[h].clone(), b[h, 0].clone()
    left_out = [diverged[i] for i in sorted(diverged)]
    return LinearGridResult(bw, bb, mean, std, pairs[h][0], pairs[h][1], epoch, value, grid, left_out)


KNN_METRICS, KNN_VOTES = choices("knn_metric"), choices("knn_vote")
EUCLIDEAN_SPARE = 16  # float32 candidates beyond k, re-ranked on exact float64 distances


@torch.no_grad()
def knn_scores(x_train: np.ndarray, y_train: np.ndarray, x_query: np.ndarray, task: str, n_outputs: int,
               k: int = 11, device: torch.device | None = None, chunk: int = 1024, *,
               metric: str = "cosine", vote: str = "shares") -> np.ndarray:
    """Scores from the k nearest train neighbours of each query.

    metric: cosine (L2-normalised features) or euclidean (raw features, as sklearn's
    NearestNeighbors: candidates from float32 distances, ranked on exact float64 ones).
    vote: shares (fraction of neighbours per class / label) or majority (one-hot of the most
    common class, ties to the smallest label; multi-label: label mean > 0.5), as MedMNIST+."""
    assert metric in KNN_METRICS and vote in KNN_VOTES, (metric, vote)
    device = device or torch.device("cpu")
    xtr = torch.from_numpy(np.ascontiguousarray(x_train)).to(device)
    if metric == "cosine":
        xtr = F.normalize(xtr, dim=1)
    else:
        xtr_sq = (xtr * xtr).sum(1)
        xtr64 = xtr.double()
    multilabel = metrics.is_multilabel(task)
    known = None
    if multilabel:
        targets = torch.from_numpy(y_train).to(device).float()
        if metrics.has_unknown(y_train):  # a neighbour votes only on the labels it knows
            known, targets = (targets != metrics.UNKNOWN).float(), (targets == 1).float()
    else:
        targets = F.one_hot(torch.from_numpy(y_train).view(-1).to(device), n_outputs).float()
    k = min(k, len(xtr))
    out = []
    for start in range(0, len(x_query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(x_query[start:start + chunk])).to(device)
        if metric == "cosine":
            idx = (F.normalize(q, dim=1) @ xtr.T).topk(k, dim=1).indices
        else:
            approx = xtr_sq[None] - 2 * q @ xtr.T  # + |q|^2, the same for every candidate
            cand = approx.topk(min(k + EUCLIDEAN_SPARE, len(xtr)), dim=1, largest=False).indices
            exact = ((q.double()[:, None] - xtr64[cand]) ** 2).sum(-1)
            order = exact.argsort(dim=1, stable=True)[:, :k]
            idx = cand.gather(1, order)
        votes = targets[idx].mean(dim=1) if known is None else \
            targets[idx].sum(dim=1) / known[idx].sum(dim=1).clamp(min=1)
        if vote == "majority":
            votes = (votes > 0.5).float() if multilabel else F.one_hot(votes.argmax(1), n_outputs).float()
        out.append(votes)
    return torch.cat(out).cpu().numpy()
