"""MedMNIST-C (Di Salvo et al. 2024; PyPI ``medmnistc`` 0.1.0, francescodisalvo05/medmnistc-api):
which corruptions each MedMNIST+ 2D dataset gets, with which severity parameters, and how a test
split is corrupted, ported so that ``corrupt_split`` returns what the package writes.

The package cannot be installed beside bench (it pins medmnist==3.0.1 and scikit-image==0.23.2) and
calls ImageMagick, OpenCV, torchvision and scikit-image; everything is ported to NumPy/SciPy/Pillow
(modules ``bench/shift/corrupt_*.py``, each citing the package file and class it ports).
``tests/test_corruptions.py`` compares every corruption at every severity with outputs the package
itself produced (``tests/fixtures/medmnistc/make_golden.py``).

How the package corrupts a split (``medmnistc/dataset_manager.py``
``DatasetManager.create_single_dataset``): the generators are seeded once per dataset
(``seed_everything(0)``); then for each corruption in the dataset's table order
(``medmnistc/corruptions/registry.py`` ``CORRUPTIONS_DS``), for severity 1..5, for each test image in
order: ``Image.fromarray(img).convert('RGB')``, the corruption, and for grey datasets
(``DATASET_RGB``) ``Image.fromarray(out).convert('L')``. The random draws of one corruption and
severity therefore depend on every corruption, severity and image before it: ``corrupt_split``
replays them (drawing, not computing, where it can), so it must be given the whole split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import UserError, did_you_mean
from . import corrupt_artifact, corrupt_blur, corrupt_noise, corrupt_pixel
from .corrupt_base import Op, Streams

PACKAGE = "medmnistc==0.1.0"
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 224  # MedMNIST-C corrupts the 224-px MedMNIST+ images
SEED = 0  # DatasetManager(random_seed=0)

OPS: dict[str, Op] = {**corrupt_pixel.OPS, **corrupt_noise.OPS, **corrupt_blur.OPS, **corrupt_artifact.OPS}


@dataclass(frozen=True)
class Corruption:
    """One row of ``CORRUPTIONS_DS[dataset]``: the name, the medmnistc class, and its
    ``severity_params`` as the package lists them (severity s uses ``params[s - 1]``; a few lists
    carry a sixth entry the package never reads)."""

    name: str
    kind: str
    params: tuple[Any, ...]

    def param(self, severity: int) -> Any:
        p = self.params[severity - 1]
        # StainDeposit also picks its ink size from the severity index (microscopy.py)
        return (p, severity - 1) if self.kind == "StainDeposit" else p


def _zoom(*ranges: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    return tuple(np.arange(*r) for r in ranges)


def _c(name: str, kind: str, *params: Any) -> Corruption:
    return Corruption(name, kind, tuple(params))


# medmnistc 0.1.0 medmnistc/corruptions/registry.py CORRUPTIONS_DS, verbatim, in its order.
TABLE: dict[str, tuple[Corruption, ...]] = {
    "pathmnist": (
        _c("pixelate", "Pixelate", 0.8, 0.6, 0.40, 0.30, 0.25),
        _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
        _c("defocus_blur", "DefocusBlur", (3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)),
        _c("motion_blur", "MotionBlur", (5, 5), (10, 5), (15, 5), (15, 8), (15, 12)),
        _c("brightness_up", "Brightness", 1.1, 1.15, 1.2, 1.22, 1.25),
        _c("brightness_down", "Brightness", 0.85, 0.80, 0.75, 0.72, 0.70),
        _c("contrast_up", "Contrast", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("contrast_down", "Contrast", 0.8, 0.7, 0.6, 0.55, 0.5),
        _c("saturate", "Saturate", 0.05, 0.10, 0.15, 0.20, 0.25),
        _c("stain_deposit", "StainDeposit", 1, 2, 3, 4, 5),
        _c("bubble", "Bubble", (7, 15), (10, 15), (12, 15), (15, 20), (17, 25)),
    ),
    "bloodmnist": (
        _c("pixelate", "Pixelate", 0.6, 0.5, 0.40, 0.30, 0.25),
        _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
        _c("defocus_blur", "DefocusBlur", (2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)),
        _c("motion_blur", "MotionBlur", (3, 3), (5, 5), (10, 5), (10, 7), (10, 9)),
        _c("brightness_up", "Brightness", 1.1, 1.2, 1.3, 1.35, 1.4),
        _c("brightness_down", "Brightness", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("contrast_up", "Contrast", 1.1, 1.15, 1.2, 1.25, 1.3),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("saturate", "Saturate", 0.05, 0.10, 0.15, 0.17, 0.20),
        _c("stain_deposit", "StainDeposit", 1, 2, 3, 3, 3),
        _c("bubble", "Bubble", (5, 10), (7, 10), (10, 10), (12, 12), (15, 12)),
    ),
    "dermamnist": (
        _c("pixelate", "Pixelate", 0.7, 0.5, 0.40, 0.30, 0.25),
        _c("jpeg_compression", "JPEGCompression", 30, 20, 15, 10, 7),
        _c("gaussian_noise", "GaussianNoise", 0.04, .08, .12, 0.18, 0.26),
        _c("speckle_noise", "SpeckleNoise", 0.05, 0.15, 0.2, 0.35, 0.45),
        _c("impulse_noise", "ImpulseNoise", 0.01, 0.03, 0.06, 0.09, 0.17),
        _c("shot_noise", "ShotNoise", 60, 25, 18, 10, 5),
        _c("defocus_blur", "DefocusBlur", (4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
        _c("motion_blur", "MotionBlur", (10, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        _c("zoom_blur", "ZoomBlur", *_zoom((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02),
                                           (1, 1.26, 0.02), (1, 1.31, 0.03))),
        _c("brightness_up", "Brightness", 1.1, 1.2, 1.3, 1.4, 1.5),
        _c("brightness_down", "Brightness", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("contrast_up", "Contrast", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("contrast_down", "Contrast", 0.8, 0.7, 0.6, 0.5, 0.4),
        _c("black_corner", "BlackCorner", 1.10, 1.05, 1.00, 0.90, 0.95),
        _c("characters", "Characters", (1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18)),
    ),
    "retinamnist": (
        _c("pixelate", "Pixelate", 0.8, 0.60, 0.50, 0.40, 0.35),
        _c("jpeg_compression", "JPEGCompression", 30, 25, 20, 10, 5),
        _c("gaussian_noise", "GaussianNoise", 0.04, 0.08, 0.12, 0.16, 0.20),
        _c("speckle_noise", "SpeckleNoise", 0.10, 0.15, 0.20, 0.25, 0.30),
        _c("defocus_blur", "DefocusBlur", (4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5), (9, 0.6)),
        _c("motion_blur", "MotionBlur", (8, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        _c("brightness_down", "Brightness", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.4),
    ),
    "tissuemnist": (
        _c("pixelate", "Pixelate", 0.40, 0.30, 0.20, 0.15, 0.10),
        _c("jpeg_compression", "JPEGCompression", 25, 20, 15, 10, 7),
        _c("impulse_noise", "ImpulseNoise", 0.01, 0.015, 0.02, 0.025, 0.03),
        _c("gaussian_blur", "GaussianBlur", 13, 15, 17, 21, 25),
        _c("brightness_up", "Brightness", 1.3, 1.4, 1.5, 1.6, 1.7),
        _c("brightness_down", "Brightness", 0.8, 0.7, 0.6, 0.5, 0.4),
        _c("contrast_up", "Contrast", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.4),
    ),
    "octmnist": (
        _c("pixelate", "Pixelate", 0.30, 0.25, 0.20, 0.15, 0.10),
        _c("jpeg_compression", "JPEGCompression", 30, 15, 10, 7, 5),
        _c("speckle_noise", "SpeckleNoise", 0.15, 0.30, 0.40, 0.50, 0.60),
        _c("defocus_blur", "DefocusBlur", (0.5, 0.6), (1, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1)),
        _c("motion_blur", "MotionBlur", (10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        _c("contrast_down", "Contrast", 0.6, 0.4, 0.3, 0.2, 0.15),
    ),
    "breastmnist": (
        _c("pixelate", "Pixelate", 0.30, 0.25, 0.20, 0.15, 0.10),
        _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
        _c("speckle_noise", "SpeckleNoise", 0.10, 0.15, 0.20, 0.25, 0.30),
        _c("motion_blur", "MotionBlur", (5, 5), (9, 7), (9, 10), (13, 10), (17, 12)),
        _c("brightness_up", "Brightness", 1.4, 1.5, 1.6, 1.8, 2.0),
        _c("brightness_down", "Brightness", 0.55, 0.5, 0.45, 0.4, 0.3),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.4),
    ),
    "chestmnist": (
        _c("pixelate", "Pixelate", 0.30, 0.25, 0.20, 0.15, 0.10),
        _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
        _c("gaussian_noise", "GaussianNoise", 0.04, .08, .12, 0.18, 0.26),
        _c("speckle_noise", "SpeckleNoise", 0.05, 0.15, 0.2, 0.35, 0.45),
        _c("impulse_noise", "ImpulseNoise", 0.01, 0.03, 0.06, 0.09, 0.17),
        _c("shot_noise", "ShotNoise", 60, 25, 18, 10, 5),
        _c("gaussian_blur", "GaussianBlur", 3, 5, 7, 9, 11, 13),
        _c("brightness_up", "Brightness", 1.1, 1.2, 1.3, 1.4, 1.5),
        _c("brightness_down", "Brightness", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("contrast_up", "Contrast", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.4),
        _c("gamma_corr_up", "GammaCorrection", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("gamma_corr_down", "GammaCorrection", 0.9, 0.8, 0.7, 0.6, 0.4),
    ),
    "pneumoniamnist": (
        _c("pixelate", "Pixelate", 0.8, 0.7, 0.6, 0.5, 0.40),
        _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
        _c("gaussian_noise", "GaussianNoise", 0.04, 0.05, 0.06, 0.07, 0.08),
        _c("speckle_noise", "SpeckleNoise", 0.05, 0.07, 0.10, 0.15, 0.20),
        _c("impulse_noise", "ImpulseNoise", 0.005, 0.01, 0.013, 0.017, 0.02),
        _c("shot_noise", "ShotNoise", 300, 200, 150, 100, 80),
        _c("gaussian_blur", "GaussianBlur", 3, 5, 7, 9, 11, 13),
        _c("brightness_up", "Brightness", 1.1, 1.2, 1.3, 1.4, 1.5),
        _c("brightness_down", "Brightness", 0.9, 0.8, 0.7, 0.6, 0.5),
        _c("contrast_up", "Contrast", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("contrast_down", "Contrast", 0.9, 0.8, 0.7, 0.6, 0.4),
        _c("gamma_corr_up", "GammaCorrection", 1.1, 1.2, 1.3, 1.4, 1.6),
        _c("gamma_corr_down", "GammaCorrection", 0.9, 0.8, 0.7, 0.6, 0.4),
    ),
}
_ORGAN = (
    _c("pixelate", "Pixelate", 0.7, 0.6, 0.5, 0.40, 0.35),
    _c("jpeg_compression", "JPEGCompression", 50, 30, 15, 10, 7),
    _c("gaussian_noise", "GaussianNoise", 0.04, 0.08, 0.12, 0.16, 0.20),
    _c("speckle_noise", "SpeckleNoise", 0.05, 0.10, 0.20, 0.30, 0.40),
    _c("impulse_noise", "ImpulseNoise", 0.01, 0.02, 0.03, 0.05, 0.08),
    _c("shot_noise", "ShotNoise", 200, 100, 50, 25, 15),
    _c("gaussian_blur", "GaussianBlur", 11, 13, 15, 17, 21),
    _c("brightness_up", "Brightness", 1.2, 1.3, 1.4, 1.5, 1.6),
    _c("brightness_down", "Brightness", 0.8, 0.75, 0.7, 0.65, 0.60),
    _c("contrast_up", "Contrast", 1.3, 1.4, 1.6, 1.7, 1.8),
    _c("contrast_down", "Contrast", 0.8, 0.7, 0.6, 0.55, 0.5),
    _c("gamma_corr_up", "GammaCorrection", 1.3, 1.4, 1.6, 1.8, 2.0),
    _c("gamma_corr_down", "GammaCorrection", 0.9, 0.8, 0.7, 0.6, 0.4),
)
TABLE.update(organamnist=_ORGAN, organcmnist=_ORGAN, organsmnist=_ORGAN)  # the three are equal in the registry

# registry.py DATASET_RGB: colour datasets keep RGB, the others are converted back to 'L'
RGB = {"bloodmnist": True, "breastmnist": False, "chestmnist": False, "dermamnist": True, "octmnist": False,
       "organamnist": False, "organcmnist": False, "organsmnist": False, "pathmnist": True,
       "pneumoniamnist": False, "retinamnist": True, "tissuemnist": False}

# registry.py CORRUPTIONS_DS_FOLDS: the paper's families
FAMILIES = {
    "digital": ("pixelate", "jpeg_compression"),
    "noise": ("gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise"),
    "blur": ("defocus_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "color": ("brightness_up", "brightness_down", "contrast_up", "contrast_down", "saturate"),
    "task-specific": ("stain_deposit", "bubble", "black_corner", "characters", "gamma_corr_up", "gamma_corr_down"),
}


def datasets() -> list[str]:
    """The MedMNIST flags MedMNIST-C has a corruption set for (the 12 2D datasets), sorted."""
    return sorted(TABLE)


def _table(dataset: str) -> tuple[Corruption, ...]:
    if dataset not in TABLE:
        raise UserError(f"MedMNIST-C has no corruptions for dataset {dataset!r}; {did_you_mean(dataset, TABLE)}")
    return TABLE[dataset]


def corruptions(dataset: str) -> list[str]:
    """That dataset's corruption names in MedMNIST-C's order (the order the package applies them)."""
    return [c.name for c in _table(dataset)]


def family(corruption: str) -> str:
    """The paper's family of a corruption name (digital, noise, blur, color, task-specific)."""
    for fam, names in FAMILIES.items():
        if corruption in names:
            return fam
    raise UserError(f"unknown MedMNIST-C corruption {corruption!r}; "
                    f"{did_you_mean(corruption, [n for ns in FAMILIES.values() for n in ns])}")


def _lookup(dataset: str, corruption: str) -> Corruption:
    table = _table(dataset)
    for c in table:
        if c.name == corruption:
            return c
    raise UserError(f"{dataset} has no MedMNIST-C corruption {corruption!r}; "
                    f"{did_you_mean(corruption, [c.name for c in table])}")


def check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise UserError(f"MedMNIST-C severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def check_images(images: np.ndarray, dataset: str, size: Optional[int] = SIZE) -> np.ndarray:
    """The split as MedMNIST stores it: uint8 (N, H, W) for grey datasets, (N, H, W, 3) for colour ones."""
    _table(dataset)
    images = np.asarray(images)
    want = "(N, H, W, 3)" if RGB[dataset] else "(N, H, W)"
    if images.dtype != np.uint8 or images.ndim != (4 if RGB[dataset] else 3) or (RGB[dataset] and images.shape[-1] != 3):
        raise UserError(f"{dataset} images for MedMNIST-C must be uint8 {want} as MedMNIST stores them, "
                        f"got {images.dtype} {images.shape}")
    if size is not None and images.shape[1:3] != (size, size):
        raise UserError(f"MedMNIST-C corrupts the {size}-px images; got {images.shape[1]}x{images.shape[2]} "
                        f"(load the dataset with --size 224, or use corrupt_images_at for smaller runs)")
    return images


def iter_corrupted(images: np.ndarray, dataset: str, wanted: Optional[Sequence[tuple[str, int]]] = None,
                   seed: int = SEED) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(corruption, severity, corrupted split)`` in the package's order: what
    ``DatasetManager.create_single_dataset`` writes for this split, one severity slice at a time.
    ``wanted``: only these (corruption, severity) pairs are computed and yielded; the draws of all
    the others before them are still made, so each equals the package's output. A full pass costs
    what the package's does; pass every pair you need in one call instead of one call each."""
    images = check_images(images, dataset)
    return run_table(images, _table(dataset), RGB[dataset], wanted, seed)


def run_table(images: np.ndarray, table: Sequence[Corruption], rgb: bool,
              wanted: Optional[Sequence[tuple[str, int]]] = None,
              seed: int = SEED) -> Iterator[tuple[str, int, np.ndarray]]:
    """The dataset manager's loop over a corruption table (see ``iter_corrupted``): one set of
    ``Streams(seed)``; corruption, then severity 1-5, then image; grey output (``rgb`` False) is
    Pillow's ``convert('L')`` of the RGB result."""
    names = [c.name for c in table]
    want = None
    if wanted is not None:
        want = set()
        for c, s in wanted:
            if c not in names:
                raise UserError(f"no MedMNIST-C corruption {c!r} here; {did_you_mean(c, names)}")
            want.add((c, check_severity(s)))
    order = [(i, s) for i, c in enumerate(table) for s in SEVERITIES if want is None or (c.name, s) in want]
    return _run(images, tuple(table), rgb, want, max(order, default=None), seed)


def _run(images: np.ndarray, table: tuple[Corruption, ...], rgb: bool, want: Optional[set],
         last: Optional[tuple[int, int]], seed: int) -> Iterator[tuple[str, int, np.ndarray]]:
    streams = Streams(seed)
    for i, corr in enumerate(table):
        op = OPS[corr.kind]
        for severity in SEVERITIES:
            if last is None or (i, severity) > last:
                return  # nothing after this is asked for: later draws do not matter
            needed = want is None or (corr.name, severity) in want
            if not needed and op.advance is None:
                continue  # this kind draws nothing
            param = corr.param(severity)
            out = np.empty_like(images) if needed else None
            for j, img in enumerate(images):
                pil = Image.fromarray(img).convert("RGB")
                if not needed:
                    op.advance(pil, param, streams)
                    continue
                res = op.apply(pil, param, streams)
                out[j] = res if rgb else np.asarray(Image.fromarray(res).convert("L"))
            if needed:
                yield corr.name, severity, out


def corrupt_split(images: np.ndarray, dataset: str, corruption: str, severity: int, seed: int = SEED) -> np.ndarray:
    """The whole test split ``images`` (uint8, 224 px, as MedMNIST stores it) under one MedMNIST-C
    corruption and severity (1-5): exactly the slice ``medmnistc``'s dataset manager writes for it,
    the package's random generators seeded with ``seed`` and consumed in its order (all corruptions
    and severities before this one are replayed). Same shape and dtype as ``images``."""
    _lookup(dataset, corruption)
    severity = check_severity(severity)
    for _, _, out in iter_corrupted(images, dataset, [(corruption, severity)], seed=seed):
        return out
    raise AssertionError("unreachable: the asked pair is always yielded")


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 split (N, H, W[, 3]) to ``size`` x ``size`` with Pillow's BICUBIC filter (which
    widens its support when shrinking, i.e. anti-aliased), rounded back to uint8."""
    if images.shape[1:3] == (size, size):
        return images.copy()
    out = np.empty((len(images), size, size) + images.shape[3:], dtype=np.uint8)
    for j, img in enumerate(images):
        out[j] = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return out


def corrupt_images_at(images: np.ndarray, size: int, dataset: str, corruption: str, severity: int,
                      seed: int = SEED) -> np.ndarray:
    """The 224-px split corrupted as MedMNIST-C does (``corrupt_split``), then resized to ``size`` px
    with ``resize_images`` (Pillow BICUBIC, anti-aliased when shrinking): how runs at 28/64/128 px are
    evaluated under MedMNIST-C. Compare against the clean 224-px split resized the same way
    (``resize_images(images, size)``), so that the only difference is the corruption."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"image size must be a positive integer, got {size!r}")
    return resize_images(corrupt_split(images, dataset, corruption, severity, seed=seed), int(size))
