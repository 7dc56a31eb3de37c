"""DICOM pixels -> uint8, through pydicom (``pip install pydicom``, or the ``dicom`` extra).

The mapping, in order:

1. Modality LUT: stored values x RescaleSlope + RescaleIntercept (pydicom's ``apply_modality_lut``;
   e.g. CT in Hounsfield units).
2. VOI window: the first WindowCenter / WindowWidth when the file has them, as the DICOM standard's
   linear window (values below ``center - width/2`` are 0, above ``center + width/2`` are 255,
   linear in between); without a window, min-max of the image (its darkest pixel 0, its brightest
   255). 16-bit data is mapped to uint8 by exactly this, never by dropping bits.
3. MONOCHROME1 (white = low values, e.g. many mammograms and CR) is inverted, so every gray image
   reads "bright = dense" as MONOCHROME2.

Colour DICOMs (RGB, YBR) come out as pydicom's RGB array, 8 bits per channel. A multi-frame file
(a volume or a cine loop) is not one 2D image and is reported as unreadable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError


def _first(value) -> float:
    """WindowCenter/Width may be multi-valued (several windows): the first is the default."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def read_dicom(path: Path) -> np.ndarray:
    """uint8 (H, W) for monochrome, (H, W, 3) for colour."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        try:
            import pydicom
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        except ImportError:
            raise UserError(f"{path} is DICOM, and reading it needs pydicom: pip install pydicom") from None
    ds = pydicom.dcmread(str(path))
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"multi-frame DICOM ({ds.NumberOfFrames} frames), not a 2D image")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    pixels = ds.pixel_array
    if not photometric.startswith("MONOCHROME"):
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"{photometric} pixel data of shape {pixels.shape}")
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else \
            np.round(pixels / max(float(pixels.max()), 1.0) * 255).astype(np.uint8)
    x = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) > 0:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = float(x.min()), float(x.max())
    y = np.zeros_like(x) if hi <= lo else np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return np.round(y * 255).astype(np.uint8)
