"""What a finished run's test images are, for audits and per-image exports: their ids and their
attributes (``--subgroups``), read without rerunning anything.

Ids: every run saves them beside its test scores (bench.results: own data, each image's path as
the manifest names it; MedMNIST, ``test/<index>``). A run saved before ids were recorded gets them
rebuilt from the dataset as it is now, in its order, but only where the dataset's fingerprint is
the one the run recorded (same files, same labels, same split): otherwise one line says why not,
and its images stay unnamed.

Attributes: the dataset source's per-image table (bench.datasets.attributes), joined on those ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import datasets
from .datasets.attributes import Attributes, Subgroup, parse
from .errors import UserError, did_you_mean
from .results import ResultStore
from .run_config import RunConfig

if TYPE_CHECKING:
    from .datasets import Dataset, LoadOptions
    from .run_config import RunOptions


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


class Auditor:
    """Ids and attributes of finished runs' test images, each dataset read once.

    ``data_root``: where dataset files are now (default: the folder each run recorded its data in);
    ``cache_dir``: the decode cache (default: bench's)."""

    def __init__(self, store: ResultStore, data_root: Path | None = None, cache_dir: Path | None = None) -> None:
        self.store = store
        self.data_root = Path(data_root) if data_root else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._datasets: dict[tuple, "Dataset | str"] = {}
        self._attributes: dict[tuple, "Attributes | None | str"] = {}

    # -- where a run's data is ---------------------------------------------------------------------
    def load_options(self, meta: dict) -> "tuple[RunConfig, LoadOptions]":
        """The run's config and what its dataset source needs to read the data again (nothing is
        downloaded, nothing written to the results folder)."""
        from .env import default_cache_dir
        from .options import DATA_OPTIONS

        cfg = RunConfig.from_dict(meta["config"])
        root = self.data_root
        recorded = ((meta.get("dataset") or {}).get("path")) or ""
        if root is None and recorded:  # a dataset file (MedMNIST) lies in its root; a named layout is its root
            p = Path(recorded)
            root = p if p.is_dir() else p.parent
        lopts = datasets.LoadOptions(root=root, check_md5=False, limit=cfg.limit,
                                     cache_dir=self.cache_dir or default_cache_dir(), download=False,
                                     data=tuple((k, getattr(cfg, k)) for k in DATA_OPTIONS), quiet=True)
        return cfg, lopts

    def dataset(self, meta: dict) -> "Dataset | str":
        """The run's dataset as it is now, or one line saying why it cannot be read."""
        try:
            cfg, lopts = self.load_options(meta)
        except (UserError, KeyError, TypeError) as e:
            return f"its config is unreadable ({_first_line(e)})"
        key = (cfg.dataset, cfg.size, lopts)
        if key not in self._datasets:
            try:
                self._datasets[key] = datasets.load(cfg.dataset, cfg.size, lopts).validate()
            except (UserError, OSError, ValueError) as e:
                self._datasets[key] = f"its dataset cannot be read now ({_first_line(e)})"
        return self._datasets[key]

    # -- ids ------------------------------------------------------------------------------------------
    def test_ids(self, run_id: str, meta: dict, n: int | None = None) -> tuple[np.ndarray | None, str]:
        """Each scored test image's id, and how it was found: "saved", "rebuilt" (an older run whose
        data fingerprint matches), or one line saying why there are none."""
        got = self.store.read_ids(run_id)
        if got is not None:
            return got[1], "saved"
        if n is None:
            scores = self.store.read_scores(run_id)
            if scores is None:
                return None, "no saved test scores"
            n = len(scores[0])
        ds = self.dataset(meta)
        if isinstance(ds, str):
            return None, f"saved before image ids were recorded, and {ds}"
        recorded = (meta.get("dataset") or {}).get("fingerprint")
        if not recorded or recorded != ds.fingerprint:
            return None, (f"saved before image ids were recorded, and its data changed since it ran (fingerprint "
                          f"{str(recorded)[:12] or 'not recorded'} then, {ds.fingerprint[:12]} now): rerun it to name "
                          f"its images")
        if len(ds.splits["test"]) != n:
            return None, (f"saved before image ids were recorded, and its {n} scores do not match the "
                          f"{len(ds.splits['test'])} test images now")
        return ds.image_ids("test"), "rebuilt"

    # -- attributes ---------------------------------------------------------------------------------
    def attributes(self, meta: dict, ids: np.ndarray) -> "Attributes | None | str":
        """The dataset's per-image attributes of ``ids`` (None: the source has none; a string: why
        they cannot be read)."""
        try:
            cfg, lopts = self.load_options(meta)
        except (UserError, KeyError, TypeError) as e:
            return f"its config is unreadable ({_first_line(e)})"
        digest = hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()
        key = (cfg.dataset, lopts, digest)
        if key not in self._attributes:
            try:
                self._attributes[key] = datasets.source_for(cfg.dataset).attributes(cfg.dataset, lopts,
                                                                                    set(map(str, ids)))
            except (UserError, OSError, ValueError) as e:
                self._attributes[key] = f"its attributes cannot be read ({_first_line(e)})"
        return self._attributes[key]


def columns_of(table: "Attributes | None") -> list[str]:
    return list(table.columns) if table is not None else []


def check_subgroups(subgroups: str, ds: "Dataset", cfg: RunConfig, opts: "RunOptions") -> list[Subgroup]:
    """``--subgroups`` of a run, checked before it runs: each column must be an attribute of the
    dataset's images (read from a few test images), so a typo is one line, not an audit that
    finds nothing after the compute is spent."""
    specs = parse(subgroups)
    if not specs:
        return []
    lopts = dataclasses.replace(datasets.load_options(cfg, opts, download=False), splits_dir=None)
    table = datasets.source_for(cfg.dataset).attributes(cfg.dataset, lopts, set(ds.image_ids("test")[:50].tolist()))
    have = columns_of(table)
    if not have:
        raise UserError(f"--subgroups: {cfg.dataset} has no per-image attributes (a csv: dataset's columns, DICOM "
                        f"tags or the CheXpert/ISIC metadata are; MedMNIST files carry none); drop --subgroups")
    for s in specs:
        if s.column not in have:
            raise UserError(f"--subgroups: {cfg.dataset} has no column {s.column!r}; {did_you_mean(s.column, have)}")
    return specs
