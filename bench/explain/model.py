"""A finished run's model rebuilt from what the run saved: its config (meta/<run_id>.json) through
the runner's own builders, its head (models/<run_id>/head.safetensors, saved with every run that
trains one) and, for runs that trained the backbone, models/<run_id>/backbone.safetensors
(--save-model). Nothing is retrained; it computes in the run's recorded precision, and the test
scores the run saved check the rebuild."""
from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbones.base import Backbone

from ..run_config import RunConfig, RunOptions
from ..progress import log
from ..datasets import Dataset
from ..errors import UserError, did_you_mean
from ..labels import run_label
from .. import preprocess
from ..env import default_cache_dir
from ..preprocess import Preprocess
from ..results import ResultStore


# protocols whose runs save their head (ProtocolOutput.files); kNN has none to save
HEAD_SAVING = ("probe", "finetune", "deit")


def resolve_run_id(store: ResultStore, given: str) -> str:
    """An exact run id, or a unique prefix of one; else a one-line error with close ids."""
    ids = store.run_ids()
    if given in ids:
        return given
    starts = [r for r in ids if r.startswith(given)]
    if len(starts) == 1:
        return starts[0]
    if not ids:
        raise UserError(f"unknown run {given!r}: {store.root} has no finished runs (bench run first, or "
                        f"--results-dir)")
    if starts:
        raise UserError(f"run {given!r} is ambiguous: {', '.join(starts[:5])}{', ...' if len(starts) > 5 else ''}")
    return _unknown(given, ids, store.root)


def _unknown(given: str, ids: list[str], root: Path) -> str:
    # run ids differ mostly in their hash tail: match on the readable part too
    close = did_you_mean(given, ids)
    if not close.startswith("did you mean"):
        stem = given.rsplit("-", 1)[0]
        near = [r for r in ids if r.rsplit("-", 1)[0] == stem]
        close = f"did you mean: {', '.join(near[:3])}?" if near else "see `bench results ls`"
    raise UserError(f"unknown run {given!r} in {root}; {close}")


def rerun_command(cfg: RunConfig, *extra: str, opts: RunOptions | None = None) -> str:
    """A `bench run` line with the run's non-default options (the same config, hence run id) and,
    with ``opts``, the folders that find the run and its data again (--results-dir, --data-root)."""
    from .. import options

    d = cfg.to_dict()
    parts = ["bench", "run"]
    for o in options.OPTIONS:
        v = d.get(o.name)
        if o.scope != "run" or v is None or (v == o.default and not o.required):
            continue
        if o.type is bool:
            parts += [o.flag] if v else []
        else:
            parts += [o.flag, str(v)]
    if opts is not None:
        parts += ["--results-dir", str(opts.results_dir)]
        if opts.data_root is not None:
            parts += ["--data-root", str(opts.data_root)]
        if opts.cache_dir is not None:
            parts += ["--cache-dir", str(opts.cache_dir)]
    return shlex.join(parts + list(extra))


_TOLD_FP32: set[str] = set()  # runs whose precision this device lacks, told once


@dataclass
class Rebuilt:
    """A run's model (images -> logits), data and preprocessing, as the run had them."""

    run_id: str
    cfg: RunConfig
    meta: dict
    backbone: Backbone
    head: nn.Module
    net: nn.Module          # normalised images (B,3,S,S) -> logits
    dataset: Dataset
    pre: Preprocess
    device: torch.device
    picked_from_saved: bool = False  # images chosen on the run's saved test scores (checked against)

    @property
    def task(self) -> str:
        return self.dataset.task

    @property
    def label_names(self) -> list[str]:
        names = self.dataset.label_names
        return [str(names.get(str(i), i)) for i in range(self.dataset.n_outputs)]

    @property
    def reads_tokens(self) -> bool:
        """The head reads every token (the DeiT head), not the backbone's readout."""
        return bool(getattr(self.head, "wants_tokens", False))

    def inputs(self, split: str, idx: np.ndarray) -> torch.Tensor:
        """Normalised model inputs of images ``idx`` of ``split``."""
        u8 = self.pre.to_device(np.ascontiguousarray(self.dataset.splits[split].images[np.asarray(idx)]), self.device)
        return self.pre(u8)

    def pixels(self, x: torch.Tensor) -> np.ndarray:
        """Model inputs back to displayable RGB in [0, 1] (B,S,S,3): what the model saw."""
        mean = torch.tensor(self.pre.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pre.std, device=x.device).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).detach().cpu().numpy().astype(np.float32)

    @property
    def run_precision(self) -> str:
        """What the run computed in (its record; fp32 for runs before precision was recorded)."""
        return str((self.meta.get("preprocess") or {}).get("precision") or "fp32")

    @property
    def precision(self) -> str:
        """What the rebuilt model's scores are computed in here: the run's precision where this
        device has it (as ``bench run``: CPU stays fp32; a bf16 run on a GPU without bf16: fp32)."""
        from ..features import precision

        try:
            return precision(self.device, self.run_precision)
        except UserError:
            if self.run_id not in _TOLD_FP32:
                _TOLD_FP32.add(self.run_id)
                log(f"bench explain: {self.run_id} ran in {self.run_precision}, which {self.device} lacks; "
                    f"its scores are recomputed in fp32")
            return "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast, so the rebuilt scores are computed as the run's were."""
        from ..features import autocast

        return autocast(self.device, self.precision)

    @torch.no_grad()
    def scores(self, split: str, idx: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (label scores for multi-label) of the rebuilt model."""
        from ..heads import scores_from_logits

        idx = np.arange(len(self.dataset.splits[split])) if idx is None else np.asarray(idx)
        out = []
        for i in range(0, len(idx), batch_size):
            with self.autocast():
                logits = self.net(self.inputs(split, idx[i:i + batch_size]))
            out.append(scores_from_logits(self.task, logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dataset.n_outputs), np.float32)

    def describe(self) -> str:
        """The run as the report and the CLI name it (bench.labels)."""
        return run_label(self.cfg)


class Net(nn.Module):
    """images -> stem -> blocks -> readout (or tokens) -> head, the run's forward (bench.train's
    Trainable); the input is made to require grad so Grad-CAM's hooks see gradients while every
    parameter stays frozen."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        from ..train import Trainable

        self.inner = Trainable(backbone, 0, head, with_stem=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        return self.inner(x)


def backbone_trained(cfg: RunConfig, meta: dict) -> bool:
    """Did the run change its backbone? (runs before this was recorded: from their config)"""
    if "backbone_trained" in meta:
        return bool(meta["backbone_trained"])
    return cfg.unfreeze != "none" or cfg.frozen_mode == "train"


def rebuild(store: ResultStore, run_id: str, opts: RunOptions) -> Rebuilt:
    """The run's model rebuilt from its saved config and files (UserError when it cannot be)."""
    from .. import datasets
    from ..assemble import build_backbone, pick_device

    meta = store.read_meta(run_id)
    if "config" not in meta:
        raise UserError(f"run {run_id} has no provenance ({store.path('meta', run_id)}); it cannot be rebuilt")
    cfg = RunConfig.from_dict(meta["config"])
    _check_explainable(run_id, cfg, opts)
    head_file, backbone_file = store.model_path(run_id, "head"), store.model_path(run_id, "backbone")
    trained = backbone_trained(cfg, meta)
    _check_saved(run_id, cfg, meta, trained, head_file, backbone_file, opts)
    device = pick_device(opts.device)
    ds = datasets.load(cfg.dataset, cfg.size, datasets.load_options(cfg, opts)).validate()
    if cfg.data_fingerprint and cfg.data_fingerprint != ds.fingerprint:
        raise UserError(f"run {run_id}: {cfg.dataset} is not the data it ran on (fingerprint {ds.fingerprint[:12]}, "
                        f"the run's {cfg.data_fingerprint[:12]}); point --data-root at that data")
    backbone = build_backbone(cfg, weights=str(backbone_file) if trained else None, opts=opts)
    head = load_head(cfg, backbone, ds.n_outputs, head_file)
    backbone.eval().to(device)
    head.eval().to(device)
    for p in list(backbone.parameters()) + list(head.parameters()):
        p.requires_grad_(False)
    pre = preprocess.for_run(cfg, backbone, ds, Path(opts.cache_dir or default_cache_dir()))
    return Rebuilt(run_id, cfg, meta, backbone, head, Net(backbone, head).eval().to(device), ds, pre, device)


def _check_explainable(run_id: str, cfg: RunConfig, opts: RunOptions | None = None) -> None:
    """Runs whose decision no saved head explains: one line saying why and what to run instead."""
    if getattr(cfg, "layers", ""):
        # checked before kNN: the suggestion must drop --layers whatever the head
        plain = cfg.replace(layers="", head="linear", knn_k=None, knn_metric=None, knn_vote=None)
        raise UserError(f"run {run_id} is a layer-wise probe (--layers {cfg.layers}): its heads read inner blocks' "
                        f"features, not the model's output, so none is saved; explain the ordinary linear probe "
                        f"(the last layer, from the same cached features): {rerun_command(plain, opts=opts)}")
    if cfg.head == "knn":
        raise UserError(f"run {run_id} is a kNN probe: its decision is a vote of train images, with no head to take "
                        f"gradients through; explain a --head linear run of the same backbone: "
                        f"{rerun_command(cfg.replace(head='linear', knn_k=None, knn_metric=None, knn_vote=None), opts=opts)}")
    if cfg.weights == "instance":
        raise UserError(f"run {run_id} ran a model instance passed to bench.api.run; its weights are not on disk, "
                        f"so explain cannot rebuild it (run it with --weights FILE, or --save-model)")


def _check_saved(run_id: str, cfg: RunConfig, meta: dict, trained: bool, head_file: Path,
                 backbone_file: Path, opts: RunOptions | None = None) -> None:
    """The files a rebuild reads are there, and the starting weights are the run's."""
    if trained and not backbone_file.exists():
        why = f"--unfreeze {cfg.unfreeze}" if cfg.unfreeze != "none" else f"--frozen-mode {cfg.frozen_mode}"
        raise UserError(f"run {run_id} trained its backbone ({why}) and did not save it; rerun it with --save-model: "
                        f"{rerun_command(cfg, '--save-model', '--force', opts=opts)}")
    if not head_file.exists() and meta.get("protocol") not in HEAD_SAVING:
        raise UserError(f"run {run_id} ran protocol {meta.get('protocol')!r}, which saves no head to rebuild; "
                        f"bench explain takes runs of {', '.join(HEAD_SAVING)}")
    if not head_file.exists():
        raise UserError(f"run {run_id} has no saved head ({head_file}; runs made before heads were saved with "
                        f"them); rerun it: {rerun_command(cfg, '--force', opts=opts)}")
    if cfg.weights_fingerprint and not trained:  # the run started from a weights file: still the same?
        from backbones.hub import file_fingerprint

        if not Path(cfg.weights).is_file() or file_fingerprint(cfg.weights) != cfg.weights_fingerprint:
            raise UserError(f"run {run_id} started from {cfg.weights}, which is gone or has changed since; "
                            f"put that file back to explain the run")


def load_head(cfg: RunConfig, backbone: Backbone, n_out: int, path: Path) -> nn.Module:
    """The run's saved head (a probe's or a trained one), checked: damaged, ill-fitting or
    non-finite weights are one line saying to rerun the run (bench explain, bench robust)."""
    from safetensors.torch import load_file

    from ..heads import ProbeHead
    from ..train import build_head

    head = ProbeHead(backbone.embed_dim, n_out) if cfg.is_probe else build_head(cfg, backbone, n_out, pretrained=False)
    try:
        state = load_file(str(path))
    except Exception as e:  # truncated or overwritten: safetensors raises its own SafetensorError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is damaged ({first}); rerun the run with --force to save its head again") from None
    try:
        head.load_state_dict(state)
    except (RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not fit the head of this run ({first}); rerun it with --force") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:  # NaN/inf weights would draw blank heatmaps, not fail
        raise UserError(f"{path} holds non-finite values ({', '.join(bad[:3])}); rerun the run with --force")
    return head
