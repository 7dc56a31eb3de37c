"""Augmentation on the device, batched: one random affine warp per image (crop, flip, rotation)
plus mild intensity jitter, applied in pixel space (floats in [0, 1], before normalisation:
bench.preprocess.Preprocess.pixels -> apply -> finish), so +-10% is of the pixel range.

Policies:
  none   no augmentation (lets the frozen prefix be cached)
  light  random resized crop (scale 0.8-1) and horizontal flip
  paper  random resized crop (scale 0.5-1), horizontal flip and rotation up to 10 degrees
  auto   by modality (see MODALITY): flips only where left/right and up/down carry no anatomy,
         90-degree rotations for orientation-free images (pathology, blood smears, dermatology),
         random resized crop (0.8-1) and mild brightness/contrast for all
  huix   the paper's torchvision transforms exactly (Huix et al.'s params.json, in their order):
         RandomResizedCrop(scale 0.8-1.2), vertical and horizontal flips (p 0.5), ColorJitter
         (0.2, 0.2, 0.1, 0.1) applied with p 0.8; per image, randomness from the run's generator
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
    # mammography: left and right breasts mirror each other; the chest wall side carries no meaning
    "mammography": Policy(hflip=True, max_rotation_deg=10.0, crop_scale=(0.85, 1.0), intensity=0.1),
}


@dataclass(frozen=True)
class Torchvision:
    """The paper's train transforms after its Resize/CenterCrop (bench.recipes cites the values)."""
    scale: tuple[float, float] = (0.8, 1.2)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop's default
    vflip: float = 0.5
    hflip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.1, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8


HUIX = Torchvision()


def policy_for(name: str, modality: str) -> Policy | Torchvision | None:
    if name not in POLICIES:
        raise UserError(f"unknown augment {name!r}; {did_you_mean(name, POLICIES)}")
    if name == "none":
        return None
    if name == "light":
        return Policy(hflip=True, crop_scale=(0.8, 1.0))
    if name == "paper":
        return Policy(hflip=True, max_rotation_deg=10.0, crop_scale=(0.5, 1.0))
    if name == "huix":
        return HUIX
    return MODALITY.get(modality, Policy(crop_scale=(0.8, 1.0), intensity=0.1))


def apply(x: torch.Tensor, p: Policy | Torchvision, gen: torch.Generator) -> torch.Tensor:
    """Augment a pixel batch (B, C, H, W), values in [0, 1], on its device; randomness from ``gen`` (CPU)."""
    if isinstance(p, Torchvision):
        return torch.stack([_torchvision_one(img, p, gen) for img in x])
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
        out = ((out - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)  # still a pixel value
    return out


def augmented(pre, u8: torch.Tensor, p: Policy | Torchvision, gen: torch.Generator) -> torch.Tensor:
    """uint8 batch -> pixels -> augmented -> normalised: what a training step sees. The red-only
    channel zeroing comes last, in ``pre.finish``, so jitter cannot put signal back there."""
    return pre.finish(apply(pre.pixels(u8), p, gen), gray_input=u8.shape[1] == 1)


def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return float(lo + (hi - lo) * torch.rand(1, generator=gen))


def _crop_box(h: int, w: int, p: Torchvision, gen: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: 10 tries at a box inside the image, else the
    centred box of the whole image clipped to the ratio range (scale > 1 often needs it)."""
    area = h * w
    log_ratio = (math.log(p.ratio[0]), math.log(p.ratio[1]))
    for _ in range(10):
        target = area * _uniform(*p.scale, gen)
        aspect = math.exp(_uniform(*log_ratio, gen))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            j = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return i, j, ch, cw
    ratio = w / h
    if ratio < p.ratio[0]:
        cw, ch = w, int(round(w / p.ratio[0]))
    elif ratio > p.ratio[1]:
        ch, cw = h, int(round(h * p.ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _torchvision_one(img: torch.Tensor, p: Torchvision, gen: torch.Generator) -> torch.Tensor:
    """One (3, H, W) pixel image through the paper's transforms, in their order."""
    import torchvision.transforms.functional as TF

    h, w = img.shape[-2:]
    i, j, ch, cw = _crop_box(h, w, p, gen)
    img = F.interpolate(img[None, :, i:i + ch, j:j + cw], size=(h, w), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    if float(torch.rand(1, generator=gen)) < p.vflip:
        img = img.flip(-2)
    if float(torch.rand(1, generator=gen)) < p.hflip:
        img = img.flip(-1)
    if float(torch.rand(1, generator=gen)) <= p.jitter_p:  # RandomApply: skipped when p < rand
        b, c, s, hue = p.jitter
        order = torch.randperm(4, generator=gen).tolist()  # ColorJitter.get_params order
        factors = (_uniform(1 - b, 1 + b, gen), _uniform(1 - c, 1 + c, gen), _uniform(1 - s, 1 + s, gen),
                   _uniform(-hue, hue, gen))
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for k in order:
            img = ops[k](img, factors[k])
    return img
