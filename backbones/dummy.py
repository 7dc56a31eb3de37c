"""A tiny convolutional backbone for tests and smoke runs: no download, milliseconds per batch."""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, Spec
from .registry import Adapter

SPEC = Spec(
    name="dummy", family="dummy", variants=("tiny", "small"), default_variant="tiny", input_size=32,
    weights_source="none: deterministic random init", license="n/a",
    description="tiny CNN for tests and smoke runs (not a real backbone)",
    training_data="none (random init)",
    paper_use="not in the paper (tests)",
    facts={"blocks": 4, "embed_dim": "32/64", "params": "~40k/160k"},
)


class _Block(nn.Module):
    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.stride = stride

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        skip = h if self.stride == 1 else nn.functional.avg_pool2d(h, self.stride)
        return torch.relu(skip + self.norm(self.conv(h)))


class DummyBackbone(Backbone):
    def __init__(self, variant: str = "tiny", depth: int = 4) -> None:
        super().__init__()
        dim = 32 if variant == "tiny" else 64
        self.spec, self.variant = SPEC, variant
        self.conv = nn.Conv2d(3, dim, 3, 2, 1)
        self.blocks = nn.ModuleList(_Block(dim, 2 if i % 2 else 1) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.embed_dim, self.input_size = dim, SPEC.input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h.mean(dim=(2, 3)))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2).transpose(1, 2)

    def readout_modules(self) -> list[nn.Module]:
        return [self.norm]


def build(variant: str, weights: str, *, readout: str | None = None, **_: object) -> Backbone:
    # "default" weights are a fixed-seed init so that features (and the cache) are stable
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DummyBackbone(variant)
    if weights == "default":
        model.weights_id = "dummy-seed0"
    elif weights != "random":
        model.load_weights_file(weights)
    return model


DUMMY = Adapter(SPEC, build, lambda variant: [])
