"""The one contract every backbone follows: ``stem -> blocks[0..L-1] -> readout``.

Training and feature code only ever talk to this contract, so adding a library means writing
an adapter, never touching the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    # per-variant facts shown by `bench ls` (params, embed dim, blocks); filled by adapters
    facts: dict = field(default_factory=dict, compare=False, hash=False)


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

    def stem(self, x: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) normalised -> h
        raise NotImplementedError

    def readout(self, h: torch.Tensor) -> torch.Tensor:  # h -> (B, D)
        raise NotImplementedError

    def tokens(self, h: torch.Tensor) -> torch.Tensor:  # h -> (B, N, C)
        raise NotImplementedError

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
