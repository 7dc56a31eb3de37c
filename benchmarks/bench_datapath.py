"""The data path against the model alone: images/s of the whole extraction path (uint8 rows read
from a memory-mapped file, read ahead, copied to the device, resized/normalised there, the model,
features back to the host) over images/s of the model on the same batch already on the device,
normalised. Same model, batch size and images, measured side by side in one process, repeats
interleaved (ABBA); the best repeat of each (the one least slowed by other processes on a shared
machine), and the ratio of the medians too. 1.0 means the data path costs nothing.

Usage: python benchmarks/bench_datapath.py [--backbone resnet50] [--images 32] [--batch-size 16]
       [--size 224] [--precision auto] [--channels-last] [--device auto]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import record

import backbones
from bench.execution import Frozen, prepare
from bench.features import autocast, extract, precision
from bench.preprocess import Preprocess
from bench.assemble import pick_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(backbone: str = "resnet50", images: int = 32, batch_size: int = 16, size: int = 224,
            requested_precision: str = "auto", channels_last: bool = False, device: str = "auto",
            repeats: int = 4, input_size: int = 224, source: np.ndarray | None = None) -> dict:
    """Images/s of the whole path and of the model alone; their ratio."""
    dev = pick_device(device)
    torch.manual_seed(0)
    model = prepare(backbones.build(backbone, None, "random", input_size=input_size).eval().to(dev), channels_last)
    fn = Frozen(model, channels_last)
    pre = Preprocess(input_size, "resize", *model.normalization())
    with tempfile.TemporaryDirectory() as tmp:
        # RGB rows as a MedMNIST+ 224 px file holds them, read through a memory map (page cache warm
        # after the first repeat, as on a machine with the RAM for the file)
        path = Path(tmp) / "images.npy"
        if source is None:
            source = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
        np.save(path, np.resize(source, (images, *source.shape[1:])))  # ``images`` rows, repeated if fewer
        mapped = np.load(path, mmap_mode="r")
        stored = f"{mapped.shape[1]}px {'RGB' if mapped.ndim == 4 else 'gray'}"
        with torch.inference_mode():
            x = pre(pre.to_device(np.ascontiguousarray(mapped[:batch_size]), dev))  # one batch on the device
        n_batches = -(-images // batch_size)

        def model_alone() -> float:
            with torch.inference_mode():
                _sync(dev)
                t = time.perf_counter()
                for _ in range(n_batches):
                    with autocast(dev, requested_precision):
                        y = fn(x)
                y.float().sum().item()  # waits for the last batch, as the path's copy back does
                return n_batches * batch_size / (time.perf_counter() - t)

        def whole_path() -> float:
            _sync(dev)
            t = time.perf_counter()
            extract(fn, mapped, pre, dev, batch_size, quiet=True, requested_precision=requested_precision)
            return images / (time.perf_counter() - t)

        model_alone()  # warm-up: kernels chosen, caches allocated, file paged in
        whole_path()
        model_rates, path_rates = [], []
        for i in range(repeats):  # ABBA order: a drift in the machine's load hits both alike
            for arm in ((model_alone, whole_path) if i % 2 == 0 else (whole_path, model_alone)):
                (model_rates if arm is model_alone else path_rates).append(arm())
    # the best repeat of each: on a shared machine, the one least slowed by other processes
    m, p = max(model_rates), max(path_rates)
    median_ratio = statistics.median(path_rates) / statistics.median(model_rates)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    return {"model_images_per_s": m, "path_images_per_s": p, "path_over_model": p / m,
            "path_over_model_medians": median_ratio,
            "context": f"{backbone}/{model.variant} {stored} uint8 memmap -> {input_size}px, batch {batch_size}, "
                       f"{images} images x {repeats} repeats, {precision(dev, requested_precision)}"
                       f"{', channels-last' if channels_last else ''}, {name}, {torch.get_num_threads()} threads"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--images", type=int, default=32, help="images per repeat (at least one batch)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=224, help="side of the stored images")
    p.add_argument("--input-size", type=int, default=224, help="side the model sees")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--precision", default="auto")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="CSV to append to (default benchmarks/results.csv)")
    a = p.parse_args()
    r = measure(a.backbone, a.images, a.batch_size, a.size, a.precision, a.channels_last, a.device, a.repeats,
                a.input_size)
    rows = [(k, r[k]) for k in ("model_images_per_s", "path_images_per_s", "path_over_model",
                                "path_over_model_medians")]
    record("datapath", r["context"], rows, **({"out": a.out} if a.out else {}))


if __name__ == "__main__":
    main()
