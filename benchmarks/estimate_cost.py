"""What a sweep costs: backbone image passes per grid, converted to hours with measured throughput.

Cost model (in full-backbone forward passes of one image; backward = 2 forwards): each protocol's
own ``shared_cost`` (the frozen work a group of runs shares: the readout features of probes, the
frozen prefix of lastN fine-tunes, counted once per group) and ``cost`` (per run: epochs x
(forward+backward on train + forward on val) over the trainable fraction, and the per-epoch prefix
where augmentation stops it from being cached). See bench/protocols/. A layer-wise probe
(``--layers``) is one pass over all blocks, shared with the probes of its backbone x dataset (the
last layer is their readout); a ``--train-fraction`` / ``--shots`` run trains on its subset while
the frozen pass of its group covers the whole train split once (bench.sweep.plan.split_sizes). Epochs are the configured
maximum (early stopping only shortens runs). Hours = passes / images per second measured by
bench_throughput.py for that backbone (latest row in benchmarks/results.csv). The figures are for
the machine that measured the throughput: run bench_throughput.py on a GPU node and then this
script there to get GPU-hours.

Usage: python benchmarks/estimate_cost.py configs/paper.yaml [configs/medmnistplus.yaml ...]
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from common import RESULTS

from bench.sweep import grid
from bench.sweep.plan import group_key, num_blocks, resolve_points, split_sizes


def measured_throughput(path: Path) -> dict[str, float]:
    rates: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["benchmark"] == "throughput" and row["metric"] == "images_per_s":
                rates[row["context"].split("/")[0]] = float(row["value"])  # latest row wins
    return rates


def passes(cfgs) -> dict[str, float]:
    """Full-backbone image passes per backbone for a list of resolved run configs."""
    by_backbone: dict[str, float] = defaultdict(float)
    seen_groups: set[tuple] = set()
    for c in cfgs:
        n, blocks, protocol = split_sizes(c), num_blocks(c), c.protocol
        key = group_key(c)
        if key not in seen_groups:
            seen_groups.add(key)
            by_backbone[c.backbone] += protocol.shared_cost(c, n, blocks)  # the frozen part, once per group
        by_backbone[c.backbone] += protocol.cost(c, n, blocks)
    return by_backbone


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--throughput", type=Path, default=RESULTS, help="CSV with bench_throughput.py rows")
    a = p.parse_args()
    rates = measured_throughput(a.throughput)
    for path in a.configs:
        cfgs, _ = resolve_points(grid.load(path).points())
        total_h, missing = 0.0, []
        print(f"{path}: {len(cfgs)} runs")
        for backbone, n in sorted(passes(cfgs).items()):
            rate = rates.get(backbone)
            hours = n / rate / 3600 if rate else float("nan")
            total_h += hours if rate else 0.0
            if not rate:
                missing.append(backbone)
            print(f"  {backbone:<10} {n / 1e6:8.2f} M image passes  {rate or float('nan'):6.2f} img/s  {hours:9.1f} h")
        print(f"  total {total_h:.0f} h at the measured throughput" +
              (f" (no throughput for {', '.join(missing)})" if missing else ""))


if __name__ == "__main__":
    main()
