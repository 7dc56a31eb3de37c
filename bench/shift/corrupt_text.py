"""OpenCV drawing used by MedMNIST-C's artefacts, ported (work in progress: see fill_circle/put_text)."""
from __future__ import annotations

import numpy as np


def fill_circle(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    """Boolean mask of ``cv2.circle(mask, center, radius, 255, thickness=-1)`` (LINE_8, shift 0)."""
    h, w = shape
    y, x = np.ogrid[:h, :w]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius ** 2


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    """``cv2.putText(img, text, org, FONT_HERSHEY_DUPLEX, scale, color, 1, LINE_AA)`` in place."""
    raise NotImplementedError("Characters (cv2.putText) is not ported yet")
