"""Blur corruptions of MedMNIST-C (medmnistc 0.1.0 ``medmnistc/corruptions/filter.py``), ported to
NumPy/SciPy without the libraries the package called.

- ``MotionBlur``: the package writes a PNG, runs ImageMagick's ``MagickMotionBlurImage(radius, sigma,
  angle)`` through Wand with ``angle = np.random.uniform(-45, 45)`` and decodes the PNG with OpenCV.
  Ported from ImageMagick 6 (``magick/effect.c`` ``MotionBlurImageChannel``, ``magick/gem.c``
  ``GetOptimalKernelWidth1D``; Q16 without HDRI, the ``libmagickwand-dev`` build the package's README
  installs on Ubuntu): a one-sided Gaussian of ``2 * ceil(radius) + 1`` taps along the angle, edge
  pixels repeated past the border, sums of 16-bit samples in double, rounded to 16 bits
  (``ClampToQuantum``) and scaled to 8 bits for the PNG (``ScaleQuantumToChar``).
- ``DefocusBlur``: a disk kernel softened by OpenCV's 3x3 (5x5) Gaussian, convolved per channel by
  ``cv2.filter2D`` (reflect-101 border) in double; here the kernel is rebuilt in float32 and the
  correlation runs in double with SciPy (``mode='mirror'`` is OpenCV's reflect-101).
- ``ZoomBlur``: ``scipy.ndimage.zoom(order=1)`` exactly as the package calls it.
- ``GaussianBlur``: torchvision ``gaussian_blur(img, kernel_size=k)`` on a PIL image (sigma
  ``0.15 k + 0.35``, reflect padding, float32, rounded half to even); here the float32 kernel of
  ``torchvision/transforms/_functional_tensor.py`` ``_get_gaussian_kernel2d`` is correlated in
  double, so a pixel may differ by 1 where torch's float32 sum lands within rounding of ``x.5``.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from .corrupt_base import Op, Streams

# ImageMagick 6 magick/magick-type.h, magick/image-private.h
_MAGICK_EPSILON = 1.0e-12
_MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062
_QUANTUM_RANGE = 65535.0


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """effect.c ``GetMotionBlurKernel`` with gem.c ``GetOptimalKernelWidth1D`` (radius > 0 here)."""
    if radius <= _MAGICK_EPSILON:
        raise ValueError("MedMNIST-C motion blur radii are positive")
    width = int(2.0 * math.ceil(radius) + 1.0)
    sig = _MAGICK_EPSILON if abs(sigma) < _MAGICK_EPSILON else sigma
    kernel = [math.exp(-(float(i) * i) / (2.0 * sig * sig)) / (_MAGICK_SQ2PI * sig) for i in range(width)]
    normalize = 0.0
    for k in kernel:
        normalize += k
    return np.array([k / normalize for k in kernel])


def motion_offsets(width: int, angle: float) -> list[tuple[int, int]]:
    """effect.c ``MotionBlurImageChannel``: (dx, dy) of tap i along ``angle`` degrees."""
    rad = math.pi * angle / 180.0  # DegreesToRadians: MagickPI*degrees/180.0
    px, py = width * math.sin(rad), width * math.cos(rad)
    h = math.hypot(px, py)
    return [(math.ceil((i * py) / h - 0.5), math.ceil((i * px) / h - 0.5)) for i in range(width)]


def magick_motion_blur(rgb: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick 6 Q16 ``MotionBlurImage`` of an 8-bit image read from and written to PNG."""
    kernel = motion_kernel(radius, sigma)
    h, w = rgb.shape[:2]
    src = rgb.astype(np.float64) * 257.0  # ScaleCharToQuantum
    acc = np.zeros_like(src)
    rows, cols = np.arange(h), np.arange(w)
    for k, (dx, dy) in zip(kernel, motion_offsets(len(kernel), angle)):
        # GetOneCacheViewVirtualPixel: the edge virtual-pixel method clamps coordinates
        acc += k * src[np.clip(rows + dy, 0, h - 1)][:, np.clip(cols + dx, 0, w - 1)]
    q = np.where(acc <= 0.0, 0.0, np.where(acc >= _QUANTUM_RANGE, _QUANTUM_RANGE, np.floor(acc + 0.5)))
    q = q.astype(np.uint32)  # ClampToQuantum: (Quantum) (value + 0.5)
    return (((q + 128) - ((q + 128) >> 8)) >> 8).astype(np.uint8)  # ScaleQuantumToChar (Q16)


def motion_blur(img: Image.Image, param: tuple[float, float], s: Streams) -> np.ndarray:
    """filter.py ``MotionBlur.apply``."""
    radius, sigma = param
    angle = s.np.uniform(-45, 45)
    return magick_motion_blur(np.array(img.convert("RGB")), radius, sigma, angle)


def skip_motion(img: Image.Image, param: tuple[float, float], s: Streams) -> None:
    s.np.uniform(-45, 45)


def _cv_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(ksize, sigma, CV_32F)`` for sigma > 0: double, normalised, to float32."""
    scale2x = -0.5 / (sigma * sigma)
    t = [math.exp(scale2x * (i - (ksize - 1) * 0.5) ** 2) for i in range(ksize)]
    total = 0.0
    for v in t:
        total += v
    return np.array([v / total for v in t], dtype=np.float32)


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """filter.py ``disk``: a normalised float32 disk softened by ``cv2.GaussianBlur``."""
    if radius <= 8:
        grid = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        grid = np.arange(-radius, radius + 1)
        ksize = 5
    x, y = np.meshgrid(grid, grid)
    aliased = np.array((x ** 2 + y ** 2) <= radius ** 2, dtype=np.float32)
    aliased /= np.sum(aliased)
    g = _cv_gaussian_kernel(ksize, alias_blur).astype(np.float64)
    # separable: rows then columns, reflect-101 border, float32 between passes like OpenCV
    tmp = ndimage.correlate1d(aliased.astype(np.float64), g, axis=1, mode="mirror").astype(np.float32)
    return ndimage.correlate1d(tmp.astype(np.float64), g, axis=0, mode="mirror").astype(np.float32)


def defocus_blur(img: Image.Image, param: tuple[float, float], _: Streams) -> np.ndarray:
    """filter.py ``DefocusBlur.apply``."""
    radius, alias = param
    x = np.array(img) / 255.
    kernel = disk(radius, alias).astype(np.float64)
    channels = [ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)]
    out = np.clip(np.stack(channels, axis=-1), 0, 1) * 255
    return out.astype(np.uint8)


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """filter.py ``clipped_zoom``."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]


def zoom_blur(img: Image.Image, factors: np.ndarray, _: Streams) -> np.ndarray:
    """filter.py ``ZoomBlur.apply``: the mean of the image and its centre zooms, in float32."""
    x = (np.array(img) / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in factors:
        out += _clipped_zoom(x, zoom_factor)
    x = (x + out) / (len(factors) + 1)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def torch_gaussian_kernel2d(ksize: int) -> np.ndarray:
    """torchvision ``_get_gaussian_kernel2d([k, k], [0.15 k + 0.35] * 2, float32)``."""
    sigma = np.float32(ksize * 0.15 + 0.35)
    half = (ksize - 1) * 0.5
    x = np.linspace(-half, half, ksize).astype(np.float32)
    pdf = np.exp(np.float32(-0.5) * (x / sigma) ** 2)
    k1 = pdf / pdf.sum(dtype=np.float32)
    return (k1[:, None] * k1[None, :]).astype(np.float32)


def gaussian_blur(img: Image.Image, ksize: int, _: Streams) -> np.ndarray:
    """filter.py ``GaussianBlur.apply``: torchvision ``gaussian_blur`` of the uint8 image."""
    x = np.array(img).astype(np.float64)
    kernel = torch_gaussian_kernel2d(ksize).astype(np.float64)
    out = np.stack([ndimage.correlate(x[:, :, d], kernel, mode="mirror") for d in range(x.shape[2])], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


OPS = {
    "MotionBlur": Op(motion_blur, skip_motion, source="medmnistc/corruptions/filter.py MotionBlur"),
    "DefocusBlur": Op(defocus_blur, source="medmnistc/corruptions/filter.py DefocusBlur"),
    "ZoomBlur": Op(zoom_blur, source="medmnistc/corruptions/filter.py ZoomBlur"),
    "GaussianBlur": Op(gaussian_blur, source="medmnistc/corruptions/filter.py GaussianBlur"),
}
