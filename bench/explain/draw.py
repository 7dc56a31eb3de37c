"""PNG sheets (matplotlib, Agg): a run's explained images, a comparison of runs on the same
images, first-layer filters, mean feature maps along the depth."""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np

CELL = 1.9      # inches per image
PAIRS_PER_ROW = 3


def _fig(rows: int, cols: int, title: str, extra_h: float = 0.0, cell: float = CELL, aspect: float = 1.22):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows * aspect + 0.5 + extra_h), squeeze=False)
    width = max(40, int(cell * cols * 13))  # characters that fit the figure's width at 9 pt
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _show(ax, img: np.ndarray, title: str = "", fontsize: float = 7) -> None:
    if img.ndim == 2 or img.shape[-1] == 1:
        ax.imshow(img.squeeze(), cmap="gray", interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=fontsize)


def overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's show_cam_on_image: jet heatmap over the image the model saw."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(pixels, heat, use_rgb=True, image_weight=0.55)


def run_sheet(title: str, originals: list[np.ndarray], overlays: list[np.ndarray], captions: list[str]) -> bytes:
    """One run: pairs (original at its stored size | heatmap over the model input), captioned."""
    n = max(len(originals), 1)
    per_row = min(PAIRS_PER_ROW, n)
    rows = math.ceil(n / per_row)
    fig, axes = _fig(rows, 2 * per_row, title)
    for k, (orig, over, cap) in enumerate(zip(originals, overlays, captions)):
        r, c = divmod(k, per_row)
        _show(axes[r, 2 * c], orig, cap)
        _show(axes[r, 2 * c + 1], over, "heatmap")
    return _png(fig)


def compare_sheet(title: str, originals: list[np.ndarray], row_captions: list[str], run_titles: list[str],
                  overlays: list[list[np.ndarray]], cell_captions: list[list[str]]) -> bytes:
    """Rows: images; columns: the original, then each run's heatmap (overlays[run][image])."""
    fig, axes = _fig(len(originals), 1 + len(run_titles), title, extra_h=0.3)
    for i, orig in enumerate(originals):
        _show(axes[i, 0], orig, row_captions[i])
        for j in range(len(run_titles)):
            cap = cell_captions[j][i]
            head = "\n".join(textwrap.wrap(run_titles[j], 30)) + "\n" if i == 0 else ""
            _show(axes[i, j + 1], overlays[j][i], head + cap)
    return _png(fig)


def filter_sheet(title: str, weight: np.ndarray, limit: int = 64) -> bytes:
    """First-layer filters (out, in, k, k): RGB when they see 3 channels, else their channel mean;
    each scaled to its own range (a filter's pattern, not its norm, is what is shown)."""
    w = weight[:limit].astype(np.float32)
    imgs = w.transpose(0, 2, 3, 1) if w.shape[1] == 3 else w.mean(1)
    lo = imgs.reshape(len(imgs), -1).min(1).reshape((-1,) + (1,) * (imgs.ndim - 1))
    hi = imgs.reshape(len(imgs), -1).max(1).reshape((-1,) + (1,) * (imgs.ndim - 1))
    imgs = (imgs - lo) / np.maximum(hi - lo, 1e-8)
    cols = min(8, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    fig, axes = _fig(rows, cols, title, cell=0.9, aspect=1.0)
    fig.subplots_adjust(wspace=0.08, hspace=0.08)
    for k, img in enumerate(imgs):
        ax = axes[k // cols, k % cols]
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
    return _png(fig)


def feature_sheet(title: str, originals: list[np.ndarray], names: list[str], maps: list[list[np.ndarray]]) -> bytes:
    """Rows: images; columns: the original, then the channel-mean map after each named stage."""
    import matplotlib

    fig, axes = _fig(len(originals), 1 + len(names), title, extra_h=0.2, cell=1.4, aspect=1.05)
    fig.subplots_adjust(wspace=0.06, hspace=0.12)
    for i, orig in enumerate(originals):
        _show(axes[i, 0], orig, "image" if i == 0 else "")
        for j, m in enumerate(maps[i]):
            lo, hi = float(m.min()), float(m.max())
            axes[i, j + 1].imshow((m - lo) / max(hi - lo, 1e-8), cmap=matplotlib.colormaps["viridis"],
                                  interpolation="nearest")
            if i == 0:
                axes[i, j + 1].set_title(f"{names[j]}\n{m.shape[0]}x{m.shape[1]}", fontsize=7)
    return _png(fig)
