"""The Python API under the CLI: the same option names, results as objects and DataFrames.

    import bench
    r = bench.run(backbone="dinov2", dataset="breastmnist", unfreeze="last2")
    r.metric("auc"), r.metrics, r.selected, r.test_scores()
    bench.sweep("configs/smoke.yaml")
    df = bench.load_results("results")
    bench.report("results", out="reports/latest")
    emb = bench.embed("dinov2", "breastmnist", out="feats.parquet")  # {"train": {"ids", "labels", "features"}, ...}
    bench.robust(r.run_id)  # the run under MedMNIST-C's corruptions, without retraining
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import options
from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from backbones.base import Backbone

    from .run_config import RunConfig
    from .cache import FeatureCache
    from .results import RunResult


def split_options(kw: dict[str, Any]) -> tuple[dict, dict]:
    """Keyword options -> (run options, execution options), each coerced to its declared type."""
    run, execution = {}, {}
    for k, v in kw.items():
        opt = options.get(k)  # unknown names: one line with suggestions
        value = opt.coerce(v, opt.flag) if v is not None else None
        (run if opt.scope == "run" else execution)[k] = value
    return run, execution


def config(backbone: "str | Backbone", dataset: str, **run: Any) -> "RunConfig":
    """The resolved config (and so the run id) of a run, without running it."""
    from .resolve import resolve

    if isinstance(backbone, str):
        return resolve(backbone, dataset, **run)
    return _instance_config(backbone, dataset, run)


def _instance_config(model: "Backbone", dataset: str, run: dict) -> "RunConfig":
    """A backbone built in the caller's code: registered under its spec name for this process,
    its weights fingerprinted (sha256 of the state dict), so the run id and feature cache follow
    the actual parameters."""
    import backbones
    from .resolve import resolve

    if run.get("weights") not in (None, "default"):
        raise UserError("weights: a backbone instance brings its own weights; drop the weights option")
    name = model.spec.name
    try:
        backbones.get(name)
    except UserError:
        backbones.register(name, model.spec, lambda *a, **k: model)
    cfg = resolve(name, dataset, **{**run, "variant": run.get("variant") or model.variant})
    return cfg.replace(weights="instance", weights_fingerprint=state_fingerprint(model))


def state_fingerprint(model: Any) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes and bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:16]


def run(backbone: "str | Backbone", dataset: str, *, cache: "FeatureCache | None" = None,
        **kw: Any) -> "RunResult":
    """Run one backbone x dataset x protocol x seed (or read it back when it is already done).

    Options are `bench run`'s flags with underscores (``unfreeze="last2"``, ``results_dir=...``).
    ``backbone`` is a registry name or a Backbone instance (e.g. built in a notebook);
    ``cache`` a FeatureCache to use instead of ``cache_dir``'s. Returns a RunResult whose
    ``status`` says whether it ran now ("done") or was read back ("existing")."""
    from .run_config import make_run_options
    from .runner import execute

    from .progress import log
    from .resolve import unread, unread_warning

    run_kw, exec_kw = split_options(kw)
    cfg = config(backbone, dataset, **run_kw)
    model = None if isinstance(backbone, str) else backbone
    res = execute(cfg, make_run_options(**exec_kw), model=model, cache=cache)
    if ignored := unread(cfg, run_kw):  # as `bench run`: an option the protocol does not read, said once
        log(f"warning: {unread_warning(cfg, ignored, run_kw)}")
    return res


def sweep(config_file: str | Path | None = None, *, dry_run: bool = False, **kw: Any) -> int:
    """`bench sweep`: a grid file and/or options (lists make axes). Returns the exit code
    (0: every run done, 1: some failed)."""
    import argparse

    from .sweep import add_sweep_arguments, main

    parser = argparse.ArgumentParser(prog="bench sweep", allow_abbrev=False)
    add_sweep_arguments(parser)
    argv: list[str] = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v is not None:
            argv += [flag, *map(str, v if isinstance(v, (list, tuple)) else [v])]
    argv = ([str(config_file)] if config_file else []) + (["--dry-run"] if dry_run else []) + argv
    return main(parser.parse_args(argv))


def robust(run_ids: "str | list[str]", *, test_dataset: str | None = None, corruptions: list[str] | None = None,
           modality: str | None = None, **kw: Any) -> "pd.DataFrame":
    """`bench robust`: score finished runs under shift without retraining (MedMNIST-C corruptions x
    severities 1-5 of their dataset, or ``test_dataset``'s test split); ``kw`` are the execution
    options (``results_dir``, ``data_root``, ``device``...). Returns their robustness rows (every
    shift scored so far, the clean row included) as one DataFrame."""
    import pandas as pd

    from .robust import Request
    from .robust import robust as score
    from .run_config import make_run_options

    run_kw, exec_kw = split_options(kw)
    if run_kw:
        raise UserError(f"{', '.join(sorted(run_kw))}: a run option; bench.robust scores runs as they ran and takes "
                        f"only where and how options (results_dir, data_root, device, ...)")
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    paths = score(Request(ids, test_dataset=test_dataset, corruptions=list(corruptions) if corruptions else None,
                          modality=modality), make_run_options(**exec_kw))
    return pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in paths], ignore_index=True)


def load_results(results_dir: str | Path = "results") -> "pd.DataFrame":
    """Every completed run under ``results_dir`` as one tidy DataFrame (one row per run x split x
    metric, with the config columns)."""
    import pandas as pd

    from .results import ResultStore

    store = ResultStore(Path(results_dir))
    files = store.result_csvs()
    if not files:
        raise UserError(f"no completed runs in {store.runs}; run `bench run ...` first")
    return pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in files], ignore_index=True)


def embed(backbone: str, dataset: str, *, out: str | Path | None = None, splits: tuple[str, ...] | list[str] | None = None,
          **kw: Any) -> dict:
    """`bench embed`: the frozen backbone's features of every image, per split, as arrays:
    ``{"train": {"ids", "labels", "features"}, ...}`` (with ``layers=...``: ``layer_<k>`` per
    block instead of ``features``), from the feature cache (extracting what is missing); written
    to ``out`` (.npz or .parquet) too when given. Options as `bench run`'s (size, weights, seed...)."""
    from .embed import check_out, embed as _embed, write
    from .run_config import make_run_options
    from .datasets import SPLITS

    run_kw, exec_kw = split_options(kw)
    check_out(Path(out) if out else None)
    emb = _embed(backbone, dataset, make_run_options(**exec_kw), splits=tuple(splits or SPLITS), **run_kw)
    if out:
        write(emb, Path(out))
    return emb


def report(results_dir: str | Path = "results", out: str | Path = "reports/latest", **kw: Any) -> Path:
    """`bench report`: tables and figures from a results folder; returns the report folder."""
    from .report import make_report

    kw.setdefault("formats", ("md", "html", "png"))
    return make_report(Path(results_dir), Path(out), **kw)
