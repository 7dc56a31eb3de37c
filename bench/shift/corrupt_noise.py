"""Noise corruptions of MedMNIST-C (medmnistc 0.1.0 ``medmnistc/corruptions/noise.py``), ported.

``GaussianNoise``, ``SpeckleNoise`` and ``ShotNoise`` draw from NumPy's legacy global generator
(``np.random.normal`` / ``np.random.poisson``), here ``Streams.np``; ``ImpulseNoise`` calls
``skimage.util.random_noise(img / 255., mode='s&p', amount=c, rng=rng)`` with the dataset pass's
``default_rng`` (scikit-image 0.23.2 ``skimage/util/noise.py``: two Bernoulli fields
``rng.random(shape) <= p`` then ``<= 0.5``, salt where both, pepper where only the first), here
``Streams.gen``. The legacy generator's normal and uniform streams do not depend on how a draw is
split into calls, so skipping an image only has to draw the same count.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .corrupt_base import Op, Streams


def _shape(img: Image.Image) -> tuple[int, ...]:
    return (img.size[1], img.size[0], len(img.getbands()))


def gaussian_noise(img: Image.Image, scale: float, s: Streams) -> np.ndarray:
    """noise.py ``GaussianNoise.apply``: ``clip(x + N(0, c), 0, 1)`` on x = img / 255."""
    x = np.array(img) / 255.
    noisy = np.clip(x + s.np.normal(size=x.shape, scale=scale), 0, 1)
    return (noisy * 255).astype(np.uint8)


def speckle_noise(img: Image.Image, scale: float, s: Streams) -> np.ndarray:
    """noise.py ``SpeckleNoise.apply``: ``clip(x + x * N(0, c), 0, 1)`` on x = img / 255."""
    x = np.array(img) / 255.
    noise = s.np.normal(size=x.shape, scale=scale)
    return (np.clip(x + x * noise, 0, 1) * 255).astype(np.uint8)


def skip_normal(img: Image.Image, scale: float, s: Streams) -> None:
    s.np.normal(size=_shape(img), scale=scale)


def shot_noise(img: Image.Image, mult: float, s: Streams) -> np.ndarray:
    """noise.py ``ShotNoise.apply``: ``clip(Poisson(x * mult) / mult, 0, 1)`` on x = img / 255.
    (The Poisson sampler's draw count depends on each pixel's rate, so skipping = applying.)"""
    x = np.array(img) / 255.
    noisy = np.clip(s.np.poisson(x * mult) / mult, 0, 1)
    return (noisy * 255).astype(np.uint8)


def skip_shot(img: Image.Image, mult: float, s: Streams) -> None:
    shot_noise(img, mult, s)


def impulse_noise(img: Image.Image, amount: float, s: Streams) -> np.ndarray:
    """noise.py ``ImpulseNoise.apply`` with scikit-image 0.23.2 ``random_noise(mode='s&p')``."""
    x = np.array(img) / 255.
    out = x.copy()
    flipped = _bernoulli(amount, x.shape, s.gen)
    salted = _bernoulli(0.5, x.shape, s.gen)
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0.0  # low_clip: 0 for an image with no negative values
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _bernoulli(p: float, shape: tuple[int, ...], gen: np.random.Generator) -> np.ndarray:
    """skimage/util/noise.py ``_bernoulli``: no draw at all for p 0 or 1."""
    if p == 0:
        return np.zeros(shape, dtype=bool)
    if p == 1:
        return np.ones(shape, dtype=bool)
    return gen.random(shape) <= p


def skip_impulse(img: Image.Image, amount: float, s: Streams) -> None:
    _bernoulli(amount, _shape(img), s.gen)
    _bernoulli(0.5, _shape(img), s.gen)


OPS = {
    "GaussianNoise": Op(gaussian_noise, skip_normal, source="medmnistc/corruptions/noise.py GaussianNoise"),
    "SpeckleNoise": Op(speckle_noise, skip_normal, source="medmnistc/corruptions/noise.py SpeckleNoise"),
    "ImpulseNoise": Op(impulse_noise, skip_impulse, source="medmnistc/corruptions/noise.py ImpulseNoise"),
    "ShotNoise": Op(shot_noise, skip_shot, source="medmnistc/corruptions/noise.py ShotNoise"),
}
