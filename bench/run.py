"""One run, end to end: resolve the config, load data and backbone, compute (or reuse) the frozen
part, train the head or fine-tune, score val and test, write the results."""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import backbones
from backbones.base import Backbone, count_params

from . import data, heads, metrics
from .config import HEADS, RunConfig, RunOptions, parse_unfreeze
from .errors import UserError, did_you_mean
from .features import FeatureCache, default_cache_dir, extract, precision
from .preprocess import GRAY_POLICIES, RESIZE_POLICIES, Preprocess
from .results import ResultStore, git_revision, library_versions, now, versions

FINETUNE_DEFAULTS = dict(epochs=30, lr=1e-4, weight_decay=1e-5, batch_size=64, warmup=1,
                         schedule="cosine", patience=10, grad_clip=1.0, layer_decay=1.0,
                         augment="none", balance="none")


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"bench: {msg}", file=sys.stderr, flush=True)


def resolve(backbone: str, dataset: str, *, variant: str | None = None, weights: str = "default",
            readout: str | None = None, size: int = 28, input_size: int | None = None,
            resize: str = "resize", gray: str = "repeat", head: str = "linear", unfreeze: str = "none",
            seed: int = 0, limit: int | None = None, select: str = "auc", knn_k: int = 11,
            head_epochs: int = 100, head_batch_size: int = 256, head_arch: str | None = None,
            **finetune: object) -> RunConfig:
    """Validate user choices and fill every default, so the config (and its id) is complete."""
    data.info(dataset)
    data.check_size(size)
    _choice("head", head, HEADS)
    _choice("resize", resize, RESIZE_POLICIES)
    _choice("gray", gray, GRAY_POLICIES)
    _choice("select", select, heads.SELECT)
    parse_unfreeze(unfreeze)
    if head == "knn" and unfreeze != "none":
        raise UserError(f"--head knn has nothing to train; use it with --unfreeze none, or pick --head linear|mlp|deit "
                        f"for --unfreeze {unfreeze}")
    if input_size is not None and input_size < 16:
        raise UserError(f"--input-size {input_size}: must be at least 16 pixels")
    if resize == "none" and input_size not in (None, size):
        raise UserError(f"--resize none keeps {size} px images, so --input-size {input_size} cannot apply; "
                        f"use --resize resize|pad or drop --input-size")
    if limit is not None and limit < 2:
        raise UserError(f"--limit {limit}: need at least 2 images per split")
    spec = backbones.get(backbone).spec
    variant = variant or spec.default_variant
    if spec.variants and variant not in spec.variants:
        raise UserError(f"backbone {backbone!r} has no variant {variant!r}; {did_you_mean(variant, spec.variants)}")
    readout = readout or spec.readouts[0]
    _choice("readout", readout, spec.readouts)
    if resize == "none":
        input_size = input_size or size
    input_size = input_size or spec.input_size
    if resize == "pad" and size > input_size:
        raise UserError(f"--resize pad cannot fit {size} px images into {input_size} px; "
                        f"use --resize resize or a larger --input-size")
    fingerprint = ""
    if weights not in ("default", "random"):
        if not Path(weights).is_file():
            raise UserError(f"--weights {weights!r}: no such file; use default, random or a path to a checkpoint")
        from backbones.hub import file_fingerprint

        weights = str(Path(weights).resolve())
        fingerprint = file_fingerprint(weights)
    cfg = RunConfig(backbone=backbone, dataset=dataset, variant=variant, weights=weights,
                    weights_fingerprint=fingerprint, readout=readout, size=size, input_size=input_size,
                    resize=resize, gray=gray, head=head, unfreeze=unfreeze, seed=seed, limit=limit,
                    select=select)
    if cfg.is_probe:
        if head == "knn":
            _at_least("--knn-k", knn_k, 1)
            return cfg.replace(knn_k=knn_k)
        _at_least("--head-epochs", head_epochs, 1)
        _at_least("--head-batch-size", head_batch_size, 1)
        return cfg.replace(head_epochs=head_epochs, head_batch_size=head_batch_size)
    unknown = set(finetune) - set(FINETUNE_DEFAULTS)
    if unknown:
        raise UserError(f"unknown fine-tuning option(s): {', '.join(sorted(unknown))}")
    ft = {k: (finetune.get(k) if finetune.get(k) is not None else v) for k, v in FINETUNE_DEFAULTS.items()}
    _check_finetune(ft)
    if head == "deit":
        from .trained_heads import DEIT_ARCHS

        ft["head_arch"] = head_arch or "deit_small"
        _choice("head-arch", ft["head_arch"], tuple(DEIT_ARCHS))
    return cfg.replace(**ft)


def _at_least(flag: str, value: float, low: float) -> None:
    if not (math.isfinite(value) and value >= low):  # NaN and inf fail too
        raise UserError(f"{flag} {value}: must be a finite number of at least {low}")


def _check_finetune(ft: dict) -> None:
    from .augment import POLICIES
    from .train import BALANCE, SCHEDULES

    _choice("schedule", ft["schedule"], SCHEDULES)
    _choice("balance", ft["balance"], BALANCE)
    _choice("augment", ft["augment"], POLICIES)
    for flag, key, low in (("--epochs", "epochs", 1), ("--batch-size", "batch_size", 1), ("--warmup", "warmup", 0),
                           ("--patience", "patience", 0), ("--grad-clip", "grad_clip", 0),
                           ("--weight-decay", "weight_decay", 0)):
        _at_least(flag, ft[key], low)
    if not (math.isfinite(ft["lr"]) and ft["lr"] > 0):
        raise UserError(f"--lr {ft['lr']}: must be positive")
    if not (math.isfinite(ft["layer_decay"]) and 0 < ft["layer_decay"] <= 1):
        raise UserError(f"--layer-decay {ft['layer_decay']}: must be in (0, 1]; 1 turns it off")


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"unknown {what} {value!r}; {did_you_mean(value, allowed)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return device


def build_backbone(cfg: RunConfig, weights: str | None = None) -> Backbone:
    # random init must not depend on what ran before in this process
    seed_everything(cfg.seed)
    model = backbones.build(cfg.backbone, cfg.variant, weights or cfg.weights, readout=cfg.readout,
                            input_size=cfg.input_size)
    return model


def weights_key(model: Backbone, cfg: RunConfig) -> str:
    # a random init is only reproducible through the seed that drew it
    return f"random-seed{cfg.seed}" if model.weights_id == "random" else model.weights_id


@dataclass
class Outcome:
    run_id: str
    status: str  # done | skipped
    summary: dict = field(default_factory=dict)
    path: Path | None = None


def trainable_count(cfg: RunConfig, model: Backbone, n_outputs: int) -> dict[str, int]:
    n_unfrozen = parse_unfreeze(cfg.unfreeze, model.num_blocks)
    backbone_params = count_params(model.trainable_parameters(n_unfrozen)) if n_unfrozen else 0
    if cfg.head == "knn":
        head_params = 0
    elif cfg.head == "linear":
        head_params = model.embed_dim * n_outputs + n_outputs
    else:
        from .train import build_head

        head_params = count_params(build_head(cfg, model, n_outputs, pretrained=False))  # no download
    choices = ["none"] + [f"last{n}" for n in (1, 2, 4) if n < model.num_blocks] + ["all"]
    by_choice = {c: count_params(model.trainable_parameters(parse_unfreeze(c, model.num_blocks)))
                 for c in choices}
    return {"backbone": backbone_params, "head": head_params, "total": backbone_params + head_params,
            "backbone_total": count_params(model), "blocks": model.num_blocks, "unfrozen_blocks": n_unfrozen,
            "backbone_by_unfreeze": by_choice}


def execute(cfg: RunConfig, opts: RunOptions) -> Outcome:
    store = ResultStore(opts.results_dir)
    if store.is_done(cfg.run_id) and not opts.force:
        log(f"{cfg.run_id}: already done ({store.csv_path(cfg.run_id)}); --force to rerun", opts.quiet)
        return Outcome(cfg.run_id, "skipped", path=store.csv_path(cfg.run_id))
    store.check_writable()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    device = pick_device(opts.device)
    cache_dir = Path(opts.cache_dir or default_cache_dir())
    ds = data.load(cfg.dataset, cfg.size, Path(opts.data_root or data.default_root()),
                   check_md5=not opts.skip_md5, limit=cfg.limit, cache_dir=cache_dir)
    timings["load_data_s"] = time.perf_counter() - t0
    model = build_backbone(cfg)
    parse_unfreeze(cfg.unfreeze, model.num_blocks)  # N > block count is an error before any work
    model.eval().to(device)
    pre = Preprocess(cfg.input_size, cfg.resize, *model.normalization(), cfg.gray)
    if cfg.is_probe:
        result = _probe(cfg, opts, ds, model, pre, device, FeatureCache(cache_dir), timings)
    else:
        from .train import finetune

        result = finetune(cfg, opts, ds, model, pre, device, FeatureCache(cache_dir), timings)
    val_scores, test_scores, selected, curves = result
    y_val, y_test = _targets(ds, "val"), _targets(ds, "test")
    by_split = {"val": metrics.evaluate(ds.task, y_val, val_scores),
                "test": metrics.evaluate(ds.task, y_test, test_scores)}
    timings["total_s"] = time.perf_counter() - t0
    meta = {
        "run_id": cfg.run_id, "config": cfg.to_dict(), "task": ds.task, "labels": ds.label_names,
        "dataset_file": {"path": str(ds.path), "md5": ds.md5,
                         "n": {s: len(v) for s, v in ds.splits.items()}},
        "backbone": {"weights_id": model.weights_id, "embed_dim": model.embed_dim,
                     "blocks": model.num_blocks, "input_size": cfg.input_size},
        "selected": selected, "seeds": {"seed": cfg.seed, "torch_initial_seed": torch.initial_seed()},
        "versions": versions(), "git": git_revision(), "device": str(device),
        "timings": {k: round(v, 3) for k, v in timings.items()}, "created": now(),
    }
    path = store.write_run(cfg, by_split, meta, (y_test, test_scores), curves)
    if not cfg.is_probe:
        from .train import checkpoint_for

        checkpoint_for(opts, cfg).remove()  # only now: a kill before this point resumes, not retrains
    return Outcome(cfg.run_id, "done", {"val": by_split["val"], "test": by_split["test"],
                                        "selected": selected, "timings": meta["timings"]}, path)


def _targets(ds: data.MedMNIST, split: str) -> np.ndarray:
    labels = ds.splits[split].labels
    return labels if metrics.is_multilabel(ds.task) else labels[:, 0]


def feature_parts(cfg: RunConfig, weights: str, dataset_md5: str, split: str, what: str = "readout",
                  precision: str = "fp32") -> dict:
    """Everything that changes the frozen output of one split: the feature-cache key.
    ``weights`` is ``weights_key(model, cfg)``; ``what`` is "readout" or "prefix:<k>";
    ``precision`` what autocast computes in (features.precision); library versions are in it
    because an upgrade can change an architecture's code or its random init."""
    return {"what": what, "backbone": cfg.backbone, "variant": cfg.variant, "weights": weights,
            "readout": cfg.readout, "input_size": cfg.input_size, "resize": cfg.resize, "gray": cfg.gray,
            "dataset_md5": dataset_md5, "split": split, "limit": cfg.limit, "precision": precision,
            "libraries": library_versions()}


def frozen_features(cfg: RunConfig, opts: RunOptions, ds: data.MedMNIST, model: Backbone, pre: Preprocess,
                    device: torch.device, cache: FeatureCache, split: str, timings: dict) -> np.ndarray:
    """Readout features of a fully frozen backbone for one split, from the cache when possible."""
    parts = feature_parts(cfg, weights_key(model, cfg), ds.md5, split, precision=precision(device))
    t = time.perf_counter()
    feats, hit = cache.get_or_compute(parts, lambda: extract(
        model, ds.splits[split].images, pre, device, opts.extract_batch_size, f"extract {split}", opts.quiet))
    timings[f"features_{split}_s"] = time.perf_counter() - t
    log(f"features {split}: {'cache hit' if hit else 'extracted'} {feats.shape[0]} x {feats.shape[1]} "
        f"({cache.path(cache.key(parts)).name})", opts.quiet)
    return feats


def _probe(cfg, opts, ds, model, pre, device, cache, timings):
    feats = {s: frozen_features(cfg, opts, ds, model, pre, device, cache, s, timings) for s in data.SPLITS}
    y = {s: ds.splits[s].labels for s in data.SPLITS}
    t = time.perf_counter()
    if cfg.head == "knn":
        val = heads.knn_scores(feats["train"], y["train"], feats["val"], ds.task, ds.n_outputs, cfg.knn_k, device)
        test = heads.knn_scores(feats["train"], y["train"], feats["test"], ds.task, ds.n_outputs, cfg.knn_k, device)
        selected = {"head": "knn", "k": cfg.knn_k, "metric": "cosine"}
        timings["head_s"] = time.perf_counter() - t
        return val, test, selected, None
    res = heads.train_linear_grid(feats["train"], y["train"], feats["val"], y["val"], ds.task, ds.n_outputs,
                                  epochs=cfg.head_epochs, batch_size=cfg.head_batch_size, select=cfg.select,
                                  seed=cfg.seed, device=device, quiet=opts.quiet)
    val = res.scores(ds.task, feats["val"], device)
    test = res.scores(ds.task, feats["test"], device)  # the selected head only, scored once
    timings["head_s"] = time.perf_counter() - t
    selected = {"head": "linear", "lr": res.lr, "weight_decay": res.wd, "epoch": res.epoch,
                f"val_{cfg.select}": res.val_value, "grid_size": len({(g['lr'], g['wd']) for g in res.grid})}
    curves = [{"lr": g["lr"], "wd": g["wd"], "epoch": g["epoch"], "split": "val", "metric": k[4:] if k.startswith("val_") else k,
               "value": g[k]} for g in res.grid for k in g if k.startswith("val_")]
    return val, test, selected, curves
