"""A finished run's selected model as a function of test images, without retraining: what `bench
robust` scores shifted test images with.

Three ways, by what the run trained:

``features``  the backbone stayed frozen and a head reads its pooled features (linear probe, kNN,
              layer-wise probe at its selected layer, zero-shot and zero-shot-init heads): the
              shifted images' features go through the feature cache under a key of their own (the
              run's feature key with the images' identity in place of the dataset's), so every run of
              that backbone on those images (seeds, linear and kNN) extracts them once; then the saved
              head (models/<run_id>/head.safetensors), or for kNN the cached train features.
``prefix``    the backbone stayed frozen under a trained head (the DeiT head on frozen tokens, an MLP
              head, an online linear probe): the frozen stem + blocks are cached as the run cached
              them (``prefix:L``), then the saved head runs on them as the run's test pass did.
``model``     the run trained its backbone (--unfreeze lastN|all, LoRA, BitFit, --frozen-mode train):
              the backbone it saved with --save-model and its head, on the images. Without that file:
              one line saying how to get it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..context import RunContext
from ..errors import UserError
from ..explain.model import backbone_trained, load_head, rerun_command
from ..results import ResultStore
from ..run_config import RunConfig, RunOptions

SCORE_TOLERANCE = 1e-4  # rebuilt vs saved clean test scores (fp32; autocast runs differ more)
CHECK_IMAGES = 32       # clean test images the rebuilt model is checked on


@dataclass
class Scorer:
    """Images -> class scores (N, C) as the run's selected model gives them."""

    run_id: str
    cfg: RunConfig
    meta: dict
    ctx: RunContext           # the run's config, data, backbone, preprocessing, device and feature cache
    way: str                  # features | prefix | model
    what: str = ""            # the feature-cache entry kind (features and prefix ways)
    frozen: Callable | None = None        # normalised images -> features / frozen prefix output
    head: Callable | None = None          # features (numpy) -> scores (features way)
    net: torch.nn.Module | None = None    # prefix output or normalised images -> logits
    image_passes: int = 0                 # shifted images run through the backbone (cache hits: none)
    timings: dict = field(default_factory=dict)

    @property
    def dataset(self):
        return self.ctx.source or self.ctx.dataset

    def feature_key(self, images_id: str, shift: dict) -> dict:
        """The feature-cache key of shifted test images: the run's own key of its test split with
        the images' identity in place of the dataset's, and what the shift was."""
        parts = self.ctx.feature_parts("test", self.what)
        extra = {"shift": shift}
        if self.cfg.normalize == "dataset":  # normalised with the run's train statistics, not the images' own
            extra["normalized_by"] = self.dataset.fingerprint
        return {**parts, "dataset_md5": images_id, **extra}

    def scores(self, images: np.ndarray, images_id: str, shift: dict, desc: str = "shifted test") -> np.ndarray:
        """Scores of ``images`` (uint8, the run's size), cached by ``images_id`` where the way allows."""
        import time

        t0 = time.perf_counter()
        if self.way == "model":
            out = self._net_scores(images, from_images=True)
            self.timings["forward_s"] = self.timings.get("forward_s", 0.0) + time.perf_counter() - t0
        else:
            from ..features import extract

            opts, ctx = self.ctx.opts, self.ctx
            budget = None
            if self.way == "prefix":
                from ..train import PREFIX_MEMORY_BYTES

                budget = PREFIX_MEMORY_BYTES

            def compute() -> np.ndarray:
                self.image_passes += len(images)
                t = time.perf_counter()
                out = extract(ctx.frozen_fn(self.frozen), images, ctx.pre, ctx.device, opts.extract_batch_size,
                              desc, opts.quiet, self.cfg.precision)
                self.timings["extract_s"] = self.timings.get("extract_s", 0.0) + time.perf_counter() - t
                return out

            feats, _ = ctx.cache.get_or_compute(self.feature_key(images_id, shift), compute, memory_budget=budget,
                                                rows=len(images))
            out = self.head(feats) if self.way == "features" else self._net_scores(feats, from_images=False)
        self.timings["score_s"] = self.timings.get("score_s", 0.0) + time.perf_counter() - t0
        return out

    def direct(self, images: np.ndarray) -> np.ndarray:
        """Scores of ``images`` computed now, never from or into the cache (the rebuild check; not
        counted in ``image_passes``)."""
        if self.way == "model":
            counted = self.image_passes
            out = self._net_scores(images, from_images=True)
            self.image_passes = counted
            return out
        from ..features import extract

        ctx = self.ctx
        feats = extract(ctx.frozen_fn(self.frozen), images, ctx.pre, ctx.device, ctx.opts.extract_batch_size,
                        "check", True, self.cfg.precision)
        return self.head(feats) if self.way == "features" else self._net_scores(feats, from_images=False)

    @torch.no_grad()
    def _net_scores(self, x: np.ndarray, from_images: bool) -> np.ndarray:
        """The trained head (and, from images, the backbone) in batches as the run's test pass ran:
        its batch size, under its autocast."""
        from .. import datapath
        from ..features import autocast
        from ..heads import scores_from_logits

        ctx, task = self.ctx, self.dataset.task
        out = []
        if from_images:
            self.image_passes += len(x)
        for _, xb in datapath.batches_of(x, datapath.sequential(len(x), self.cfg.batch_size), ctx.device):
            if from_images:
                xb = ctx.pre(ctx.pre.layout(xb))
            with autocast(ctx.device, self.cfg.precision):
                logits = self.net(xb).float()
            out.append(scores_from_logits(task, logits).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dataset.n_outputs), np.float32)


def open_scorer(store: ResultStore, run_id: str, opts: RunOptions) -> Scorer:
    """The run's model rebuilt for scoring (UserError in one line when it cannot be)."""
    from .. import datasets, execution, preprocess, subsets
    from ..assemble import build_backbone, pick_device
    from ..cache import FeatureCache
    from ..env import default_cache_dir

    meta = store.read_meta(run_id)
    if "config" not in meta:
        raise UserError(f"run {run_id} has no provenance ({store.path('meta', run_id)}); it cannot be scored again")
    cfg = RunConfig.from_dict(meta["config"])
    if cfg.weights == "instance":
        raise UserError(f"run {run_id} ran a model instance passed to bench.api.run; its weights are not on disk, so "
                        f"bench robust cannot rebuild it (run it with --weights FILE and --save-model)")
    trained = backbone_trained(cfg, meta)
    way = "model" if trained else ("features" if cfg.is_probe else "prefix")
    head_file, backbone_file = store.model_path(run_id, "head"), store.model_path(run_id, "backbone")
    if trained and not backbone_file.exists():
        why = f"--unfreeze {cfg.unfreeze}" if cfg.unfreeze != "none" else f"--frozen-mode {cfg.frozen_mode}"
        raise UserError(f"run {run_id} trained its backbone ({why}) and did not save it; rerun it with --save-model: "
                        f"{rerun_command(cfg, '--save-model', '--force', opts=opts)}")
    if _needs_head(cfg, meta) and not head_file.exists():
        raise UserError(f"run {run_id} has no saved head ({head_file}; runs made before heads were saved with them); "
                        f"rerun it: {rerun_command(cfg, '--force', opts=opts)}")
    if cfg.weights_fingerprint and not trained:
        from backbones.hub import file_fingerprint

        if not Path(cfg.weights).is_file() or file_fingerprint(cfg.weights) != cfg.weights_fingerprint:
            raise UserError(f"run {run_id} started from {cfg.weights}, which is gone or has changed since; put that "
                            f"file back to score the run again")
    device = pick_device(opts.device)
    cache_dir = Path(opts.cache_dir or default_cache_dir())
    ds = datasets.load(cfg.dataset, cfg.size, datasets.load_options(cfg, opts)).validate()
    if cfg.data_fingerprint and cfg.data_fingerprint != ds.fingerprint:
        raise UserError(f"run {run_id}: {cfg.dataset} is not the data it ran on (fingerprint {ds.fingerprint[:12]}, "
                        f"the run's {cfg.data_fingerprint[:12]}); point --data-root at that data")
    model = build_backbone(cfg, weights=str(backbone_file) if trained else None, opts=opts)
    execution.prepare(model.eval().to(device), opts.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    pre = preprocess.for_run(cfg, model, ds, cache_dir)
    trained_on, subset = subsets.apply(cfg, ds)
    ctx = RunContext(cfg, opts, trained_on, model, pre, device, FeatureCache(cache_dir),
                     source=ds if subset is not None else None, train_subset=subset)
    scorer = Scorer(run_id, cfg, meta, ctx, way)
    if way == "features":
        _features_way(scorer, head_file)
    else:
        head = load_head(cfg, model, ds.n_outputs, head_file).eval().to(device)
        from ..train import Trainable

        k = 0 if trained else model.num_blocks
        scorer.net = Trainable(model, k, head, with_stem=trained).eval().to(device)
        if way == "prefix":
            scorer.what = f"prefix:{k}"  # the run's own cache entry kind for its frozen stem + blocks
            scorer.frozen = lambda x: model.run_blocks(model.stem(x), 0, k)
    return scorer


def _needs_head(cfg: RunConfig, meta: dict) -> bool:
    """kNN and zero-shot runs have no head file: the train features, the prompts are their head."""
    return cfg.head not in ("knn", "zeroshot")


def _features_way(scorer: Scorer, head_file: Path) -> None:
    """The frozen function and the head of a run on frozen features (probe, kNN, layers, zero-shot)."""
    cfg, ctx, meta = scorer.cfg, scorer.ctx, scorer.meta
    model, ds = ctx.model, scorer.dataset
    layer = (meta.get("selected") or {}).get("layer") if cfg.layers else None
    if cfg.layers and layer is None:
        raise UserError(f"run {scorer.run_id} is a layer-wise probe without a recorded selected layer; rerun it with "
                        f"--force")
    if layer is not None:
        from ..protocols.layers import after_blocks, layer_what

        scorer.what = layer_what(int(layer), model.num_blocks)
        inner = after_blocks(model, [int(layer)])
        scorer.frozen = lambda x: inner(x)[0]
    else:
        scorer.what, scorer.frozen = "readout", model
    if cfg.head == "knn":
        scorer.head = _knn_head(scorer)
    elif cfg.head == "zeroshot":
        from ..protocols.zeroshot import zero_shot_classifier

        clf = zero_shot_classifier(ctx)[0]
        scorer.head = clf.scores
    elif getattr(cfg, "init", "none") == "zeroshot":
        scorer.head = _normalised_linear(head_file, ds.multilabel)
    else:
        scorer.head = _probe_head(scorer, head_file)


def _probe_head(scorer: Scorer, head_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The selected linear probe (weight, bias, feature mean and std) as the run scored its test split."""
    from ..heads import ProbeHead, scores_from_logits

    ctx, ds = scorer.ctx, scorer.dataset
    state = _load_state(head_file)
    dim = state["weight"].shape[0]
    head = ProbeHead(dim, ds.n_outputs)
    _fit(head, state, head_file)
    head = head.to(ctx.device)

    def fn(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scores_from_logits(ds.task, head(torch.from_numpy(np.asarray(feats)).to(ctx.device))).cpu().numpy()

    return fn


def _normalised_linear(head_file: Path, multilabel: bool) -> Callable[[np.ndarray], np.ndarray]:
    """--init zeroshot heads: a linear layer on L2-normalised features (bench.zeroshot's scores)."""
    import torch.nn.functional as F

    state = _load_state(head_file)
    w, b = state["weight"].float(), state["bias"].float()

    def fn(feats: np.ndarray) -> np.ndarray:
        f = F.normalize(torch.as_tensor(np.asarray(feats), dtype=torch.float32), dim=-1)
        with torch.no_grad():
            logits = f @ w.t() + b
            return (logits.sigmoid() if multilabel else logits.softmax(-1)).numpy()

    return fn


def _knn_head(scorer: Scorer) -> Callable[[np.ndarray], np.ndarray]:
    """The vote of the run's train images (their cached features at the run's layer), with the k the
    run used (recorded; cut to the smallest class where the run cut it)."""
    from ..heads import knn_scores

    cfg, ctx, ds = scorer.cfg, scorer.ctx, scorer.dataset
    k = int((scorer.meta.get("selected") or {}).get("k") or cfg.knn_k)
    with ctx.timings("features_train"):
        train, _ = ctx.frozen_pass("train", scorer.frozen, what=scorer.what)
    y_train = ctx.dataset.splits["train"].labels  # the rows the run voted with (a train subset's)

    def fn(feats: np.ndarray) -> np.ndarray:
        return knn_scores(train, y_train, np.asarray(feats), ds.task, ds.n_outputs, k, ctx.device,
                          metric=cfg.knn_metric, vote=cfg.knn_vote)

    return fn


def _load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # truncated or overwritten: safetensors raises its own SafetensorError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is damaged ({first}); rerun the run with --force to save its head again") from None


def _fit(head: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        head.load_state_dict(state)
    except (RuntimeError, OSError) as e:
        raise UserError(f"{path} does not fit the head of this run ({str(e).strip().splitlines()[0]}); rerun it "
                        f"with --force") from None
