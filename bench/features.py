"""Frozen features: run the frozen part of a backbone once per image and cache the result on disk.

The cache key holds everything that changes the output (adapter, variant, weights fingerprint,
readout, input size, resize and gray policy, dataset file md5, split, limit, how far into the
backbone we go, and a code version), so a stale entry can never be served.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from .preprocess import Preprocess

# bump when extraction code changes what it produces
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "medfm-bench")


def precision(device: torch.device, requested: str = "auto") -> str:
    """What ``autocast`` computes in on this device for ``--precision requested``."""
    if device.type != "cuda":
        return "fp32"  # CPU runs stay fp32 whatever is asked, so they are exactly reproducible
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        from .errors import UserError

        raise UserError("--precision bf16: this GPU has no bf16; use fp16, fp32 or auto")
    return requested


def autocast(device: torch.device, requested: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast in ``precision(device, requested)``: bf16 or fp16 on CUDA, nothing for fp32."""
    p = precision(device, requested)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if p == "bf16" else torch.float16)


def iterate_batches(images: np.ndarray, batch_size: int, desc: str = "", quiet: bool = False):
    """Yield (start, uint8 numpy batch) slices; memmapped arrays are read a batch at a time."""
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=quiet or None, leave=False)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        yield start, batch
        bar.update(len(batch))
    bar.close()


@torch.inference_mode()
def extract(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, pre: Preprocess,
            device: torch.device, batch_size: int = 128, desc: str = "extract",
            quiet: bool = False, requested_precision: str = "auto") -> np.ndarray:
    """Apply ``fn`` (normalised images -> features) to every image once, in batches."""
    out: np.ndarray | None = None
    for start, batch in iterate_batches(images, batch_size, desc, quiet):
        with autocast(device, requested_precision):
            y = fn(pre(pre.to_device(batch, device)))
        y = y.float().cpu().numpy()
        if out is None:
            out = np.empty((len(images),) + y.shape[1:], dtype=np.float32)
        out[start:start + len(y)] = y
    if out is None:
        raise ValueError("no images to extract features from")
    return out


@dataclass
class FeatureCache:
    root: Path

    def key(self, parts: dict) -> str:
        blob = json.dumps({**parts, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.npy"

    def get_or_compute(self, parts: dict, compute: Callable[[], np.ndarray],
                       memory_budget: int | None = None) -> tuple[np.ndarray, bool]:
        """(features, hit). Concurrent workers asking for the same key compute it once.
        Arrays larger than ``memory_budget`` bytes come back memory-mapped from the cache file."""
        key = self.key(parts)
        path = self.path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock"):
                if not path.exists():  # else another worker finished it while we waited
                    feats = compute()
                    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
                    np.save(tmp, feats)
                    tmp.with_suffix(".json").write_text(json.dumps(parts, indent=1, default=str))
                    os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
                    os.replace(tmp, path)  # the .npy appears last: its presence means complete
                    return self._fit(feats, path, memory_budget), False
        return self._fit(np.load(path, mmap_mode="r"), path, memory_budget), True

    @staticmethod
    def _fit(arr: np.ndarray, path: Path, memory_budget: int | None) -> np.ndarray:
        if memory_budget is not None and arr.nbytes > memory_budget:
            return arr if isinstance(arr, np.memmap) else np.load(path, mmap_mode="r")
        return np.array(arr) if isinstance(arr, np.memmap) else arr

    def exists(self, parts: dict) -> bool:
        return self.path(self.key(parts)).exists()
