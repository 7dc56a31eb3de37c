"""Zero-shot on cached image features against the extraction of the test split alone.

Measured side by side in one process on BreastMNIST (the shipped 28 px copy, at the backbone's
input size):
  extraction  the frozen backbone over the test split once (projected readout), written to the cache
  zeroshot    the whole zero-shot protocol on a warm cache: cached val/test features read, the text
              tower built and run over every prompt, scores and per-template metrics
The issue's bound: zeroshot <= 0.1 x extraction.

Usage: python benchmarks/bench_zeroshot.py [--backbone clip] [--variant ViT-B-16/laion2b_s34b_b88k]
       [--weights random] [--repeats 3]
Appends its figures to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import ROOT, record

from bench.assemble import open_context  # noqa: E402
from bench.resolve import bind_data, resolve  # noqa: E402
from bench.run_config import make_run_options  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="clip")
    ap.add_argument("--variant", default="")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-root", default=str(ROOT / "bench" / "samples" / "medmnist"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        opts = make_run_options(data_root=Path(args.data_root), cache_dir=Path(cache), quiet=True)
        cfg = bind_data(resolve(args.backbone, args.dataset, variant=args.variant or None, weights=args.weights,
                                head="zeroshot"), opts)
        ctx = open_context(cfg, opts)
        t0 = time.perf_counter()
        ctx.frozen_pass("test", ctx.model)  # a cold cache: extracted
        extraction = time.perf_counter() - t0
        ctx.frozen_pass("val", ctx.model)   # so the zero-shot runs below read both splits from the cache
        times = []
        for _ in range(args.repeats):
            warm = open_context(cfg, opts, model=ctx.model)
            t0 = time.perf_counter()
            out = cfg.protocol.run(warm)
            times.append(time.perf_counter() - t0)
        zs = min(times)
    n = len(ctx.dataset.splits["test"])
    record("zeroshot", f"{cfg.backbone}@{cfg.variant} weights={cfg.weights} {cfg.dataset} test n={n} "
                       f"input {cfg.input_size} cpu, templates {out.selected['templates']}",
           [("extraction of test split (s)", extraction), ("zero-shot on cached features (s)", zs),
            ("ratio zero-shot / extraction", zs / extraction)])


if __name__ == "__main__":
    main()
