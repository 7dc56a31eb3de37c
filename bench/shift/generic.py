"""Generic corruption sets for own data, borrowed from MedMNIST-C by modality.

MedMNIST-C designs its corruptions per imaging modality; own images get the set (and the severity
parameters) of the MedMNIST-C dataset of the same modality, or a modality-agnostic set for plain
"gray"/"rgb" data:

| modality (``Dataset.modality`` or an alias) | corruptions and parameters of |
|---|---|
| pathology (histology, h&e) | pathmnist: all 11 |
| dermatoscopy (dermatology, skin) | dermamnist: all 15 |
| blood smear microscopy (cytology, microscopy) | bloodmnist: all 11 |
| kidney cortex microscopy | tissuemnist: all 8 |
| chest x-ray (x-ray, radiography, mammography) | chestmnist: all 13 |
| abdominal ct (ct, mri) | organamnist: all 13 |
| fundus photography (fundus) | retinamnist: all 8 |
| retinal oct (oct) | octmnist: all 6 |
| breast ultrasound (ultrasound) | breastmnist: all 7 |
| gray (grey) | chestmnist: all 13 (digital, four noises, Gaussian blur, brightness, contrast, gamma) |
| rgb (color, colour) | dermamnist without its dermatology artefacts (black_corner, characters): 13 |

Images are corrupted as MedMNIST-C does (``bench.shift.medmnistc.run_table``: one seeded set of
generators, corruption then severity then image in order), at 224 px: other sizes are resized to
224 px with ``resize_images`` (Pillow BICUBIC), corrupted, and resized back to their own size the
same way. The clean reference for a drop is then ``roundtrip(images)`` (the same two resizes
without a corruption). Grey images (N, H, W) stay grey (Pillow ``convert('L')`` of the RGB result),
colour ones (N, H, W, 3) stay colour, whatever the reference dataset's own channels.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import UserError, did_you_mean
from .medmnistc import SEED, SIZE, TABLE, Corruption, check_severity, resize_images, run_table

# modality -> (MedMNIST-C dataset whose set is used, corruptions left out)
GENERIC: dict[str, tuple[str, tuple[str, ...]]] = {
    "pathology": ("pathmnist", ()),
    "dermatoscopy": ("dermamnist", ()),
    "blood smear microscopy": ("bloodmnist", ()),
    "kidney cortex microscopy": ("tissuemnist", ()),
    "chest x-ray": ("chestmnist", ()),
    "abdominal ct": ("organamnist", ()),
    "fundus photography": ("retinamnist", ()),
    "retinal oct": ("octmnist", ()),
    "breast ultrasound": ("breastmnist", ()),
    "gray": ("chestmnist", ()),
    "rgb": ("dermamnist", ("black_corner", "characters")),
}
ALIASES = {
    "histology": "pathology", "h&e": "pathology", "dermatology": "dermatoscopy", "skin": "dermatoscopy",
    "cytology": "blood smear microscopy", "microscopy": "blood smear microscopy", "x-ray": "chest x-ray",
    "xray": "chest x-ray", "radiography": "chest x-ray", "mammography": "chest x-ray", "ct": "abdominal ct",
    "mri": "abdominal ct", "fundus": "fundus photography", "oct": "retinal oct", "ultrasound": "breast ultrasound",
    "grey": "gray", "color": "rgb", "colour": "rgb",
}


def _resolve(modality: str) -> str:
    key = str(modality).strip().lower()
    key = ALIASES.get(key, key)
    if key not in GENERIC:
        raise UserError(f"no generic corruption set for modality {modality!r}; "
                        f"{did_you_mean(key, list(GENERIC) + list(ALIASES))}")
    return key


def generic_reference(modality: str) -> str:
    """The MedMNIST-C dataset whose corruption set and parameters a modality borrows."""
    return GENERIC[_resolve(modality)][0]


def generic_table(modality: str) -> tuple[Corruption, ...]:
    dataset, left_out = GENERIC[_resolve(modality)]
    return tuple(c for c in TABLE[dataset] if c.name not in left_out)


def generic_corruptions(modality: str) -> list[str]:
    """The corruption names own data of this modality is tested under, in MedMNIST-C's order."""
    return [c.name for c in generic_table(modality)]


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise UserError(f"images to corrupt must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise UserError(f"generic corruptions need square images (as bench stores them), got {images.shape[1]}x{images.shape[2]}")
    return images


def roundtrip(images: np.ndarray) -> np.ndarray:
    """The clean images through the same resizes as ``corrupt_generic`` (unchanged at 224 px)."""
    images = _check(images)
    return resize_images(resize_images(images, SIZE), images.shape[1])


def iter_generic(images: np.ndarray, modality: str, wanted: Optional[Sequence[tuple[str, int]]] = None,
                 seed: int = SEED) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(corruption, severity, corrupted images)`` for own data of ``modality``, in order
    (``wanted``: only these pairs, as in ``bench.shift.medmnistc.iter_corrupted``)."""
    images = _check(images)
    size = images.shape[1]
    gen = run_table(resize_images(images, SIZE), generic_table(modality), images.ndim == 4, wanted, seed)
    return ((c, s, resize_images(out, size)) for c, s, out in gen)


def corrupt_generic(images: np.ndarray, modality: str, corruption: str, severity: int,
                    seed: int = SEED) -> np.ndarray:
    """Own images (uint8, square, any size) under one generic corruption of their modality at
    severity 1-5; same shape and dtype as ``images``."""
    check_severity(severity)
    for _, _, out in iter_generic(images, modality, [(corruption, severity)], seed=seed):
        return out
    raise AssertionError("unreachable: the asked pair is always yielded")
