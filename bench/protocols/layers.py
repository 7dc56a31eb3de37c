"""Layer-wise probing (``--layers all|every:K|LIST`` with ``--head linear|knn``): where does a
frozen backbone's transfer break?

One frozen pass per split runs the stem and the blocks up to the deepest chosen one and keeps the
pooled readout after each chosen block (``Backbone.layer_readout``: the contract's readout applied
to that block's output, so ViTs get final norm + CLS as timm's ``forward_intermediates(norm=True)``
and CNNs a global average pool of the stage's map). Each layer's features go straight to their own
feature-cache entry (written through memory maps as the pass goes; the last block's entry is the
plain readout's, shared with ordinary probes), and the head grid is then trained one layer at a
time, reading only that layer's features: features of 50 layers are never in RAM together.

Layers are numbered by blocks run: 1 is after the first block, L (the block count) after the last,
i.e. the ordinary readout. The run's rows carry a ``layer`` column; its rows without one are the
layer chosen on val (by ``--select``; ``loss`` means the Brier score, which kNN votes have too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

from ..context import RunContext
from ..errors import UserError
from ..protocol import Protocol, ProtocolOutput, SplitSizes
from .knn import KNN
from .probe import PROBE, probe_shares

if TYPE_CHECKING:
    import numpy as np
    import torch

SYNTAX = "all, every:K (K >= 1) or a comma-separated list of block numbers such as 1,4,8,12"


def parse_layers(value: str, num_blocks: int | None = None) -> list[int] | None:
    """``--layers`` -> sorted block numbers (1..L); None while the block count is not known and
    the value is all/every:K. Raises UserError on bad syntax or a block out of range."""
    v = (value or "").strip().replace(" ", "")
    m = re.fullmatch(r"every:(\d+)", v)
    if v == "all" or m:
        k = int(m.group(1)) if m else 1
        if k < 1:
            raise UserError(f"--layers {value}: every:K needs K >= 1; use {SYNTAX}")
        if num_blocks is None:
            return None
        return sorted(set(range(k, num_blocks + 1, k)) | {num_blocks})  # the readout always, to compare
    if not re.fullmatch(r"-?\d+(,-?\d+)*", v):
        raise UserError(f"malformed --layers {value!r}; use {SYNTAX}")
    got = sorted(set(int(x) for x in v.split(",")))
    if got[0] < 1:
        raise UserError(f"--layers {value}: block numbers start at 1 (after the first block); use {SYNTAX}")
    if num_blocks is not None and got[-1] > num_blocks:
        raise UserError(f"--layers {value}: the backbone has {num_blocks} blocks; use numbers 1..{num_blocks}")
    return got


def layer_what(layer: int, num_blocks: int) -> str:
    """What the feature cache calls a layer's features: the last block's are the readout itself."""
    return "readout" if layer == num_blocks else f"layer:{layer}"


def after_blocks(model, layers: list[int]) -> Callable[["torch.Tensor"], list["torch.Tensor"]]:
    """Normalised images -> the pooled readout after each of ``layers`` (ascending), in one pass
    that stops at the deepest one."""
    wanted = set(layers)

    def fn(x: "torch.Tensor") -> list["torch.Tensor"]:
        h, out = model.stem(x), []
        for i, block in enumerate(model.blocks[:max(layers)]):
            h = block(h)
            if i + 1 in wanted:
                out.append(model.layer_readout(h, i))
        return out

    return fn


def extract_layers(ctx: RunContext, layers: list[int]) -> dict[str, int]:
    """Make sure every split's features of every layer are cached, extracting what is missing in one
    pass per split. Returns, per split, how many layers were cache hits."""
    from ..datasets import SPLITS
    from ..features import extract

    model, n_blocks = ctx.model, ctx.model.num_blocks
    hits = {}
    for split in SPLITS:
        whole = ctx.whole_split(split)
        parts = [ctx.feature_parts(split, layer_what(k, n_blocks)) for k in layers]

        def compute(missing: list[int], allocate, split=split, whole=whole) -> None:
            fn = ctx.frozen_fn(after_blocks(model, [layers[i] for i in missing]))  # --channels-last, --compile
            extract(fn, whole.images, ctx.pre, ctx.device,
                    ctx.opts.extract_batch_size, f"layers {split}", ctx.opts.quiet, ctx.cfg.precision,
                    allocate=lambda j, shape: allocate(missing[j], shape))

        with ctx.timings(f"features_{split}"):
            got = ctx.cache.compute_many(parts, compute, rows=len(whole))
        hits[split] = sum(got)
        ctx.log(f"layers {split}: {sum(got)} of {len(layers)} cached, {len(layers) - sum(got)} extracted")
    return hits


@dataclass
class AtLayer(RunContext):
    """The run's context with ``readout_features`` reading one layer's cached features, so the
    linear and kNN protocols run on a layer unchanged."""

    layer: int = 0

    def readout_features(self, split: str) -> "np.ndarray":
        whole = self.whole_split(split)
        with self.timings(f"features_{split}"):
            feats = self.cache.read(self.feature_parts(split, layer_what(self.layer, self.model.num_blocks)),
                                    rows=len(whole))
        if feats is None:
            raise RuntimeError(f"layer {self.layer} {split} features vanished from the cache ({self.cache.root})")
        return self.subset_rows(split, feats)


def val_value(select: str, task: str, y_val: "np.ndarray", scores: "np.ndarray") -> float:
    """The layer choice's criterion on val, higher is better."""
    import math

    from .. import metrics

    if select == "loss":
        return -metrics.brier(task, y_val, scores)
    acc = metrics.acc(task, y_val, scores)
    if select == "acc":
        return acc
    auc = metrics.auc(task, y_val, scores)
    return acc if math.isnan(auc) else auc  # a one-class val split (tiny --limit runs) has no AUC


class LayerProbe(Protocol):
    name = "layers"
    heads = ("linear", "knn")
    options = PROBE.options + KNN.options
    kind = "probe"
    description = ("--layers: linear grid or kNN on the pooled readout after each chosen block, one extraction "
                   "pass; one result row per layer")

    def applies(self, cfg) -> bool:
        return bool(cfg.layers) and cfg.unfreeze == "none" and (cfg.head == "knn" or cfg.linear_mode == "cached")

    def reads(self, cfg) -> tuple[str, ...]:
        return (PROBE if cfg.head == "linear" else KNN).options

    def mismatch(self, cfg) -> str:
        if not cfg.layers:  # not a layer-wise run: the head's own protocol says why
            return (KNN if cfg.head == "knn" else PROBE).mismatch(cfg)
        return f"--layers probes a frozen backbone: use it with --unfreeze none (not {cfg.unfreeze})"

    def validate(self, cfg) -> None:
        parse_layers(cfg.layers)

    def check(self, cfg, model) -> None:
        parse_layers(cfg.layers, model.num_blocks)

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)  # the last layer is the probes' readout: one group, one pass

    def cost(self, cfg, n: SplitSizes, num_blocks: int) -> float:
        return 0.0  # the pass over all blocks is the group's shared extraction; heads are not counted

    def describe(self, cfg) -> dict:
        return {"head": cfg.head, "layers": cfg.layers}

    def head_parameters(self, cfg, model, n_outputs: int) -> int:
        # before the run (--dry-run): at the readout's width; the run records each layer's own
        return PROBE.head_parameters(cfg, model, n_outputs) if cfg.head == "linear" else 0

    def run(self, ctx: RunContext) -> ProtocolOutput:
        cfg, ds = ctx.cfg, ctx.dataset
        layers = parse_layers(cfg.layers, ctx.model.num_blocks)
        extract_layers(ctx, layers)
        inner = PROBE if cfg.head == "linear" else KNN
        base = {f.name: getattr(ctx, f.name) for f in fields(RunContext)}
        y_val = ds.targets("val")
        outs: dict[int, ProtocolOutput] = {}
        values: dict[int, float] = {}
        for k in layers:  # one layer's features in memory at a time
            ctx.log(f"layer {k}/{ctx.model.num_blocks}: {inner.name}")
            outs[k] = inner.run(AtLayer(**base, layer=k))
            values[k] = val_value(cfg.select, ds.task, y_val, outs[k].val_scores)
        best = max(layers, key=lambda k: (values[k], -k))  # ties: the earlier layer
        curves = [{"layer": k, **row} for k in layers for row in (outs[k].curves or [])] or None
        selected = {**outs[best].selected, "layer": best, "layers": layers, f"layer_val_{cfg.select}": values[best]}
        per_layer = {str(k): {"selected": outs[k].selected, f"val_{cfg.select}": values[k],
                              "head_parameters": _head_parameters(outs[k])} for k in layers}
        # the selected layer's head, at that layer's width (a CNN's early stages are narrower)
        head = per_layer[str(best)]["head_parameters"]
        trainable = {"backbone": 0, "head": head, "total": head, "adapt": "none"}
        # the selected layer's linear head is saved as the run's head (bench robust scores shifted images with it)
        files = {name: (state, {**md, "layer": str(best)}) for name, (state, md) in (outs[best].files or {}).items()}
        return ProtocolOutput(outs[best].val_scores, outs[best].test_scores, selected, curves,
                              extra={"layers": per_layer, "trainable_parameters": trainable}, layers=outs,
                              files=files)


def _head_parameters(out: ProtocolOutput) -> int:
    """Trainable parameters of the head a layer's run trained: its weight and bias (0 for kNN)."""
    state = (out.files.get("head") or ({},))[0] if out.files else {}
    return sum(int(state[k].numel()) for k in ("weight", "bias") if k in state)


LAYERS = LayerProbe()
