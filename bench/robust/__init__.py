"""`bench robust`: a finished run scored under shift, without retraining.

For each run: its selected model rebuilt from what it saved (:mod:`.scorer`), the cells of the shift
(:mod:`.shifts`: MedMNIST-C's corruptions x severities 1-5 of its dataset, or another dataset's test
split with ``--test-dataset``), each cell scored and its scores written as soon as it is done
(:mod:`.files`: a killed pass resumes at the next cell), then the run's rows, one per cell x metric
with the clean row and the drop, rewritten whole (:mod:`.rows`). Only test splits are read, and
nothing is selected on them: the model is the one the run selected on val.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..env import now, versions
from ..errors import UserError
from ..progress import log
from ..results import ResultStore
from ..run_config import RunConfig, RunOptions
from .files import CLEAN, Cell, RobustStore, run_stamp
from .rows import cell_metrics, rows_for

__all__ = ["Request", "robust", "RobustStore", "Cell"]


@dataclass
class Request:
    run_ids: list[str]
    test_dataset: str | None = None          # another dataset's test split instead of the corruptions
    corruptions: list[str] | None = None     # only these corruptions (default: all of the dataset's set)
    modality: str | None = None              # own data: the modality whose generic set is used (default: the run's)
    every: bool = False                      # every finished run of the results folder (--all)
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # --all: run id -> why it was not scored


def robust(req: Request, opts: RunOptions) -> list[Path]:
    """Score every run of ``req`` under its shift; returns the rows files written (UserError on bad
    input). With ``req.every``, every finished run of the folder: one that cannot be scored is said in
    one line and recorded in ``req.failed``, and one another process is scoring is left to it."""
    from ..explain.model import resolve_run_id

    store = ResultStore(opts.results_dir)
    if req.every:
        if req.run_ids:
            raise UserError("--all scores every run of the results folder; give run ids or --all, not both")
        ids = store.run_ids()
        if not ids:
            raise UserError(f"{store.root} has no finished runs (bench run or bench sweep first, or --results-dir)")
    else:
        if not req.run_ids:
            raise UserError("no run to score: give run ids (or unique prefixes), or --all for every run of the folder")
        ids = list(dict.fromkeys(resolve_run_id(store, r) for r in req.run_ids))
    for run_id in ids:
        if not req.every:
            req.written.append(evaluate(store, run_id, req, opts))
            continue
        try:
            got = evaluate(store, run_id, req, opts, wait=False)
        except UserError as e:
            req.failed[run_id] = str(e)
            print(f"bench: robust: {run_id} not scored: {e}", file=sys.stderr, flush=True)
            continue
        if got is not None:
            req.written.append(got)
    return req.written


def _cells(cfg: RunConfig, meta: dict, run_id: str, req: Request) -> list[Cell]:
    from .shifts import corruption_cells, dataset_cells

    if req.test_dataset:
        if req.corruptions:
            raise UserError("--corruptions and --test-dataset: one shift at a time (the corruptions of the run's own "
                            "test split, or another dataset's clean test split)")
        return dataset_cells(cfg, req.test_dataset, run_id)
    return corruption_cells(cfg, meta, req.corruptions, req.modality)


def evaluate(store: ResultStore, run_id: str, req: Request, opts: RunOptions, wait: bool = True) -> Path | None:
    """One run: the cells not done yet scored (each written when done), then its rows rewritten.
    ``wait`` False: None at once when another process holds the run (it is scoring it)."""
    from .shifts import code_digest

    meta = store.read_meta(run_id)
    if "config" not in meta:
        raise UserError(f"run {run_id} has no provenance ({store.path('meta', run_id)}); it cannot be scored again")
    cfg = RunConfig.from_dict(meta["config"])
    saved = store.read_scores(run_id)
    if saved is None:
        raise UserError(f"run {run_id} has no saved test scores ({store.path('scores', run_id)}), the clean "
                        f"reference of every drop; rerun it with a current `bench run --force`")
    cells = _cells(cfg, meta, run_id, req)
    rstore = RobustStore(opts.results_dir)
    stamp = {"run": run_stamp(opts.results_dir, run_id), "code": code_digest()}
    store.check_writable()
    lock = store.lock(f"robust-{run_id}")
    from filelock import Timeout

    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        log(f"{run_id}: another process is scoring it; left to that one", opts.quiet)
        return None
    try:
        _drop_stale(rstore, run_id, stamp)
        missing = [c for c in cells if rstore.read_cell(run_id, c) is None]
        record = rstore.read_meta(run_id)
        if missing:
            record = _score(store, rstore, run_id, cfg, saved, missing, cells, req, opts, stamp, record)
        else:
            log(f"{run_id}: every cell already scored ({rstore.root / 'scores' / run_id}); rows rewritten",
                opts.quiet)
        return _write_rows(rstore, run_id, cfg, meta, saved, record, stamp)
    finally:
        lock.release()


def _drop_stale(rstore: RobustStore, run_id: str, stamp: dict) -> None:
    """Cells made for an earlier version of the run, or (corruptions) by other corruption code."""
    stale = [c for c, rec in rstore.cells(run_id) if rec.get("run") != stamp["run"]
             or (c.shift in ("medmnistc", "generic") and rec.get("code") != stamp["code"])]
    for c in stale:
        rstore.drop_cell(run_id, c)
    if stale:
        print(f"bench: robust: {run_id}: {len(stale)} cell(s) made for an earlier version of the run or of the "
              f"corruption code were dropped and are scored again", file=sys.stderr, flush=True)


def _score(store, rstore, run_id, cfg, saved, missing, cells, req, opts, stamp, record) -> dict:
    from .scorer import CHECK_IMAGES, SCORE_TOLERANCE, open_scorer
    from .shifts import corruption_shift, dataset_shift

    t0 = time.perf_counter()
    scorer = open_scorer(store, run_id, opts)
    shift = dataset_shift(scorer, req.test_dataset) if req.test_dataset else corruption_shift(scorer, cells,
                                                                                               req.modality)
    # the rebuilt model against the run's own test scores, on a few clean test images
    n = min(CHECK_IMAGES, len(saved[1]))
    now_scores = scorer.direct(np.asarray(scorer.dataset.splits["test"].images[:n]))
    diff = float(np.abs(now_scores - saved[1][:n]).max()) if n else 0.0
    check = {"images": n, "max_abs_diff": diff, "precision": _precision(scorer)}
    if diff > SCORE_TOLERANCE and check["precision"] == "fp32":
        log(f"warning: {run_id}: the rebuilt model's clean test scores differ from the run's by up to {diff:.2g}")
    log(f"{run_id}: {len(missing)} of {len(cells)} {shift.kind} cell(s) to score ({scorer.way} way)", opts.quiet)
    done_cells = 0
    for cell, images, images_id in shift.produce(missing):
        y_score = scorer.scores(images, images_id, _shift_key(cell), desc=f"{cell.corruption} s{cell.severity}")
        rstore.write_cell(run_id, cell, shift.y_true, y_score,
                          {"shift": cell.shift, "corruption": cell.corruption, "severity": cell.severity,
                           "test_dataset": shift.record.get("dataset", cfg.dataset), **stamp, "created": now()})
        done_cells += 1
    shifts = dict(record.get("shifts") or {})
    shifts[cells[0].folder if shift.kind == "dataset" else shift.kind] = shift.record
    passes = {"cells": done_cells, "shifted_images": scorer.image_passes, "check_images": n}
    timings = {"total_s": round(time.perf_counter() - t0, 3), **{k: round(v, 3) for k, v in shift.timings.items()},
               **{k: round(v, 3) for k, v in scorer.timings.items()}}
    return {**record, "shifts": shifts, "check": check, "last_pass": passes, "timings": timings,
            "way": scorer.way, "device": str(scorer.ctx.device)}


def _precision(scorer) -> str:
    from ..features import precision

    return precision(scorer.ctx.device, scorer.cfg.precision)


def _shift_key(cell: Cell) -> dict:
    """What the shift was, beside the images' identity in the feature key of their features."""
    return {"kind": cell.shift, "corruption": cell.corruption, "severity": cell.severity}


def _write_rows(rstore: RobustStore, run_id: str, cfg: RunConfig, meta: dict, saved, record: dict,
                stamp: dict) -> Path:
    task = meta.get("task") or ""
    clean = cell_metrics(task, saved[0], saved[1])
    got, test_dataset = {}, {}
    for cell, rec in rstore.cells(run_id):
        scores = rstore.read_cell(run_id, cell)
        if scores is None:
            continue
        got[cell] = cell_metrics(task, scores[0], scores[1])
        test_dataset[cell] = str(rec.get("test_dataset") or cfg.dataset)
    order = sorted(got, key=lambda c: (c.shift == "dataset", c.shift, _cell_order(cfg, c, record), c.corruption,
                                       c.severity))
    rows = rows_for(cfg, run_id, clean, {c: got[c] for c in order}, test_dataset)
    record = {**record, "run_id": run_id, "run": stamp["run"], "run_created": meta.get("created"), "code": stamp["code"],
              "cells": len(order), "updated": now(), "versions": versions(),
              "clean": {CLEAN: {k: v for k, v in clean.items() if isinstance(v, float) and math.isfinite(v)}}}
    return rstore.write_rows(run_id, rows, record)


def _cell_order(cfg: RunConfig, cell: Cell, record: dict) -> int:
    """A corruption's place in its set (MedMNIST-C's table order; resize-only first); other cells 0."""
    if cell.shift not in ("medmnistc", "generic"):
        return 0
    from ..shift import medmnistc as C

    names = C.corruptions(cfg.dataset) if cell.shift == "medmnistc" else \
        list(((record.get("shifts") or {}).get("generic") or {}).get("corruptions") or [])
    return names.index(cell.corruption) + 1 if cell.corruption in names else (0 if cell.corruption == "resize-only"
                                                                               else len(names) + 1)
