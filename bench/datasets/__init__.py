"""Dataset sources in a registry: ``--dataset NAME`` (a source's fixed names, e.g. MedMNIST's
flags) or ``--dataset SOURCE:ARG`` (e.g. a folder). Adding a source is one module with a
:class:`DatasetSource` and one line in ``BUILTINS`` (or an entry point in the group
``bench.datasets`` of a plugin, or ``register_source`` at run time).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..env import default_cache_dir
from ..errors import UserError, did_you_mean
from ..options import DATA_OPTIONS
from ..registry import Registry
from .base import SPLITS, Dataset, DatasetSource, LoadOptions, Split

if TYPE_CHECKING:
    from ..run_config import RunConfig, RunOptions

BUILTINS = {"medmnist": "bench.datasets.medmnist:SOURCE",
            "folder": "bench.datasets.folder:SOURCE",
            "csv": "bench.datasets.manifest:SOURCE",
            "aptos2019": "bench.datasets.paper:APTOS",
            "isic2019": "bench.datasets.paper:ISIC",
            "cbis-ddsm": "bench.datasets.paper:CBIS",
            "chexpert": "bench.datasets.paper:CHEXPERT"}
SOURCES: Registry[DatasetSource] = Registry("dataset source", "bench.datasets", BUILTINS, DatasetSource)


def register_source(source: DatasetSource) -> DatasetSource:
    return SOURCES.register(source)


def source_for(dataset: str) -> DatasetSource:
    """The source that answers for a --dataset value; unknown names get suggestions."""
    prefix, sep, _ = dataset.partition(":")
    if sep and prefix in SOURCES.names():
        return SOURCES.get(prefix)
    known: list[str] = []
    for src in SOURCES.all():
        if src.owns(dataset):
            return src
        known += src.names()
    forms = [f"{n}:..." for n in SOURCES.names() if not SOURCES.get(n).names()]
    raise UserError(f"unknown dataset {dataset!r}; {did_you_mean(dataset, known + forms)}")


def check(dataset: str, size: int) -> DatasetSource:
    src = source_for(dataset)
    src.check(dataset, size)
    return src


def load(dataset: str, size: int, opts: LoadOptions) -> Dataset:
    return source_for(dataset).load(dataset, size, opts)


def identity(dataset: str, size: int, opts: LoadOptions) -> str:
    """The fingerprint a run id binds: empty for a dataset's published version, else its content's."""
    return source_for(dataset).identity(dataset, size, opts)


def load_options(cfg: "RunConfig", opts: "RunOptions", download: bool = True) -> LoadOptions:
    """What a source needs from a run's config and options to find, check and cache its files."""
    return LoadOptions(root=opts.data_root, check_md5=not opts.skip_md5, limit=cfg.limit,
                       cache_dir=Path(opts.cache_dir or default_cache_dir()), download=download,
                       data=tuple((k, getattr(cfg, k)) for k in DATA_OPTIONS),
                       splits_dir=Path(opts.results_dir) / "splits", quiet=opts.quiet,
                       workers=getattr(opts, "decode_workers", 0) or 0)


def all_names() -> list[str]:
    """Every dataset known by name (what `datasets: all` in a sweep means)."""
    return [n for src in SOURCES.all() if src.in_all for n in src.names()]


__all__ = ["SPLITS", "Dataset", "DatasetSource", "LoadOptions", "Split", "SOURCES", "register_source",
           "source_for", "check", "load", "identity", "load_options", "all_names"]
