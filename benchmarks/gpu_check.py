"""The GPU check's driver (benchmarks/gpu_check.sh installs what is missing, then runs this).

One pass under a time budget, no network, the figures that matter first; every step is guarded
(a failure, a timeout or a missing library is a row, never the end of the check) and the CSV is
rewritten after every row, so a run cut short keeps what it measured:
  1. the device and the data (BreastMNIST upsampled to 224 px RGB uint8, memory-mapped);
  2. the data-path ratio (bench_datapath.measure: ResNet-50, whole path / model alone);
  3. extraction throughput of the core backbones (ResNet-50, DeiT-B) at fp32, bf16 and
     bf16 + channels-last, then one bf16 + compile of each;
  4. a linear probe and a last-2 fine-tune of ResNet-50 (random weights) on BreastMNIST, each
     one `bench run` timed end to end;
  5. the CUDA-marked tests (tests/test_cuda.py, per-test timeout, results read from pytest's
     verbose output as they come, so a timeout loses none of them);
  6. the other backbones at bf16: those of the shipped grids (in their variants), then the other
     built-ins;
  7. estimate_cost.py's passes for configs/paper.yaml and configs/medmnistplus.yaml in GPU-hours
     from the bf16 throughput (the grids are resolved in a spawned process meanwhile);
  8. the other backbones' fp32 and channels-last, then their compile, as far as the budget allows.
Files in --out: gpu_check.csv (results.csv's columns plus a note), summary.txt, pytest.log.
`--device cpu --tiny` runs the same code with tiny sizes (a dry run of the logic);
`--summary-only --out DIR` prints the summary of DIR's CSV (standard library only).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from common import ROOT

FIELDS = ("date", "git", "benchmark", "context", "metric", "value", "note")
EAGER = ("fp32", "bf16", "bf16+channels-last")
COMPILE = "bf16+compile"
SAMPLE = ROOT / "bench" / "samples" / "medmnist" / "breastmnist.npz"
SUMMARY_CHARS = 7000  # the device tool returns the last 12,000 characters of the output


class StepTimeout(BaseException):
    """Raised by the step's alarm; a BaseException so that no ``except Exception`` on the way
    (Frozen's compile fallback, say) swallows it."""


def _alarm(signum, frame):
    raise StepTimeout()


class Check:
    """Rows of the check, a deadline, and one failure never stopping the rest."""

    def __init__(self, budget_s: float, out: Path, reserve_s: float) -> None:
        self.t0, self.budget, self.reserve = time.perf_counter(), budget_s, reserve_s
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.csv = out, out / "gpu_check.csv"
        self.rows: list[dict] = []
        self.git = _revision()
        self.date = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def add(self, benchmark: str, context: str, metric: str, value: float, note: str = "") -> None:
        self.rows.append({"date": self.date, "git": self.git, "benchmark": benchmark, "context": context,
                          "metric": metric, "value": f"{value:.4f}" if value == value else "nan", "note": note})
        self.write()

    def step(self, section: str, name: str, fn: Callable, *a, limit: float = 60.0, need: float = 5.0, **k) -> Any:
        """``fn(*a, **k)`` within ``limit`` seconds and the budget (less the reserve); started only
        with ``need`` seconds to spare. Its failure is a row of ``section``; returns its result or None."""
        span = min(limit, self.left() - self.reserve)
        if span < need:
            self.add(section, name, "skipped", float("nan"), f"skipped: time budget ({max(span, 0):.0f}s left)")
            return None
        t = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, span)
        try:
            try:
                return fn(*a, **k)
            finally:  # before any handling below: an alarm there would escape the step
                signal.setitimer(signal.ITIMER_REAL, 0)
        except StepTimeout:
            self.add(section, name, "timeout", float("nan"), f"stopped after {span:.0f}s")
        except (Exception, SystemExit) as e:  # recorded, and the check goes on
            missing = _import_error(e)  # a library the machine lacks: that step only
            self.add(section, name, "skipped" if missing else "error", float("nan"),
                     f"skipped: {_first_line(missing)}" if missing else _first_line(e))
        finally:
            signal.signal(signal.SIGALRM, old)
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {section}: {name}: {time.perf_counter() - t:.1f}s",
                  flush=True)
        return None

    def write(self) -> None:
        tmp = self.csv.with_name(f".{self.csv.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(FIELDS))
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


def _import_error(e: BaseException | None) -> ImportError | None:
    """The ImportError behind ``e`` (itself, or what it was raised from), if any."""
    for _ in range(5):
        if e is None or isinstance(e, ImportError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _revision() -> str:
    try:
        from bench.env import git_revision

        rev = git_revision()
    except Exception:
        rev = None
    if not rev:  # the GPU machine's copy of the tree has no .git; gpu_wheels.py wrote it down
        for source in ROOT.glob("benchmarks/wheels*/SOURCE.txt"):
            words = source.read_text().split()
            rev = f"{words[1]} (wheels)" if len(words) > 1 else rev
    return rev or "unknown"


# -- processes --------------------------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        out += kids
        frontier += kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """The process and whatever it started (executor workers, compile workers)."""
    for pid in reversed(_descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` with its output in ``log`` (kept when it is killed); returncode (None when it
    ran out of time) and the output."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:  # also on the step's alarm: nothing of it outlives the step
            kill_tree(proc)
    return rc, log.read_text(errors="replace")


# -- 1. device and data ----------------------------------------------------------------------------------

def setup_device(check: Check, name: str):
    import torch

    from bench.assemble import pick_device

    device = pick_device(name)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (dry run)"
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    check.add("gpu_check", f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; bf16 {bf16}; "
              f"python {sys.version.split()[0]}", "started", 1.0)
    return device


def data_224(folder: Path, side: int):
    """BreastMNIST's 780 images (28 px, gray) upsampled to ``side`` px as RGB uint8 rows,
    memory-mapped like a MedMNIST+ 224 px RGB file (three times the bytes of a gray one)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    with np.load(SAMPLE) as z:
        imgs = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")])
    up = F.interpolate(torch.from_numpy(imgs)[:, None].float(), size=(side, side), mode="bilinear",
                       align_corners=False).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    path = folder / f"breastmnist_{side}_rgb.npy"
    np.save(path, np.repeat(up[..., None], 3, axis=-1))
    return np.load(path, mmap_mode="r")


def start_planner(paths: list[Path]):
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(1)  # spawn: never a fork of a process that holds CUDA
    return pool, pool.apply_async(grid_passes, ([str(p) for p in paths],))


# -- 2. the data-path ratio ------------------------------------------------------------------------------

def datapath_ratio(check: Check, images, a: argparse.Namespace) -> None:
    import bench_datapath

    r = bench_datapath.measure(a.datapath_backbone, images=a.datapath_images, batch_size=a.batch_size,
                               size=images.shape[1], device=a.device, input_size=a.input_size, source=images,
                               repeats=4)
    for k in ("model_images_per_s", "path_images_per_s", "path_over_model", "path_over_model_medians"):
        check.add("datapath", r["context"], k, r[k], "goal >= 0.9 on GPU" if k == "path_over_model" else "")


# -- 3./6. throughput ------------------------------------------------------------------------------------

def _build(spec: str, input_size: int, device):
    """``name`` or ``name@variant``, random weights, on ``device``."""
    import torch

    import backbones

    name, _, variant = spec.partition("@")
    torch.manual_seed(0)
    try:
        with torch.device(device):  # random init on the GPU: seconds, not a minute, for ViT-L
            model = backbones.build(name, variant or None, "random", input_size=input_size)
    except (ImportError, ModuleNotFoundError):
        raise
    except Exception as first:
        try:
            model = backbones.build(name, variant or None, "random", input_size=input_size)
        except Exception:
            raise first from None
    return model.eval().to(device)


def throughput(check: Check, spec: str, modes: tuple[str, ...], images, device, a) -> None:
    import torch

    from bench.execution import Frozen, prepare
    from bench.features import extract, precision
    from bench.preprocess import Preprocess

    model = _build(spec, a.input_size, device)
    try:
        pre = Preprocess(a.input_size, "resize", *model.normalization())
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        n = min(len(images), a.images)
        for mode in modes:
            req = "fp32" if mode == "fp32" else "bf16"
            cl, comp = "channels-last" in mode, "compile" in mode
            prepare(model, cl) if cl else model.to(memory_format=torch.contiguous_format)
            fn = Frozen(model, cl, comp, backend=a.compile_backend)
            t = time.perf_counter()
            extract(fn, images[: 2 * a.batch_size], pre, device, a.batch_size, quiet=True, requested_precision=req)
            warm = time.perf_counter() - t  # with --compile: the compilation
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            extract(fn, images[:n], pre, device, a.batch_size, quiet=True, requested_precision=req)
            rate = n / (time.perf_counter() - t)
            # estimate_cost.py reads metric images_per_s: the setting --precision auto runs (bf16)
            metric = "images_per_s" if mode == "bf16" else f"images_per_s_{mode.replace('+', '_').replace('-', '_')}"
            ctx = f"{spec.partition('@')[0]}/{model.variant} at {a.input_size}px, random weights, {gpu}, " \
                  f"{precision(device, req)}"
            note = f"warm-up {warm:.1f}s" + (f"; compile: {fn.status}" if comp else "")
            check.add("throughput", ctx, metric, rate, note)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def core_throughput(check: Check, images, device, a) -> None:
    for spec in a.core:
        check.step("throughput", f"{spec} [{', '.join(EAGER)}]", throughput, check, spec, EAGER, images, device, a,
                   limit=a.step_limit)
    for spec in a.core:  # one compilation each: minutes where the others take seconds
        check.step("throughput", f"{spec} [{COMPILE}]", throughput, check, spec, (COMPILE,), images, device, a,
                   limit=a.compile_limit, need=a.compile_guard)


def other_bf16(check: Check, images, device, a) -> None:
    for spec in a.backbones:  # what the estimate divides by
        check.step("throughput", f"{spec} [bf16]", throughput, check, spec, ("bf16",), images, device, a,
                   limit=a.step_limit)


def other_modes(check: Check, images, device, a) -> None:
    for spec in a.backbones:
        check.step("throughput", f"{spec} [fp32, bf16+channels-last]", throughput, check, spec,
                   ("fp32", "bf16+channels-last"), images, device, a, limit=a.step_limit)
    for spec in a.backbones:
        check.step("throughput", f"{spec} [{COMPILE}]", throughput, check, spec, (COMPILE,), images, device, a,
                   limit=a.compile_limit, need=a.compile_guard)


def grid_backbones(paths: list[Path]) -> list[str]:
    """The backbones of the sweep files, as name@variant where they name one (what they cost)."""
    from bench.sweep import grid

    seen: dict[str, None] = {}
    for path in paths:
        for p in grid.load(path).points():
            if p.get("backbone"):
                seen[p["backbone"] + (f"@{p['variant']}" if p.get("variant") else "")] = None
    return list(seen)


# -- 4. a probe and a last-2 fine-tune, end to end --------------------------------------------------------

def end_to_end(check: Check, tmp: Path, name: str, flags: list[str], a: argparse.Namespace) -> None:
    data = tmp / "medmnist"
    data.mkdir(exist_ok=True)
    if not (data / "breastmnist.npz").exists():
        (data / "breastmnist.npz").write_bytes(SAMPLE.read_bytes())
    small = ["--limit", "16", "--input-size", str(a.input_size), "--head-epochs", "1", "--epochs", "1"] if a.tiny else []
    cmd = [sys.executable, "-m", "bench.cli", "run", "--backbone", a.e2e_backbone, "--weights", "random",
           "--dataset", "breastmnist", "--data-root", str(data), "--device", a.device, "-q",
           "--results-dir", str(tmp / "results"), "--cache-dir", str(tmp / "cache"), *flags, *small]
    t = time.perf_counter()
    rc, out = run_logged(cmd, tmp / "e2e.log", timeout=max(5.0, min(a.e2e_limit, check.left() - check.reserve) - 3))
    wall = time.perf_counter() - t
    if rc != 0:  # its last lines into the driver's log
        print("\n".join(f"  | {ln[:200]}" for ln in out.strip().splitlines()[-30:]), flush=True)
    if rc is None:
        raise StepTimeout()
    if rc != 0:
        tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
        raise RuntimeError(f"exit {rc if rc is not None else 'timeout'}: {tail[0][:250]}")
    # the result's first line names the run ("RUN_ID: ..."); warning lines ("bench: ...") may come first
    run_id = next(ln for ln in out.strip().splitlines() if not ln.startswith("bench:")).split(":", 1)[0].strip()
    meta = json.loads((tmp / "results" / "meta" / f"{run_id}.json").read_text())
    test = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("test")]
    ctx = f"{name}: {a.e2e_backbone}/random breastmnist_28 -> {a.input_size}px, {meta['device']}, " \
          f"{meta['preprocess']['precision']}"
    check.add("end_to_end", ctx, "wall_s", wall, test[0] if test else "")
    check.add("end_to_end", ctx, "run_total_s", meta["timings"].get("total_s", float("nan")))


# -- 5. the CUDA tests -----------------------------------------------------------------------------------

VERBOSE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b(.*)$")
SHORT = re.compile(r"^(FAILED|ERROR)\s+(tests/\S+::\S+?)(?:\s+-\s+(.*))?$")


def parse_pytest(out: str) -> tuple[dict[str, tuple[str, str]], int | None]:
    """Each test's (status, message) from ``pytest -v -rA`` output, also when cut short, and the
    number collected."""
    results: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        m = VERBOSE.match(line.strip())
        if m:
            test = m.group(1).split("::", 1)[1]
            reason = re.sub(r"\[\s*\d+%\]$", "", m.group(3)).strip().strip("()")  # a skip's reason
            results[test] = (m.group(2).lower(), results.get(test, ("", ""))[1] or reason[:200])
    for line in out.splitlines():
        m = SHORT.match(line.strip())
        if m:
            test = m.group(2).split("::", 1)[1]
            results[test] = (results.get(test, (m.group(1).lower(), ""))[0], (m.group(3) or "")[:200])
    collected = re.search(r"collected (\d+) items?", out)
    return results, int(collected.group(1)) if collected else None


def cuda_tests(check: Check, a: argparse.Namespace) -> None:
    import importlib.util

    cmd = [sys.executable, "-m", "pytest", "-v", "-rA", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
           "-o", "console_output_style=classic"]
    if importlib.util.find_spec("pytest_timeout"):
        cmd += ["--timeout", str(int(a.test_timeout))]
    t = time.perf_counter()
    rc, out = run_logged(cmd, check.out / "pytest.log", timeout=max(5.0, min(a.tests_limit, check.left() - check.reserve) - 3),
                         env={"COLUMNS": "250"})  # skip reasons and failures uncut
    results, collected = parse_pytest(out)
    last = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
    check.add("cuda_tests", "pytest -m cuda tests/test_cuda.py", "wall_s", time.perf_counter() - t,
              ("timeout: " if rc is None else f"exit {rc}: ") + last[0].strip("= ")[:200]
              + ("" if "--timeout" in cmd else "; no pytest-timeout"))
    for test, (status, message) in results.items():
        check.add("cuda_tests", test, status, float(status == "passed"), message)
    if collected is not None and collected > len(results):
        check.add("cuda_tests", f"{collected - len(results)} of {collected} tests", "not_run", float("nan"),
                  "pytest stopped first (see pytest.log)")
    if not results:
        raise RuntimeError(f"no test result in pytest's output: {last[0][:200]}")


# -- 7. the cost of the shipped grids ---------------------------------------------------------------------

def grid_passes(paths: list[str]) -> dict[str, tuple[int, dict[str, float]]]:
    """Runs and image passes per backbone of each grid (slow: thousands of configs resolved), in a
    process of its own while the GPU is measured; the throughput only divides them at the end."""
    import estimate_cost

    from bench.sweep import grid
    from bench.sweep.plan import resolve_points

    out = {}
    for path in paths:
        cfgs, _ = resolve_points(grid.load(Path(path)).points())
        out[path] = (len(cfgs), dict(estimate_cost.passes(cfgs)))
    return out


def estimate(check: Check, a, pending) -> None:
    import estimate_cost

    rates = estimate_cost.measured_throughput(check.csv)
    by_grid = pending.get(timeout=max(1.0, check.left() - 3))
    for path in a.estimate:
        n_runs, passes = by_grid[str(path)]
        hours, missing = 0.0, []
        for backbone, n in sorted(passes.items()):
            if rates.get(backbone):
                hours += n / rates[backbone] / 3600
            else:
                missing.append(backbone)
        check.add("estimate_cost", f"{path.name}: {n_runs} runs", "gpu_hours", hours,
                  f"no throughput for {', '.join(missing)}" if missing else "every backbone measured")


# -- the summary ------------------------------------------------------------------------------------------

def _value(r: dict) -> float:
    try:
        return float(r["value"])
    except (TypeError, ValueError):
        return float("nan")


def _throughput_table(rows: list[dict]) -> list[str]:
    cols = {"images_per_s_fp32": "fp32", "images_per_s": "bf16", "images_per_s_bf16_channels_last": "bf16+cl",
            "images_per_s_bf16_compile": "compile"}
    table: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        if r["benchmark"] != "throughput":
            continue
        name = r["context"].split("/")[0].split(" ")[0].split("@")[0]
        if r["metric"] in cols:
            cell = f"{_value(r):.0f}"
            if r["metric"].endswith("compile") and "compile: on" not in r["note"]:
                cell += "*"  # fell back to eager
            table[name][cols[r["metric"]]] = cell
        else:
            note = r["note"] if r["note"].startswith(r["metric"]) else f"{r['metric']}: {r['note']}"
            table[name].setdefault("problem", note[:70])
    lines = [f"  {'backbone':<34}" + "".join(f"{c:>9}" for c in cols.values())]
    for name, cells in table.items():
        lines.append(f"  {name[:34]:<34}" + "".join(f"{cells.get(c, '-'):>9}" for c in cols.values())
                     + (f"  {cells['problem']}" if "problem" in cells else ""))
    return lines


def summarize(rows: list[dict], csv_path: Path) -> str:
    """A compact account of the CSV (tens of lines whatever the number of rows)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["benchmark"]].append(r)
    started = [r for r in by["gpu_check"] if r["metric"] == "started"]
    out = [f"GPU check: {started[0]['context'] if started else 'did not start'}",
           f"  {len(rows)} rows in {csv_path}"]
    inst = by["install"]
    if inst:
        bad = [r for r in inst if r["metric"] in ("failed", "missing", "error")]
        out.append(f"install: {len(inst) - len(bad)} ok" + (", problems: " + "; ".join(
            f"{r['context']} {r['metric']} {r['note']}"[:120] for r in bad) if bad else ""))
    ct = by["cuda_tests"]
    if ct:
        tests = [r for r in ct if r["context"].startswith("test")]  # the others: the step's own rows
        counts: dict[str, int] = defaultdict(int)
        for r in tests:
            counts[r["metric"]] += 1
        wall = [r for r in ct if r["metric"] == "wall_s"]
        out.append("cuda tests: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no result")
                   + (f" ({_value(wall[0]):.0f}s; {wall[0]['note'][:80]})" if wall else ""))
        out += [f"  {r['metric'].upper()} {r['context']}: {r['note']}" for r in ct
                if r["metric"] != "wall_s" and (r not in tests or r["metric"] not in ("passed", "xfail", "skipped"))]
        reasons: dict[str, int] = defaultdict(int)
        for r in tests:
            if r["metric"] == "skipped":
                reasons[r["note"] or "?"] += 1
        out += [f"  {n} skipped: {why}" for why, n in reasons.items()]
    for r in by["datapath"]:
        if r["metric"] in ("path_over_model", "error", "timeout", "skipped"):
            out.append(f"datapath: {r['metric']} {r['value']} ({r['context'][:110]}) {r['note'][:80]}")
    for r in by["end_to_end"]:
        if r["metric"] != "run_total_s":
            out.append(f"end to end: {r['context'][:90]}: {r['metric']} {r['value']} {r['note'][:60]}")
    for r in by["estimate_cost"]:
        out.append(f"estimate: {r['context']}: {r['metric']} {r['value']} {r['note'][:100]}")
    problems = [r for r in rows if r["metric"] in ("error", "timeout") and r["benchmark"] not in ("cuda_tests",)]
    out.append(f"{len(problems)} step problem(s)" + (" (first 15)" if len(problems) > 15 else ""))
    out += [f"  {r['benchmark']}: {r['context']}: {r['metric']}: {r['note']}"[:160] for r in problems[:15]]
    if by["throughput"]:  # last: where the summary must be cut, the table's tail goes
        out.append("throughput, images/s (* = compile fell back to eager):")
        out += _throughput_table(by["throughput"])
    text = "\n".join(line[:220] for line in out)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 40] + "\n... (cut; the CSV has every row)"


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_summary(out: Path) -> str:
    text = summarize(read_rows(out / "gpu_check.csv"), out / "gpu_check.csv")
    (out / "summary.txt").write_text(text + "\n")
    return text


# -- main -------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of the logic (e.g. with --device cpu)")
    p.add_argument("--out", type=Path,
                   default=Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "medfm-bench-gpu-check"),
                   help="folder for gpu_check.csv, summary.txt, pytest.log (default: $OUT when set)")
    p.add_argument("--summary-only", action="store_true", help="print the summary of --out's CSV and stop")
    p.add_argument("--install-rows", type=Path, help="CSV of gpu_check.sh's installation rows, put first")
    p.add_argument("--budget-s", type=float, default=380.0, help="time for everything after installation")
    p.add_argument("--reserve", type=float, default=20.0, help="seconds kept for the estimate and the summary")
    p.add_argument("--step-limit", type=float, default=60.0, help="seconds one backbone's eager modes may take")
    p.add_argument("--compile-limit", type=float, default=100.0, help="seconds one compiled measurement may take")
    p.add_argument("--compile-guard", type=float, default=60.0, help="a compilation starts only with this much left")
    p.add_argument("--e2e-limit", type=float, default=100.0, help="seconds per end-to-end run")
    p.add_argument("--tests-limit", type=float, default=180.0, help="seconds for all the CUDA tests")
    p.add_argument("--test-timeout", type=float, default=90.0, help="seconds per CUDA test (pytest-timeout)")
    p.add_argument("--core", default="resnet50,deit", help="measured first, with one compile each")
    p.add_argument("--backbones", default="", help="the others, comma-separated, name or name@variant "
                   "(default: every built-in but dummy, then those of the estimated grids)")
    p.add_argument("--images", type=int, default=512, help="images per throughput measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--datapath-images", type=int, default=1024)
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor)")
    p.add_argument("--estimate", dest="estimate_files", default="", help="comma-separated sweep files to cost (default: configs/paper.yaml,"
                   "configs/medmnistplus.yaml; with --tiny configs/smoke.yaml)")
    p.add_argument("--skip-tests", action="store_true")
    a = p.parse_args(argv)
    a.datapath_backbone = a.e2e_backbone = "resnet50"
    a.estimate = [ROOT / "configs" / "paper.yaml", ROOT / "configs" / "medmnistplus.yaml"]
    if a.tiny:
        a.images, a.batch_size, a.input_size, a.datapath_images = 8, 4, 32, 8
        a.compile_backend = a.compile_backend or "eager"
        a.datapath_backbone, a.e2e_backbone = "dummy", "resnet18"
        a.core = "resnet18,deit@tiny" if a.core == "resnet50,deit" else a.core
        a.backbones = a.backbones or "simplecnn"
        a.estimate = [ROOT / "configs" / "smoke.yaml"]
    if a.estimate_files:
        a.estimate = [Path(f) for f in a.estimate_files.split(",") if f]
    a.core = [b for b in a.core.split(",") if b]
    return a


def other_backbones(a: argparse.Namespace) -> list[str]:
    """Those of the estimated grids first (in their variants), then the others; one spec per
    name, none of the core (the estimate reads one throughput per name)."""
    if a.backbones:
        names = [b for b in a.backbones.split(",") if b]
    else:
        import backbones.registry

        names = [n for n in backbones.registry.BUILTINS if n != "dummy"]
    taken = {s.partition("@")[0] for s in a.core}
    out = []
    for spec in grid_backbones(a.estimate) + names:
        if spec.partition("@")[0] not in taken:
            taken.add(spec.partition("@")[0])
            out.append(spec)
    return out


def merge_install_rows(check: Check, path: Path | None) -> None:
    for r in read_rows(path) if path else []:
        check.add(r.get("benchmark") or "install", r.get("context", ""), r.get("metric", ""),
                  _value(r), r.get("note", ""))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.summary_only:
        print(write_summary(a.out))
        return 0
    check = Check(a.budget_s, a.out, a.reserve)
    merge_install_rows(check, a.install_rows)
    device = check.step("gpu_check", f"device {a.device}", setup_device, check, a.device, limit=90)
    planner = None
    if device is not None:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            os.environ.setdefault("BENCH_CACHE_DIR", str(tmp / "cache"))
            planner = check.step("estimate_cost", "grid resolution started", start_planner, a.estimate, limit=30)
            images = check.step("gpu_check", "data (BreastMNIST, RGB uint8, memory-mapped)", data_224, tmp,
                                a.input_size, limit=60)
            if images is not None:
                check.step("datapath", f"{a.datapath_backbone} data-path ratio", datapath_ratio, check, images, a,
                           limit=90)
                core_throughput(check, images, device, a)
            for name, flags in (("linear probe", ["--head", "linear"]), ("last-2 fine-tune", ["--unfreeze", "last2"])):
                check.step("end_to_end", name, end_to_end, check, tmp, name, flags, a, limit=a.e2e_limit, need=15)
            if not a.skip_tests:
                check.step("cuda_tests", "pytest -m cuda", cuda_tests, check, a, limit=a.tests_limit, need=30)
            if images is not None:
                a.backbones = check.step("gpu_check", "the other backbones", other_backbones, a, limit=30) or []
                other_bf16(check, images, device, a)
            if planner is not None:
                check.reserve = 3.0  # the reserve was kept for this
                check.step("estimate_cost", "GPU-hours of the grids", estimate, check, a, planner[1], limit=60)
            if images is not None:  # what time is left
                other_modes(check, images, device, a)
    if planner is not None:
        try:
            planner[0].terminate()  # still resolving when the budget ran out: not waited for
        except Exception as e:
            print(f"gpu_check: the grid planner did not stop: {_first_line(e)}", flush=True)
    text = write_summary(a.out)
    print("\n" + text, flush=True)
    return 0 if any(r["metric"] == "started" for r in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
