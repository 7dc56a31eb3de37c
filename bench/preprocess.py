"""Batched preprocessing on the device: uint8 host arrays in, normalised float tensors out.

No PIL and no per-image Python: one transfer of uint8 per batch (pinned when on CUDA), then
float conversion, channel handling, fitting to the input size and normalisation on the device.
Two stages, so augmentation can run between them in pixel space: ``pixels`` (float in [0, 1],
3 channels, fitted; a gray image stays 1 channel for a backbone that takes the dataset's own
channel count, ``in_chans`` 1) and ``finish`` (normalise; ``pad-normalized`` pads only now, with 0, the
order of MedMNIST+'s transforms).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .datapath import host_to_device
from .datasets.stats import train_stats
from .options import choices

if TYPE_CHECKING:
    from backbones.base import Backbone

    from .run_config import RunConfig
    from .datasets import Dataset

RESIZE_POLICIES = choices("resize")
GRAY_POLICIES = choices("gray")


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize: str  # one of RESIZE_POLICIES
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gray: str = "repeat"  # repeat: gray -> RGB; red: only the first input channel carries signal
    crop_from: int = 0    # resize-crop: side resized to before the centre crop
    in_chans: int = 3     # 1: gray images stay one channel (Backbone.in_chans; RGB is never reduced)

    def to_device(self, batch: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 (B,H,W[,C]) numpy -> uint8 (B,C,H,W) tensor on ``device`` (one batch; loops read
        ahead through bench.datapath and call ``layout``)."""
        return self.layout(host_to_device(batch, device))

    @staticmethod
    def layout(t: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W[,C]) tensor -> (B,C,H,W) view."""
        return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B,C,H,W) on the device -> normalised float (B,3,S,S) (B,1,S,S: gray kept, in_chans 1)."""
        return self.finish(self.pixels(x), gray_input=x.shape[1] == 1)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B,C,H,W) -> float (B,3,h,w) in [0, 1], fitted (except pad-normalized: padded in finish)."""
        x = x.float().div_(255.0)
        if x.shape[1] == 1 and self.in_chans != 1:
            x = x.expand(-1, 3, -1, -1)
        return self.fit(x)

    def finish(self, x: torch.Tensor, gray_input: bool) -> torch.Tensor:
        """Pixels -> what the backbone sees: normalised, then (pad-normalized) padded with 0."""
        c = x.shape[1]  # 1: a gray image kept as it is (in_chans 1): the first entry of mean and std
        mean = torch.tensor(self.mean[:c], device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std[:c], device=x.device).view(1, c, 1, 1)
        x = (x - mean) / std
        if self.resize == "pad-normalized":
            x = _pad(x, self.input_size)
        if gray_input and self.gray == "red" and c == 3:
            # the paper's alternative to repeating: only the first-layer filters of the red
            # channel see the image (the other channels are zero after normalisation)
            x = torch.cat([x[:, :1], torch.zeros_like(x[:, 1:])], dim=1)
        return x

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        h, w = x.shape[-2:]
        if self.resize in ("none", "pad-normalized"):
            return x
        if self.resize == "resize-crop":  # the paper's Resize((256, 256)) then CenterCrop(224)
            side = self.crop_from or round(size * 256 / 224)
            if (h, w) != (side, side):
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=side < h)
            top = int(round((side - size) / 2.0))  # torchvision's center_crop offset
            return x[..., top:top + size, top:top + size]
        if (h, w) == (size, size):
            return x
        if self.resize == "resize":
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=size < h)
        if self.resize == "resize-nearest":  # PIL NEAREST: pixel replication for integer factors
            return F.interpolate(x, size=(size, size), mode="nearest-exact")
        # pad: the image centred on a black canvas, normalised afterwards (black is -mean/std)
        return _pad(x, size)


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre on a size x size canvas of 0; the odd pixel goes right/bottom (as MedMNIST+)."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=0.0)


def normalization(cfg: "RunConfig", model: "Backbone", ds: "Dataset", cache_dir: Path, limit: int | None = None
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of ``--normalize``: the backbone's, the train split's, or MedMNIST v2's 0.5/0.5."""
    if cfg.normalize == "half":
        return (0.5,) * 3, (0.5,) * 3
    if cfg.normalize == "dataset":
        return train_stats(ds, cache_dir, limit)
    return model.normalization()


def for_run(cfg: "RunConfig", model: "Backbone", ds: "Dataset", cache_dir: Path) -> Preprocess:
    """The preprocessing a run's config asks for, with its --normalize statistics."""
    mean, std = normalization(cfg, model, ds, cache_dir, cfg.limit)
    return Preprocess(cfg.input_size, cfg.resize, mean, std, cfg.gray, crop_from=cfg.crop_from,
                      in_chans=getattr(model, "in_chans", 3))
