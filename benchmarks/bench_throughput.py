"""Extraction throughput (images/s) of every built-in adapter at its default variant and input
size, random weights, next to the cost of one linear-probe run on BreastMNIST (780 images).

Usage: python benchmarks/bench_throughput.py [--images 32] [--backbones dinov2,clip,...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import record

import backbones
from bench.features import extract
from bench.preprocess import Preprocess

DEFAULT = "resnet18,resnet50,resnet152,deit,dino,dinov2,clip,sam,blip"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backbones", default=DEFAULT)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = np.random.default_rng(0).integers(0, 256, (a.images, 64, 64), dtype=np.uint8)
    for name in a.backbones.split(","):
        torch.manual_seed(0)
        model = backbones.build(name, None, "random").eval().to(device)
        size = model.spec.input_size
        pre = Preprocess(size, "resize", *model.normalization())
        extract(model, images[: a.batch_size], pre, device, a.batch_size, quiet=True)  # warm-up
        t = time.perf_counter()
        extract(model, images, pre, device, a.batch_size, quiet=True)
        rate = a.images / (time.perf_counter() - t)
        context = f"{name}/{model.variant} at {size}px, random weights, {device}, {torch.get_num_threads()} threads"
        # one BreastMNIST probe = 780 images through the frozen backbone once
        record("throughput", context, [("images_per_s", rate), ("breastmnist_probe_extract_s", 780 / rate)])


if __name__ == "__main__":
    main()
