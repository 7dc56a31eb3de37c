"""Running a bundle of runs safely next to other workers and sweeps.

Exactly once: a run executes only while its worker holds ``results/locks/<run_id>.lock``
(filelock, released by the OS when a process dies), and only if, once the lock is held, the run
is neither done (its CSV exists) nor failed since this sweep started. Result files are written
by atomic renames (bench.results), so a sweep killed at any moment leaves complete runs or none,
and the next sweep reruns exactly the missing ones.
"""
from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from ..config import RunConfig, RunOptions

# statuses of a run in a sweep
DONE, SKIPPED, FAILED, FAILED_BEFORE, BUSY, LOST = "done", "skipped", "failed", "failed-before", "busy", "lost"


@dataclass(frozen=True)
class Settings:
    """What every worker needs besides the runs (picklable for spawn and submitit)."""

    opts: RunOptions
    retry_failed: bool = False
    # run_id -> mtime_ns of its failure record when the sweep started: --retry-failed retries
    # those records only, so two sweeps retrying together do not both rerun a run
    failures_seen: dict = field(default_factory=dict)
    quiet: bool = False
    tag: str = ""


@dataclass
class RunResult:
    run_id: str
    status: str
    seconds: float = 0.0
    error: str = ""
    detail: str = ""


def lock_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / "locks" / f"{run_id}.lock"


def say(msg: str, settings: Settings) -> None:
    if not settings.quiet:
        tag = f"[{settings.tag}] " if settings.tag else ""
        print(f"bench sweep: {tag}{msg}", file=sys.stderr, flush=True)


def run_bundle(cfgs: list[dict], settings: Settings, wait: bool = True) -> list[RunResult]:
    """Run configs (RunConfig dicts) in order. Runs locked by another worker are tried again at
    the end, blocking (wait=True), or returned as BUSY for the caller to retry later."""
    out, busy = [], []
    for d in cfgs:
        r = attempt(RunConfig.from_dict(d), settings, block=False)
        (busy.append(d) if r.status == BUSY else out.append(r))
    for d in busy:
        cfg = RunConfig.from_dict(d)
        out.append(attempt(cfg, settings, block=True) if wait else RunResult(cfg.run_id, BUSY))
    return out


def _failure_state(cfg: RunConfig, settings: Settings) -> str | None:
    """FAILED_BEFORE when a recorded failure means: do not run it (now)."""
    path = Path(settings.opts.results_dir) / "failures" / f"{cfg.run_id}.json"
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if settings.retry_failed and settings.failures_seen.get(cfg.run_id) == mtime:
        return None
    return FAILED_BEFORE


def attempt(cfg: RunConfig, settings: Settings, block: bool) -> RunResult:
    from ..results import ResultStore

    opts = settings.opts
    store = ResultStore(opts.results_dir)
    rid = cfg.run_id
    if store.is_done(rid):
        return RunResult(rid, SKIPPED, detail="already done")
    if _failure_state(cfg, settings):
        return RunResult(rid, FAILED_BEFORE, detail="failure recorded (--retry-failed to rerun)")
    lp = lock_path(opts.results_dir, rid)
    lp.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lp), thread_local=False)
    try:
        lock.acquire(timeout=-1 if block else 0, poll_interval=0.5)
    except Timeout:
        return RunResult(rid, BUSY)
    try:
        # re-check under the lock: another worker may have finished (or failed) it meanwhile
        if store.is_done(rid):
            return RunResult(rid, SKIPPED, detail="done by another worker")
        if _failure_state(cfg, settings):
            return RunResult(rid, FAILED_BEFORE, detail="failed in another worker")
        _remove_stale_tmp(store, rid)
        return _execute(cfg, settings)
    finally:
        lock.release()


def _remove_stale_tmp(store, run_id: str) -> None:
    # only the lock holder writes this run's files, so temporaries left now are from a killed run
    # (results, failure record, bench.train's per-epoch checkpoint)
    from ..results import LAYOUT

    for folder in [store.root / f for f, _ in LAYOUT.values()] + [store.root / "checkpoints"]:
        for p in folder.glob(f".{run_id}.*tmp*"):
            p.unlink(missing_ok=True)


def _execute(cfg: RunConfig, settings: Settings) -> RunResult:
    from .. import runner  # looked up at call time, so tests can wrap it
    from ..results import ResultStore

    t0 = time.perf_counter()
    try:
        out = runner.execute(cfg, settings.opts)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # any error of one run is recorded and the sweep goes on
        tb = traceback.format_exc()
        path = ResultStore(settings.opts.results_dir).write_failure(cfg, e, tb)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        say(f"{cfg.run_id}: FAILED ({msg}); recorded in {path}", settings)
        _free_memory()
        return RunResult(cfg.run_id, FAILED, time.perf_counter() - t0, error=msg, detail=str(path))
    dt = time.perf_counter() - t0
    if out.status != "done":
        return RunResult(cfg.run_id, SKIPPED, dt, detail="already done")
    detail = f"test auc {out.metric('auc'):.4f} acc {out.metric('acc'):.4f}"
    say(f"{cfg.run_id}: done in {dt:.1f}s ({detail})", settings)
    return RunResult(cfg.run_id, DONE, dt, detail=detail)


def _free_memory() -> None:
    # a failed run may leave big tensors referenced from its traceback; drop them before the next
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def clean_cache_tmp(cache_dir: Path) -> int:
    """Remove feature-cache temporaries of writers that died (their key's lock is free)."""
    removed = 0
    folder = Path(cache_dir) / "features"
    if not folder.is_dir():
        return 0
    for key in sorted({p.name.split(".tmp")[0] for p in folder.glob("*.tmp*")}):
        lock = FileLock(str(folder / f"{key}.npy.lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # someone is writing it right now
        try:
            for p in folder.glob(f"{key}.tmp*"):
                p.unlink(missing_ok=True)
                removed += 1
        finally:
            lock.release()
    return removed


def configure_threads(n: int | None) -> None:
    """Pin this process's CPU threads (workers share the machine)."""
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
