"""Per-channel mean/std of a dataset's train split (``--normalize dataset``), cached on disk.

Computed on the stored uint8 images scaled to [0, 1], before any resizing, in chunks (the 224 px
files are memory-mapped); grayscale gives one value for all three channels. The cache is keyed
by the data fingerprint and --limit, so a changed file or limit recomputes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .base import Dataset

CHUNK = 4096  # images per pass


def train_stats(ds: Dataset, cache_dir: Path | None = None, limit: int | None = None
                ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel of the train split, in [0, 1] units."""
    path = Path(cache_dir) / "stats" / f"{ds.fingerprint}-limit{limit}.json" if cache_dir else None
    if path is not None and path.exists():
        d = json.loads(path.read_text())
        return tuple(d["mean"]), tuple(d["std"])
    images = ds.splits["train"].images
    total = np.zeros(3 if images.ndim == 4 else 1)
    total_sq = np.zeros_like(total)
    count = 0
    for start in range(0, len(images), CHUNK):
        x = np.asarray(images[start:start + CHUNK], dtype=np.float64) / 255.0
        x = x.reshape(len(x), -1, total.size)
        total += x.sum(axis=(0, 1))
        total_sq += (x * x).sum(axis=(0, 1))
        count += x.shape[0] * x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0)).clip(min=1e-6)
    mean3 = tuple(float(v) for v in np.broadcast_to(mean, 3))
    std3 = tuple(float(v) for v in np.broadcast_to(std, 3))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"mean": mean3, "std": std3, "dataset": ds.name, "n_train": len(images)}))
        os.replace(tmp, path)
    return mean3, std3
