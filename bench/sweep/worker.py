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
from typing import Callable

from filelock import Timeout

from ..run_config import RunConfig, RunOptions

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


def say(msg: str, settings: Settings) -> None:
    if not settings.quiet:
        tag = f"[{settings.tag}] " if settings.tag else ""
        print(f"bench sweep: {tag}{msg}", file=sys.stderr, flush=True)


class SweepProgress:
    """`[k/N]`, elapsed time and an ETA from the runs finished so far, one line per finished run
    (on a terminal or in a SLURM log alike)."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.quiet, self.k, self.t0 = total, quiet, 0, time.monotonic()

    def tick(self, r: RunResult) -> None:
        if r.status == BUSY:
            return
        self.k += 1
        if self.quiet:
            return
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.k * (self.total - self.k)
        print(f"bench sweep: [{self.k}/{self.total}] {r.status} {r.run_id} | elapsed {_hms(elapsed)}, "
              f"ETA {_hms(eta)}", file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_bundle(cfgs: list[dict], settings: Settings, wait: bool = True,
               on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Run configs (RunConfig dicts) in order. Runs locked by another worker are tried again at
    the end, blocking (wait=True), or returned as BUSY for the caller to retry later."""
    out, busy = [], []
    for d in cfgs:
        r = attempt(RunConfig.from_dict(d), settings, block=False)
        (busy.append(d) if r.status == BUSY else out.append(r))
        if on_result and r.status != BUSY:
            on_result(r)
    for d in busy:
        cfg = RunConfig.from_dict(d)
        r = attempt(cfg, settings, block=True) if wait else RunResult(cfg.run_id, BUSY)
        out.append(r)
        if on_result:
            on_result(r)
    return out


def _failure_state(cfg: RunConfig, settings: Settings) -> str | None:
    """FAILED_BEFORE when a recorded failure means: do not run it (now)."""
    from ..results import ResultStore

    path = Path(settings.opts.results_dir) / "failures" / f"{cfg.run_id}.json"
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    seen = settings.failures_seen.get(cfg.run_id) == mtime  # recorded before this sweep started
    if seen and (settings.retry_failed or ResultStore(settings.opts.results_dir).failure_kind(cfg.run_id)
                 == "environment"):  # a full disk or a read-only folder is not the run's fault
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
    lock = store.lock(rid)
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
        return _execute(cfg, settings)
    finally:
        lock.release()


def _execute(cfg: RunConfig, settings: Settings) -> RunResult:
    from .. import runner  # looked up at call time, so tests can wrap it
    from ..results import ResultStore

    t0 = time.perf_counter()
    try:
        out = runner.execute(cfg, settings.opts, lock=False)  # attempt() holds the run's lock
    except KeyboardInterrupt:
        raise
    except Exception as e:  # any error of one run is recorded and the sweep goes on
        from ..fsio import is_environment_error

        tb = traceback.format_exc()
        kind = "environment" if is_environment_error(e) else "run"
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        try:
            where = str(ResultStore(settings.opts.results_dir).write_failure(cfg, e, tb, kind))
        except Exception as e2:  # the disk that failed the run may refuse the record too
            where = f"not recorded: {str(e2).splitlines()[0] if str(e2) else type(e2).__name__}"
        say(f"{cfg.run_id}: FAILED ({msg}); {kind} failure, {where}", settings)
        _free_memory()
        return RunResult(cfg.run_id, FAILED, time.perf_counter() - t0, error=msg, detail=where)
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
    from ..cache import FeatureCache

    return FeatureCache(Path(cache_dir)).clean_stale()


def configure_threads(n: int | None) -> None:
    """Pin this process's CPU threads (workers share the machine)."""
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
