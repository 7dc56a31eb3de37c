"""What every ported MedMNIST-C corruption shares: the random streams and the operation record.

medmnistc 0.1.0 (``medmnistc/utils/utils.py`` ``seed_everything``, called once per dataset by
``medmnistc/dataset_manager.py`` ``DatasetManager.create_single_dataset``) seeds Python's ``random``,
NumPy's legacy global generator and makes one ``np.random.default_rng(seed)`` that only
``ImpulseNoise`` draws from (through ``skimage.util.random_noise``). ``Streams`` holds the same three
generators as private objects: ``random.Random(seed)`` and ``np.random.RandomState(seed)`` give the
very sequences ``random.seed(seed)`` and ``np.random.seed(seed)`` give the globals.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image


@dataclass
class Streams:
    """The three random generators of one dataset pass, consumed in the package's order."""

    seed: int = 0
    py: random.Random = field(init=False)
    np: np.random.RandomState = field(init=False)
    gen: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.py = random.Random(self.seed)
        self.np = np.random.RandomState(self.seed)
        self.gen = np.random.default_rng(self.seed)


Apply = Callable[[Image.Image, Any, Streams], np.ndarray]
Advance = Callable[[Image.Image, Any, Streams], None]


@dataclass(frozen=True)
class Op:
    """One corruption kind (a medmnistc class). ``apply(img, param, streams)`` takes the RGB PIL image
    the package hands it and returns its uint8 (H, W, 3) array; ``advance`` consumes exactly the draws
    ``apply`` would without computing the image (None: the kind draws nothing)."""

    apply: Apply
    advance: Optional[Advance] = None
    source: str = ""  # medmnistc file and class ported
