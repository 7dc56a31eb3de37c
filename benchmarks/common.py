"""Shared bits of the benchmark scripts: paths and the results CSV they append to."""
from __future__ import annotations

import csv
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "medmnist"
RESULTS = ROOT / "benchmarks" / "results.csv"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def record(benchmark: str, context: str, rows: list[tuple[str, float]], out: Path = RESULTS) -> None:
    """Append (metric, value) rows with date and git revision, and print them."""
    from bench.env import git_revision

    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "git", "benchmark", "context", "metric", "value"])
        for name, value in rows:
            w.writerow([stamp, git_revision(), benchmark, context, name, f"{value:.4f}"])
    print(f"{benchmark}: {context}")
    for name, value in rows:
        print(f"  {name:<40} {value:10.3f}")
