"""The process environment: settings read from it (BENCH_*), checked like options (a value that is
not a number is one line naming the variable, not a traceback); the default cache folder; the
library versions and git revision a run records."""
from __future__ import annotations

import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .errors import UserError


def env_number(name: str, default: float, *, low: float = 0.0, integer: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
        if integer and not value.is_integer():
            raise ValueError
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not {'an integer' if integer else 'a number'}; "
                        f"unset it or give e.g. {name}={int(default) if integer else default}") from None
    if not math.isfinite(value) or value < low:
        raise UserError(f"environment variable {name}={raw!r}: must be a finite number of at least {low:g}")
    return int(value) if integer else value


# the numeric settings read from the environment: name -> (default, lowest value, integer?)
NUMBERS: dict[str, tuple[float, float, bool]] = {
    "BENCH_PROGRESS_SECONDS": (30.0, 0.0, False),      # off a terminal: seconds between progress lines
    "BENCH_MMAP_THRESHOLD": (float(1 << 30), 0.0, True),  # bytes above which a dataset array is memory-mapped
    "BENCH_PROBE_TIMEOUT": (3.0, 0.1, False),         # seconds to wait for a download host (backbones.hub)
    "BENCH_PREFIX_MEMORY_GB": (4.0, 0.0, False),      # a frozen prefix's outputs above this stay on disk
}


def setting(name: str) -> float:
    """A numeric setting of ``NUMBERS`` (one line naming it when its value is not a number)."""
    default, low, integer = NUMBERS[name]
    return env_number(name, int(default) if integer else default, low=low, integer=integer)


def check_settings() -> None:
    """Every numeric setting read once, so a bad value is one line before anything is written, not
    a traceback (or a stray lock file) when a run first reads it."""
    for name in NUMBERS:
        setting(name)


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "medfm-bench")


PACKAGES = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "segment-anything",
            "medmnist", "numpy", "scikit-learn", "pandas", "medfm-bench")


@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    import torch

    out["torch"] = torch.__version__  # carries the build tag (+cu130, +cpu)
    return tuple(out.items())


def versions() -> dict[str, str]:
    return dict(_versions())


def library_versions() -> dict[str, str]:
    """Versions of the libraries that define backbones (part of the feature-cache key)."""
    v = versions()
    return {k: v[k] for k in ("torch", "timm", "transformers", "open_clip_torch", "segment-anything") if k in v}


def git_revision() -> str | None:
    """Revision of the checkout this code runs from (with -dirty), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators, so a random init does not depend on what
    ran before in this process."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def now() -> str:
    """The time a result was made, UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
