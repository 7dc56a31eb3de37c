"""The GPU check's driver (benchmarks/gpu_check.sh installs what is missing, then runs this).

One pass, under a time budget (default 380 s for this driver, leaving the rest of 8 minutes to the
installation and start-up; a compilation starts only with --compile-guard seconds to spare), no network:
  1. the CUDA-marked tests (tests/test_cuda.py): autocast bf16/fp16, grad scaler, pinned reader,
     prefix cache, checkpoint resume, local executor with 2 workers on one GPU;
  2. the data-path ratio (bench_datapath.measure: ResNet-50 at 224 px, whole path / model alone);
  3. a linear probe and a last-2 fine-tune of ResNet-50 (random weights) on BreastMNIST, each one
     `bench run` timed end to end;
  4. extraction throughput of every built-in backbone at 224 px, random weights: fp32, bf16,
     bf16 + channels-last, then bf16 + compile while the budget lasts; the backbones of
     configs/medmnistplus.yaml at bf16 (for the estimate);
  5. estimate_cost.py's passes for configs/paper.yaml and configs/medmnistplus.yaml in GPU-hours
     from the bf16 throughput just measured (bf16 is what --precision auto runs on such a GPU).
Data: the bundled BreastMNIST file (bench/samples/medmnist), upsampled to 224 px. A summary is
printed and every figure written to --out (results.csv's columns plus a note).

`--tiny --device cpu` runs the same code with tiny sizes (a dry run of the script's logic).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common import ROOT

MODES = ("fp32", "bf16", "bf16+channels-last", "bf16+compile")
SAMPLE = ROOT / "bench" / "samples" / "medmnist" / "breastmnist.npz"


class Check:
    """Rows of the check, a deadline, and one failure never stopping the rest."""

    def __init__(self, budget_s: float, out: Path) -> None:
        self.t0, self.budget, self.out = time.perf_counter(), budget_s, out
        self.rows: list[dict] = []
        from bench.results import git_revision

        self.git, self.date = git_revision(), datetime.now(timezone.utc).isoformat(timespec="seconds")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def add(self, benchmark: str, context: str, metric: str, value: float, note: str = "") -> None:
        self.rows.append({"date": self.date, "git": self.git, "benchmark": benchmark, "context": context,
                          "metric": metric, "value": f"{value:.4f}" if value == value else "nan", "note": note})
        self.write()

    def step(self, name: str, fn, *a, **k) -> None:
        t = time.perf_counter()
        try:
            fn(*a, **k)
        except Exception as e:  # recorded, and the check goes on
            self.add("gpu_check", name, "error", float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {name}: {time.perf_counter() - t:.1f}s", flush=True)

    def write(self) -> None:
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.out)


def data_224(folder: Path, side: int) -> np.ndarray:
    """BreastMNIST's 780 images (28 px, gray) upsampled to ``side`` px, memory-mapped like a
    MedMNIST+ 224 px file."""
    with np.load(SAMPLE) as z:
        imgs = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")])
    import torch
    import torch.nn.functional as F

    up = F.interpolate(torch.from_numpy(imgs)[:, None].float(), size=(side, side), mode="bilinear",
                       align_corners=False).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    path = folder / f"breastmnist_{side}.npy"
    np.save(path, up)
    return np.load(path, mmap_mode="r")


# -- 1. the CUDA tests --------------------------------------------------------------------------------

def cuda_tests(check: Check, tmp: Path, timeout: float) -> None:
    xml = tmp / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    check.add("cuda_tests", "pytest -m cuda tests/test_cuda.py", "wall_s", time.perf_counter() - t,
              proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"exit {proc.returncode}")
    for case in ET.parse(xml).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                status, message = tag, ((el.get("message") or "").splitlines() or [""])[0][:200]
        check.add("cuda_tests", case.get("name", "?"), status, float(status == "passed"), message)


# -- 2. the data-path ratio ------------------------------------------------------------------------------

def datapath_ratio(check: Check, images: np.ndarray, device: str, a: argparse.Namespace) -> None:
    import bench_datapath

    r = bench_datapath.measure("resnet50", images=a.datapath_images, batch_size=a.batch_size,
                               device=device, input_size=a.input_size, source=images, repeats=4)
    for k in ("model_images_per_s", "path_images_per_s", "path_over_model", "path_over_model_medians"):
        check.add("datapath", r["context"], k, r[k], "goal >= 0.9 on GPU" if k == "path_over_model" else "")


# -- 3. a probe and a last-2 fine-tune, end to end --------------------------------------------------------

def end_to_end(check: Check, tmp: Path, device: str, a: argparse.Namespace) -> None:
    data = tmp / "medmnist"
    data.mkdir(exist_ok=True)
    (data / "breastmnist.npz").write_bytes(SAMPLE.read_bytes())
    small = ["--limit", "32", "--input-size", str(a.input_size), "--head-epochs", "2", "--epochs", "2"] if a.tiny else []
    for name, flags in (("linear probe", ["--head", "linear"]), ("last-2 fine-tune", ["--unfreeze", "last2"])):
        cmd = [sys.executable, "-m", "bench.cli", "run", "--backbone", "resnet50", "--weights", "random",
               "--dataset", "breastmnist", "--data-root", str(data), "--device", device, "-q",
               "--results-dir", str(tmp / "results"), "--cache-dir", str(tmp / "cache"), *flags, *small]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, check.left()))
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1]}")
        run_id = proc.stdout.split(":", 1)[0].strip()
        meta = json.loads((tmp / "results" / "meta" / f"{run_id}.json").read_text())
        auc = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("test")]
        ctx = f"resnet50/random breastmnist_28 -> {a.input_size}px, {meta['device']}, {meta['preprocess']['precision']}"
        check.add("end_to_end", f"{name}: {ctx}", "wall_s", wall, auc[0].strip() if auc else "")
        check.add("end_to_end", f"{name}: {ctx}", "run_total_s", meta["timings"].get("total_s", float("nan")))


# -- 4. throughput ------------------------------------------------------------------------------------

def _build(name: str, input_size: int, device):
    import torch

    import backbones

    torch.manual_seed(0)
    try:
        with torch.device(device):  # random init on the GPU: seconds, not a minute, for ViT-L
            model = backbones.build(name, None, "random", input_size=input_size)
    except Exception:
        model = backbones.build(name, None, "random", input_size=input_size)
    return model.eval().to(device)


def throughput(check: Check, name: str, modes: tuple[str, ...], images: np.ndarray, device, a) -> None:
    import torch

    from bench.execution import Frozen, prepare
    from bench.features import extract, precision
    from bench.preprocess import Preprocess

    model = _build(name, a.input_size, device)
    pre = Preprocess(a.input_size, "resize", *model.normalization())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    n = min(len(images), a.images)
    for mode in modes:
        if check.left() < a.reserve + (a.compile_guard if "compile" in mode else 0):
            check.add("throughput", f"{name} {mode}", "skipped", float("nan"), "time budget")
            continue
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
        ctx = f"{name}/{model.variant} at {a.input_size}px, random weights, {gpu}, {precision(device, req)}"
        note = f"warm-up {warm:.1f}s" + (f"; compile: {fn.status}" if comp else "")
        check.add("throughput", ctx, metric, rate, note)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def all_throughput(check: Check, images: np.ndarray, device, a) -> None:
    from bench.sweep import grid

    eager = [m for m in MODES if "compile" not in m]
    for name in a.backbones:
        check.step(f"throughput {name}", throughput, check, name, tuple(eager), images, device, a)
    seen = set(a.backbones)
    for cfg_file in a.estimate:
        for p in grid.load(cfg_file).points():
            b = p.get("backbone")
            if b and b not in seen and (not a.tiny or not seen - set(a.backbones)):
                seen.add(b)
                check.step(f"throughput {b}", throughput, check, b, ("bf16",), images, device, a)
    for name in a.backbones:  # compiling costs most: as far as the budget allows
        check.step(f"throughput {name} compile", throughput, check, name, ("bf16+compile",), images, device, a)


# -- 5. the cost of the shipped grids ---------------------------------------------------------------------

def grid_passes(paths: list[Path]) -> dict[str, tuple[int, dict[str, float]]]:
    """Runs and image passes per backbone of each grid (slow: thousands of configs resolved), in a
    process of its own while the GPU is measured; the throughput only divides them at the end."""
    import estimate_cost

    from bench.sweep import grid
    from bench.sweep.plan import resolve_points

    out = {}
    for path in paths:
        cfgs, _ = resolve_points(grid.load(path).points())
        out[str(path)] = (len(cfgs), dict(estimate_cost.passes(cfgs)))
    return out


def estimate(check: Check, a, pending) -> None:
    import estimate_cost

    rates = estimate_cost.measured_throughput(check.out)
    by_grid = pending.get(timeout=max(5.0, check.left()))
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


def summary(check: Check) -> None:
    print(f"\nGPU check: {len(check.rows)} figures in {check.out} ({time.perf_counter() - check.t0:.0f} s)")
    for r in check.rows:
        print(f"  {r['benchmark']:<13} {r['context'][:70]:<70} {r['metric']:<34} {r['value']:>10}  {r['note'][:60]}")
    bad = [r for r in check.rows if r["metric"] in ("error", "failure")]
    print(f"  {len(bad)} problem(s)" + (": " + "; ".join(f"{r['context']} {r['note']}" for r in bad) if bad else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of the logic (e.g. with --device cpu)")
    p.add_argument("--budget-s", type=float, default=380.0, help="time for everything after installation")
    p.add_argument("--compile-guard", type=float, default=75.0,
                   help="seconds a compilation may take: none starts with less than this (+ --reserve) left")
    p.add_argument("--reserve", type=float, default=25.0, help="seconds kept for the estimate and the summary")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check.csv")
    p.add_argument("--backbones", default="", help="comma-separated (default: every built-in but dummy)")
    p.add_argument("--images", type=int, default=512, help="images per throughput measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--datapath-images", type=int, default=1024)
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor)")
    p.add_argument("--skip-tests", action="store_true")
    a = p.parse_args()
    import torch

    import backbones.registry
    from bench.runner import pick_device

    device = pick_device(a.device)
    if a.tiny:
        a.images, a.batch_size, a.input_size, a.datapath_images = 8, 4, 32, 8
        a.compile_backend = a.compile_backend or "eager"
    a.backbones = [b for b in a.backbones.split(",") if b] or \
        ([n for n in backbones.registry.BUILTINS if n != "dummy"] if not a.tiny else ["resnet18", "simplecnn"])
    a.estimate = [ROOT / "configs" / "paper.yaml", ROOT / "configs" / "medmnistplus.yaml"]
    check = Check(a.budget_s, a.out)
    import multiprocessing as mp

    planner = mp.get_context("spawn").Pool(1)  # spawn: never a fork of a process that holds CUDA
    pending = planner.apply_async(grid_passes, (a.estimate,))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    check.add("gpu_check", f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
              f"bf16 {device.type == 'cuda' and torch.cuda.is_bf16_supported()}", "started", 1.0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("BENCH_CACHE_DIR", str(tmp / "cache"))
        images = data_224(tmp, a.input_size)
        if not a.skip_tests:
            check.step("cuda tests", cuda_tests, check, tmp, min(180.0, check.left()))
        check.step("datapath ratio", datapath_ratio, check, images, a.device, a)
        check.step("end to end", end_to_end, check, tmp, a.device, a)
        check.step("throughput", all_throughput, check, images, device, a)
        check.step("estimate", estimate, check, a, pending)
    planner.terminate()  # still resolving when the budget ran out: not waited for
    summary(check)


if __name__ == "__main__":
    main()
