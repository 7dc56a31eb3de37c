"""What a sweep costs: backbone image passes per grid, converted to hours with measured throughput.

Cost model (in full-backbone forward passes of one image; backward = 2 forwards):
  probe groups (linear/kNN): the frozen backbone runs once per image, shared by heads and seeds;
  frozen-prefix groups (lastN, DeiT/MLP head on a frozen backbone): the prefix blocks[:L-N] run
    once per image (shared by seeds); then per run and epoch the N trainable blocks run forward and
    backward on train and forward on val; the DeiT head is counted as 5% of the backbone;
  full fine-tuning: every epoch, forward+backward on train and forward on val; then test.
Epochs are the configured maximum (early stopping only shortens runs). Hours = passes / images per
second measured by bench_throughput.py for that backbone (latest row in benchmarks/results.csv).
The figures are for the machine that measured the throughput: run bench_throughput.py on a GPU
node and then this script there to get GPU-hours.

Usage: python benchmarks/estimate_cost.py configs/paper.yaml [configs/medmnistplus.yaml ...]
"""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from common import RESULTS

from bench.datasets import medmnist as data
from bench.config import parse_unfreeze
from bench.sweep import grid
from bench.sweep.plan import group_key, resolve_points

DEIT_HEAD_FRACTION = 0.05  # two DeiT-S blocks on the tokens, relative to a ViT-B/16 forward


def measured_throughput(path: Path) -> dict[str, float]:
    rates: dict[str, float] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["benchmark"] == "throughput" and row["metric"] == "images_per_s":
                rates[row["context"].split("/")[0]] = float(row["value"])  # latest row wins
    return rates


def passes(cfgs, blocks_of) -> dict[str, float]:
    """Full-backbone image passes per backbone for a list of resolved run configs."""
    by_backbone: dict[str, float] = defaultdict(float)
    seen_groups: set[tuple] = set()
    for c in cfgs:
        n = data.info(c.dataset)["n_samples"]
        n_all, n_train, n_val = n["train"] + n["val"] + n["test"], n["train"], n["val"]
        if c.limit:
            n_all, n_train, n_val = 3 * c.limit, c.limit, c.limit
        key = group_key(c)
        L = blocks_of(c.backbone)
        if key[0] in ("features", "prefix") and key not in seen_groups:
            seen_groups.add(key)
            by_backbone[c.backbone] += n_all  # the frozen part, once per image
        if c.is_probe:
            continue
        unfrozen = parse_unfreeze(c.unfreeze, L) or 0
        frac = unfrozen / L
        if c.head == "deit":
            frac += DEIT_HEAD_FRACTION
        by_backbone[c.backbone] += c.epochs * (3 * n_train + n_val) * frac
    return by_backbone


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--throughput", type=Path, default=RESULTS, help="CSV with bench_throughput.py rows")
    a = p.parse_args()
    import backbones

    rates = measured_throughput(a.throughput)

    def blocks_of(name: str) -> int:
        return int(backbones.get(name).spec.facts["blocks"])

    for path in a.configs:
        cfgs, _ = resolve_points(grid.load(path).points())
        total_h, missing = 0.0, []
        print(f"{path}: {len(cfgs)} runs")
        for backbone, n in sorted(passes(cfgs, blocks_of).items()):
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
