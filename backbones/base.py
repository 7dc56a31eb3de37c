"""The one contract every backbone follows: ``stem -> blocks[0..L-1] -> readout``.

Training and feature code only ever talk to this contract, so adding a library means writing
an adapter, never touching the runner.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TEST_VARIANT = "tiny"  # in every real family, the random-init test model's variant name


def test_models_on() -> bool:
    """Test models of real families (``--variant tiny``) are offered only to the test suite."""
    return os.environ.get("BENCH_TEST_MODELS", "") not in ("", "0")


@dataclass(frozen=True)
class Spec:
    """What `bench ls backbones` shows without building anything."""

    name: str
    family: str
    variants: tuple[str, ...]
    default_variant: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_source: str = ""
    license: str = ""
    readouts: tuple[str, ...] = ("default",)
    description: str = ""
    # what the default weights were trained on, and what the paper (Huix et al.) used of it: the
    # backbone table of docs/backbones.md (python -m backbones.catalog)
    training_data: str = ""
    paper_use: str = ""
    # per-variant facts shown by `bench ls` (params, embed dim, blocks); filled by adapters
    facts: dict = field(default_factory=dict, compare=False, hash=False)
    # per-variant definition version (absent: 1). Bump it when a variant's numbers change (its
    # architecture, init or weights): the version enters the run id once above 1, so unchanged
    # variants keep their ids and a changed one never reuses an old result
    versions: dict = field(default_factory=dict, compare=False, hash=False)
    # input channels: 3 (gray images repeated to RGB), or 0: the dataset's own count (1 for gray
    # images, 3 for RGB), given to the adapter's build as ``in_chans`` and kept by the preprocessing
    in_chans: int = 3
    # the readout whose vectors live in the text tower's embedding space (a CLIP's projected image
    # embedding): what `--head zeroshot` and `--init zeroshot` read; "" = no text tower. Variants
    # without one (e.g. captioning models) refuse in Backbone.text_tower
    text_readout: str = ""

    def version(self, variant: str) -> int:
        return int(self.versions.get(variant, 1))

    def text_refusal(self, variant: str) -> str:
        """Why ``variant`` has no text tower for zero-shot runs ("" = it has one): checked when a
        zero-shot config is resolved, before anything is built. Families with variants of both kinds
        override it."""
        return "" if self.text_readout else f"{self.name} ({self.family}) is an image model without one"

    def is_test_model(self, variant: str) -> bool:
        """A random-init model for the test suite, not the family's real model: every variant of
        the ``dummy`` family, and a real family's ``tiny`` variant (3 blocks, width 32)."""
        return self.family == "dummy" or variant == TEST_VARIANT

    def listed_variants(self) -> tuple[str, ...]:
        """The variants users see: a real family's test variant only under BENCH_TEST_MODELS=1."""
        return tuple(v for v in self.variants if self.family == "dummy" or v != TEST_VARIANT or test_models_on())

    def check(self, variant: str, readout: str | None) -> tuple[str, str]:
        """(the name errors and `bench weights fetch` use: ``name`` or ``name@variant``, the
        readout to build: the first listed when none is asked); a one-line UserError for a variant
        or readout this backbone lacks."""
        from bench.errors import UserError, did_you_mean

        if variant == TEST_VARIANT and self.family != "dummy" and not test_models_on() and variant in self.variants:
            raise UserError(f"--variant {variant} of {self.name!r} is a random-init test model ({TEST_VARIANT}: 3 blocks, "
                            f"width 32), not a real {self.family} model; use {', '.join(self.listed_variants())} "
                            f"(the test suite sets BENCH_TEST_MODELS=1 to build it)")
        if variant not in self.variants:
            raise UserError(f"backbone {self.name!r} has no variant {variant!r}; {did_you_mean(variant, self.listed_variants())}")
        readout = readout or self.readouts[0]
        if readout not in self.readouts:
            raise UserError(f"backbone {self.name!r} has no readout {readout!r}; {did_you_mean(readout, self.readouts)}")
        return (self.name if variant == self.default_variant else f"{self.name}@{variant}"), readout


class Backbone(nn.Module):
    """A backbone split into stem, blocks and readout.

    Subclasses set ``self.blocks`` (an ``nn.ModuleList``), ``self.embed_dim`` and implement
    ``stem``, ``readout`` and ``tokens``. ``forward`` is defined here once for all of them.
    """

    spec: Spec
    variant: str
    blocks: nn.ModuleList
    embed_dim: int
    input_size: int
    readout_name: str = "default"
    weights_id: str = "random"  # fingerprint of the loaded weights, part of the feature cache key
    # tokens() puts this many non-patch tokens (class, distillation, registers) before the patch
    # tokens, which follow in row-major grid order; 0 for CNN feature maps and SAM
    num_prefix_tokens: int = 0
    in_chans: int = 3  # channels stem() takes (Spec.in_chans 0: the dataset's own, set at build)

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) normalised -> h
        raise NotImplementedError

    def readout(self, h: torch.Tensor) -> torch.Tensor:  # h -> (B, D)
        raise NotImplementedError

    def tokens(self, h: torch.Tensor) -> torch.Tensor:  # h -> (B, N, C)
        raise NotImplementedError

    def layer_readout(self, h: torch.Tensor, index: int) -> torch.Tensor:
        """Pooled vector after block ``index`` (0-based), for layer-wise probes: the readout applied
        to that block's output (ViTs: final norm then CLS, as timm's forward_intermediates with
        norm=True; CNNs: global average pool of the stage's map), so the last block's equals
        ``readout``. Adapters whose readout only fits the last block's output override it."""
        return self.readout(h)

    def text_tower(self) -> "TextTower":
        """The text side of a vision-language model, built only when a zero-shot run asks for it
        (`--head zeroshot`, `--init zeroshot`): prompts -> embeddings in the space of the
        ``spec.text_readout`` image features, and the model's own logit scale. Families without one
        refuse in one line."""
        from bench.errors import UserError

        raise UserError(f"--head zeroshot needs a text tower: {self.spec.name} ({self.spec.family}) is an image "
                        f"model without one; use a vision-language backbone (clip, biomedclip, blip) or "
                        f"--head linear|knn")

    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) the weights were trained with; adapters whose variants differ override."""
        return getattr(self, "_normalization", None) or (self.spec.mean, self.spec.std)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run_blocks(self, h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for block in self.blocks[start:stop]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.run_blocks(self.stem(x)))

    def load_weights_file(self, path: str) -> None:
        """Load a state dict keyed like this Backbone module (as `--save-model` writes it)."""
        from . import hub

        hub.load_into(self, hub.load_state_dict(path), name=self.spec.name, source=str(path))
        self.weights_id = hub.file_fingerprint(path)

    # -- bench explain: where to look, through the contract --------------------------------
    def cam_layers(self) -> list[nn.Module]:
        """Layers whose output Grad-CAM weighs (target layers): the last block, whose output the
        readout pools. Families whose readout reads a class token override it: the last block's
        patch tokens reach that token only through its attention, so its input norm is used."""
        return [self.blocks[-1]]

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        """A block's (or cam layer's) output as a (B, C, H, W) map: feature maps as they are;
        tokens (B, N, C) without the ``num_prefix_tokens``, on their square grid. Also the
        reshape transform of pytorch-grad-cam."""
        from bench.errors import UserError  # a one-line error from bench explain, not a traceback

        if h.ndim == 4:
            return h
        if h.ndim != 3:
            raise UserError(f"{self.spec.name}: cannot show a block output of shape {tuple(h.shape)} as a map "
                            f"(expected (B, C, H, W) maps or (B, N, C) tokens)")
        t = h[:, self.num_prefix_tokens:]
        side = math.isqrt(t.shape[1])
        if side * side != t.shape[1]:
            raise UserError(f"{self.spec.name}: its {t.shape[1]} patch tokens (after {self.num_prefix_tokens} prefix "
                            f"tokens) are not a square grid ({side}x{side} is {side * side}), so bench explain cannot "
                            f"lay them out as a map (that needs a square model input and the adapter's "
                            f"num_prefix_tokens counting every class/register token)")
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)

    def first_conv(self) -> nn.Conv2d | None:
        """The layer that first sees pixels (`bench explain --filters`): the first Conv2d outside
        the blocks (a CNN's first convolution, a ViT's patch embedding), else the first block's."""
        inner = {id(m) for m in self.blocks.modules()}
        outside = (m for m in self.modules() if isinstance(m, nn.Conv2d) and id(m) not in inner)
        first_block = (m for m in self.blocks[0].modules() if isinstance(m, nn.Conv2d))
        return next(outside, None) or next(first_block, None)

    def attention_maps(self, x: torch.Tensor) -> "AttentionMaps":
        """Attention weights of every block for images ``x`` (attention rollout); families without
        image-wide attention, or whose library does not expose it, say so in one line."""
        from bench.errors import UserError

        raise UserError(f"--method rollout needs attention maps: {self.spec.name} ({self.spec.family}) "
                        f"has none; use --method gradcam, gradcam++, scorecam or eigencam")

    def lora_targets(self) -> tuple[str, ...]:
        """Layers inside a block that ``--adapt lora`` adapts, by their names relative to the block
        (exact names, e.g. ``attn.qkv``). Default: every Linear and ungrouped Conv2d (so ResNets get
        their convolutions); ViT adapters override it with their attention projections."""
        return layer_names(self.blocks)

    # -- helpers for the runner -------------------------------------------------------------
    def readout_modules(self) -> Sequence[nn.Module]:
        """Modules used by ``readout`` (final norms, poolers); they train with the last block."""
        return []

    def stem_parameters(self) -> list[nn.Parameter]:
        """Everything that belongs neither to a block nor to the readout."""
        inner = {id(p) for p in self.blocks.parameters()}
        inner |= {id(p) for m in self.readout_modules() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in inner]

    def trainable_parameters(self, unfreeze: int) -> list[nn.Parameter]:
        """Parameters that train when the last ``unfreeze`` blocks are unfrozen.

        The readout trains with any unfrozen block (its norm sees the last block's output);
        with every block unfrozen the stem trains too (full fine-tuning).
        """
        if unfreeze <= 0:
            return []
        params: list[nn.Parameter] = []
        if unfreeze >= self.num_blocks:
            params.extend(self.stem_parameters())
        for block in self.blocks[max(self.num_blocks - unfreeze, 0):]:
            params.extend(block.parameters())
        for m in self.readout_modules():
            params.extend(m.parameters())
        return _unique(params)


@dataclass
class TextTower:
    """What zero-shot heads need of a vision-language model's text side (``Backbone.text_tower``).

    ``encode(prompts)`` -> (N, D) text embeddings (not normalised) in the space of the image
    readout ``spec.text_readout``; ``logit_scale``: the model's own multiplier of cosine
    similarities (open_clip's ``logit_scale.exp()``, 100 for OpenAI CLIP; 1 / BLIP's temperature);
    ``name``: what it is (recorded in the run's JSON); ``fingerprint``: identifies its weights."""

    encode: Callable[[list[str]], torch.Tensor]
    logit_scale: float
    name: str
    fingerprint: str = ""


@dataclass
class AttentionMaps:
    """What attention rollout needs: per block (B, heads, N, N) softmax weights over all tokens,
    and the token rows the readout reads (a class token; None: every patch token, mean-pooled)."""

    maps: list[torch.Tensor]
    query_rows: slice | None = None


def layer_names(blocks: Sequence[nn.Module], within: str = "") -> tuple[str, ...]:
    """Names (relative to a block, first seen first) of the layers LoRA can adapt in ``blocks``:
    Linear, Conv2d with groups == 1 (peft cannot merge grouped ones) and nn.MultiheadAttention as a
    whole (its forward bypasses its out_proj's, so that layer is not adapted on its own). ``within``:
    only that submodule and what lies under it (e.g. ``attn``)."""
    names: list[str] = []
    for block in blocks:
        skip: list[str] = []
        for name, m in block.named_modules():
            if any(name.startswith(s + ".") for s in skip):
                continue
            if isinstance(m, nn.MultiheadAttention):
                skip.append(name)
            elif not (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)):
                continue
            if (not within or name == within or name.startswith(within + ".")) and name not in names:
                names.append(name)
    return tuple(names)


def capture_inputs(modules: Sequence[nn.Module], run, kwarg: str = "hidden_states") -> list[torch.Tensor]:
    """The first input of each module's forward while ``run()`` executes (positional, or the keyword
    ``kwarg``): attention modules that never return their weights recompute them from it."""
    got: list[torch.Tensor] = []

    def hook(_m, args, kwargs):
        got.append((args[0] if args else kwargs[kwarg]).detach())

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return got


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_params(items: "Sequence[nn.Module | nn.Parameter] | nn.Module") -> int:
    """Number of distinct parameters in modules and/or parameters (shared ones counted once)."""
    if isinstance(items, nn.Module):
        items = [items]
    params = [p for it in items for p in ([it] if isinstance(it, nn.Parameter) else it.parameters())]
    return sum(p.numel() for p in _unique(params))
