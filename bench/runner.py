"""One run, end to end: load data and backbone, hand a RunContext to the config's protocol,
score val and test, write the results. Every run goes through ``execute``."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

import backbones
from backbones.base import Backbone, count_params

from . import datasets, execution, metrics, recipes, subsets
from .config import RunConfig, RunOptions, parse_unfreeze
from .context import RunContext, Timings, log
from .errors import UserError
from .cache import FeatureCache, default_cache_dir
from .features import precision
from .preprocess import Preprocess
from .results import ResultStore, RunResult, git_revision, now, versions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``--device``: auto is CUDA where present, else CPU (MPS only when asked: not every op has an
    MPS kernel yet, and a run that works on CPU must not fail by default on a Mac)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r}: only cpu, cuda and mps are supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                        f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu or auto")
    return device


def build_backbone(cfg: RunConfig, weights: str | None = None) -> Backbone:
    # random init must not depend on what ran before in this process
    seed_everything(cfg.seed)
    return backbones.build(cfg.backbone, cfg.variant, weights or cfg.weights, readout=cfg.readout,
                           input_size=cfg.input_size)


def load_options(cfg: RunConfig, opts: RunOptions, download: bool = True) -> datasets.LoadOptions:
    from .options import DATA_OPTIONS

    return datasets.LoadOptions(root=opts.data_root, check_md5=not opts.skip_md5, limit=cfg.limit,
                                cache_dir=Path(opts.cache_dir or default_cache_dir()), download=download,
                                data=tuple((k, getattr(cfg, k)) for k in DATA_OPTIONS),
                                splits_dir=Path(opts.results_dir) / "splits", quiet=opts.quiet)


def trainable_count(cfg: RunConfig, model: Backbone, n_outputs: int, brief: bool = False) -> dict:
    """Trainable parameters of a run (``--adapt`` counted by bench.adapt; ``model`` is not changed);
    ``brief``: backbone, head, total and adapt only (what the run's JSON records)."""
    from . import adapt

    n_unfrozen = parse_unfreeze(cfg.unfreeze, model.num_blocks)
    choices = ["none"] + [f"last{n}" for n in (1, 2, 4) if n < model.num_blocks] + ["all"]
    wanted = [cfg.unfreeze] if brief else list(dict.fromkeys(choices + [cfg.unfreeze]))
    counted = adapt.parameter_counts(cfg, model, {c: parse_unfreeze(c, model.num_blocks) for c in wanted})
    backbone_params = counted[cfg.unfreeze]
    head_params = cfg.protocol.head_parameters(cfg, model, n_outputs)
    out = {"backbone": backbone_params, "head": head_params, "total": backbone_params + head_params,
           "adapt": cfg.adapt or "none"}
    if brief:
        return out
    return {**out, "backbone_total": count_params(model), "blocks": model.num_blocks, "unfrozen_blocks": n_unfrozen,
            "backbone_by_unfreeze": {c: counted[c] for c in choices}}


def normalization(cfg: RunConfig, model: Backbone, ds: datasets.Dataset, opts: RunOptions
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of ``--normalize``: the backbone's, the train split's, or MedMNIST v2's 0.5/0.5."""
    if cfg.normalize == "half":
        return (0.5,) * 3, (0.5,) * 3
    if cfg.normalize == "dataset":
        from .datasets.stats import train_stats

        return train_stats(ds, Path(opts.cache_dir or default_cache_dir()), cfg.limit)
    return model.normalization()


def execute(cfg: RunConfig, opts: RunOptions, *, model: Backbone | None = None,
            cache: FeatureCache | None = None, lock: bool = True) -> RunResult:
    """Run ``cfg`` unless its result exists (then read it back; ``opts.force`` reruns).

    ``model``: a backbone built by the caller (a notebook, a test) instead of the registry's;
    its weights must be what ``cfg`` says (bench.api.run fingerprints an instance for the id).
    ``cache``: the feature cache to use (default: ``opts.cache_dir``). ``lock``: hold the run's
    lock while it runs, so two processes never run one id at once (False: the caller holds it)."""
    from .resolve import bind_data

    cfg = bind_data(cfg, opts)  # a different file under the same dataset name is a different run
    store = ResultStore(opts.results_dir)
    if store.is_done(cfg.run_id) and not opts.force:
        log(f"{cfg.run_id}: already done ({store.csv_path(cfg.run_id)}); --force to rerun", opts.quiet)
        return RunResult.read(store, cfg.run_id)
    store.check_writable()
    if not lock:
        return _execute(cfg, opts, store, model, cache)
    with store.lock(cfg.run_id):
        if store.is_done(cfg.run_id) and not opts.force:  # finished by another process meanwhile
            return RunResult.read(store, cfg.run_id)
        return _execute(cfg, opts, store, model, cache)


def _execute(cfg: RunConfig, opts: RunOptions, store: ResultStore, model: Backbone | None,
             cache: FeatureCache | None) -> RunResult:
    store.remove_stale(cfg.run_id)  # we hold the lock: temporaries of this id are from a killed run
    protocol = cfg.protocol
    timings = Timings()
    t0 = time.perf_counter()
    device = pick_device(opts.device)
    cache = cache or FeatureCache(Path(opts.cache_dir or default_cache_dir()))
    with timings("load_data"):
        ds = datasets.load(cfg.dataset, cfg.size, load_options(cfg, opts)).validate()
    if cfg.data_fingerprint and cfg.data_fingerprint != ds.fingerprint:
        raise UserError(f"{cfg.dataset}: the data changed while this run was planned ({ds.path}); run it again")
    if model is None:
        model = build_backbone(cfg)
    else:
        seed_everything(cfg.seed)  # heads and batches draw from the seed as for a built model
    parse_unfreeze(cfg.unfreeze, model.num_blocks)  # N > block count is an error before any work
    execution.prepare(model.eval().to(device), opts.channels_last)
    mean, std = normalization(cfg, model, ds, opts)
    pre = Preprocess(cfg.input_size, cfg.resize, mean, std, cfg.gray, crop_from=cfg.crop_from)
    trained_on, subset = subsets.apply(cfg, ds)  # --train-fraction / --shots: the train rows it learns from
    ctx = RunContext(cfg, opts, trained_on, model, pre, device, cache, timings,
                     source=ds if subset else None, train_subset=subset)
    out = protocol.run(ctx)
    y_val, y_test = ds.targets("val"), ds.targets("test")

    def scored(o) -> dict:
        return {"val": metrics.evaluate(ds.task, y_val, o.val_scores),
                "test": metrics.evaluate(ds.task, y_test, o.test_scores)}

    by_split = scored(out)
    layers = {k: (scored(o), o.test_scores) for k, o in out.layers.items()} if out.layers else None
    timings.values["total_s"] = time.perf_counter() - t0
    meta = {
        "run_id": cfg.run_id, "config": cfg.to_dict(), "protocol": protocol.name, "task": ds.task,
        "labels": ds.label_names,
        "dataset": {"source": ds.source, "path": str(ds.path) if ds.path else None, "fingerprint": ds.fingerprint,
                    "modality": ds.modality, "n": {s: len(v) for s, v in ds.splits.items()},
                    "train_per_class": subsets.per_class(ds.splits["train"].labels, ds.multilabel, ds.n_outputs).tolist(), **ds.extra},
        "backbone": {"weights_id": model.weights_id, "embed_dim": model.embed_dim,
                     "blocks": model.num_blocks, "input_size": cfg.input_size},
        "selected": out.selected, "seeds": {"seed": cfg.seed, "torch_initial_seed": torch.initial_seed()},
        "versions": versions(), "git": git_revision(), "device": str(device),
        "timings": timings.as_dict(), "created": now(),
        "preprocess": {"resize": cfg.resize, "crop_from": cfg.crop_from, "normalize": cfg.normalize,
                       "mean": list(mean), "std": list(std), "precision": precision(device, cfg.precision)},
        "recipe": recipes.provenance(cfg), "execution": ctx.execution(), **out.extra,
    }
    if "trainable_parameters" not in meta:  # protocols that train no backbone: counted here
        meta["trainable_parameters"] = trainable_count(cfg, model, ds.n_outputs, brief=True)
    if subset is not None:
        meta["train_subset"] = subset.record(cfg, ds)
    store.write_run(cfg, by_split, meta, (y_test, out.test_scores), out.curves, layers=layers,
                    model_files=out.files)
    protocol.finished(cfg, opts)  # e.g. drop a resume checkpoint: only now, after the results are written
    return RunResult.read(store, cfg.run_id, status="done")
