"""Layer-wise probing and label efficiency against what they are meant to cost, side by side.

Layers (a 12-block ViT-S, random weights, one dataset file, fresh cache):
  extraction  one frozen pass over train/val/test (the readout only)
  12 grids    the linear head grid trained 12 times, once on each layer's cached features
  layers run  the whole `bench run --layers all` (load, one pass keeping the readout after all 12
              blocks, 12 cache entries, 12 head grids, select, evaluate, write)
  goal        layers run <= 1.3 x (extraction + 12 grids); 12 separate passes to blocks 1..12 would
              cost 6.5 extraction passes (projected, not run)

Label efficiency (the same backbone and file, another fresh cache):
  one probe   the whole `bench run --head linear` with all labels
  5 fractions `bench run --train-fraction F` for F in 0.01, 0.05, 0.1, 0.25, 0.5 in sequence, as a
              sweep group runs them: the first extracts, the others read the cache
  goal        5 fractions <= 1.2 x one probe (also reported: the 5 on an already warm cache)

Usage: python benchmarks/bench_layers.py [--data-root ../shared/medmnist] [--dataset breastmnist] [--input-size 112]
Appends its figures to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import RESULTS, SHARED, record

from bench import heads  # noqa: E402
from bench.run_config import RunOptions  # noqa: E402
from bench.datasets import SPLITS  # noqa: E402
from bench.datasets import medmnist as data  # noqa: E402
from bench.features import extract  # noqa: E402
from bench.preprocess import Preprocess  # noqa: E402
from bench.resolve import resolve  # noqa: E402
from bench.assemble import build_backbone  # noqa: E402
from bench.runner import execute  # noqa: E402

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)


def timed(fn, what: str = "") -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    if what:
        print(f"  {what}: {dt:.1f} s", file=sys.stderr, flush=True)
    return dt, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", type=Path, default=SHARED if (SHARED / "breastmnist.npz").exists()
                   else Path(__file__).resolve().parents[1] / "bench" / "samples" / "medmnist")
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--backbone", default="deit")
    p.add_argument("--variant", default="small")
    p.add_argument("--input-size", type=int, default=0, help="side the backbone sees (default: its 224)")
    p.add_argument("--only", choices=("layers", "labels"), help="run one of the two comparisons")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(variant=a.variant, weights="random", size=a.size, head="linear", input_size=a.input_size or None)
    cfg = resolve(a.backbone, a.dataset, **common)
    tmp = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    ds = data.load(a.dataset, a.size, a.data_root, check_md5=False)
    model = build_backbone(cfg).eval().to(device)
    pre = Preprocess(cfg.input_size, cfg.resize, *model.normalization())

    extract(model, ds.splits["val"].images[:64], pre, device, 128, quiet=True)  # warm-up
    rows: list[tuple[str, float]] = []

    def opts(name: str) -> RunOptions:
        return RunOptions(results_dir=tmp / name / "results", data_root=a.data_root, cache_dir=tmp / name / "cache",
                          skip_md5=True, quiet=True, device=str(device))

    if a.only != "labels":
        rows += layers_rows(a, cfg, common, ds, model, pre, device, opts)
    if a.only != "layers":
        rows += labels_rows(a, cfg, common, opts)
    n = {s: len(ds.splits[s]) for s in SPLITS}
    context = (f"{a.backbone}/{a.variant}/random ({model.num_blocks} blocks) {a.dataset}_{a.size} -> "
               f"{cfg.input_size}px, {sum(n.values())} images, {device}, {torch.get_num_threads()} threads")
    record("layers", context, rows, a.out)


def layers_rows(a, cfg, common, ds, model, pre, device, opts) -> list[tuple[str, float]]:
    n_blocks = model.num_blocks
    t_extract, feats = 0.0, {}
    for s in SPLITS:
        t, feats[s] = timed(lambda s=s: extract(model, ds.splits[s].images, pre, device, 128, quiet=True),
                            f"extraction {s}")
        t_extract += t
    # 12 head grids: a ViT's layers all have its width, so each grid costs what one on the readout does
    t_grids = 0.0
    for _ in range(n_blocks):
        t_grids += timed(lambda: heads.train_linear_grid(
            feats["train"], ds.splits["train"].labels, feats["val"], ds.splits["val"].labels, ds.task,
            ds.n_outputs, epochs=cfg.head_epochs, batch_size=cfg.head_batch_size, device=device, quiet=True))[0]

    layers_cfg = resolve(a.backbone, a.dataset, layers="all", **common)
    t_layers, _ = timed(lambda: execute(layers_cfg, opts("layers")), "layers run")
    return [("extraction_s", t_extract), (f"{n_blocks}_head_grids_s", t_grids),
            ("layers_run_s", t_layers), ("layers_over_extraction_plus_grids", t_layers / (t_extract + t_grids)),
            (f"{n_blocks}_separate_passes_projected_s", t_extract * (n_blocks + 1) / 2)]


def labels_rows(a, cfg, common, opts) -> list[tuple[str, float]]:
    t_probe, _ = timed(lambda: execute(cfg, opts("probe")), "probe")
    frac_cfgs = [resolve(a.backbone, a.dataset, train_fraction=f, **common) for f in FRACTIONS]
    t_fractions, _ = timed(lambda: [execute(c, opts("fractions")) for c in frac_cfgs], "5 fractions")
    warm = opts("fractions")
    t_warm, _ = timed(lambda: [execute(c, replace(warm, force=True)) for c in frac_cfgs], "5 fractions, warm")

    return [("probe_s", t_probe), (f"{len(FRACTIONS)}_fractions_s", t_fractions),
            ("fractions_over_probe", t_fractions / t_probe),
            (f"{len(FRACTIONS)}_fractions_warm_cache_s", t_warm), ("fractions_warm_over_probe", t_warm / t_probe)]


if __name__ == "__main__":
    main()
