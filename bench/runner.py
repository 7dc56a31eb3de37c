"""One run, end to end, top-down: the config bound to its data (bench.resolve) -> the run's
context (bench.assemble) -> its protocol -> scores and the result files (bench.results).
Every run goes through ``execute``."""
from __future__ import annotations

import contextlib
import time

from backbones.base import Backbone

from . import assemble, audit, metrics, tracking
from .cache import FeatureCache
from .run_config import RunConfig, RunOptions
from .protocol import ProtocolOutput
from .env import check_settings
from .progress import log
from .resolve import bind_data, definition_versions
from .results import ResultStore, RunResult


def execute(cfg: RunConfig, opts: RunOptions, *, model: Backbone | None = None,
            cache: FeatureCache | None = None, lock: bool = True) -> RunResult:
    """Run ``cfg`` unless its result exists (then read it back; ``opts.force`` reruns).

    ``model``: a backbone built by the caller (a notebook, a test) instead of the registry's;
    its weights must be what ``cfg`` says (bench.api.run fingerprints an instance for the id).
    ``cache``: the feature cache to use (default: ``opts.cache_dir``). ``lock``: hold the run's
    lock while it runs, so two processes never run one id at once (False: the caller holds it)."""
    check_settings()  # a BENCH_* number that is not one: one line now, not a traceback mid-run
    tracking.check_available(opts.log)  # --log with its library missing: one line, before anything runs
    cfg = bind_data(cfg, opts)  # a different file under the same dataset name is a different run
    definitions = definition_versions(cfg)  # recorded with the result: what each definition's version was
    store = ResultStore(opts.results_dir)
    if store.is_done(cfg.run_id) and not opts.force:
        log(f"{cfg.run_id}: already done ({store.csv_path(cfg.run_id)}); --force to rerun", opts.quiet)
        return RunResult.read(store, cfg.run_id)
    store.check_writable()
    protocol = cfg.protocol
    t0 = time.perf_counter()
    # the input is checked (model, data, options against both) before the lock is taken: a refused
    # run leaves nothing in the results folder, not even locks/
    ctx = assemble.open_context(cfg, opts, model, cache)
    if opts.subgroups:  # columns checked against the data's attributes before any compute is spent
        audit.check_subgroups(opts.subgroups, ctx.source or ctx.dataset, cfg, opts)
    with store.lock(cfg.run_id) if lock else contextlib.nullcontext():
        if lock and store.is_done(cfg.run_id) and not opts.force:  # finished by another process meanwhile
            return RunResult.read(store, cfg.run_id)
        store.remove_stale(cfg.run_id)  # we hold the lock: temporaries of this id are from a killed run
        out = protocol.run(ctx)
        ds = ctx.source or ctx.dataset  # the whole dataset, also when a train subset was trained on
        y_val, y_test = ds.targets("val"), ds.targets("test")

        def scored(o: ProtocolOutput) -> dict:
            return {"val": metrics.evaluate(ds.task, y_val, o.val_scores),
                    "test": metrics.evaluate(ds.task, y_test, o.test_scores)}

        by_split = scored(out)
        layers = {k: (scored(o), o.test_scores) for k, o in out.layers.items()} if out.layers else None
        ctx.timings.values["total_s"] = time.perf_counter() - t0
        meta = {**ctx.record(out), "definitions": definitions}
        if opts.subgroups:  # recorded, never in the id: reports join them through the saved image ids
            meta["subgroups"] = opts.subgroups
        store.write_run(cfg, by_split, meta, (y_test, out.test_scores), out.curves, layers=layers,
                        model_files=out.files, test_ids=ds.image_ids("test"))
        protocol.finished(cfg, opts)  # e.g. drop a resume checkpoint: only now, after the results are written
        if opts.log:  # from the written files; a tracker failure is one warning, recorded in the meta
            tracking.track_run(opts.results_dir, cfg.run_id, opts.log, opts.log_group)
        return RunResult.read(store, cfg.run_id, status="done")
