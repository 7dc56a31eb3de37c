"""How the frozen part executes (``--channels-last``, ``--compile``): the same function, other kernels.

Neither option is in the run id: a run id names an experiment (what is computed), and these change
only how the device computes it, as the GPU model or cuDNN's choice of algorithm do. Both enter the
feature-cache key when on (``cache_parts``): their kernels round differently, and a cache hit must
return what this run would have computed itself, so one setting never reads features another
computed. Off, the key is as before, so existing cache entries stay valid.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .progress import log


def prepare(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The model as the run executes it: 4-D weights in channels-last memory when asked."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def cache_parts(opts: Any) -> dict:
    """What of the execution enters the feature-cache key: only what is switched on."""
    return {k: True for k in ("channels_last", "compile") if getattr(opts, k, False)}


class Frozen:
    """``fn`` (images -> features) run as the options ask: inputs in channels-last memory, and
    through ``torch.compile``. A compile that fails (no compiler, an unsupported op) is reported in
    one line and the run goes on in eager mode, which computes the same function."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], channels_last: bool = False,
                 compile: bool = False, backend: str | None = None) -> None:
        self.fn, self.channels_last = fn, channels_last
        self.compiled: Callable | None = None
        self.status = "off"
        if compile:
            try:
                self.compiled = torch.compile(fn, **({"backend": backend} if backend else {}))
                self.status = "on"
            except Exception as e:  # e.g. a Python version torch.compile does not support
                self._fall_back(e)

    def _fall_back(self, error: Exception) -> None:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        self.compiled, self.status = None, f"failed, eager: {type(error).__name__}: {first}"
        log(f"warning: --compile: torch.compile failed ({type(error).__name__}: {first}); running eager")

    def __call__(self, x: torch.Tensor) -> Any:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # compilation happens at the first call (and on a new shape)
                self._fall_back(e)
        return self.fn(x)


__all__ = ["Frozen", "prepare", "cache_parts"]
