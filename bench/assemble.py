"""One run's parts, assembled from its config: the device, the data (and its train subset), the
backbone built, seeded and placed, the preprocessing -> a :class:`RunContext` for the protocol.
bench.runner calls :func:`open_context`; bench explain and the sweep planner use the pieces."""
from __future__ import annotations

from pathlib import Path

import torch

from backbones.base import Backbone

from . import adapt, datasets, execution, preprocess, subsets
from .cache import FeatureCache
from .run_config import RunConfig, RunOptions, parse_unfreeze
from .context import RunContext, Timings
from .env import default_cache_dir, seed_everything
from .errors import UserError


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


def build_backbone(cfg: RunConfig, weights: str | None = None, opts: RunOptions | None = None) -> Backbone:
    # random init must not depend on what ran before in this process
    channels = in_chans(cfg, opts)
    seed_everything(cfg.seed)
    return adapt.build(cfg.backbone, cfg.variant, weights or cfg.weights, readout=cfg.readout,
                       input_size=cfg.input_size, **channels)


def in_chans(cfg: RunConfig, opts: RunOptions | None = None) -> dict:
    """``{"in_chans": N}`` for a backbone that takes the dataset's own channel count (Spec.in_chans
    0): the source's count where it knows it without loading (MedMNIST), else the data's (read with
    ``opts``; without them, 3); ``{}`` for every other backbone (3 channels, gray repeated)."""
    import backbones

    if backbones.get(cfg.backbone).spec.in_chans:
        return {}
    n = datasets.source_for(cfg.dataset).n_channels(cfg.dataset)
    if n is None and opts is not None:
        n = datasets.load(cfg.dataset, cfg.size, datasets.load_options(cfg, opts)).n_channels
    return {"in_chans": n or 3}


def open_context(cfg: RunConfig, opts: RunOptions, model: Backbone | None = None,
                 cache: FeatureCache | None = None, timings: Timings | None = None) -> RunContext:
    """Everything ``cfg`` runs on: the backbone built (or the caller's, seeded alike) and checked
    against --unfreeze and the protocol (``Protocol.check``), data loaded and checked against the
    planned fingerprint, the model placed, the preprocessing of its normalisation, and the
    --train-fraction / --shots subset. Every check of the input is here, before the run writes
    anything (its lock, results/splits, features): bench.runner opens the context first."""
    timings = timings or Timings()
    device = pick_device(opts.device)
    cache_dir = Path(opts.cache_dir or default_cache_dir())
    channels = in_chans(cfg, opts) if model is None else {}  # (a load, if any, draws from no generator)
    seed_everything(cfg.seed)  # a random init, heads and batches draw from the seed, also for a caller's model
    if model is None:
        model = adapt.build(cfg.backbone, cfg.variant, cfg.weights, readout=cfg.readout, input_size=cfg.input_size,
                            **channels)
    parse_unfreeze(cfg.unfreeze, model.num_blocks)  # N > block count is an error before any work
    cfg.protocol.check(cfg, model)  # e.g. --layers past the block count: before the data is read
    with timings("load_data"):  # loading draws from no global generator: the model's init stays the seed's
        ds = datasets.load(cfg.dataset, cfg.size, datasets.load_options(cfg, opts)).validate()
    if cfg.data_fingerprint and cfg.data_fingerprint != ds.fingerprint:
        raise UserError(f"{cfg.dataset}: the data changed while this run was planned ({ds.path}); run it again")
    cache = cache or FeatureCache(cache_dir)
    execution.prepare(model.eval().to(device), opts.channels_last)
    pre = preprocess.for_run(cfg, model, ds, cache_dir)
    trained_on, subset = subsets.apply(cfg, ds)  # --train-fraction / --shots: the train rows it learns from
    ctx = RunContext(cfg, opts, trained_on, model, pre, device, cache, timings,
                     source=ds if subset is not None else None, train_subset=subset)
    if subset is not None and (short := subset.warning(cfg, ds)):
        ctx.warn("train_subset", short)
    if cfg.protocol.selects_on_val(cfg) and (small := small_val(ds)):
        ctx.warn("small_val", small)
    return ctx


MIN_VAL = 20  # a val split with fewer images (or one class) is too small to select on


def small_val(ds) -> str | None:
    """Why the val split is too small to choose a model on (fewer than MIN_VAL images, or a single
    class: multi-label, no label with both values), or None."""
    import numpy as np

    y = ds.splits["val"].labels
    n = len(y)
    if ds.multilabel:
        both = [(col == 1).any() and (col == 0).any() for col in np.asarray(y).T]
        one = not any(both)
        classes = "no label with both values" if one else ""
    else:
        k = len(np.unique(np.asarray(y).reshape(-1)))
        one = k < 2
        classes = f"{k} class" + ("es" if k != 1 else "")
    if n >= MIN_VAL and not one:
        return None
    what = f"{n} image{'s' if n != 1 else ''}" + (f", {classes}" if classes else "")
    return (f"the val split has {what}: too small to select on (fewer than {MIN_VAL} images or one class), so "
            f"what is chosen on it (hyper-parameters, epoch, layer) is close to chance; the report marks this run")
