"""The `bench` command line. Only this module knows about flags."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import UserError


def _given(args: argparse.Namespace, scope: str) -> dict:
    from . import options

    return {k: getattr(args, k) for k in options.names(scope) if getattr(args, k, None) is not None}


def config_from_args(args: argparse.Namespace):
    from .resolve import resolve

    given = _given(args, "run")
    return resolve(given.pop("backbone"), given.pop("dataset"), **given)


def _warn_unread(args: argparse.Namespace, cfg) -> None:
    """One line for options typed that the run's protocol does not read (said after the run or dry
    run, so a refused run's error stays one line)."""
    from .resolve import unread, unread_warning

    given = _given(args, "run")
    if ignored := unread(cfg, given):
        print(f"bench: warning: {unread_warning(cfg, ignored, given)}", file=sys.stderr)


def options_from_args(args: argparse.Namespace):
    from .run_config import make_run_options

    return make_run_options(**_given(args, "exec"))


def cmd_run(args: argparse.Namespace) -> int:
    from .resolve import bind_data

    opts = options_from_args(args)
    cfg = bind_data(config_from_args(args), opts)
    if args.dry_run:
        code = _dry_run(cfg, opts)
        _warn_unread(args, cfg)
        return code
    from .runner import execute

    res = execute(cfg, opts)
    _warn_unread(args, cfg)
    if res.status == "existing":
        print(f"{res.run_id}: skipped, result exists at {res.path} (--force to rerun)")
        return 0
    sel = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.selected.items())
    from .labels import run_label

    print(f"{res.run_id}: done in {res.timings['total_s']:.1f}s")
    print(f"  {run_label(cfg)}")  # as reports and bench explain name it
    print(f"  selected: {sel}")
    kinds = [w.get("kind") for w in res.meta.get("warnings") or []]
    for split in ("val", "test"):
        line = "  ".join(f"{m} {res.metric(m, split):.4f}" + (" (not meaningful: hard votes)" if m == "auc" and
                                                              "hard_votes" in kinds else "")
                         for m in ("acc", "auc", "balanced_acc", "macro_f1"))
        print(f"  {split:<5} {line}")
    if kinds:
        print(f"  warnings: {', '.join(dict.fromkeys(map(str, kinds)))} (said above; kept in the run's JSON, "
              f"marked in reports)")
    print(f"  results: {res.path} (provenance, scores and curves in meta/, scores/, curves/ beside runs/)")
    if opts.subgroups:
        print(f"  subgroups recorded (not in the run id): {opts.subgroups}; bench report shows them")
    return 0


def _dry_run(cfg, opts) -> int:
    from . import datasets
    from .assemble import build_backbone
    from .adapt import trainable_count

    model = build_backbone(cfg, weights="random")  # counting parameters needs no download
    n_out = datasets.source_for(cfg.dataset).n_classes(cfg.dataset)
    counts = trainable_count(cfg, model, n_out) if n_out else None
    from .recipes import provenance

    print(json.dumps({"run_id": cfg.run_id, "protocol": cfg.protocol.name, "config": cfg.to_dict(),
                      "recipe": provenance(cfg), "head": cfg.protocol.describe(cfg),
                      "trainable_parameters": counts,
                      "results": str(opts.results_dir / "runs" / f"{cfg.run_id}.csv")}, indent=1))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from . import listing

    listing.WIDTH = None if args.wide else listing.TERMINAL_WIDTH
    show = {"datasets": lambda: listing.list_datasets(args.data_root), "backbones": listing.list_backbones,
            "protocols": listing.list_protocols, "options": listing.list_options, "recipes": listing.list_recipes,
            "prompts": lambda: listing.list_prompts(args.name)}
    print(listing.fit(show[args.what]()))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import fetch, status_table

    if args.action == "ls":
        print(status_table(args.names or None))
        return 0
    return fetch(args.names)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    if args.log:
        from .tracking import check_available

        check_available(args.log)
    out = make_report(args.results_dir, args.out, baseline=args.baseline, filters=args.filter or [],
                      formats=tuple(args.format), with_reference=args.with_reference, metric=args.metric,
                      n_boot=args.n_boot, seed=args.bootstrap_seed, subgroups=args.subgroups,
                      data_root=args.data_root)
    print(f"report written to {out}")
    if args.log:
        from .tracking import groups_of, track_report

        from .results import ResultStore

        folder = Path(args.out)
        groups = [args.log_group] if args.log_group else groups_of(args.results_dir, ResultStore(args.results_dir).run_ids())
        for where, got in track_report(args.results_dir, folder, args.log, groups).items():
            if "error" not in got:
                print(f"report attached to {where}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .report.export import export, format_status, status_table

    if args.action == "ls":
        print(format_status(status_table(args.results_dir)))
        return 0
    out, n_rows, n_runs = export(args.results_dir, args.out, filters=args.filter or [], subgroups=args.subgroups,
                                 predictions=args.predictions, n_boot=args.n_boot, seed=args.bootstrap_seed,
                                 data_root=args.data_root)
    print(f"{n_rows} rows of {n_runs} run(s) written to {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import Request, explain

    req = Request(args.run_ids, method=args.method, split=args.split, images=args.images, classes=args.classes,
                  seed=args.seed, filters=args.filters, feature_maps=args.feature_maps)
    for path in explain(req, options_from_args(args)):
        print(path)
    return 0


EMBED_OPTIONS = ("backbone", "dataset", "variant", "weights", "readout", "size", "input_size", "resize", "crop_from",
                 "normalize", "gray", "precision", "seed", "limit", "layers")  # what shapes the features


def cmd_embed(args: argparse.Namespace) -> int:
    from .embed import check_out, embed, summary, write
    from .options import DATA_OPTIONS

    check_out(args.out)
    given = {k: v for k, v in _given(args, "run").items() if k in EMBED_OPTIONS + DATA_OPTIONS}
    emb = embed(given.pop("backbone"), given.pop("dataset"), options_from_args(args),
                splits=[s.strip() for s in args.splits.split(",") if s.strip()], **given)
    print(f"{summary(emb)} written to {write(emb, args.out)}")
    return 0


def cmd_robust(args: argparse.Namespace) -> int:
    from .robust import Request, robust

    corruptions = [c.strip() for c in (args.corruptions or "").split(",") if c.strip()] or None
    req = Request(args.run_ids, test_dataset=args.test_dataset, corruptions=corruptions, modality=args.modality,
                  every=args.all)
    for path in robust(req, options_from_args(args)):
        print(path)
    if req.failed:
        print(f"bench: robust: {len(req.failed)} run(s) not scored (said above)", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import main as sweep_main

    return sweep_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Benchmark natural-domain foundation models on MedMNIST+.",
                                allow_abbrev=False)  # --log is never read as --log-dir, nor any prefix as a flag
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", allow_abbrev=False, help="one backbone x dataset x protocol x seed")
    from . import options

    options.add_arguments(r)
    r.add_argument("--dry-run", action="store_true", help="print the resolved config, run id and "
                   "trainable parameters; touch nothing")
    r.set_defaults(fn=cmd_run)

    ls = sub.add_parser("ls", allow_abbrev=False, help="list datasets, backbones, protocols, options, recipes or a dataset's zero-shot prompts")
    ls.add_argument("what", choices=("datasets", "backbones", "protocols", "options", "recipes", "prompts"))
    ls.add_argument("name", nargs="?", default="", help="prompts: the dataset (default: the datasets that have a set)")
    ls.add_argument("--data-root", type=Path)
    ls.add_argument("--wide", action="store_true", help="one line per row, however wide (default: wrapped to 100 columns)")
    ls.set_defaults(fn=cmd_ls)

    w = sub.add_parser("weights", allow_abbrev=False, help="which weight files each backbone needs; fetch them")
    w.add_argument("action", choices=("ls", "fetch"))
    w.add_argument("names", nargs="*", help="backbone names (ls: default all)")
    w.set_defaults(fn=cmd_weights)

    rep = sub.add_parser("report", allow_abbrev=False, help="tables and figures from the results folder")
    rep.add_argument("--results-dir", type=Path, default=Path("results"))
    rep.add_argument("--out", type=Path, default=Path("reports/latest"))
    rep.add_argument("--baseline", help="model the gains are relative to (default: the first of resnet50, "
                     "resnet152, deit, resnet18 with default weights that has runs); e.g. deit, 'resnet18 (random)'")
    rep.add_argument("--filter", action="append", help="KEY=VALUE, e.g. dataset=breastmnist (repeatable)")
    rep.add_argument("--format", action="append", default=None, help="md | html | png | latex (repeatable)")
    rep.add_argument("--with-reference", action="store_true", help="add published MedMNIST numbers")
    rep.add_argument("--metric", default="auc")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for intervals and paired tests")
    rep.add_argument("--bootstrap-seed", type=int, default=0)
    rep.add_argument("--log", action="append", choices=("tensorboard", "mlflow", "wandb"),
                     help="also attach the report's tables and figures to the tracked group(s) of its runs (repeatable)")
    rep.add_argument("--log-group", metavar="NAME", help="--log: the group (default: the groups its runs were "
                     "tracked in, else medfm-bench)")
    options.add_arguments(rep, only=("subgroups", "data_root"))  # the audit: groups joined through saved image ids
    rep.set_defaults(fn=cmd_report)

    res = sub.add_parser("results", allow_abbrev=False, help="what a results folder holds (ls); every run as one tidy table (export)")
    res_sub = res.add_subparsers(dest="action", required=True)
    res_ls = res_sub.add_parser("ls", allow_abbrev=False, help="runs done and failed per model x dataset")
    res_ex = res_sub.add_parser("export", allow_abbrev=False, help="every run merged into one tidy CSV or Parquet table")
    res_ex.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    res_ex.add_argument("--filter", action="append", help="KEY=VALUE, e.g. dataset=breastmnist (repeatable)")
    res_ex.add_argument("--predictions", action="store_true", help="one row per scored test image of every run "
                        "(run id, split, image id, label, prediction, scores) instead of the metric rows")
    res_ex.add_argument("--n-boot", type=int, default=1000, help="--subgroups: bootstrap resamples (as bench report)")
    res_ex.add_argument("--bootstrap-seed", type=int, default=0)
    options.add_arguments(res_ex, only=("subgroups", "data_root"))
    for q in (res_ls, res_ex):
        q.add_argument("--results-dir", type=Path, default=Path("results"))
    res.set_defaults(fn=cmd_results)

    ex = sub.add_parser("explain", allow_abbrev=False, help="Grad-CAM / attention rollout, filters and feature maps of finished runs")
    ex.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="one or more run ids (or unique prefixes); "
                    "several: also a comparison sheet on the same images")
    ex.add_argument("--method", default="gradcam", help="gradcam | gradcam++ | scorecam | eigencam | rollout (ViTs)")
    ex.add_argument("--split", default="test", help="split the images come from (default test)")
    ex.add_argument("--images", type=int, help="images per run (default: per class the most confident correct, "
                    "most confident wrong and least confident); more are drawn at random (--seed)")
    ex.add_argument("--classes", action="append", help="class names or indices, comma-separated (repeatable)")
    ex.add_argument("--seed", type=int, default=0, help="breaks ties and draws extra images")
    ex.add_argument("--filters", action="store_true", help="also the first-layer / patch-embedding filters")
    ex.add_argument("--feature-maps", action="store_true", help="also the mean activation after each stage")
    options.add_arguments(ex, only=("results_dir", "data_root", "cache_dir", "device",
                                                      "skip_md5", "quiet"))
    ex.set_defaults(fn=cmd_explain)

    em = sub.add_parser("embed", allow_abbrev=False, help="a frozen backbone's features of every image (ids, split, "
                        "labels), from the feature cache, to .npz or .parquet")
    options.add_arguments(em, only=EMBED_OPTIONS + options.DATA_OPTIONS + (
        "results_dir", "data_root", "cache_dir", "device", "channels_last", "compile", "skip_md5", "extract_batch_size",
        "decode_workers", "quiet"))
    em.add_argument("--out", type=Path, required=True, help="FILE.npz or FILE.parquet")
    em.add_argument("--splits", default="train,val,test", help="comma-separated (default: train,val,test)")
    em.set_defaults(fn=cmd_embed)

    rb = sub.add_parser("robust", allow_abbrev=False, help="score finished runs under shift without retraining: "
                        "MedMNIST-C corruptions x severities 1-5, or another dataset's test split")
    rb.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="one or more run ids (or unique prefixes)")
    rb.add_argument("--all", action="store_true", help="every finished run of --results-dir (after a sweep); a run "
                    "that cannot be scored is said and skipped (exit 1), one another process is scoring is left to it")
    rb.add_argument("--test-dataset", metavar="DATASET", help="score on this dataset's clean test split instead "
                    "(its task and classes must be the run's), e.g. another hospital's csv:FILE")
    rb.add_argument("--corruptions", metavar="NAME,...", help="only these MedMNIST-C corruptions of the run's "
                    "dataset (default: all of them; BE and rBE need all)")
    rb.add_argument("--modality", metavar="NAME", help="own data: the modality whose generic corruption set is used "
                    "(default: the run's; e.g. 'chest x-ray', ultrasound, gray, rgb)")
    options.add_arguments(rb, only=("results_dir", "data_root", "cache_dir", "device", "skip_md5", "quiet",
                                    "extract_batch_size", "channels_last", "compile"))
    rb.set_defaults(fn=cmd_robust)

    sw = sub.add_parser("sweep", allow_abbrev=False, help="a grid of runs from a YAML file and/or flags")
    from .sweep import add_sweep_arguments  # light import (no torch): bench --help stays fast
    add_sweep_arguments(sw)
    sw.set_defaults(fn=cmd_sweep)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        from .env import check_settings

        check_settings()  # BENCH_* numbers: one line before a command reads or writes anything
        if getattr(args, "format", "unset") is None:
            args.format = ["md", "html", "png"]
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
