"""One training step of full fine-tuning, LoRA and BitFit, side by side in one run, in units of one
forward pass (the unit of the cost model in bench/protocols/finetune.py, which counts a step as 3
forwards for full fine-tuning and LoRA and 2 for BitFit).

For each backbone (random weights, all blocks adapted, the stem's output precomputed as the LoRA run
caches it) the same batch runs: a forward under no_grad, then forward + backward + AdamW step for
each ``--adapt``. Reported: seconds per forward, per step of each, and each step in forwards.

Usage: python benchmarks/bench_adapt.py [--size 224] [--batch 16] [--steps 5]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from common import record

import backbones
from bench import adapt
from bench.run_config import RunConfig


def timed(fn, steps: int) -> float:
    fn()  # warm-up (allocations, peft's first call)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbones", nargs="+", default=["deit:small", "resnet50:tv_in1k"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    for spec in a.backbones:
        name, variant = spec.split(":")
        base = backbones.build(name, variant, "random", input_size=a.size).eval()
        with torch.no_grad():
            h0 = base.stem(x)
        with torch.no_grad():
            forward = timed(lambda: base.readout(base.run_blocks(h0)), a.steps)
        rows = [("forward_s", forward)]
        for mode in ("none", "lora", "bitfit"):
            model = copy.deepcopy(base)
            cfg = RunConfig(backbone=name, dataset="-", adapt=mode, lora_rank=8, lora_alpha=16.0, lora_dropout=0.0)
            params = adapt.backbone_parameters(cfg, model, 0)
            if mode == "none":  # the blocks and readout (the stem's output is the cached input here)
                params = [q for b in list(model.blocks) + list(model.readout_modules()) for q in b.parameters()]
            for q in model.parameters():
                q.requires_grad_(False)
            for q in params:
                q.requires_grad_(True)
            opt = torch.optim.AdamW(params, lr=1e-4)
            model.train()

            def step() -> None:
                loss = model.readout(model.run_blocks(h0)).float().pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            s = timed(step, a.steps)
            rows += [(f"{mode}_step_s", s), (f"{mode}_step_in_forwards", s / forward),
                     (f"{mode}_trainable_params", float(sum(q.numel() for q in params)))]
        record("adapt", f"{name}/{variant} random, {a.size}px, batch {a.batch}, {torch.get_num_threads()} threads, "
                        f"{'cuda' if torch.cuda.is_available() else 'cpu'}", rows)


if __name__ == "__main__":
    main()
