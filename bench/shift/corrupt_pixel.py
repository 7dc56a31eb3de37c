"""Deterministic pixel corruptions of MedMNIST-C (medmnistc 0.1.0), ported line by line.

Sources: ``medmnistc/corruptions/compression.py`` (``Pixelate``, ``JPEGCompression``) and
``medmnistc/corruptions/enhance.py`` (``Brightness``, ``Contrast``, ``GammaCorrection``, ``Saturate``).
Pillow does the same work here as in the package (resize, JPEG codec, ``ImageEnhance``), so the
outputs are the package's exactly. ``GammaCorrection`` called ``torchvision``'s ``adjust_gamma`` on a
PIL image, which is a 256-entry lookup table (``torchvision/transforms/_functional_pil.py``
``adjust_gamma``) reproduced here; ``Saturate`` called ``skimage.color.rgb2hsv``/``hsv2rgb``
(scikit-image 0.23.2, ``skimage/color/colorconv.py``), reproduced with the same NumPy operations.
"""
from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageEnhance

from .corrupt_base import Op, Streams


def pixelate(img: Image.Image, factor: float, _: Streams) -> np.ndarray:
    """compression.py ``Pixelate.apply``: BOX down to ``int(side * factor)``, BOX back up."""
    width, height = img.size
    img = img.resize((int(width * factor), int(height * factor)), Image.BOX)
    img = img.resize((width, height), Image.BOX)
    return np.array(img)


def jpeg(img: Image.Image, quality: int, _: Streams) -> np.ndarray:
    """compression.py ``JPEGCompression.apply``: Pillow's JPEG encoder at ``quality``, decoded."""
    output = BytesIO()
    img.save(output, "JPEG", quality=quality)
    return np.array(Image.open(output))


def brightness(img: Image.Image, factor: float, _: Streams) -> np.ndarray:
    """enhance.py ``Brightness.apply``: ``PIL.ImageEnhance.Brightness(img).enhance(factor)``."""
    return np.array(ImageEnhance.Brightness(img).enhance(factor)).astype(np.uint8)


def contrast(img: Image.Image, factor: float, _: Streams) -> np.ndarray:
    """enhance.py ``Contrast.apply``: ``PIL.ImageEnhance.Contrast(img).enhance(factor)``."""
    return np.array(ImageEnhance.Contrast(img).enhance(factor)).astype(np.uint8)


def gamma(img: Image.Image, gamma_: float, _: Streams) -> np.ndarray:
    """enhance.py ``GammaCorrection.apply``: torchvision ``adjust_gamma(img, gamma, gain=1)`` on a PIL
    image, i.e. the lookup ``int((255 + 1 - 1e-3) * gain * (v / 255) ** gamma)`` per channel."""
    gain = 1
    mode = img.mode
    table = [int((255 + 1 - 1e-3) * gain * pow(v / 255.0, gamma_)) for v in range(256)] * 3
    return np.array(img.convert("RGB").point(table).convert(mode)).astype(np.uint8)


def _rgb2hsv(arr: np.ndarray) -> np.ndarray:
    """scikit-image 0.23.2 ``skimage.color.rgb2hsv`` for a float64 (H, W, 3) array."""
    out = np.empty_like(arr)
    out_v = arr.max(-1)
    delta = np.ptp(arr, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
        out_s[delta == 0.0] = 0.0
        idx = arr[..., 0] == out_v
        out[idx, 0] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = arr[..., 1] == out_v
        out[idx, 0] = 2.0 + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = arr[..., 2] == out_v
        out[idx, 0] = 4.0 + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
        out_h = (out[..., 0] / 6.0) % 1.0
        out_h[delta == 0.0] = 0.0
    out[..., 0] = out_h
    out[..., 1] = out_s
    out[..., 2] = out_v
    out[np.isnan(out)] = 0
    return out


def _hsv2rgb(arr: np.ndarray) -> np.ndarray:
    """scikit-image 0.23.2 ``skimage.color.hsv2rgb`` for a float64 (H, W, 3) array."""
    hi = np.floor(arr[..., 0] * 6)
    f = arr[..., 0] * 6 - hi
    p = arr[..., 2] * (1 - arr[..., 1])
    q = arr[..., 2] * (1 - f * arr[..., 1])
    t = arr[..., 2] * (1 - (1 - f) * arr[..., 1])
    v = arr[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), axis=-1), np.stack((q, v, p), axis=-1),
                                   np.stack((p, v, t), axis=-1), np.stack((p, q, v), axis=-1),
                                   np.stack((t, p, v), axis=-1), np.stack((v, p, q), axis=-1)]))


def saturate(img: Image.Image, shift: float, _: Streams) -> np.ndarray:
    """enhance.py ``Saturate.apply``: add ``shift`` to the HSV saturation, clip to [0, 1]."""
    arr = _rgb2hsv(np.array(img) / 255.)
    arr[:, :, 1] = np.clip(arr[:, :, 1] + shift, 0, 1)
    arr = np.clip(_hsv2rgb(arr), 0, 1) * 255
    return arr.astype(np.uint8)


OPS = {
    "Pixelate": Op(pixelate, source="medmnistc/corruptions/compression.py Pixelate"),
    "JPEGCompression": Op(jpeg, source="medmnistc/corruptions/compression.py JPEGCompression"),
    "Brightness": Op(brightness, source="medmnistc/corruptions/enhance.py Brightness"),
    "Contrast": Op(contrast, source="medmnistc/corruptions/enhance.py Contrast"),
    "GammaCorrection": Op(gamma, source="medmnistc/corruptions/enhance.py GammaCorrection"),
    "Saturate": Op(saturate, source="medmnistc/corruptions/enhance.py Saturate"),
}
