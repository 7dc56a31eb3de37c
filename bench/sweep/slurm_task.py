"""The callable a SLURM array task runs (imported only with submitit installed).

Checkpointable: on preemption or time-out submitit requeues the task with the same bundle; the
runs it had finished are skipped (their CSV exists), the interrupted one is redone (its lock died
with the process), so a requeued task finishes each run exactly once.
"""
from __future__ import annotations

from dataclasses import replace

import submitit

from ..env import env_number
from .worker import RunResult, Settings, configure_threads, run_bundle


class SweepTask(submitit.helpers.Checkpointable):
    def __call__(self, cfgs: list[dict], settings: Settings) -> list[RunResult]:
        configure_threads(env_number("SLURM_CPUS_PER_TASK", 0, integer=True) or None)
        try:
            env = submitit.JobEnvironment()
            tag = f"{env.job_id}"
        except RuntimeError:  # not inside a submitit job (debug cluster)
            tag = "task"
        return run_bundle(cfgs, replace(settings, tag=tag), wait=True)
