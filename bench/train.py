"""Fine-tuning: `--unfreeze lastN|all` and trained heads (linear, mlp, deit), through the
stem/blocks/readout contract only.

With N of L blocks unfrozen, the frozen prefix stem + blocks[:L-N] does not change during training;
without augmentation its output is computed once (prefix caching) and every epoch starts from it.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from backbones.base import Backbone

from . import adapt, augment, datapath, heads, metrics
from .run_config import RunConfig, RunOptions, parse_unfreeze
from .context import RunContext
from .env import setting
from .errors import TrainingDiverged
from .features import autocast, precision
from .progress import track
from .protocol import ProtocolOutput
from .trained_heads import build_head as _build_head

PREFIX_MEMORY_BYTES = int(setting("BENCH_PREFIX_MEMORY_GB") * (1 << 30))


def build_head(cfg: RunConfig, model: Backbone, n_out: int, pretrained: bool | None = None) -> nn.Module:
    """The run's head; the DeiT head starts from ImageNet DeiT unless the backbone is random."""
    if pretrained is None:
        pretrained = cfg.weights != "random"
    return _build_head(cfg.head, model, n_out, cfg.input_size, arch=cfg.head_arch, pretrained=pretrained,
                       depth=cfg.head_depth, tokens=cfg.head_tokens)


class Trainable(nn.Module):
    """blocks[k:] -> readout (or tokens) -> head. With k == 0 and the stem unfrozen, starts from images."""

    def __init__(self, backbone: Backbone, k: int, head: nn.Module, with_stem: bool) -> None:
        super().__init__()
        self.backbone, self.k, self.head, self.with_stem = backbone, k, head, with_stem

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.with_stem:
            h = self.backbone.stem(h)
        h = self.backbone.run_blocks(h, self.k)
        z = self.head.take_tokens(self.backbone, h) if getattr(self.head, "wants_tokens", False) \
            else self.backbone.readout(h)
        return self.head(z)


@dataclass
class Plan:
    k: int                  # first trainable block
    train_stem: bool
    cache_prefix: bool      # train prefix computed once and reused every epoch (no augmentation)
    frozen_train: bool = False  # frozen blocks in train mode: their output changes as statistics adapt

    @property
    def cached_splits(self) -> tuple[str, ...]:
        """Splits whose prefix is computed once: val and test are never augmented."""
        if self.train_stem or self.frozen_train:
            return ()
        return ("train", "val", "test") if self.cache_prefix else ("val", "test")


def plan_for(cfg: RunConfig, model: Backbone) -> Plan:
    n = parse_unfreeze(cfg.unfreeze, model.num_blocks)
    k = model.num_blocks - n
    train_stem = n == model.num_blocks and adapt.trains_stem(cfg.adapt)  # LoRA keeps the stem frozen
    frozen_train = cfg.frozen_mode == "train" and not train_stem
    return Plan(k, train_stem, cache_prefix=not train_stem and cfg.augment == "none" and not frozen_train,
                frozen_train=frozen_train)


# parameters that are embeddings rather than weights: no weight decay (timm's no_weight_decay)
NO_DECAY_MARKERS = ("token", "pos_embed", "position_embedding", "positional_embedding", "class_embedding",
                    "rel_pos")


def param_groups(cfg: RunConfig, model: Backbone, head: nn.Module, plan: Plan,
                 backbone_params: list[nn.Parameter] | None = None) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, tokens and position embeddings, and
    layer-wise lr decay: lr x layer_decay^(distance from the head), stem lowest.
    ``backbone_params``: the backbone's trainable ones (bench.adapt; default: all of blocks[k:])."""
    top = model.num_blocks + 1
    depth = {id(p): 0 for p in model.stem_parameters()}
    for i, block in enumerate(model.blocks):
        depth.update({id(p): i + 1 for p in block.parameters()})
    for m in model.readout_modules():
        depth.update({id(p): top for p in m.parameters()})
    names = {id(p): n for n, p in model.named_parameters()}
    names.update({id(p): f"head.{n}" for n, p in head.named_parameters()})
    groups: dict[tuple[int, bool], list] = {}
    if backbone_params is None:
        backbone_params = model.trainable_parameters(model.num_blocks - plan.k)
    for p in backbone_params + list(head.parameters()):
        no_decay = cfg.decay_scope != "all" and (p.ndim <= 1 or any(t in names[id(p)] for t in NO_DECAY_MARKERS))
        groups.setdefault((depth.get(id(p), top), no_decay), []).append(p)  # head: top
    out = []
    for (d, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0]):
        scale = cfg.layer_decay ** (top - d)
        out.append({"params": params, "lr": cfg.lr * scale, "base_lr": cfg.lr * scale,
                    "weight_decay": 0.0 if no_decay else cfg.weight_decay})
    return out


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start index of each training batch. A last batch of one image is merged into the one before:
    a training BatchNorm cannot normalise a single value per channel."""
    starts = list(range(0, n, batch_size)) or [0]
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def lr_factor(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine-epoch":
        # timm CosineLRScheduler(t_initial=epochs) stepped with epoch=e after epoch e: epoch e (from 0)
        # trains at lr(max(e - 1, 0)), lr(t) = 0.5 * (1 + cos(pi * t / epochs)) (MedMNIST+ train.py:87,138)
        epoch = (step - warm) // steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * max(epoch - 1, 0) / cfg.epochs))
    if cfg.schedule == "step":  # MedMNIST v2: x0.1 at 50% and 75% of the epochs
        epoch = step / steps_per_epoch
        return 0.1 ** ((epoch >= 0.5 * cfg.epochs) + (epoch >= 0.75 * cfg.epochs))
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def class_weights(task: str, labels: np.ndarray, n_out: int) -> torch.Tensor:
    if metrics.is_multilabel(task):  # unknown (-1) entries count as neither
        pos = (labels == 1).sum(0).clip(min=1)
        return torch.tensor((labels == 0).sum(0) / pos, dtype=torch.float32)  # pos_weight
    counts = np.bincount(labels[:, 0], minlength=n_out).clip(min=1)
    return torch.tensor(len(labels) / (n_out * counts), dtype=torch.float32)


def epoch_order(cfg: RunConfig, task: str, labels: np.ndarray, n: int, gen: torch.Generator) -> torch.Tensor:
    if cfg.balance == "sampler" and not metrics.is_multilabel(task):
        counts = np.bincount(labels[:, 0])
        w = torch.tensor(1.0 / counts[labels[:, 0]], dtype=torch.float64)
        return torch.multinomial(w, n, replacement=True, generator=gen)
    return torch.randperm(n, generator=gen)


def finetune(ctx: RunContext, plan: Plan, head: nn.Module) -> ProtocolOutput:
    """Train ``head`` with blocks[plan.k:] of the backbone; select the epoch on val, score test once."""
    cfg, opts, ds, model, pre, device = ctx.cfg, ctx.opts, ctx.dataset, ctx.model, ctx.pre, ctx.device
    log = ctx.log
    head = head.to(device)
    backbone_params = adapt.backbone_parameters(cfg, model, plan.k)  # --adapt lora injects its layers here
    trainable = Trainable(model, plan.k, head, plan.train_stem).to(device)
    groups = param_groups(cfg, model, head, plan, backbone_params)
    for p in model.parameters():
        p.requires_grad_(False)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    policy = augment.policy_for(cfg.augment, ds.modality)

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return model.run_blocks(model.stem(x), 0, plan.k)

    step_prefix = ctx.frozen_fn(prefix)  # where it runs every step (augmentation): --channels-last, --compile
    inputs: dict[str, np.ndarray] = {}
    model.eval()
    with ctx.timings("prefix"):
        for split in plan.cached_splits:
            inputs[split] = _cached_prefix(ctx, prefix, plan.k, split)

    def device_batches(split: str, index: list) -> Iterator[tuple[datapath.Index, torch.Tensor]]:
        """(index, batch on the device), read ahead (bench.datapath): rows of the cached prefix,
        or uint8 (B,C,H,W) images."""
        cached = split in inputs
        source = inputs[split] if cached else ds.splits[split].images
        for i, x in datapath.batches_of(source, index, device):
            yield i, (x if cached else pre.layout(x))

    def forward_batch(split: str, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Logits of one batch from ``device_batches``."""
        if split in inputs:
            return trainable(x)
        u8 = x
        if train and policy is not None:
            x = augment.augmented(pre, u8, policy, aug_gen)  # in pixel space, then normalised
        else:
            x = pre(u8)
        if plan.train_stem:
            return trainable(x)
        with torch.no_grad():
            h = step_prefix(x)
        return trainable(h)

    def set_train_mode() -> None:
        model.eval()  # frozen BatchNorm keeps its running statistics
        if plan.train_stem or plan.frozen_train:  # (frozen_train: they adapt, as model.train() does)
            model.train()
        else:
            for block in model.blocks[plan.k:]:
                block.train()
            if plan.k < model.num_blocks:  # the readout trains with the last block, not alone
                for m in model.readout_modules():
                    m.train()
        head.train()

    @torch.no_grad()
    def predict(split: str) -> tuple[np.ndarray, float]:
        model.eval()
        head.eval()
        n = len(ds.splits[split])
        out, loss_sum = [], 0.0
        y_all = torch.from_numpy(ds.splits[split].labels)
        for idx, x in device_batches(split, datapath.sequential(n, cfg.batch_size)):
            with autocast(device, cfg.precision):
                logits = forward_batch(split, x, train=False).float()
            loss_sum += float(heads.loss_fn(ds.task, logits, y_all[idx].to(device), reduction="sum"))
            out.append(heads.scores_from_logits(ds.task, logits).cpu().numpy())
        denom = int((ds.splits[split].labels != metrics.UNKNOWN).sum()) if metrics.is_multilabel(ds.task) else n
        return np.concatenate(out), loss_sum / denom

    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    use_scaler = precision(device, cfg.precision) == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    weight = class_weights(ds.task, ds.splits["train"].labels, ds.n_outputs).to(device) \
        if cfg.balance == "weighted-loss" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    train_labels = ds.splits["train"].labels
    n_train = len(train_labels)
    starts = batch_starts(n_train, cfg.batch_size)
    steps_per_epoch = len(starts)
    y_val = ds.splits["val"].labels if metrics.is_multilabel(ds.task) else ds.splits["val"].labels[:, 0]
    last = cfg.select == "last"  # no selection on val: the model after the last epoch is tested
    criterion = "loss" if last else cfg.select  # (recorded: val loss of the epoch tested)

    ckpt = checkpoint_for(opts, cfg)
    state = ckpt.load(trainable, opt, gen, aug_gen) if not opts.force else None
    every = float(opts.checkpoint_every or 0)  # seconds between saves (0: none at all)
    last_save = time.monotonic()
    start_epoch, best, curves = (state or {}).get("epoch", 0), (state or {}).get("best"), (state or {}).get("curves", [])
    stopped = (state or {}).get("stopped", False)  # early-stopped before the kill: train no further
    if state:
        log(f"resuming fine-tune from epoch {start_epoch} ({ckpt.path})")
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
    step = start_epoch * steps_per_epoch
    t_train = time.perf_counter()
    bad_epochs = (state or {}).get("bad_epochs", 0)
    # divergence is judged against the first loss (resumed: the first epoch's mean)
    first_loss = curves[0]["train_loss"] if curves else None
    for epoch in track(range(start_epoch + 1, cfg.epochs + 1), cfg.epochs - start_epoch, "fine-tune", "epoch",
                       opts.quiet):
        if stopped:
            break
        set_train_mode()
        order = epoch_order(cfg, ds.task, train_labels, n_train, gen).numpy()
        loss_sum = 0.0
        index = [np.sort(order[start:starts[i + 1] if i + 1 < len(starts) else n_train])
                 for i, start in enumerate(starts)]
        batches = device_batches("train", index)
        for i, (idx, x) in enumerate(batches):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(cfg, step, steps_per_epoch)
            with autocast(device, cfg.precision):
                logits = forward_batch("train", x, train=True).float()
            loss = heads.loss_fn(ds.task, logits, torch.from_numpy(train_labels[idx]).to(device), class_weight=weight)
            opt.zero_grad(set_to_none=True)
            loss_value = loss.item()
            first_loss = loss_value if first_loss is None else first_loss
            why = heads.diverged_why(loss_value, first_loss)
            if why:  # a diverged run must not be selected or resumed from
                batches.close()  # the reader thread stops now, not when the traceback is freed
                raise TrainingDiverged(f"{cfg.run_id}: the training loss {why} at epoch {epoch}, "
                                       f"step {i + 1}; lower --lr (now {cfg.lr:g}) or use --grad-clip")
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss_value
            step += 1
        val_scores, val_loss = predict("val")
        value = float(heads.selection_values(criterion, ds.task, y_val, val_scores[None],
                                              torch.tensor([val_loss]))[0])
        curves.append({"epoch": epoch, "train_loss": loss_sum / steps_per_epoch, "val_loss": val_loss,
                       "val_auc": _safe_auc(ds.task, y_val, val_scores), "val_acc": metrics.acc(ds.task, y_val, val_scores),
                       "lr": opt.param_groups[-1]["lr"]})
        # ties on the criterion (AUC saturates on easy data) go to the lower val loss
        if best is None or last or (value, -val_loss) > (best["value"], -best["val_loss"]):
            best = {"value": value, "val_loss": val_loss, "epoch": epoch, "state": _trainable_state(trainable)}
            bad_epochs = 0
        else:
            bad_epochs += 1
        stopped = bool(cfg.patience and bad_epochs >= cfg.patience)
        # by wall clock, not every epoch (an epoch can take less than writing the state), and at the end
        if every > 0 and (stopped or epoch == cfg.epochs or time.monotonic() - last_save >= every):
            ckpt.save(trainable, opt, gen, aug_gen, epoch=epoch, best=best, curves=curves, bad_epochs=bad_epochs,
                      stopped=stopped, scaler=scaler.state_dict())
            last_save = time.monotonic()
        if stopped:
            log(f"early stop at epoch {epoch}: val {cfg.select} has not improved for {cfg.patience} epochs")
    ctx.timings.values["train_s"] = time.perf_counter() - t_train
    trainable.load_state_dict(best["state"], strict=False)  # best epoch on val, then test once
    val_scores, _ = predict("val")
    test_scores, _ = predict("test")
    # the head is saved with every run (bench explain rebuilds the model from it); a backbone that
    # changed (trained blocks, adapted BatchNorm statistics) only with --save-model: it is large
    backbone_trained = plan.frozen_train or any(p.requires_grad for p in model.parameters())
    adapter = adapt.finish(cfg, model, with_files=opts.save_model)  # LoRA: merged into plain weights
    files = {**model_files(model, head, cfg.head, with_backbone=opts.save_model), **adapter}
    # the checkpoint stays until the runner has written the results (see checkpoint_for)
    n_train_params = sum(p.numel() for g in groups for p in g["params"])
    counts = {"backbone": sum(p.numel() for p in backbone_params), "head": sum(p.numel() for p in head.parameters()),
              "total": n_train_params, "adapt": cfg.adapt or "none"}
    selected = {"head": cfg.head, "unfreeze": cfg.unfreeze, "epoch": best["epoch"], f"val_{criterion}": best["val_loss"] if last else best["value"],
                "trainable_params": n_train_params, "prefix_cached": list(plan.cached_splits)}
    return ProtocolOutput(val_scores, test_scores, selected, [{"split": "val", **c} for c in curves],
                          extra={"backbone_trained": backbone_trained, "trainable_parameters": counts}, files=files)


def _cached_prefix(ctx: RunContext, prefix, k: int, split: str) -> np.ndarray:
    """Output of the frozen stem+blocks[:k] for one split, computed once and cached on disk; over
    the memory budget it stays on disk and batches are read from the memory-mapped file."""
    arr, hit = ctx.frozen_pass(split, prefix, what=f"prefix:{k}", memory_budget=PREFIX_MEMORY_BYTES)
    ctx.log(f"prefix stem+blocks[:{k}] {split}: {'cache hit' if hit else 'computed once'} {tuple(arr.shape)}")
    return arr


def _safe_auc(task: str, y: np.ndarray, s: np.ndarray) -> float:
    try:
        return metrics.auc(task, y, s)
    except ValueError:
        return float("nan")


def _trainable_state(trainable: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors that can change: trainable parameters and all buffers."""
    keep = {n for n, p in trainable.named_parameters() if p.requires_grad} | {n for n, _ in trainable.named_buffers()}
    return {n: t.detach().clone() for n, t in trainable.state_dict().items() if n in keep}


def checkpoint_for(opts: RunOptions, cfg: RunConfig) -> "Checkpoint":
    return Checkpoint(Path(opts.results_dir) / "checkpoints" / f"{cfg.run_id}.pt")


class Checkpoint:
    """Training state so a killed fine-tune resumes where it stopped, saved every
    ``--checkpoint-every`` seconds (at the end of an epoch) and when training ends. Loaded with
    weights_only=True: only tensors and plain containers.

    ``<run_id>.pt`` holds the trainable weights, optimizer, generators and curves. The best epoch's
    weights live in memory during training; on disk they are either the ``.pt``'s own weights (the
    best epoch is the saved one) or ``<run_id>.pt.best-e<E>``, written once per best epoch and not
    again while the best is unchanged: when the best epoch was the one saved last, that file is
    the earlier ``.pt`` itself (a hard link, no bytes written), else its weights alone.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._best_file: tuple[int, Path] | None = None  # (epoch, file) of the best weights on disk
        self._main_best: int | None = None  # epoch of the .pt on disk when its weights are that epoch's best

    def best_path(self, epoch: int) -> Path:
        return self.path.with_name(f"{self.path.name}.best-e{epoch}")

    def _stage(self, target: Path, obj: dict) -> None:
        tmp = self.path.with_name(f".{target.name}.tmp{os.getpid()}")
        torch.save(obj, tmp)
        os.replace(tmp, target)

    def _best_on_disk(self, best: dict, epoch: int) -> Path | None:
        """The file holding the best weights when they are not this save's own (written if needed)."""
        b = best["epoch"]
        if b == epoch:
            return None
        if self._best_file is not None and self._best_file[0] == b and self._best_file[1].exists():
            return self._best_file[1]  # unchanged since the last save: not written again
        target = self.best_path(b)
        if self._main_best == b and self.path.exists():
            tmp = self.path.with_name(f".{target.name}.tmp{os.getpid()}")
            try:  # the .pt on disk is the best epoch's: keep it under the best's name
                tmp.unlink(missing_ok=True)
                os.link(self.path, tmp)
                os.replace(tmp, target)
                return target
            except OSError:  # no hard links here: write the weights instead
                tmp.unlink(missing_ok=True)
        self._stage(target, {"epoch": b, "trainable": best["state"]})
        return target

    def save(self, trainable, opt, gen, aug_gen, **extra) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rng = {"torch": torch.get_rng_state()}  # dropout draws from the global generator
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        best, best_file = extra.get("best"), None
        if best is not None:
            best_file = self._best_on_disk(best, extra["epoch"])
            extra["best"] = {**{k: v for k, v in best.items() if k != "state"},
                             "file": best_file.name if best_file is not None else None}
        self._stage(self.path, {"trainable": _trainable_state(trainable), "optim": opt.state_dict(),
                                "gen": gen.get_state(), "aug_gen": aug_gen.get_state(), "rng": rng, **extra})
        self._main_best = extra["epoch"] if best is not None and best_file is None else None
        self._best_file = (best["epoch"], best_file) if best_file is not None else None
        for old in self.path.parent.glob(f"{self.path.name}.best-e*"):  # bests the .pt no longer names
            if old != best_file:
                old.unlink(missing_ok=True)

    def load(self, trainable, opt, gen, aug_gen) -> dict | None:
        """Restore everything or nothing: a checkpoint that does not fit is ignored (fresh start)."""
        if not self.path.exists():
            return None
        before = (_trainable_state(trainable), copy.deepcopy(opt.state_dict()), gen.get_state(),
                  aug_gen.get_state(), torch.get_rng_state())
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if set(state["trainable"]) != set(before[0]):
                return None
            best = state.get("best")
            if best is not None and "state" not in best:  # the best weights: the .pt's own, or a file beside
                if best.get("file"):
                    held = torch.load(self.path.with_name(best["file"]), map_location="cpu", weights_only=True)
                    if held["epoch"] != best["epoch"] or set(held["trainable"]) != set(before[0]):
                        return None
                    best["state"] = held["trainable"]
                    self._best_file = (best["epoch"], self.path.with_name(best["file"]))
                else:
                    best["state"] = {k: v.clone() for k, v in state["trainable"].items()}
                    self._main_best = state["epoch"]
            trainable.load_state_dict(state["trainable"], strict=False)
            opt.load_state_dict(state["optim"])
            gen.set_state(state["gen"])
            aug_gen.set_state(state["aug_gen"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            return state
        except Exception:  # unreadable or from other code: undo any partial load, start over
            trainable.load_state_dict(before[0], strict=False)
            opt.load_state_dict(before[1])
            gen.set_state(before[2])
            aug_gen.set_state(before[3])
            torch.set_rng_state(before[4])
            self._best_file, self._main_best = None, None
            return None

    def remove(self) -> None:
        """Drop the checkpoint, its best weights and temporaries left by a process killed while saving."""
        self.path.unlink(missing_ok=True)
        for p in self.path.parent.glob(f"{self.path.name}.best-e*"):
            p.unlink(missing_ok=True)
        for tmp in self.path.parent.glob(f".{self.path.name}*.tmp*"):
            tmp.unlink(missing_ok=True)


def model_files(model: Backbone, head: nn.Module, head_kind: str, with_backbone: bool) -> dict:
    """What rebuilds the selected model, as ProtocolOutput.files (written with the run under
    models/<run_id>/): the head, and ``with_backbone`` the backbone (loadable later with --weights)."""
    from backbones.registry import BENCH_FORMAT

    meta = {"backbone": model.spec.name, "variant": model.variant}
    files = {"head": (head.state_dict(), {**meta, "format": "medfm-bench-head", "head": head_kind})}
    if with_backbone:
        files["backbone"] = (model.state_dict(), {**meta, "format": BENCH_FORMAT})
    return files


def save_model(folder: Path, model: Backbone, head: nn.Module) -> None:
    """Backbone (loadable later with --weights) and head as safetensors, outside a run."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, (sd, meta) in model_files(model, head, "", with_backbone=True).items():
        sd = _dedupe_shared({k: v.detach().cpu().contiguous() for k, v in sd.items()})
        tmp = folder / f".{name}.tmp{os.getpid()}.safetensors"
        save_file(sd, str(tmp), metadata=meta)
        os.replace(tmp, folder / f"{name}.safetensors")


def _dedupe_shared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory; clone them apart
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


__all__ = ["finetune", "build_head", "plan_for", "save_model", "model_files"]
