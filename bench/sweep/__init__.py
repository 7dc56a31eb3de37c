"""`bench sweep`: a grid of runs from a YAML file and/or flags, on one process, N local workers
or a SLURM cluster; resumable, and safe with several sweeps on one results folder.

Modules: grid (YAML + flags -> points), plan (validation, groups, shards, dry-run report),
worker (locked, exactly-once execution of a bundle), executors (inline/local/slurm).
Importing this package stays light (no torch): cli.py calls add_sweep_arguments at start-up.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UserError
from .grid import SLURM_KEYS, expand_present, from_args

EXECUTORS = ("inline", "local", "slurm")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `bench sweep`: every `bench run` option taking a list, plus the sweep's own."""
    p.add_argument("config", nargs="?", type=Path, help="sweep YAML (see configs/). Every run option below takes one or more values (several = a grid axis); a flag replaces what the YAML says about that option")
    from .. import options

    options.add_arguments(p, many=True)
    s = p.add_argument_group("sweep")
    s.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, done, failed, cached features, shared extractions); run nothing")
    s.add_argument("--list", action="store_true", help="with --dry-run: list every run id and its status")
    s.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    s.add_argument("--retry-failed", action="store_true", default=None,
                   help="rerun runs with a recorded failure (default: skip and report them)")
    s.add_argument("--executor", choices=EXECUTORS, help="inline (default: this process), local (worker "
                   "processes, one per GPU or CPU share), slurm (job array via submitit)")
    s.add_argument("--workers", type=int, help="local: worker processes (default: one per visible GPU, "
                   "else half the CPU cores)")
    s.add_argument("--gpus", help="local: comma-separated GPU ids to pin workers to (default: all visible)")
    s.add_argument("--threads", type=int, help="local: CPU threads per worker (default: cores / workers)")
    s.add_argument("--shard", help="I/N: run only part I of N (0 <= I < N) of the grid; every shard computes "
                   "the same split (default: SLURM_PROCID/SLURM_NTASKS when SLURM_NTASKS > 1)")
    s.add_argument("-v", "--verbose", action="store_true", help="show each run's own progress output")
    sl = p.add_argument_group("slurm (--executor slurm, through submitit; also `slurm:` in the YAML)")
    sl.add_argument("--cluster", choices=("slurm", "local", "debug"),
                    help="submitit cluster: slurm (default), local (subprocesses here, to test), debug (in-process)")
    sl.add_argument("--partition")
    sl.add_argument("--time", help="per task: minutes or HH:MM:SS (default 4:00:00); longer than the longest run")
    sl.add_argument("--gpus-per-task", type=int, help="default 1 (0 with --device cpu)")
    sl.add_argument("--cpus-per-task", type=int)
    sl.add_argument("--mem", type=float, help="GB per task")
    sl.add_argument("--tasks", type=int, help="pack the runs into at most this many array tasks (default: one "
                    "per extraction group or trained run, at most 1000)")
    sl.add_argument("--array-parallelism", type=int, help="array tasks running at once")
    sl.add_argument("--account")
    sl.add_argument("--qos")
    sl.add_argument("--constraint")
    sl.add_argument("--setup", action="append", help="shell line run before each task, e.g. 'module load cuda' "
                    "(repeatable)")
    sl.add_argument("--slurm-param", dest="params", action="append", metavar="KEY=VALUE",
                    help="extra sbatch parameter, e.g. mail_type=FAIL (repeatable)")
    sl.add_argument("--max-requeue", type=int, help="requeues after a time-out (default 3; preemption: unlimited)")
    sl.add_argument("--log-dir", type=Path, help="submitit folder (default RESULTS_DIR/slurm/%%j)")
    sl.add_argument("--wait", action="store_true", default=None,
                    help="wait for the array and print the summary (default: submit and return)")


def _setting(args: argparse.Namespace, conf: dict, key: str, default=None):
    """A sweep setting: the flag (checked like the YAML value) or the YAML's (checked on load)."""
    from .grid import SWEEP_OPTIONS

    v = getattr(args, key, None)
    if v is not None:
        return SWEEP_OPTIONS[key].check(v) if key in SWEEP_OPTIONS else v
    return conf.get(key, default)


def _shard(args: argparse.Namespace, conf: dict, executor: str) -> tuple[tuple[int, int], str]:
    from .plan import parse_shard

    text = _setting(args, conf, "shard")
    if text is not None:
        return parse_shard(str(text)), "--shard"
    from ..env import env_number

    ntasks = env_number("SLURM_NTASKS", 1, low=1, integer=True)
    if ntasks > 1 and executor != "slurm":  # `srun -n N bench sweep ...` splits itself
        return parse_shard(f"{os.environ.get('SLURM_PROCID', '0')}/{ntasks}"), "SLURM_PROCID/SLURM_NTASKS"
    return (0, 1), ""


def _options(execution: dict, verbose: bool):
    """RunOptions with absolute paths, so workers on other nodes or cwd agree on every folder."""
    from ..run_config import make_run_options
    from ..env import default_cache_dir

    def absolute(p, default):
        return Path(os.path.expanduser(str(p or default))).resolve()

    return make_run_options(**{**execution, "results_dir": absolute(execution.get("results_dir"), "results"),
                          # None: each dataset source's own default folder
                          "data_root": absolute(execution["data_root"], "") if execution.get("data_root") else None,
                          "cache_dir": absolute(execution.get("cache_dir"), default_cache_dir()),
                          "force": False, "quiet": not verbose})


def _sweep_name(args: argparse.Namespace) -> str:
    """The tracked group of a sweep (--log without --log-group): the YAML's ``name:``, else its file
    name, else "sweep" (flags only)."""
    config = getattr(args, "config", None)
    if not config:
        return "sweep"
    import yaml

    try:
        doc = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError):
        doc = None
    name = doc.get("name") if isinstance(doc, dict) else None
    return str(name) if name else Path(config).stem


def _prefetch(cfgs, opts) -> None:
    """Download missing dataset files once, here, before workers race for them (compute nodes
    are often offline, login nodes are not)."""
    from .. import datasets

    for c in sorted({(c.dataset, c.size): c for c in cfgs}.values(), key=lambda c: (c.dataset, c.size)):
        datasets.source_for(c.dataset).prefetch(c.dataset, c.size, datasets.load_options(c, opts))


def main(args: argparse.Namespace) -> int:
    """`bench sweep`. Exit 0 when every run of the plan is done, 1 when some failed (now or
    earlier, unless retried), 2 for bad input before anything ran."""
    from .plan import Plan, Status, print_summary, summarize

    from .grid import SWEEP_OPTIONS

    grid = from_args(args)
    conf = dict(grid.sweep)
    for key in SWEEP_OPTIONS:  # bad settings are one line before anything runs
        _setting(args, conf, key)
    executor = _setting(args, conf, "executor", "inline")
    if executor not in EXECUTORS:
        raise UserError(f"executor {executor!r}: choose from {', '.join(EXECUTORS)}")
    slurm_conf = {k: v for k, v in grid.slurm.items()}
    for k in SLURM_KEYS:
        if getattr(args, k, None) is not None:
            slurm_conf[k] = getattr(args, k)
    retry = bool(_setting(args, conf, "retry_failed", False))
    verbose = bool(getattr(args, "verbose", False))
    quiet = bool(grid.execution.get("quiet"))
    shard, shard_src = _shard(args, conf, executor)
    opts = _options(grid.execution, verbose)
    if opts.log:
        from dataclasses import replace

        from ..tracking import check_available

        check_available(opts.log)  # a missing tracker library: one line before anything runs
        if not opts.log_group:  # the sweep's runs are one tracked group
            opts = replace(opts, log_group=_sweep_name(args))
    points = expand_present(grid.points(), opts.data_root, bool(opts.skip_md5))  # `datasets: present`
    plan = Plan.build(points, shard, opts)

    if getattr(args, "dry_run", False):
        s = summarize(plan, opts, retry)
        s["executor"] = executor
        if getattr(args, "json", False):
            import json

            print(json.dumps(s, indent=1, default=str))
        else:
            extra = [f"executor: {executor}" + (f", shard {shard[0]}/{shard[1]} ({shard_src})" if shard_src else "")]
            print_summary(s, bool(getattr(args, "list", False)), extra)
        return 0

    from .worker import Settings, clean_cache_tmp

    status = Status.scan(opts.results_dir, plan.runs)
    pending = [c for c in plan.runs if status.pending(c, retry)]
    pre_done = [c.run_id for c in plan.runs if c.run_id in status.done]
    pre_failed = [c.run_id for c in plan.runs if c.run_id not in status.done and not status.pending(c, retry)]
    ids = {c.run_id for c in pending}
    bundles = [b2 for b in plan.bundles if (b2 := [c for c in b if c.run_id in ids])]
    where = f" (shard {shard[0]}/{shard[1]} via {shard_src})" if shard_src else ""
    if not quiet:
        print(f"bench sweep: {len(plan.runs)} runs{where}: {len(pre_done)} already done, "
              f"{len(pre_failed)} with a recorded failure, {len(pending)} to run ({executor})",
              file=sys.stderr, flush=True)
    from ..results import ResultStore

    if pending:
        ResultStore(opts.results_dir).check_writable()
        _prefetch(pending, opts)
    clean_cache_tmp(Path(opts.cache_dir))
    settings = Settings(opts=opts, retry_failed=retry, failures_seen=dict(status.failed), quiet=quiet)

    results = []
    if bundles:
        if executor == "inline":
            from .executors import run_inline

            results = run_inline(bundles, settings)
        elif executor == "local":
            from .executors import run_local

            gpus = _setting(args, conf, "gpus")
            if isinstance(gpus, str):
                gpus = [g for g in gpus.split(",") if g.strip()]
            elif isinstance(gpus, int):
                gpus = [str(gpus)]
            workers, threads = _setting(args, conf, "workers"), _setting(args, conf, "threads")
            results = run_local(bundles, settings, int(workers) if workers else None, gpus,
                                int(threads) if threads else None)
        else:
            from .executors import submit_slurm

            got = submit_slurm(bundles, settings, slurm_conf)
            if got is None:
                return 0
            results = got
        clean_cache_tmp(Path(opts.cache_dir))

    return report(results, pre_done, pre_failed, opts, quiet)


def report(results, pre_done: list[str], pre_failed: list[str], opts, quiet: bool) -> int:
    """Print the end-of-sweep summary; the exit code follows from it."""
    from .worker import DONE, FAILED, FAILED_BEFORE, LOST, SKIPPED

    by = {k: [r for r in results if r.status == k] for k in (DONE, SKIPPED, FAILED, FAILED_BEFORE, LOST)}
    failed_before = pre_failed + [r.run_id for r in by[FAILED_BEFORE]]
    skipped = len(pre_done) + len(by[SKIPPED])
    line = (f"bench sweep: {len(by[DONE])} done, {skipped} already done, {len(by[FAILED])} failed"
            + (f", {len(failed_before)} not run: failure recorded earlier (--retry-failed)" if failed_before else "")
            + (f", {len(by[LOST])} lost (worker or task died; rerun to resume)" if by[LOST] else ""))
    print(line, flush=True)
    if not quiet:
        for r in by[FAILED]:
            print(f"  failed: {r.run_id}: {r.error} ({r.detail})")
        for rid in failed_before:
            print(f"  failure recorded earlier: {rid} ({Path(opts.results_dir) / 'failures' / (rid + '.json')})")
        for r in by[LOST]:
            print(f"  lost: {r.run_id}: {r.error}")
    return 1 if by[FAILED] or by[LOST] or failed_before else 0
