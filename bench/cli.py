"""The `bench` command line. Only this module knows about flags."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import UserError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `bench run` and `bench sweep` (a sweep may list several values)."""
    g = p.add_argument_group("what to run")
    g.add_argument("--backbone", required=True, help="registry name, timm:NAME, or a plugin's name")
    g.add_argument("--variant", help="backbone variant (default: the backbone's default)")
    g.add_argument("--weights", default="default", help="default | random | PATH (default: default)")
    g.add_argument("--readout", help="pooled vector the heads see (backbone-specific; default: its first)")
    g.add_argument("--dataset", required=True, help="MedMNIST 2D flag, e.g. breastmnist")
    g.add_argument("--size", type=int, default=28, help="MedMNIST+ image size: 28, 64, 128, 224 (default 28)")
    g.add_argument("--input-size", type=int, help="size the backbone sees (default: its native size)")
    g.add_argument("--resize", default="resize", help="resize | pad (MedMNIST+ zero-padding) | none")
    g.add_argument("--gray", default="repeat", help="grayscale input: repeat to RGB | red (red filters only)")
    g.add_argument("--head", default="linear", help="linear | knn | mlp | deit (default linear)")
    g.add_argument("--unfreeze", default="none", help="none | lastN | all (default none)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--limit", type=int, help="cap images per split (smoke runs; recorded in results)")
    g.add_argument("--select", default="auc", help="val criterion for model selection: auc | acc | loss")
    h = p.add_argument_group("probe heads")
    h.add_argument("--knn-k", type=int, default=11)
    h.add_argument("--head-epochs", type=int, default=100, help="epochs of the linear head grid")
    h.add_argument("--head-batch-size", type=int, default=256)
    f = p.add_argument_group("fine-tuning and trained heads (mlp, deit, --unfreeze lastN|all)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--weight-decay", type=float)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--warmup", type=int, help="warm-up epochs")
    f.add_argument("--schedule", help="cosine | constant | step (MedMNIST v2: x0.1 at 50%% and 75%%)")
    f.add_argument("--patience", type=int, help="early stopping patience in epochs")
    f.add_argument("--grad-clip", type=float)
    f.add_argument("--layer-decay", type=float, help="layer-wise lr decay (1.0 = off)")
    f.add_argument("--augment", help="none | light | paper | auto")
    f.add_argument("--balance", help="none | weighted-loss | sampler")
    f.add_argument("--head-arch", help="--head deit: deit_small (default) | deit_base | deit_tiny")
    _add_exec_options(p)


def _add_exec_options(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("where and how (not part of the run id)")
    e.add_argument("--results-dir", type=Path, default=Path("results"))
    e.add_argument("--data-root", type=Path, help="folder of MedMNIST .npz files (default: medmnist's ~/.medmnist)")
    e.add_argument("--cache-dir", type=Path, help="feature cache (default $BENCH_CACHE_DIR or ~/.cache/medfm-bench)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--skip-md5", action="store_true", help="do not check dataset files against medmnist INFO")
    e.add_argument("--force", action="store_true", help="rerun even if the result exists")
    e.add_argument("--extract-batch-size", type=int, default=128)
    e.add_argument("--save-model", action="store_true", help="save trained blocks and head (safetensors)")
    e.add_argument("-q", "--quiet", action="store_true")


RUN_KEYS = ("variant", "weights", "readout", "size", "input_size", "resize", "gray", "head", "unfreeze",
            "seed", "limit", "select", "knn_k", "head_epochs", "head_batch_size", "head_arch")
FINETUNE_KEYS = ("epochs", "lr", "weight_decay", "batch_size", "warmup", "schedule", "patience",
                 "grad_clip", "layer_decay", "augment", "balance")


def config_from_args(args: argparse.Namespace):
    from .run import resolve

    kw = {k: getattr(args, k) for k in RUN_KEYS + FINETUNE_KEYS}
    return resolve(args.backbone, args.dataset, **kw)


def options_from_args(args: argparse.Namespace):
    from .config import RunOptions

    if args.extract_batch_size < 1:
        raise UserError(f"--extract-batch-size {args.extract_batch_size}: must be at least 1")
    return RunOptions(results_dir=args.results_dir, data_root=args.data_root, cache_dir=args.cache_dir,
                      device=args.device, skip_md5=args.skip_md5, force=args.force,
                      extract_batch_size=args.extract_batch_size, quiet=args.quiet, save_model=args.save_model)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    opts = options_from_args(args)
    if args.dry_run:
        return _dry_run(cfg, opts)
    from .run import execute

    out = execute(cfg, opts)
    if out.status == "skipped":
        print(f"{out.run_id}: skipped, result exists at {out.path} (--force to rerun)")
        return 0
    s = out.summary
    sel = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["selected"].items())
    print(f"{out.run_id}: done in {s['timings']['total_s']:.1f}s")
    print(f"  selected: {sel}")
    for split in ("val", "test"):
        m = s[split]
        print(f"  {split:<5} acc {m['acc']:.4f}  auc {m['auc']:.4f}  balanced_acc {m['balanced_acc']:.4f}"
              f"  macro_f1 {m['macro_f1']:.4f}")
    print(f"  results: {out.path} (+ .json, .scores.npz)")
    return 0


def _dry_run(cfg, opts) -> int:
    from .run import build_backbone, trainable_count
    from . import data

    model = build_backbone(cfg, weights="random")  # counting parameters needs no download
    counts = trainable_count(cfg, model, len(data.info(cfg.dataset)["label"]))
    print(json.dumps({"run_id": cfg.run_id, "config": cfg.to_dict(), "trainable_parameters": counts,
                      "results": str(opts.results_dir / "runs" / f"{cfg.run_id}.csv")}, indent=1))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .listing import list_backbones, list_datasets

    print(list_datasets(args.data_root) if args.what == "datasets" else list_backbones())
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import fetch, status_table

    if args.action == "ls":
        print(status_table(args.names or None))
        return 0
    return fetch(args.names)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    out = make_report(args.results_dir, args.out, baseline=args.baseline, filters=args.filter or [],
                      formats=tuple(args.format), with_reference=args.with_reference, metric=args.metric,
                      n_boot=args.n_boot, seed=args.bootstrap_seed)
    print(f"report written to {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import main as sweep_main

    return sweep_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Benchmark natural-domain foundation models on MedMNIST+.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one backbone x dataset x protocol x seed")
    _add_run_options(r)
    r.add_argument("--dry-run", action="store_true", help="print the resolved config, run id and "
                   "trainable parameters; touch nothing")
    r.set_defaults(fn=cmd_run)

    ls = sub.add_parser("ls", help="list datasets or backbones")
    ls.add_argument("what", choices=("datasets", "backbones"))
    ls.add_argument("--data-root", type=Path)
    ls.set_defaults(fn=cmd_ls)

    w = sub.add_parser("weights", help="which weight files each backbone needs; fetch them")
    w.add_argument("action", choices=("ls", "fetch"))
    w.add_argument("names", nargs="*", help="backbone names (ls: default all)")
    w.set_defaults(fn=cmd_weights)

    rep = sub.add_parser("report", help="tables and figures from the results folder")
    rep.add_argument("--results-dir", type=Path, default=Path("results"))
    rep.add_argument("--out", type=Path, default=Path("reports/latest"))
    rep.add_argument("--baseline", help="backbone (or model) the gains are relative to (default: resnet50 "
                     "where it has runs); e.g. deit, resnet152, dino")
    rep.add_argument("--filter", action="append", help="KEY=VALUE, e.g. dataset=breastmnist (repeatable)")
    rep.add_argument("--format", action="append", default=None, help="md | html | png | latex (repeatable)")
    rep.add_argument("--with-reference", action="store_true", help="add published MedMNIST numbers")
    rep.add_argument("--metric", default="auc")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals and paired tests")
    rep.add_argument("--bootstrap-seed", type=int, default=0)
    rep.set_defaults(fn=cmd_report)

    sw = sub.add_parser("sweep", help="a grid of runs from a YAML file and/or flags")
    from .sweep import add_sweep_arguments  # light import (no torch): bench --help stays fast
    add_sweep_arguments(sw)
    sw.set_defaults(fn=cmd_sweep)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "format", "unset") is None:
        args.format = ["md", "html", "png"]
    try:
        return args.fn(args)
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
