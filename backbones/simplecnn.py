"""The seed primer's small CNN, trained from scratch: the floor every pretrained model must clear.

As the primer builds it: three blocks of Conv2d(3x3, padding 1; 16, 32, 64 channels) ->
BatchNorm2d -> ReLU -> MaxPool2d(2, 2), then Flatten -> Linear(64*3*3, 128) -> ReLU (and the
head, Linear(128, classes)). At the native 28 px the last feature map is 64 x 3 x 3, so the FC
layer reads 576 numbers. The input keeps the dataset's own channel count (``Spec.in_chans`` 0):
one channel for gray images, three for RGB; with 1 channel, 28 px and 2 classes the model (head
included) has 97,634 parameters, the primer's.

Version 2 (``Spec.versions``): BatchNorm after each conv and the dataset's channel count at the
input; version 1 had neither (3 channels, gray repeated), so its runs never share an id with these.

stem    identity (the image, already normalised)
blocks  the three conv blocks
readout flatten -> FC 128 -> ReLU (the FC layer is built for the input size; it trains with
        the last block, and with --unfreeze all everything trains, i.e. from-scratch training)

There are no published weights: ``default`` and ``random`` both start from a fresh init (drawn
from the run's seed), and a local file is a model this project saved (``--save-model``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bench.errors import UserError

from .base import Backbone, Spec
from .registry import Adapter

CHANNELS = (16, 32, 64)
HIDDEN = 128

SPEC = Spec(
    name="simplecnn", family="cnn", variants=("scratch",), default_variant="scratch", input_size=28,
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    weights_source="none (from scratch)", license="n/a",
    readouts=("fc",),
    description="the seed primer's 3-conv CNN (16/32/64, 3x3, max-pool, FC 128), from scratch",
    training_data="none (from scratch)",
    paper_use="not in the paper (the seed primer's baseline)",
    facts={"blocks": 3, "embed_dim": HIDDEN, "params": "97k (28 px, gray)"},
    versions={"scratch": 2},
    in_chans=0,  # the dataset's own: gray images stay one channel, as in the primer
)


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=False),
                         nn.MaxPool2d(2, 2))


class SimpleCNN(Backbone):
    def __init__(self, input_size: int = 28, in_chans: int = 3) -> None:
        super().__init__()
        self.spec, self.variant, self.readout_name = SPEC, "scratch", "fc"
        if in_chans not in (1, 3):
            raise UserError(f"simplecnn takes 1 (gray) or 3 (RGB) input channels, not {in_chans}")
        self.in_chans = in_chans
        chans = (in_chans, *CHANNELS)
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        side = input_size
        for _ in CHANNELS:
            side //= 2  # MaxPool2d(2) floors
        if side < 1:
            raise UserError(f"simplecnn needs --input-size of at least 8 (three 2x2 poolings), not {input_size}")
        self.fc = nn.Linear(CHANNELS[-1] * side * side, HIDDEN)
        self.embed_dim, self.input_size = HIDDEN, input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(h.flatten(1)))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2).transpose(1, 2)

    def layer_readout(self, h: torch.Tensor, index: int) -> torch.Tensor:
        # the FC layer reads the last block's map only; earlier blocks: global average pool
        return self.readout(h) if index == len(self.blocks) - 1 else h.mean(dim=(2, 3))

    def readout_modules(self) -> Sequence[nn.Module]:
        return [self.fc]


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None, in_chans: int = 3) -> Backbone:
    if readout not in (None, "fc"):
        raise UserError(f"simplecnn has one readout, 'fc' (FC 128 + ReLU), not {readout!r}")
    model = SimpleCNN(input_size or SPEC.input_size, in_chans)
    if weights not in ("default", "random"):
        model.load_weights_file(weights)  # a model saved by --save-model
    return model


SIMPLECNN = Adapter(SPEC, build, lambda variant: [])
