"""Progress that works everywhere: a tqdm bar on a terminal; off a terminal (SLURM logs, nohup,
CI) one line every ``BENCH_PROGRESS_SECONDS`` (default 30) with count, rate and ETA, and a last
line when done. Quiet runs show nothing."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from .env import setting

T = TypeVar("T")


def log(msg: str, quiet: bool = False) -> None:
    """One line on stderr, prefixed ``bench:`` (nothing when quiet)."""
    if not quiet:
        print(f"bench: {msg}", file=sys.stderr, flush=True)


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", quiet: bool = False) -> None:
        self.total, self.desc, self.unit, self.quiet = total, desc, unit, quiet
        self.n, self.t0 = 0, time.monotonic()
        self.every = setting("BENCH_PROGRESS_SECONDS")
        self.last = self.t0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if not self.quiet and now - self.last >= self.every and self.n < self.total:
            self.last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        dt = max(now - self.t0, 1e-9)
        rate = self.n / dt
        tail = f"done in {dt:.1f}s" if final else \
            f"ETA {(self.total - self.n) / rate:.0f}s" if rate > 0 else "ETA ?"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"bench: {self.desc}: {self.n}/{self.total} {self.unit}{pct}, {rate:.1f} {self.unit}/s, {tail}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet and time.monotonic() - self.t0 >= self.every:  # long enough to have reported
            self._line(time.monotonic(), final=True)


def track(items: Iterable[T], total: int, desc: str, unit: str = "it", quiet: bool = False) -> Iterator[T]:
    """``for x in track(range(epochs), epochs, "fine-tune", "epoch"):`` with :class:`Progress`."""
    p = Progress(total, desc, unit, quiet)
    try:
        for x in items:
            yield x
            p.update(1)
    finally:
        p.close()
