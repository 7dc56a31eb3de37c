"""What one run carries from start to end (:class:`RunContext`), and the one home of the
feature-cache key: runs, frozen prefixes and the sweep planner all build it here.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:  # the planner imports this module without torch
    import numpy as np
    import torch

    from backbones.base import Backbone

    from .run_config import RunConfig, RunOptions
    from .datasets import Dataset
    from .cache import FeatureCache
    from .preprocess import Preprocess
    from .protocol import ProtocolOutput
    from .subsets import TrainSubset

from .env import git_revision, library_versions, now, versions
from .progress import log
from .recipes import provenance
from .subsets import per_class


def weights_key(cfg: "RunConfig", weights_id: str) -> str:
    """What identifies the weights a frozen pass ran with: a random init is only reproducible
    through the seed that drew it; a model passed in by the caller, through its state fingerprint."""
    if cfg.weights == "instance":
        return cfg.weights_fingerprint
    return f"random-seed{cfg.seed}" if weights_id == "random" else weights_id


def frozen_identity(cfg: "RunConfig") -> tuple:
    """Everything in a config that changes the frozen part's output (the sweep groups on it)."""
    seed = cfg.seed if cfg.weights == "random" else None
    return (cfg.backbone, cfg.variant, cfg.weights, cfg.weights_fingerprint, cfg.readout, cfg.input_size,
            cfg.resize, cfg.crop_from, cfg.normalize, cfg.precision, cfg.gray, cfg.dataset, cfg.size, cfg.limit, seed)


def feature_parts(cfg: "RunConfig", weights: str, data_fingerprint: str, split: str, what: str = "readout",
                  precision: str = "fp32", execution: dict | None = None) -> dict:
    """The feature-cache key of one split: ``weights`` is :func:`weights_key`; ``what`` is
    "readout" or "prefix:<k>"; ``precision`` what autocast computes in; ``execution`` the kernels'
    options that are on (bench.execution.cache_parts); library versions are in it because an
    upgrade can change an architecture's code or its random init."""
    # later knobs enter the key only when set, so features cached before them stay valid
    later = {k: getattr(cfg, k) for k, default in (("normalize", "backbone"), ("crop_from", 0))
             if getattr(cfg, k) != default}
    later.update(_backbone_parts(cfg))
    return {"what": what, "backbone": cfg.backbone, "variant": cfg.variant, "weights": weights,
            "readout": cfg.readout, "input_size": cfg.input_size, "resize": cfg.resize, "gray": cfg.gray,
            "dataset_md5": data_fingerprint, "split": split, "limit": cfg.limit, "precision": precision,
            "libraries": library_versions(), **later, **({"execution": execution} if execution else {})}


def _backbone_parts(cfg: "RunConfig") -> dict:
    """The backbone's definition where it is not the first: its variant's version above 1 (a
    changed architecture never reads the features of the old one) and ``in_chans: "dataset"`` for
    a backbone that takes the dataset's own channel count (gray images kept one channel)."""
    import backbones

    spec = backbones.get(cfg.backbone).spec
    out: dict = {}
    if spec.version(cfg.variant) > 1:
        out["backbone_version"] = spec.version(cfg.variant)
    if spec.in_chans == 0:
        out["in_chans"] = "dataset"
    return out


@dataclass
class Timings:
    """Seconds per named phase; ``with timings("head"):`` records ``head_s``."""

    values: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.values[f"{name}_s"] = self.values.get(f"{name}_s", 0.0) + time.perf_counter() - t

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.values.items()}


@dataclass
class RunContext:
    cfg: "RunConfig"
    opts: "RunOptions"
    dataset: "Dataset"
    model: "Backbone"
    pre: "Preprocess"
    device: "torch.device"
    cache: "FeatureCache"
    timings: Timings = field(default_factory=Timings)
    # --train-fraction / --shots: ``dataset`` trains on the subset; frozen passes run on the whole
    # split of ``source`` (one cached pass serves every fraction) and keep the subset's rows
    source: "Dataset | None" = None
    train_subset: "TrainSubset | None" = None

    frozen_fns: dict = field(default_factory=dict)  # fn -> bench.execution.Frozen, one per fn
    # what this run did other than asked, or cannot vouch for (a kNN k cut to the smallest class, a
    # val split too small to select on...): {"kind", "message", ...}, in the run's JSON as
    # ``warnings``; the report marks the run's numbers with them (bench.report.caveats)
    warnings: list = field(default_factory=list)

    def log(self, msg: str) -> None:
        log(msg, self.opts.quiet)

    def warn(self, kind: str, message: str, **data) -> None:
        """An entry in the run's ``warnings``, said in one line on stderr (also under --quiet) when
        the run's record is made (:meth:`record`), so a run that fails says only its error; the same
        message is kept once (a layer-wise run asks every layer)."""
        if any(w["kind"] == kind and w["message"] == message for w in self.warnings):
            return
        self.warnings.append({"kind": kind, "message": message, **data})

    def frozen_fn(self, fn: Callable[["torch.Tensor"], "torch.Tensor"]) -> Callable[["torch.Tensor"], "torch.Tensor"]:
        """``fn`` as --channels-last and --compile ask (compiled once per fn and run)."""
        from .execution import Frozen

        if fn not in self.frozen_fns:
            self.frozen_fns[fn] = Frozen(fn, self.opts.channels_last, self.opts.compile)
        return self.frozen_fns[fn]

    def record(self, out: "ProtocolOutput") -> dict:
        """What the run's JSON records beside its rows: config, data, weights, selection, seeds,
        versions, timings, preprocessing, the recipe's provenance and the protocol's own record."""
        import torch

        from .adapt import trainable_count
        from .features import precision

        cfg, model, pre = self.cfg, self.model, self.pre
        ds = self.source or self.dataset  # the whole dataset, also when a train subset was trained on
        meta = {
            "run_id": cfg.run_id, "config": cfg.to_dict(), "protocol": cfg.protocol.name, "task": ds.task,
            "labels": ds.label_names,
            "dataset": {"source": ds.source, "path": str(ds.path) if ds.path else None, "fingerprint": ds.fingerprint,
                        "modality": ds.modality, "n": {s: len(v) for s, v in ds.splits.items()},
                        "train_per_class": per_class(ds.splits["train"].labels, ds.multilabel, ds.n_outputs).tolist(),
                        **ds.extra},
            "backbone": {"weights_id": model.weights_id, "embed_dim": model.embed_dim,
                         "blocks": model.num_blocks, "input_size": cfg.input_size},
            "selected": out.selected, "seeds": {"seed": cfg.seed, "torch_initial_seed": torch.initial_seed()},
            "versions": versions(), "git": git_revision(), "device": str(self.device),
            "timings": self.timings.as_dict(), "created": now(),
            "preprocess": {"resize": cfg.resize, "crop_from": cfg.crop_from, "normalize": cfg.normalize,
                           "mean": list(pre.mean), "std": list(pre.std), "precision": precision(self.device, cfg.precision)},
            "recipe": provenance(cfg), "execution": self.execution(), **out.extra,
        }
        if "trainable_parameters" not in meta:  # protocols that train no backbone: counted here
            meta["trainable_parameters"] = trainable_count(cfg, model, ds.n_outputs, brief=True)
        if self.train_subset is not None:
            meta["train_subset"] = self.train_subset.record(cfg, ds)
        if self.warnings:
            meta["warnings"] = list(self.warnings)
            for w in self.warnings:
                log(f"warning: {w['message']}")
        return meta

    def execution(self) -> dict:
        """What the run's meta records of how it executed."""
        return {"channels_last": self.opts.channels_last,
                "compile": {getattr(f.fn, "__name__", type(f.fn).__name__): f.status
                            for f in self.frozen_fns.values()} if self.opts.compile else "off"}

    @property
    def weights_key(self) -> str:
        return weights_key(self.cfg, self.model.weights_id)

    def feature_parts(self, split: str, what: str = "readout") -> dict:
        from .features import precision

        from .execution import cache_parts

        return feature_parts(self.cfg, self.weights_key, self.dataset.fingerprint, split, what,
                             precision(self.device, self.cfg.precision), cache_parts(self.opts))

    def frozen_pass(self, split: str, fn: Callable[["torch.Tensor"], "torch.Tensor"], what: str = "readout",
                    memory_budget: int | None = None) -> tuple["np.ndarray", bool]:
        """``fn`` (normalised images -> features) over one split, run once and cached on disk."""
        from .features import extract

        whole = self.whole_split(split)
        feats, hit = self.cache.get_or_compute(self.feature_parts(split, what), lambda: extract(
            self.frozen_fn(fn), whole.images, self.pre, self.device, self.opts.extract_batch_size,
            f"{what} {split}", self.opts.quiet, self.cfg.precision), memory_budget=memory_budget,
            rows=len(whole))
        return self.subset_rows(split, feats), hit

    def whole_split(self, split: str):
        """The split frozen passes run on: the whole one, also when a train subset is trained on."""
        return (self.source or self.dataset).splits[split]

    def subset_rows(self, split: str, feats: "np.ndarray") -> "np.ndarray":
        """Rows of whole-split features that the run trains on (all of them but for a train subset)."""
        if split != "train" or self.train_subset is None:
            return feats
        import numpy as np

        return np.ascontiguousarray(feats[self.train_subset.index])

    def readout_features(self, split: str) -> "np.ndarray":
        """Readout features of the fully frozen backbone for one split, from the cache when possible."""
        with self.timings(f"features_{split}"):
            feats, hit = self.frozen_pass(split, self.model)
        self.log(f"features {split}: {'cache hit' if hit else 'extracted'} {feats.shape[0]} x {feats.shape[1]} "
                 f"({self.cache.path(self.cache.key(self.feature_parts(split))).name})")
        return feats
