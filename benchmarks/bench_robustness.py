"""`bench robust` of a probe run: its backbone cost against one extraction of the test split, and the
corruption time beside it.

A probe run's whole MedMNIST-C evaluation should cost (corruptions x 5 severities x test images)
backbone image passes, plus the resize-only reference of runs below 224 px (one more pass over the
test split) and the rebuild check (32 images): nothing else runs through the backbone. Measured in one
process on one dataset, on a fresh cache:
  image passes    counted by bench robust (its record), against corruptions x 5 x test images
  backbone time   each shifted cell's extraction, timed as bench robust runs it, and right after it a
                  reference: one extraction of the clean test split with the same function,
                  preprocessing and batch size (side by side, so a shared machine's load weighs on
                  both alike); wall-clock and CPU seconds
  corruption      MedMNIST-C's port at 224 px and the resize to the run's size (bench robust's record)
  a second run    a kNN probe of the same backbone on the same data: features and corrupted images
                  come from the caches (0 backbone passes, 0 corruption)

MedMNIST-C corrupts the 224-px images. Without the dataset's 224-px file in --data-root, a stand-in
is made from the 28-px file (each image upscaled 8x by pixel replication): its corruption costs what
the real 224-px file's would, its images are not MedMNIST's 224-px ones (the context says which).

Usage: python benchmarks/bench_robustness.py [--data-root DIR] [--backbone resnet18] [--input-size N]
       [--corruptions a,b]
Appends its figures to benchmarks/results.csv.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, record

from bench.datasets import medmnist as data  # noqa: E402
from bench.robust import Request, robust  # noqa: E402
from bench.robust.files import RobustStore  # noqa: E402
from bench.run_config import make_run_options  # noqa: E402
from bench.shift import medmnistc as C  # noqa: E402


def data_root(given: Path | None, dataset: str, tmp: Path) -> tuple[Path, str]:
    """A data root with the dataset at 28 and 224 px, and how the 224-px file was come by."""
    root = tmp / "data"
    root.mkdir(parents=True)
    src = (given / data.file_name(dataset, 28)) if given else None
    if src is None or not src.exists():
        src = data.SAMPLES / data.file_name(dataset, 28)
    shutil.copy(src, root / data.file_name(dataset, 28))
    big = given / data.file_name(dataset, 224) if given else None
    if big is not None and big.exists():
        (root / big.name).symlink_to(big.resolve())
        return root, "its 224-px file"
    with np.load(src) as z:
        arrays = {k: (np.repeat(np.repeat(v, 8, 1), 8, 2) if k.endswith("images") else v) for k, v in z.items()}
    np.savez(root / data.file_name(dataset, 224), **arrays)
    return root, "a stand-in: the 28-px images upscaled 8x (no 224-px file here)"


class SideBySide:
    """bench.features.extract wrapped: each shifted cell's extraction timed, then a reference extraction
    of the clean test split with the same arguments timed right after it."""

    def __init__(self, clean: np.ndarray) -> None:
        import bench.features as features

        self.module, self.real, self.clean = features, features.extract, clean
        self.cells: list[tuple[float, float]] = []   # (wall, cpu) seconds of each shifted cell
        self.refs: list[tuple[float, float]] = []    # the reference beside each

    def __enter__(self) -> "SideBySide":
        self.module.extract = self
        return self

    def __exit__(self, *exc) -> None:
        self.module.extract = self.real

    def _timed(self, *args, **kw):
        w, c = time.perf_counter(), time.process_time()
        out = self.real(*args, **kw)
        return out, (time.perf_counter() - w, time.process_time() - c)

    def __call__(self, fn, images, pre, device, batch_size=128, desc="extract", quiet=False,
                 requested_precision="auto", **kw):
        if desc == "check" or len(images) != len(self.clean):  # the rebuild check: not a shifted cell
            return self.real(fn, images, pre, device, batch_size, desc, quiet, requested_precision, **kw)

        def reference() -> None:
            self.refs.append(self._timed(fn, self.clean, pre, device, batch_size, "reference", True,
                                         requested_precision)[1])

        first = len(self.cells) % 2 == 1  # every other cell after its reference: no order favours either
        if first:
            reference()
        out, t = self._timed(fn, images, pre, device, batch_size, desc, quiet, requested_precision, **kw)
        self.cells.append(t)
        if not first:
            reference()
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", type=Path, default=None, help="where breastmnist.npz (and _224) are (default: "
                   "the shipped 28-px file)")
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="random")
    p.add_argument("--input-size", type=int, default=0, help="the backbone's input size (default: its native one)")
    p.add_argument("--corruptions", default="", help="comma-separated subset (default: all of the dataset's)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()

    import bench

    tmp = Path(tempfile.mkdtemp(prefix="bench-robust-"))
    root, source = data_root(a.data_root, a.dataset, tmp)
    results, cache = tmp / "results", tmp / "cache"
    # a stand-in 224-px file is not the published one: its MD5 is not checked (the 28-px file's is the same)
    common = dict(results_dir=results, data_root=root, cache_dir=cache, quiet=True, skip_md5=True)
    run = dict(weights=a.weights, size=28, **({"input_size": a.input_size} if a.input_size else {}))
    probe = bench.run(a.backbone, a.dataset, **run, **common)
    knn = bench.run(a.backbone, a.dataset, head="knn", **run, **common)
    opts = make_run_options(**common)
    corruptions = [c for c in a.corruptions.split(",") if c] or None

    with np.load(root / data.file_name(a.dataset, 28)) as z:
        clean = z["test_images"]
    n_test = len(clean)
    with SideBySide(clean) as timed:
        t = time.perf_counter()
        robust(Request([probe.run_id], corruptions=corruptions), opts)
        total = time.perf_counter() - t - sum(w for w, _ in timed.refs)  # the pass alone
    rec = json.loads(RobustStore(results).meta_path(probe.run_id).read_text())
    names = rec["shifts"]["medmnistc"]["corruptions"]
    expected = len(names) * len(C.SEVERITIES) * n_test
    passes = rec["last_pass"]["shifted_images"]
    cells = rec["last_pass"]["cells"]
    corrupt_s = rec["timings"]["corrupt_s"]
    wall, cpu = (np.array([t[i] for t in timed.cells]) for i in (0, 1))
    ref_wall, ref_cpu = (np.array([t[i] for t in timed.refs]) for i in (0, 1))
    t_one = float(np.median(ref_wall))

    t = time.perf_counter()
    robust(Request([knn.run_id], corruptions=corruptions), opts)
    knn_total = time.perf_counter() - t
    knn_rec = json.loads(RobustStore(results).meta_path(knn.run_id).read_text())

    device = "cuda" if torch.cuda.is_available() else "cpu"
    context = (f"{a.backbone}/{a.weights} probe, {a.dataset}_28 (shipped file) -> {probe.config.input_size or 'native'} px "
               f"input; {len(names)} corruptions x 5 severities x {n_test} test images; 224-px source: {source}; "
               f"{device}, {torch.get_num_threads()} threads; each cell's extraction beside a reference extraction")
    rows = [("test_images", n_test), ("corruptions", len(names)), ("cells_scored", cells),
            ("expected_passes_corruptions_x5_x_images", expected), ("backbone_passes", passes),
            ("backbone_passes_over_expected", passes / expected),
            ("backbone_passes_with_check_over_expected", (passes + rec["last_pass"]["check_images"]) / expected),
            ("cells_timed", len(wall)), ("one_extraction_s_median_of_references", t_one),
            ("backbone_s", float(wall.sum())), ("references_s", float(ref_wall.sum())),
            ("backbone_s_over_references_s", float(wall.sum() / ref_wall.sum())),
            ("backbone_cpu_s_over_references_cpu_s", float(cpu.sum() / ref_cpu.sum())),
            ("backbone_s_over_expected_count_x_one_extraction", float(wall.sum()) / (expected / n_test * t_one)),
            ("backbone_s_over_expected_count_x_mean_reference",
             float(wall.sum()) / (expected / n_test * float(ref_wall.mean()))),
            ("corruption_s", corrupt_s), ("corruption_ms_per_image", 1000 * corrupt_s / max(passes, 1)),
            ("corruption_s_over_backbone_s", corrupt_s / float(wall.sum())),
            ("pass_total_s_without_references", total),
            ("second_run_knn_backbone_passes", knn_rec["last_pass"]["shifted_images"]),
            ("second_run_knn_corruption_s", knn_rec["timings"].get("corrupt_s", 0.0)),
            ("second_run_knn_total_s", knn_total)]
    record("robustness", context, rows, a.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
