"""Task-specific artefacts of MedMNIST-C (medmnistc 0.1.0 ``medmnistc/corruptions/microscopy.py``).

``StainDeposit``, ``Bubble`` and ``Characters`` draw from Python's ``random`` (here ``Streams.py``) in
the package's call order; ``BlackCorner`` is deterministic. ``Bubble`` draws with Pillow as the
package does. ``BlackCorner``'s filled ``cv2.circle`` and ``Characters``' ``cv2.putText`` are ported
from OpenCV (``bench/shift/corrupt_text.py``) so OpenCV is not needed.
"""
from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw

from .corrupt_base import Op, Streams
from .corrupt_inks import inks
from .corrupt_text import fill_circle, put_text


def _stain_plan(shape: tuple[int, int], param: tuple[int, int], s: Streams) -> list[tuple[np.ndarray, int, int]]:
    """The package's draws for one image: which inks go where."""
    max_marks, severity = param
    img_h, img_w = shape
    num_marks = s.py.randint(1, max_marks) if max_marks > 1 else max_marks
    masks = inks(str(max(3, severity)))  # the ink size follows the severity index (0-4), as in the package
    plan = []
    for _ in range(num_marks):
        ink = masks[s.py.randint(0, len(masks) - 1)]
        ink_height, ink_width = ink.shape
        rand_x = s.py.randint(10, img_w - ink_width - 10)
        rand_y = s.py.randint(10, img_h - ink_height - 10)
        plan.append((ink, rand_x, rand_y))
    return plan


def stain_deposit(img: Image.Image, param: tuple[int, int], s: Streams) -> np.ndarray:
    """microscopy.py ``StainDeposit.apply``: black ink blots (pixels where the mask is 1 set to 0)."""
    x = np.array(img)
    for ink, rx, ry in _stain_plan(x.shape[:2], param, s):
        h, w = ink.shape
        x[ry:ry + h, rx:rx + w, :3] *= (1 - ink)[:, :, None]
    return np.clip(x, 0, 255).astype(np.uint8)


def skip_stain(img: Image.Image, param: tuple[int, int], s: Streams) -> None:
    _stain_plan((img.size[1], img.size[0]), param, s)


def _bubble_plan(size: tuple[int, int], param: tuple[int, int], s: Streams) -> list[tuple[int, int, int]]:
    max_radius, max_bubbles = param
    height, width = size  # the package unpacks PIL's (width, height) this way round
    plan = []
    for _ in range(s.py.randint(7, max_bubbles)):
        radius = s.py.randint(3, max_radius)
        x, y = s.py.randint(radius, width - radius), s.py.randint(radius, height - radius)
        plan.append((radius, x, y))
    return plan


def bubble(img: Image.Image, param: tuple[int, int], s: Streams) -> np.ndarray:
    """microscopy.py ``Bubble.apply``: translucent white discs with a brighter rim, pasted with alpha."""
    out = img.copy()
    bubbles = Image.new("RGBA", out.size, (255, 255, 255, 0))
    draw = ImageDraw.Draw(bubbles)
    border, alpha = 2, 100
    for radius, x, y in _bubble_plan(img.size, param, s):
        draw.ellipse((x - radius - border, y - radius - border, x + radius + border, y + radius + border),
                     fill=(255, 255, 255, alpha + 30))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255, alpha))
    out.paste(bubbles, (0, 0), bubbles)
    return np.array(out)


def skip_bubble(img: Image.Image, param: tuple[int, int], s: Streams) -> None:
    _bubble_plan(img.size, param, s)


def black_corner(img: Image.Image, multiplier: float, _: Streams) -> np.ndarray:
    """microscopy.py ``BlackCorner.apply``: black outside a centred disc of ``multiplier`` x the
    inscribed radius (``cv2.circle(..., thickness=-1)``)."""
    width, height = img.size
    x = np.array(img)
    cx, cy = width // 2, height // 2
    radius = min(cx, cy, width - cx, height - cy)
    inside = fill_circle((height, width), (cx, cy), int(radius * multiplier))
    x[~inside] = 0
    return x


def _characters_plan(shape: tuple[int, int], param: tuple[int, int, float], s: Streams) -> list[tuple]:
    max_words, max_letters, max_font_scale = param
    height, width = shape
    plan = []
    for _ in range(s.py.randint(1, max_words)):
        num_letters = s.py.randint(3, max_letters)
        font_scale = s.py.randint(14, int(max_font_scale * 100)) / 100.
        text = "".join(s.py.choice(string.ascii_lowercase) for _ in range(num_letters))
        org = (s.py.randint(10, width - (8 * num_letters)), s.py.randint(10, height - 10))
        color = (s.py.randint(0, 255), s.py.randint(0, 255), s.py.randint(0, 255))
        plan.append((text, org, font_scale, color))
    return plan


def characters(img: Image.Image, param: tuple[int, int, float], s: Streams) -> np.ndarray:
    """microscopy.py ``Characters.apply``: random lower-case words, ``cv2.putText`` with
    ``FONT_HERSHEY_DUPLEX``, thickness 1, ``LINE_AA``, random colours."""
    x = np.array(img)
    for text, org, scale, color in _characters_plan(x.shape[:2], param, s):
        put_text(x, text, org, scale, color)
    return x


def skip_characters(img: Image.Image, param: tuple[int, int, float], s: Streams) -> None:
    _characters_plan((img.size[1], img.size[0]), param, s)


OPS = {
    "StainDeposit": Op(stain_deposit, skip_stain, source="medmnistc/corruptions/microscopy.py StainDeposit"),
    "Bubble": Op(bubble, skip_bubble, source="medmnistc/corruptions/microscopy.py Bubble"),
    "BlackCorner": Op(black_corner, source="medmnistc/corruptions/microscopy.py BlackCorner"),
    "Characters": Op(characters, skip_characters, source="medmnistc/corruptions/microscopy.py Characters"),
}
