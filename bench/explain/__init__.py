"""`bench explain`: why a finished run decided as it did.

For each run: the model rebuilt from the run's saved config, head and (fine-tuned runs) backbone
(:mod:`.model`); images chosen per class (:mod:`.select`); heatmaps from pytorch-grad-cam or
attention rollout on the layers the backbone adapter names (:mod:`.cams`); PNG sheets
(:mod:`.draw`). Outputs go to ``<results>/explain/<run_id>/`` (several runs: also
``<results>/explain/compare/``), each PNG with a JSON record beside it (what was shown, the chosen
indices, how well the rebuilt model reproduced the run's saved test scores); `bench report` shows
them in its "Explanations" section.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..run_config import RunOptions
from ..progress import log
from ..labels import RANDOM_INIT_NOTE, is_random
from ..errors import UserError, did_you_mean
from ..fsio import atomic_write_bytes, atomic_write_text
from ..env import now
from ..results import ResultStore
from . import draw
from .cams import CAM_METHODS, METHODS, check_method, head_blocks, heatmaps, layer_names, native_grid
from .model import Rebuilt, rebuild, resolve_run_id
from .select import Pick, choose, parse_classes

TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "eigencam": "Eigen-CAM",
          "rollout": "attention rollout"}
FEATURE_COLUMNS = 12   # stages shown by --feature-maps (evenly spaced, the last always)
FEATURE_IMAGES = 4
BATCH = 8
CLASS_AGNOSTIC = ("rollout", "eigencam")  # the same map whatever class is targeted
SCORE_TOLERANCE = 1e-3  # rebuilt vs saved test scores (fp32 runs; autocast runs differ more)


@dataclass
class Request:
    run_ids: list[str]
    method: str = "gradcam"
    split: str = "test"
    images: int | None = None        # None: the three picks per class
    classes: list[str] | None = None
    seed: int = 0
    filters: bool = False
    feature_maps: bool = False
    written: list[Path] = field(default_factory=list)


def explain(req: Request, opts: RunOptions) -> list[Path]:
    """Write the sheets ``req`` asks for; returns the PNG paths (UserError on bad input)."""
    from ..datasets import SPLITS

    if req.method not in METHODS:
        raise UserError(f"unknown --method {req.method!r}; {did_you_mean(req.method, METHODS)}")
    if req.split not in SPLITS:
        raise UserError(f"unknown --split {req.split!r}; {did_you_mean(req.split, SPLITS)}")
    if req.images is not None and req.images < 1:
        raise UserError(f"--images {req.images}: at least 1")
    store = ResultStore(opts.results_dir)
    ids = list(dict.fromkeys(resolve_run_id(store, r) for r in req.run_ids))
    out = store.root / "explain"
    first: tuple[Rebuilt, list[Pick]] | None = None
    compare: list[dict] = []
    for run_id in ids:
        rb = rebuild(store, run_id, opts)
        check_method(req.method, rb)
        if first is not None:
            _same_images(first[0], rb)
        picks = _picks(rb, store, req, opts)
        path, got = _cam_sheet(rb, picks, req, out / run_id)
        req.written.append(path)
        if req.filters:
            req.written.append(_filters(rb, out / run_id))
        if req.feature_maps:
            req.written.append(_feature_maps(rb, picks[:FEATURE_IMAGES], req.split, out / run_id))
        if len(ids) > 1:  # every run on the first run's picks
            compare.append(got if first is None else _explain_other(rb, store, first[1], req))
        if first is None:
            first = (rb, picks)
        else:
            del rb  # one model in memory at a time
    if len(ids) > 1:
        req.written.append(_compare_sheet(first[0], first[1], compare, req, out / "compare", ids))
    return req.written


def _same_images(a: Rebuilt, b: Rebuilt) -> None:
    keys = ("dataset", "size", "limit", "data_fingerprint")
    da, db = ({k: getattr(r.cfg, k) for k in keys} for r in (a, b))
    if da != db:
        diff = ", ".join(f"{k} {da[k]!r} vs {db[k]!r}" for k in keys if da[k] != db[k])
        raise UserError(f"runs {a.run_id} and {b.run_id} did not see the same images ({diff}); a comparison "
                        f"needs runs on one dataset, size and --limit")


def _saved_scores(rb: Rebuilt, store: ResultStore, split: str) -> np.ndarray | None:
    """The scores the run saved for ``split`` (its test split only), if they fit the data."""
    saved = store.read_scores(rb.run_id) if split == "test" else None
    return saved[1] if saved is not None and len(saved[1]) == len(rb.dataset.splits[split]) else None


def _picks(rb: Rebuilt, store: ResultStore, req: Request, opts: RunOptions) -> list[Pick]:
    split = rb.dataset.splits[req.split]
    saved = _saved_scores(rb, store, req.split)
    if saved is not None:
        scores = saved  # the run's own test scores: no pass over the split
        rb.picked_from_saved = True
    else:
        log(f"{rb.run_id}: scoring {len(split)} {req.split} images to choose from", opts.quiet)
        scores = rb.scores(req.split)
    classes = parse_classes(req.classes, rb.label_names)
    picks = choose(scores, split.labels, classes, req.images, req.seed, rb.dataset.multilabel)
    if not picks:
        raise UserError(f"no {req.split} image of class(es) {', '.join(rb.label_names[c] for c in classes)} "
                        f"in run {rb.run_id}")
    return picks


def _explain_picks(rb: Rebuilt, picks: list[Pick], req: Request, targets: list[int]) -> dict:
    """Heatmaps of ``picks``, each for its class in ``targets`` (the class its caption names), and
    the rebuilt model's scores of them (checked against the run's saved scores)."""
    idx = np.array([p.index for p in picks])
    now_scores = rb.scores(req.split, idx)
    maps, pixels = [], []
    for i in range(0, len(idx), BATCH):
        x = rb.inputs(req.split, idx[i:i + BATCH])
        maps.append(heatmaps(rb, x, targets[i:i + BATCH], req.method))
        pixels.append(rb.pixels(x))
    pixels_all = np.concatenate(pixels)
    if all(float(np.ptp(m)) == 0.0 for batch in maps for m in batch):
        log(f"{rb.run_id}: every {req.method} heatmap is uniform; at input size {rb.cfg.input_size or rb.dataset.size} "
            f"the target layer's map may be a single value (a run at a larger --input-size gives a finer map)")
    overlays = [draw.overlay(p, m) for p, m in zip(pixels_all, np.concatenate(maps))]
    grid, side = native_grid(rb, x), pixels_all.shape[-2]
    native = f"{grid[0]}x{grid[1]} map, upsampled to {side} px" if grid != (side, side) else f"{side}x{side} map"
    return {"run_id": rb.run_id, "title": f"{rb.describe()} ({native})\n{rb.run_id}", "overlays": overlays,
            "heatmaps": np.concatenate(maps), "scores": now_scores, "targets": list(targets), "grid": native}


def _explain_own(rb: Rebuilt, picks: list[Pick], req: Request) -> dict:
    """The run's own sheet: each heatmap for the class its pick names (the saved prediction)."""
    got = _explain_picks(rb, picks, req, [p.target for p in picks])
    got["captions"] = [f"{draw._short(rb.label_names[p.target], 20)} {p.target_score:.2f}" for p in picks]
    got["prediction"] = [p.prediction for p in picks]
    return got


def _explain_other(rb: Rebuilt, store: ResultStore, picks: list[Pick], req: Request) -> dict:
    """Another run on the first run's picks: heatmaps for this run's own prediction (multi-label:
    the label each image was picked for), prediction and score from its saved scores where it
    saved them for the split, else from the rebuilt model."""
    idx = np.array([p.index for p in picks])
    saved = _saved_scores(rb, store, req.split)
    scores = saved[idx] if saved is not None else rb.scores(req.split, idx)
    targets = [p.label for p in picks] if rb.dataset.multilabel else scores.argmax(1).tolist()
    got = _explain_picks(rb, picks, req, targets)
    got["captions"] = [f"{draw._short(rb.label_names[t], 20)} {s[t]:.2f}" for t, s in zip(targets, scores)]
    got["prediction"] = scores.argmax(1)
    return got


def _score_check(rb: Rebuilt, picks: list[Pick], scores_now: np.ndarray, from_saved: bool) -> dict:
    """The rebuilt model against the scores the run saved (its test split): the same model?"""
    if not from_saved:
        return {"checked": 0, "note": "the run saved scores of its test split only"}
    saved = np.array([p.score for p in picks])
    now_pred = scores_now[np.arange(len(picks)), [p.prediction for p in picks]]
    diff = float(np.abs(saved - now_pred).max()) if len(picks) else 0.0
    return {"checked": len(picks), "max_abs_diff": diff, "precision": rb.run_precision,
            "rebuilt_precision": rb.precision}


def _originals(rb: Rebuilt, split: str, picks: list[Pick]) -> list[np.ndarray]:
    return [np.asarray(rb.dataset.splits[split].images[p.index]) for p in picks]


def _caption(rb: Rebuilt, p: Pick) -> str:
    """What the pick is; it names the class its heatmap explains (``Pick.target``) with its score."""
    names = rb.label_names
    if rb.dataset.multilabel:  # the label it was picked for, its score, and the top label where another
        top = "" if p.prediction == p.target else f" · top {draw._short(names[p.prediction], 10)}"
        return (f"#{p.index} {p.kind}\nlabel: {draw._short(names[p.target], 18)}\n"
                f"score {p.target_score:.2f}{top}")
    mark = "" if p.correct else " ✗"
    return (f"#{p.index} {p.kind}\ntrue: {draw._short(names[p.label], 18)}\n"
            f"pred: {draw._short(names[p.target], 14)} {p.target_score:.2f}{mark}")


def _explained(rb: Rebuilt) -> str:
    """Which class each heatmap is for, in words."""
    return "the label each image was picked for" if rb.dataset.multilabel else "the predicted class"


def _write(folder: Path, stem: str, png: bytes, record: dict) -> Path:
    path = folder / f"{stem}.png"
    atomic_write_bytes(path, png, "explain sheet")
    atomic_write_text(folder / f"{stem}.json", json.dumps({**record, "png": path.name, "created": now()},
                                                         indent=1, default=str), "explain record")
    return path


def _cam_sheet(rb: Rebuilt, picks: list[Pick], req: Request, folder: Path) -> tuple[Path, dict]:
    got = _explain_own(rb, picks, req)
    check = _score_check(rb, picks, got["scores"], rb.picked_from_saved)
    if check.get("max_abs_diff", 0.0) > SCORE_TOLERANCE and check["rebuilt_precision"] == check["precision"] == "fp32":
        log(f"{rb.run_id}: the rebuilt model's scores differ from the run's by up to {check['max_abs_diff']:.2g}")
    layers = layer_names(rb) if req.method in CAM_METHODS else \
        ["attention of every block" + (" and of the head's blocks" if head_blocks(rb) else "")]
    title = (f"{TITLES[req.method]} · {rb.describe()} · {rb.cfg.dataset} {req.split} · {rb.run_id}\n"
             + ("left: image · right: heatmap on the model input (class-agnostic)" if req.method in CLASS_AGNOSTIC else
                f"left: image · right: heatmap of {_explained(rb)} on the model input (layer {', '.join(layers)})")
             + f" · {got['grid']}")
    png = draw.run_sheet(title, _originals(rb, req.split, picks), got["overlays"], [_caption(rb, p) for p in picks])
    caption = (f"{TITLES[req.method]} of {rb.describe()} on {len(picks)} {rb.cfg.dataset} {req.split} images: per class "
               f"the most confident correct, most confident wrong and least confident prediction (seed {req.seed}); "
               f"indices {', '.join(str(p.index) for p in picks)}.")
    path = _write(folder, f"{req.method}-{req.split}", png, {
        "kind": "cam", "runs": [rb.run_id], "method": req.method, "split": req.split, "seed": req.seed,
        "classes": req.classes, "images": req.images, "target_layers": layers, "title": title, "caption": caption,
        "indices": [p.index for p in picks], "picks": [p.record() for p in picks], "targets": got["targets"],
        "score_check": check})
    return path, got


def _compare_sheet(rb0: Rebuilt, picks: list[Pick], runs: list[dict], req: Request, folder: Path,
                   ids: list[str]) -> Path:
    names = rb0.label_names
    rows = [f"#{p.index} true: {draw._short(names[p.label], 16)}\n({p.kind})" for p in picks]
    title = (f"{TITLES[req.method]} · {rb0.cfg.dataset} {req.split} · the same images for {len(runs)} runs "
             f"(chosen by the first run's predictions) · "
             + ("class-agnostic heatmaps" if req.method in CLASS_AGNOSTIC else
                "each heatmap for " + ("the label each image was picked for" if rb0.dataset.multilabel
                                       else "that run's predicted class")))
    png = draw.compare_sheet(title, _originals(rb0, req.split, picks), rows, [r["title"] for r in runs],
                             [r["overlays"] for r in runs], [r["captions"] for r in runs])
    digest = hashlib.sha256(" ".join(ids).encode()).hexdigest()[:8]
    caption = (f"{TITLES[req.method]} of {len(runs)} runs on the same {len(picks)} {rb0.cfg.dataset} {req.split} "
               f"images (indices {', '.join(str(p.index) for p in picks)}, chosen from {ids[0]}).")
    return _write(folder, f"{req.method}-{req.split}-{digest}", png, {
        "kind": "compare", "runs": ids, "method": req.method, "split": req.split, "seed": req.seed,
        "title": title, "caption": caption, "indices": [p.index for p in picks],
        "predictions": {r["run_id"]: [int(t) for t in r["prediction"]] for r in runs},
        "targets": {r["run_id"]: [int(t) for t in r["targets"]] for r in runs}})


def _filters(rb: Rebuilt, folder: Path) -> Path:
    conv = rb.backbone.first_conv()
    if conv is None:
        raise UserError(f"--filters: {rb.cfg.backbone} has no convolution before its blocks to show")
    name = next(n for n, m in rb.backbone.named_modules() if m is conv)
    w = conv.weight.detach().float().cpu().numpy()
    title = (f"first-layer filters · {rb.describe()} · {name}: {w.shape[0]} filters of {w.shape[1]}x{w.shape[2]}x"
             f"{w.shape[3]}{' (first 64)' if w.shape[0] > 64 else ''}, each scaled to its own range")
    png = draw.filter_sheet(title, w)
    return _write(folder, "filters", png, {"kind": "filters", "runs": [rb.run_id], "layer": name,
                                           "shape": list(w.shape), "title": title, "caption": title})


def stage_outputs(rb: Rebuilt, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, (B, C, H, W) map) after the stem and after every block, through the contract."""
    bb = rb.backbone
    with torch.no_grad():
        h = bb.stem(x)
        out = [("stem", bb.feature_map(h))]
        for i, block in enumerate(bb.blocks):
            h = block(h)
            out.append((f"block {i + 1}", bb.feature_map(h)))
    return out


def _feature_maps(rb: Rebuilt, picks: list[Pick], split: str, folder: Path) -> Path:
    idx = np.array([p.index for p in picks])
    stages = stage_outputs(rb, rb.inputs(split, idx))
    keep = sorted(set(np.linspace(0, len(stages) - 1, min(FEATURE_COLUMNS, len(stages))).round().astype(int)))
    names = [stages[k][0] for k in keep]
    maps = [[stages[k][1][i].float().mean(0).cpu().numpy() for k in keep] for i in range(len(idx))]
    title = (f"mean activation after each stage · {rb.describe()} · {rb.cfg.dataset} {split} · {rb.run_id}"
             + (f" ({len(keep)} of {len(stages)} shown)" if len(keep) < len(stages) else ""))
    if is_random(rb.cfg):  # identical stages of a random init are the init's, not the model's
        title += ("\nrandom init: timm's zero-initialised last BatchNorm makes ResNet blocks without a downsampling "
                  "shortcut identities, so their maps repeat")
    png = draw.feature_sheet(title, _originals(rb, split, picks), names, maps)
    return _write(folder, f"feature-maps-{split}", png, {
        "kind": "feature-maps", "runs": [rb.run_id], "split": split, "indices": idx.tolist(), "stages": names,
        "title": title, "caption": f"Channel-mean activation after the stem and blocks of {rb.describe()} "
                                   f"for {rb.cfg.dataset} {split} images {', '.join(map(str, idx.tolist()))}."
                                   + (f" {RANDOM_INIT_NOTE}" if is_random(rb.cfg) else "")})


__all__ = ["Request", "explain", "rebuild", "heatmaps", "stage_outputs", "METHODS"]
