"""Batched preprocessing on the device: uint8 host arrays in, normalised float tensors out.

No PIL and no per-image Python: one transfer of uint8 per batch (pinned when on CUDA), then
float conversion, channel handling, resize or MedMNIST+ zero-padding and normalisation on the
device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .options import choices

RESIZE_POLICIES = choices("resize")
GRAY_POLICIES = choices("gray")


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize: str  # resize | pad | none
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gray: str = "repeat"  # repeat: gray -> RGB; red: only the first input channel carries signal

    def to_device(self, batch: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 (B,H,W[,C]) numpy -> uint8 (B,C,H,W) tensor on ``device``."""
        t = torch.from_numpy(np.ascontiguousarray(batch))
        if device.type == "cuda":
            t = t.pin_memory().to(device, non_blocking=True)
        else:
            t = t.to(device)
        return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B,C,H,W) on the device -> normalised float (B,3,S,S)."""
        x = x.float().div_(255.0)
        gray_input = x.shape[1] == 1
        if gray_input:
            x = x.expand(-1, 3, -1, -1)
        x = self.fit(x)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if gray_input and self.gray == "red":
            # the paper's alternative to repeating: only the first-layer filters of the red
            # channel see the image (the other channels are zero after normalisation)
            x = torch.cat([x[:, :1], torch.zeros_like(x[:, 1:])], dim=1)
        return x

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        h, w = x.shape[-2:]
        if self.resize == "none" or (h, w) == (size, size):
            return x
        if self.resize == "resize":
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=size < h)
        # pad: MedMNIST+ zero-padding, image centred on a black canvas
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top), value=0.0)
