"""Settings read from the environment (BENCH_*), checked like options: a value that is not a
number is one line naming the variable, not a traceback."""
from __future__ import annotations

import math
import os

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
