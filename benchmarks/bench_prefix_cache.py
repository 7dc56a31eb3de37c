"""`--unfreeze last2` epoch time with prefix caching against without, side by side in one run.

For each backbone (a 12-block ViT and ResNet-50, random weights, 224 px) the same fine-tune runs
twice on the same images: once with the frozen prefix stem+blocks[:L-2] computed once and reused,
once recomputing it every step (what augmentation forces). Reported: seconds per epoch of each
(training + val pass), the one-time prefix cost, and their ratio.

Usage: python benchmarks/bench_prefix_cache.py [--limit 128] [--epochs 2]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import SHARED, record

from bench import train
from bench.protocols import PROTOCOLS, register_protocol
from bench.protocols.finetune import Finetune
from bench.run_config import RunOptions
from bench.resolve import resolve
from bench.runner import execute


def epoch_seconds(backbone: str, variant: str | None, cache: bool, a: argparse.Namespace, tmp: Path) -> dict:
    cfg = resolve(backbone, a.dataset, variant=variant, weights="random", size=a.size, input_size=224,
                  unfreeze="last2", head="linear", limit=a.limit, epochs=a.epochs, batch_size=a.batch_size,
                  patience=0, lr=1e-4)
    opts = RunOptions(results_dir=tmp / f"r-{cache}", data_root=a.data_root, cache_dir=tmp / f"c-{cache}", quiet=True)
    if not cache:  # the protocol seam: the same configs, the prefix recomputed for every split, every epoch
        class NoCache(Finetune):
            name = "finetune-no-prefix-cache"

            def plan(self, cfg, model):
                p = super().plan(cfg, model)
                return _Uncached(p.k, p.train_stem, cache_prefix=False)

        register_protocol(NoCache())
    try:
        out = execute(cfg, opts)
    finally:
        PROTOCOLS.unregister("finetune-no-prefix-cache")
    t = out.timings
    return {"epoch_s": t["train_s"] / a.epochs, "prefix_s": t.get("prefix_s", 0.0)}


class _Uncached(train.Plan):
    @property
    def cached_splits(self) -> tuple[str, ...]:
        return ()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbones", default="deit:small,resnet50")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    for item in a.backbones.split(","):
        name, _, variant = item.partition(":")
        cached = epoch_seconds(name, variant or None, True, a, tmp)
        plain = epoch_seconds(name, variant or None, False, a, tmp)
        context = (f"{item} random, --unfreeze last2, {a.dataset}_{a.size} -> 224px, {a.limit} imgs/split, "
                   f"batch {a.batch_size}, cpu {torch.get_num_threads()} threads")
        record("prefix_cache", context, [
            ("epoch_s_cached", cached["epoch_s"]), ("epoch_s_uncached", plain["epoch_s"]),
            ("prefix_once_s", cached["prefix_s"]), ("speedup_per_epoch", plain["epoch_s"] / cached["epoch_s"]),
        ])


if __name__ == "__main__":
    main()
