"""Work over many files on several cores: how many processes a run may use, and a pool that maps
a function over tasks with a bounded number in flight.

A run's share of the cores: all of them (``os.sched_getaffinity``: what this process may run on,
e.g. a SLURM task's CPUs), or, in a local sweep running W runs at once, cores // W (its workers
carry ``BENCH_SWEEP_WORKERS``). ``--decode-workers N`` asks for N, capped at that share, so sweep
workers x decode workers never exceed the cores (with more sweep workers than cores, each run
decodes in its own process only).
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RUN_WORKERS_ENV = "BENCH_SWEEP_WORKERS"  # set by the local sweep executor in each of its workers


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def run_workers() -> int:
    """Runs that execute at once on these cores (a local sweep's workers; else 1)."""
    try:
        return max(1, int(os.environ.get(RUN_WORKERS_ENV) or 1))
    except ValueError:
        return 1


def core_share() -> int:
    """The cores one run may keep busy: all it may run on, divided among the runs beside it."""
    return max(1, available_cores() // run_workers())


def decode_workers(requested: int | None = 0) -> int:
    """Processes for decoding and fingerprinting: ``requested`` (0 or None: the run's share of the
    cores), never more than that share."""
    share = core_share()
    return min(int(requested), share) if requested else share


def run_tasks(fn: Callable[[T], R], tasks: Iterable[T], workers: int, in_flight: int | None = None,
              threads: bool = False) -> Iterator[R]:
    """``fn(task)`` for every task, in ``workers`` spawned processes (``threads``: threads of this
    process, for work that releases the GIL, such as reading and hashing files), results as they
    complete (in no particular order: carry an index in the result where order matters). At most
    ``in_flight`` tasks (default 4 per worker) are handed out at once, so neither the tasks nor the
    results pile up in memory. ``fn`` must be a module-level function for processes. An exception
    in a task is raised here and the tasks not started yet are dropped. ``workers`` <= 1 runs
    everything in this thread."""
    if workers <= 1:
        for task in tasks:
            yield fn(task)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

    limit = in_flight or 4 * workers
    # spawn: forking a process that already runs torch threads (or CUDA) is unsafe
    pool = ThreadPoolExecutor(max_workers=workers) if threads else \
        ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    ok = False
    try:
        pending: set = set()
        for task in tasks:
            pending.add(pool.submit(fn, task))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
        ok = True
    finally:
        pool.shutdown(wait=True, cancel_futures=not ok)


__all__ = ["available_cores", "run_workers", "core_share", "decode_workers", "run_tasks"]
