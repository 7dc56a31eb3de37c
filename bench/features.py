"""The frozen pass: run the frozen part of a backbone once per image, in batches, under autocast
on CUDA (the disk cache around it is bench.cache; its key, bench.context.feature_parts)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import datapath
from .preprocess import Preprocess
from .progress import Progress


def precision(device: torch.device, requested: str = "auto") -> str:
    """What ``autocast`` computes in on this device for ``--precision requested``."""
    if device.type == "mps":  # half precision when asked (auto: fp32; not every op has an MPS half kernel)
        return requested if requested in ("fp16", "bf16") else "fp32"
    if device.type != "cuda":
        # CPU runs stay fp32 whatever is asked: exactly reproducible, and CPU bf16 is rarely faster
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        from .errors import UserError

        raise UserError("--precision bf16: this GPU has no bf16; use fp16, fp32 or auto")
    return requested


def autocast(device: torch.device, requested: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast in ``precision(device, requested)``: bf16 or fp16 on CUDA (and MPS), nothing for fp32."""
    p = precision(device, requested)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)


def iterate_batches(images: np.ndarray, batch_size: int, desc: str = "", quiet: bool = False,
                    device: torch.device | None = None):
    """Yield (start, batch) in order. Without ``device``: uint8 numpy slices (memmapped arrays are
    read a batch at a time). With it: uint8 (B,C,H,W) tensors on ``device``, read ahead on a
    background thread and copied through reused pinned buffers on CUDA (bench.datapath)."""
    bar = Progress(len(images), desc, "img", quiet)
    slices = datapath.sequential(len(images), batch_size)
    batches = datapath.device_batches(images, slices, device) if device is not None else \
        (images[sl] for sl in slices)
    try:
        for sl, batch in zip(slices, batches):
            yield sl.start, (Preprocess.layout(batch) if device is not None else batch)
            bar.update(sl.stop - sl.start)
    finally:
        if device is not None:
            batches.close()  # stops the reader thread when the loop is left early
        bar.close()


def _one_behind(results: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """Each (start, output) once the next batch has been launched: copying an output to the host
    waits for it, and meanwhile the device already works on the next batch (no stall between)."""
    prev = None
    for item in results:
        if prev is not None:
            yield prev
        prev = item
    if prev is not None:
        yield prev


def _empty(i: int, shape: tuple) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)


@torch.inference_mode()
def extract(fn: Callable[[torch.Tensor], "torch.Tensor | list[torch.Tensor]"], images: np.ndarray, pre: Preprocess,
            device: torch.device, batch_size: int = 128, desc: str = "extract",
            quiet: bool = False, requested_precision: str = "auto",
            allocate: Callable[[int, tuple], np.ndarray] = _empty) -> "np.ndarray | list[np.ndarray]":
    """Apply ``fn`` (normalised images -> features) to every image once, in batches. An ``fn`` that
    returns a list of tensors (e.g. one per block) fills one array per entry, each from
    ``allocate(position, shape)`` (default: in memory; the feature cache hands out memory maps),
    and a list of arrays comes back."""
    outs: list[np.ndarray] | None = None
    several = False

    def launched() -> Iterator[tuple[int, Any]]:
        for start, x in iterate_batches(images, batch_size, desc, quiet, device=device):
            with autocast(device, requested_precision):
                y = fn(pre(x))
            yield start, y

    for start, y in _one_behind(launched()):
        several = isinstance(y, (list, tuple))
        ys = [t.float().cpu().numpy() for t in (y if several else [y])]
        if outs is None:
            outs = [allocate(i, (len(images),) + t.shape[1:]) for i, t in enumerate(ys)]
        for out, t in zip(outs, ys):
            out[start:start + len(t)] = t
    if outs is None:
        raise ValueError("no images to extract features from")
    return outs if several else outs[0]
