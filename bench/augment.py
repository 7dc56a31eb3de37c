"""Augmentation on the device, batched: one random affine warp per image (crop, flip, rotation)
plus mild intensity jitter, applied to preprocessed tensors.

Policies:
  none   no augmentation (lets the frozen prefix be cached)
  light  random resized crop (scale 0.8-1) and horizontal flip
  paper  random resized crop (scale 0.5-1), horizontal flip and rotation up to 10 degrees
  auto   by modality (see MODALITY): flips only where left/right and up/down carry no anatomy,
         90-degree rotations for orientation-free images (pathology, blood smears, dermatology),
         random resized crop (0.8-1) and mild brightness/contrast for all
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UserError, did_you_mean
from .options import choices

POLICIES = choices("augment")


@dataclass(frozen=True)
class Policy:
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    max_rotation_deg: float = 0.0
    crop_scale: tuple[float, float] = (1.0, 1.0)
    intensity: float = 0.0  # +- fraction for brightness and contrast


ORIENTATION_FREE = Policy(hflip=True, vflip=True, rot90=True, crop_scale=(0.8, 1.0), intensity=0.1)
# Chest X-ray and abdominal CT: the heart and liver sit on one side, so no flips or large rotations.
ANATOMICAL = Policy(max_rotation_deg=5.0, crop_scale=(0.8, 1.0), intensity=0.1)
# keyed by Dataset.modality (MedMNIST's come from bench.datasets.medmnist.MODALITY)
MODALITY: dict[str, Policy] = {
    "pathology": ORIENTATION_FREE,                  # colon pathology patches
    "dermatoscopy": ORIENTATION_FREE,
    "blood smear microscopy": ORIENTATION_FREE,
    "kidney cortex microscopy": ORIENTATION_FREE,
    "chest x-ray": ANATOMICAL,
    "abdominal ct": ANATOMICAL,
    # fundus: left/right eyes mirror each other, so a flip gives a plausible image
    "fundus photography": Policy(hflip=True, max_rotation_deg=15.0, crop_scale=(0.85, 1.0), intensity=0.1),
    # OCT B-scans have a top (vitreous) and bottom (choroid): horizontal flips only
    "retinal oct": Policy(hflip=True, crop_scale=(0.85, 1.0), intensity=0.1),
    # breast ultrasound: depth runs top to bottom; lateral flips are plausible
    "breast ultrasound": Policy(hflip=True, max_rotation_deg=10.0, crop_scale=(0.85, 1.0), intensity=0.1),
}


def policy_for(name: str, modality: str) -> Policy | None:
    if name not in POLICIES:
        raise UserError(f"unknown augment {name!r}; {did_you_mean(name, POLICIES)}")
    if name == "none":
        return None
    if name == "light":
        return Policy(hflip=True, crop_scale=(0.8, 1.0))
    if name == "paper":
        return Policy(hflip=True, max_rotation_deg=10.0, crop_scale=(0.5, 1.0))
    return MODALITY.get(modality, Policy(crop_scale=(0.8, 1.0), intensity=0.1))


def apply(x: torch.Tensor, p: Policy, gen: torch.Generator) -> torch.Tensor:
    """Augment a normalised batch (B, C, H, W) on its device; randomness from ``gen`` (CPU)."""
    b = x.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(x.device)

    scale = p.crop_scale[0] + (p.crop_scale[1] - p.crop_scale[0]) * rand(b)
    side = scale.sqrt()  # crop side as a fraction of the image
    angle = (rand(b) * 2 - 1) * math.radians(p.max_rotation_deg)
    if p.rot90:
        angle = angle + (rand(b) * 4).floor() * (math.pi / 2)
    sx = side * torch.where(rand(b) < 0.5, -1.0, 1.0) if p.hflip else side
    sy = side * torch.where(rand(b) < 0.5, -1.0, 1.0) if p.vflip else side
    # crop centre anywhere that keeps the crop inside the image
    tx, ty = (rand(b) * 2 - 1) * (1 - side), (rand(b) * 2 - 1) * (1 - side)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1),
                         torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if p.intensity:
        contrast = 1 + (rand(b, 1, 1, 1) * 2 - 1) * p.intensity
        brightness = (rand(b, 1, 1, 1) * 2 - 1) * p.intensity
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * contrast + mean + brightness
    return out
