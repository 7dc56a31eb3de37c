"""Blur corruptions of MedMNIST-C (medmnistc 0.1.0 ``medmnistc/corruptions/filter.py``), ported to
NumPy/SciPy without the libraries the package called.

- ``MotionBlur``: the package writes a PNG, runs ImageMagick's ``MagickMotionBlurImage(radius, sigma,
  angle)`` through Wand with ``angle = np.random.uniform(-45, 45)`` and decodes the PNG with OpenCV.
  Ported from ImageMagick 6 (``magick/effect.c`` ``MotionBlurImageChannel``, ``magick/gem.c``
  ``GetOptimalKernelWidth1D``; Q16 without HDRI, the ``libmagickwand-dev`` build the package's README
  installs on Ubuntu): a one-sided Gaussian of ``2 * ceil(radius) + 1`` taps along the angle, edge
  pixels repeated past the border, sums of 16-bit samples in double, rounded to 16 bits
  (``ClampToQuantum``) and truncated to 8 bits when the PNG is written (``SetImageDepth`` ->
  ``ScaleQuantumToAny``). Checked equal to ImageMagick 6.9.11-60 (Ubuntu 22.04's); 6.9.12 and later
  6.9 releases truncate the same way, releases before 6.9.10-70 (e.g. Ubuntu 20.04's 6.9.10-23)
  rounded instead and give 1 more on about half the pixels.
- ``DefocusBlur``: a disk kernel softened by OpenCV's 3x3 (5x5) Gaussian, convolved per channel by
  ``cv2.filter2D`` (reflect-101 border) in double; here the kernel is rebuilt in float32 and the
  correlation runs in double with SciPy (``mode='mirror'`` is OpenCV's reflect-101).
- ``ZoomBlur``: ``scipy.ndimage.zoom(order=1)`` exactly as the package calls it.
- ``GaussianBlur``: torchvision ``gaussian_blur(img, kernel_size=k)`` on a PIL image (sigma
  ``0.15 k + 0.35``, reflect padding, a float32 ``conv2d``, rounded half to even); here the float32
  kernel of ``torchvision/transforms/_functional_tensor.py`` ``_get_gaussian_kernel1d`` is applied
  in double, rows then columns. Not bit-exact: torch's float32 convolution sums in an order that
  depends on the CPU's kernels, so where the blurred value lies within float32 rounding of ``x.5``
  a pixel can come out 1 apart (about 2 in 100,000 pixels against torch 2.14 on x86-64).
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
    offsets = motion_offsets(len(kernel), angle)
    h, w = rgb.shape[:2]
    m = max(max(abs(dx), abs(dy)) for dx, dy in offsets)
    # GetOneCacheViewVirtualPixel: the edge virtual-pixel method repeats the border pixels
    src = np.pad(rgb.astype(np.float64) * 257.0, ((m, m), (m, m), (0, 0)), mode="edge")  # ScaleCharToQuantum
    acc = np.zeros(rgb.shape, dtype=np.float64)
    for k, (dx, dy) in zip(kernel, offsets):  # summed in the kernel's order, as ImageMagick does
        acc += k * src[m + dy:m + dy + h, m + dx:m + dx + w]
    q = np.where(acc <= 0.0, 0.0, np.where(acc >= _QUANTUM_RANGE, _QUANTUM_RANGE, np.floor(acc + 0.5)))
    q = q.astype(np.uint32)  # ClampToQuantum: (Quantum) (value + 0.5)
    # The PNG coder first calls SetImageDepth(image, 8) (coders/png.c), which maps every sample
    # through ScaleQuantumToAny(q, 255) = (QuantumAny) (255.0 * q / 65535), a truncation
    # (magick/quantum-private.h, since ImageMagick 6.9.10-70; it rounded before), and back; the
    # bytes written are then exactly floor(q / 257).
    return (q // 257).astype(np.uint8)


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


def _fma32(a: np.ndarray, b: np.float32, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add (the product of two float32 is exact in double; one rounding
    to double then to float32, which equals the fused result except in double-rounding ties)."""
    return (a.astype(np.float64) * np.float64(b) + c.astype(np.float64)).astype(np.float32)


def _reflect101(a: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    return np.take(a, np.r_[1, np.arange(n), n - 2], axis=axis)


def _cv_gaussian3_32f(a: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(a, (3, 3), sigma)`` of a float32 (17, 17) array as OpenCV 4.10 computes it
    on an x86-64 CPU with AVX2/FMA: a separable filter (``filter.simd.hpp`` ``SymmRowSmallVec_32f``
    then ``SymmColumnSmallVec_32f``) whose vector part (the first 16 of 17 outputs of a row) is
    ``fma(S, k0, (L + R) * k1)`` across and ``fma(U + D, k1, S * k0)`` down, the last output plain
    float32 arithmetic; reflect-101 border. Equal to OpenCV for every kernel MedMNIST-C uses."""
    g = _cv_gaussian_kernel(3, sigma)
    k0, k1 = g[1], g[0]
    vec = np.arange(a.shape[1]) < 16
    p = _reflect101(a, 1)
    left, mid, right = p[:, :-2], p[:, 1:-1], p[:, 2:]
    side = ((left + right) * k1).astype(np.float32)
    row = np.where(vec, _fma32(mid, k0, side), (mid * k0 + side).astype(np.float32))
    p = _reflect101(row, 0)
    up, mid, down = p[:-2], p[1:-1], p[2:]
    ud = up + down
    centre = (mid * k0).astype(np.float32)
    return np.where(vec[None, :], _fma32(ud, k1, centre), (centre + ud * k1).astype(np.float32)).astype(np.float32)


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """filter.py ``disk``: a normalised float32 disk softened by ``cv2.GaussianBlur`` (3x3)."""
    if radius > 8:  # the package's 5x5 branch; no MedMNIST-C severity reaches it
        raise ValueError("MedMNIST-C defocus radii are at most 8")
    grid = np.arange(-8, 8 + 1)
    x, y = np.meshgrid(grid, grid)
    aliased = np.array((x ** 2 + y ** 2) <= radius ** 2, dtype=np.float32)
    aliased /= np.sum(aliased)
    return _cv_gaussian3_32f(aliased, alias_blur)


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


def torch_gaussian_kernel1d(ksize: int) -> np.ndarray:
    """torchvision ``_get_gaussian_kernel1d(k, 0.15 k + 0.35, float32)`` (to within torch's float32
    ``exp`` and sum, a few units in the last place)."""
    sigma = np.float32(ksize * 0.15 + 0.35)
    half = (ksize - 1) * 0.5
    x = np.linspace(-half, half, ksize).astype(np.float32)
    pdf = np.exp(np.float32(-0.5) * (x / sigma) ** 2)
    return pdf / pdf.sum(dtype=np.float32)


def gaussian_blur_float(img: Image.Image, ksize: int) -> np.ndarray:
    """The blurred image before rounding, in double: the Gaussian is separable, so rows then columns
    (reflect padding, SciPy ``mode='mirror'``)."""
    x = np.array(img).astype(np.float64)
    k = torch_gaussian_kernel1d(ksize).astype(np.float64)
    return ndimage.correlate1d(ndimage.correlate1d(x, k, axis=1, mode="mirror"), k, axis=0, mode="mirror")


def gaussian_blur(img: Image.Image, ksize: int, _: Streams) -> np.ndarray:
    """filter.py ``GaussianBlur.apply``: torchvision ``gaussian_blur`` of the uint8 image, rounded half
    to even like ``torch.round``."""
    return np.clip(np.round(gaussian_blur_float(img, ksize)), 0, 255).astype(np.uint8)


OPS = {
    "MotionBlur": Op(motion_blur, skip_motion, source="medmnistc/corruptions/filter.py MotionBlur"),
    "DefocusBlur": Op(defocus_blur, source="medmnistc/corruptions/filter.py DefocusBlur"),
    "ZoomBlur": Op(zoom_blur, source="medmnistc/corruptions/filter.py ZoomBlur"),
    "GaussianBlur": Op(gaussian_blur, source="medmnistc/corruptions/filter.py GaussianBlur"),
}
