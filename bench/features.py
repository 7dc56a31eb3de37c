"""The frozen pass: run the frozen part of a backbone once per image, in batches, under autocast
on CUDA (the disk cache around it is bench.cache; its key, bench.context.feature_parts)."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from .preprocess import Preprocess
from .progress import Progress


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
    bar = Progress(len(images), desc, "img", quiet)
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            yield start, batch
            bar.update(len(batch))
    finally:
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
