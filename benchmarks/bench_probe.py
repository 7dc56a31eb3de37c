"""Linear probe cost against the extraction pass alone and against a naive probe.

Measured side by side in one process on one dataset file:
  extraction  frozen backbone over train/val/test once (the floor of any probe)
  probe       the whole `bench run --head linear` (load, extract, 16-head grid, select, evaluate, write)
  naive       the common practice: the frozen backbone runs again in every epoch of head training;
              timed for --naive-epochs epochs and projected to the probe's epoch count

Usage: python benchmarks/bench_probe.py [--data-root ../shared/medmnist] [--size 64]
Appends its figures to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, SHARED, record

from bench import heads  # noqa: E402
from bench.datasets import medmnist as data  # noqa: E402
from bench.run_config import RunOptions  # noqa: E402
from bench.features import extract  # noqa: E402
from bench.preprocess import Preprocess  # noqa: E402
from bench.resolve import resolve  # noqa: E402
from bench.assemble import build_backbone  # noqa: E402
from bench.runner import execute  # noqa: E402


def naive_epoch(model, pre, ds, device, head, opt, batch_size: int) -> None:
    """One epoch of the naive probe: backbone forward on every train batch, then on val."""
    tr = ds.splits["train"]
    perm = np.random.permutation(len(tr))
    for start in range(0, len(tr), batch_size):
        idx = np.sort(perm[start:start + batch_size])
        with torch.inference_mode():
            f = model(pre(pre.to_device(tr.images[idx], device)))
        loss = heads.loss_fn(ds.task, head(f.clone()), torch.from_numpy(tr.labels[idx]).to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.inference_mode():
        extract(model, ds.splits["val"].images, pre, device, 128, quiet=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="random")
    p.add_argument("--naive-epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = resolve(a.backbone, a.dataset, weights=a.weights, size=a.size, head="linear")
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    ds = data.load(a.dataset, a.size, a.data_root)
    model = build_backbone(cfg).eval().to(device)
    pre = Preprocess(cfg.input_size, cfg.resize, *model.normalization())

    # warm-up: the first batches pay for allocator growth and kernel selection
    extract(model, ds.splits["val"].images[:256], pre, device, 128, quiet=True)
    t = time.perf_counter()
    for split in data.SPLITS:
        extract(model, ds.splits[split].images, pre, device, 128, quiet=True)
    t_extract = time.perf_counter() - t

    opts = RunOptions(results_dir=tmp / "results", data_root=a.data_root, cache_dir=tmp / "cache", quiet=True)
    t = time.perf_counter()
    execute(cfg, opts)
    t_probe = time.perf_counter() - t

    head = torch.nn.Linear(model.embed_dim, ds.n_outputs).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    t = time.perf_counter()
    for _ in range(a.naive_epochs):
        naive_epoch(model, pre, ds, device, head, opt, cfg.head_batch_size)
    t_naive_epoch = (time.perf_counter() - t) / a.naive_epochs
    t_naive = t_naive_epoch * cfg.head_epochs

    rows = [
        ("extraction_s", t_extract), ("probe_s", t_probe), ("naive_epoch_s", t_naive_epoch),
        (f"naive_{cfg.head_epochs}_epochs_projected_s", t_naive),
        ("probe_over_extraction", t_probe / t_extract), ("naive_over_probe", t_naive / t_probe),
    ]
    context = (f"{a.backbone}/{a.weights} {a.dataset}_{a.size} -> {cfg.input_size}px, {device}, "
               f"{torch.get_num_threads()} threads")
    record("probe", context, rows, a.out)


if __name__ == "__main__":
    main()
