"""Where bundles run: this process (inline), N local worker processes (local), or SLURM job
arrays through submitit (slurm). All of them call worker.run_bundle, which holds the per-run
locks, so mixing executors or sweeps on one results folder stays safe."""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from ..run_config import RunConfig
from ..errors import UserError
from ..parallel import RUN_WORKERS_ENV
from .plan import assign
from .worker import BUSY, LOST, RunResult, Settings, SweepProgress, configure_threads, run_bundle

Bundle = list[RunConfig]


def _dicts(bundle: Bundle) -> list[dict]:
    return [c.to_dict() for c in bundle]


def run_inline(bundles: list[Bundle], settings: Settings) -> list[RunResult]:
    progress = SweepProgress(sum(len(b) for b in bundles), settings.quiet)
    results, busy = [], []
    for b in bundles:
        for r in run_bundle(_dicts(b), settings, wait=False, on_result=progress.tick):
            (busy.append(r.run_id) if r.status == BUSY else results.append(r))
    # runs another sweep was executing: wait for its lock, then it is done (skip) or ours to run
    by_id = {c.run_id: c for b in bundles for c in b}
    if busy:
        results += run_bundle([by_id[i].to_dict() for i in busy], settings, wait=True, on_result=progress.tick)
    return results


# -- local worker processes ------------------------------------------------------------------------

def visible_gpus(device: str, requested: list[str] | None) -> list[str]:
    """GPU ids to pin workers to: --gpus, else the ones this process sees (none for --device cpu)."""
    if requested:
        return [str(g) for g in requested]
    if device == "cpu":
        return []
    m = re.fullmatch(r"cuda:(\d+)", device)
    if m:
        return [m.group(1)]
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        n = torch.cuda.device_count()
    except Exception:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def worker_envs(workers: int, gpus: list[str], threads: int | None) -> list[dict[str, str]]:
    cpus = os.cpu_count() or 1
    threads = threads or max(1, cpus // workers)
    envs = []
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BENCH_SWEEP_WORKER": f"w{i}",
               # runs sharing the cores: each decodes own images on cores // workers (bench.parallel)
               RUN_WORKERS_ENV: str(workers)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        envs.append(env)
    return envs


def _init_worker(slots) -> None:
    # runs first in each spawned worker, before torch is imported by a run
    env = slots.get()
    os.environ.update(env)
    configure_threads(int(env["OMP_NUM_THREADS"]))


def _worker_bundle(cfgs: list[dict], settings: Settings, wait: bool) -> list[RunResult]:
    tag = os.environ.get("BENCH_SWEEP_WORKER", "")
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    tag = f"{tag} gpu{gpu}" if gpu and settings.opts.device != "cpu" else tag
    return run_bundle(cfgs, replace(settings, tag=tag), wait=wait)


def run_local(bundles: list[Bundle], settings: Settings, workers: int | None, gpus: list[str] | None,
              threads: int | None) -> list[RunResult]:
    """N spawned processes pull bundles longest-first; each is pinned to one GPU or to a share
    of the CPU threads."""
    device = settings.opts.device
    gpu_ids = visible_gpus(device, gpus)
    workers = min(workers or len(gpu_ids) or max(1, (os.cpu_count() or 1) // 2), len(bundles))
    if gpu_ids and device.startswith("cuda:"):
        settings = replace(settings, opts=replace(settings.opts, device="cuda"))  # pinned GPU is cuda:0
    ctx = mp.get_context("spawn")  # fork after torch/CUDA initialisation is unsafe
    slots = ctx.Queue()
    for env in worker_envs(workers, gpu_ids, threads):
        slots.put(env)
    pinned = f" on GPUs {','.join(gpu_ids)}" if gpu_ids else " on CPU"
    if not settings.quiet:
        print(f"bench sweep: {workers} local workers{pinned}, {len(bundles)} bundles", file=sys.stderr, flush=True)
    results: list[RunResult] = []
    progress = SweepProgress(sum(len(b) for b in bundles), settings.quiet)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots,)) as pool:
        def collect(futures: dict) -> list[str]:
            busy = []
            for f in as_completed(futures):
                try:
                    got = f.result()
                except Exception as e:  # a worker died (OOM killer, segfault): its runs are lost
                    err = f"worker died: {type(e).__name__}: {e}"
                    got = [RunResult(RunConfig.from_dict(c).run_id, LOST, error=err) for c in futures[f]]
                for r in got:
                    (busy.append(r.run_id) if r.status == BUSY else results.append(r))
                    progress.tick(r)
            return busy

        futures = {pool.submit(_worker_bundle, _dicts(b), settings, False): _dicts(b) for b in bundles}
        busy = collect(futures)
        if busy:
            by_id = {c.run_id: c for b in bundles for c in b}
            collect({pool.submit(_worker_bundle, [by_id[i].to_dict()], settings, True): [by_id[i].to_dict()]
                     for i in busy})
    return results


# -- SLURM through submitit ------------------------------------------------------------------------

def parse_minutes(value: object) -> int:
    """Minutes from 90, "90", "1:30:00", "2-00:00:00" or "30:00" (sbatch --time forms)."""
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UserError(f"--time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if b is None:  # "90" or "2-12" (days-hours)
        minutes = a * 60 if days is not None else a
    elif c is None:  # MM:SS, or D-HH:MM
        minutes = a * 60 + b if days is not None else a + (1 if b else 0)
    else:
        minutes = a * 60 + b + (1 if c else 0)
    return (days or 0) * 1440 + minutes


def submit_slurm(bundles: list[Bundle], settings: Settings, conf: dict) -> list[RunResult] | None:
    """Submit bundles as one job array (packed into at most conf['tasks'] tasks). Returns the
    results when conf['wait'], else None after printing the job id."""
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'medfm-bench[slurm]'") from None
    from .slurm_task import SweepTask

    cluster = conf.get("cluster") or "slurm"
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch is not on PATH; run on a SLURM login node, "
                        "or use --cluster local to try the job array on this machine")
    folder = Path(conf.get("log_dir") or Path(settings.opts.results_dir) / "slurm" / "%j")
    n_tasks = max(1, min(int(conf.get("tasks") or 1000), len(bundles)))
    parts = [[c.to_dict() for b in part for c in b] for part in assign(bundles, n_tasks)]
    parts = [p for p in parts if p]
    gpus = conf.get("gpus_per_task")
    if gpus is None:
        gpus = 0 if settings.opts.device == "cpu" else 1
    params = {
        "name": "bench-sweep", "timeout_min": parse_minutes(conf.get("time") or 240), "nodes": 1,
        "tasks_per_node": 1, "gpus_per_node": int(gpus),
        "cpus_per_task": _int_or_none(conf.get("cpus_per_task")),
        "mem_gb": float(conf["mem"]) if conf.get("mem") is not None else None,
        "slurm_partition": conf.get("partition"), "slurm_account": conf.get("account"),
        "slurm_qos": conf.get("qos"), "slurm_constraint": conf.get("constraint"),
        "slurm_array_parallelism": _int_or_none(conf.get("array_parallelism")),
        "slurm_setup": list(conf.get("setup") or []) or None,
        "slurm_additional_parameters": _params(conf.get("params")) or None,
    }
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                   slurm_max_num_timeout=int(conf.get("max_requeue") or 3))
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        jobs = ex.map_array(SweepTask(), parts, [settings] * len(parts))
    except (ValueError, NameError, RuntimeError, OSError) as e:  # bad parameters, sbatch refusal
        raise UserError(f"job submission failed: {str(e).strip().splitlines()[-1][:300]}") from None
    first = str(jobs[0].job_id).split("_")[0] if jobs else "?"
    n_runs = sum(len(p) for p in parts)
    logs = folder.parent if "%j" in folder.name else folder
    print(f"bench sweep: submitted {n_runs} runs as {len(jobs)} array tasks (job {first}, cluster {cluster}); "
          f"logs under {logs}", file=sys.stderr, flush=True)
    if not conf.get("wait"):
        print("bench sweep: `--dry-run` shows progress; once the jobs have ended, the same command "
              "resubmits whatever is missing", file=sys.stderr)
        return None
    results: list[RunResult] = []
    for job, part in zip(jobs, parts):
        try:
            results.extend(job.result())
        except Exception as e:  # task killed, out of requeues, node failure
            err = f"task {job.job_id} failed: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__}"
            results.extend(RunResult(RunConfig.from_dict(c).run_id, LOST, error=err) for c in part)
    return results


def _int_or_none(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[arg-type]


def _params(value: object) -> dict:
    """--slurm-param KEY=VALUE list (or a YAML mapping) -> sbatch additional parameters."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    out = {}
    for item in value:  # type: ignore[union-attr]
        k, sep, v = str(item).partition("=")
        if not sep or not k:
            raise UserError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. mail_type=FAIL")
        out[k.strip().replace("-", "_")] = v
    return out
