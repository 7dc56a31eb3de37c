"""At the user's scale: planning, checkpoints, own-image decoding and a 200k-image probe.

Four parts, each appending its rows to benchmarks/results.csv (benchmark "scale-<part>"):

  plan        `bench sweep CONFIG --dry-run` of configs/smoke.yaml, paper.yaml and medmnistplus.yaml,
              each a fresh process, alternated --repeats times; medians and the ratio
              medmnistplus / smoke of the medians. (--baseline-tree DIR: the same for an older
              checkout, e.g. `git archive <rev> | tar -x -C DIR`, once each.)
  checkpoint  a 20-epoch fine-tune (--patience 0) of the 28-px ResNet-18 (resnet18_28, --unfreeze all,
              random init) on BreastMNIST with the default --checkpoint-every and with 0 (off), run
              alternately in fresh processes; wall and CPU seconds and their ratios. Beside it: the
              seconds one Checkpoint.save of a ViT-B full fine-tune state (DeiT-B, AdamW moments
              filled) takes, against one epoch of that model on BreastMNIST (--vit-limit images per
              split when given: a CPU epoch of ViT-B at 224 px on all 780 images takes long).
  decode      5,000 JPEGs (256 px, written here) through fingerprinting and decoding to --decode-size
              px with 1, 2 and os.cpu_count() processes (bench.datasets.images, fresh caches each
              time); the serial / parallel ratio.
  probe       200,000 PNGs (64 px RGB, written here) through `bench run --backbone dummy --head linear`
              on folder:DIR: fingerprint + decode, extraction, the linear probe. The process's
              resident memory is sampled every 20 ms (VmRSS, RssAnon, RssFile from /proc) and its peak
              taken against the RSS right after the model is built; the decode processes' peak is
              recorded apart (getrusage children).

Usage: python benchmarks/bench_scale.py {plan,checkpoint,decode,probe,all} [options]
Everything is written under --work (default: a temporary folder), which is removed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, SHARED, record

CONFIGS = ("smoke", "paper", "medmnistplus")


def cores_context() -> str:
    """The cores and how busy they were (1-minute load average when the figures were taken): a
    ratio measured while other work shared the cores is noise, and the row says so."""
    return f"cpu, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def _child(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


# -- planning ----------------------------------------------------------------------------------------

def bench_plan(a) -> None:
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    runs = 0
    for _ in range(a.repeats):
        for c in CONFIGS:
            wall, _, out = _child([sys.executable, "-m", "bench.cli", "sweep", f"configs/{c}.yaml", "--dry-run"],
                                  ROOT)
            times[c].append(wall)
            if c == "medmnistplus":
                runs = int(out.split("sweep: ")[1].split()[0])
    med = {c: statistics.median(v) for c, v in times.items()}
    rows = [(f"{c}_dry_run_s", med[c]) for c in CONFIGS]
    rows += [(f"{c}_dry_run_min_s", min(times[c])) for c in CONFIGS]
    rows += [("medmnistplus_over_smoke", med["medmnistplus"] / med["smoke"]),
             ("medmnistplus_runs", float(runs))]
    # the first dry run with an empty cache folder: timm's specs are not remembered yet (timm is imported)
    cold = {}
    for c in ("smoke", "medmnistplus"):
        with tempfile.TemporaryDirectory() as empty:
            wall, _, _ = _child([sys.executable, "-m", "bench.cli", "sweep", f"configs/{c}.yaml", "--dry-run"], ROOT,
                                env={**os.environ, "BENCH_CACHE_DIR": empty})
        cold[c] = wall
    rows += [(f"{c}_dry_run_empty_cache_s", cold[c]) for c in cold]
    rows += [("medmnistplus_over_smoke_empty_cache", cold["medmnistplus"] / cold["smoke"])]
    if a.baseline_tree:
        base = {}
        for c in CONFIGS:
            wall, _, _ = _child([sys.executable, "-m", "bench.cli", "sweep", f"configs/{c}.yaml", "--dry-run"],
                                a.baseline_tree)
            base[c] = wall
        rows += [(f"baseline_{c}_dry_run_s", base[c]) for c in CONFIGS]
        rows += [("baseline_medmnistplus_over_smoke", base["medmnistplus"] / base["smoke"])]
    record("scale-plan", f"sweep --dry-run, fresh process each, median of {a.repeats} alternated; "
                         + (f"baseline: {a.baseline_tree.name} once each; " if a.baseline_tree else "")
                         + cores_context(), rows, a.out)


# -- checkpoints -------------------------------------------------------------------------------------

def _finetune_argv(work: Path, tag: str, backbone: list[str], data_root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "run", *backbone, "--weights", "random", "--unfreeze", "all",
            "--dataset", "breastmnist", "--data-root", str(data_root), "--device", "cpu",
            "--results-dir", str(work / tag), "--cache-dir", str(work / "cache"), "-q", *extra]


def _meta(results: Path) -> dict:
    return json.loads(next((results / "meta").glob("*.json")).read_text())


def vit_save_seconds(work: Path, repeats: int = 3) -> tuple[float, float, float, float]:
    """(s per Checkpoint.save as fine-tuning now writes it: the best epoch is the saved one, so its
    weights are not written twice; bytes; s per save of the old per-epoch layout with the best
    state inside; its bytes) for a DeiT-B full fine-tune state with AdamW moments."""
    import torch

    import backbones
    from bench.train import Checkpoint, Trainable, _trainable_state

    model = backbones.build("deit", "base", "random")
    head = torch.nn.Linear(model.embed_dim, 2)
    trainable = Trainable(model, 0, head, with_stem=True)
    opt = torch.optim.AdamW([p for p in trainable.parameters()], lr=1e-4)
    for p in trainable.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # moments allocated: the state a killed run resumes from
    gen, aug = torch.Generator(), torch.Generator()
    ck = Checkpoint(work / "vit" / "run.pt")
    new, old = [], []
    for i in range(repeats):
        best = {"value": 0.5, "val_loss": 0.7, "epoch": i + 1, "state": _trainable_state(trainable)}
        t = time.perf_counter()
        ck.save(trainable, opt, gen, aug, epoch=i + 1, best=best, curves=[], bad_epochs=0, stopped=False)
        new.append(time.perf_counter() - t)
        size_new = ck.path.stat().st_size
        old_path = work / "vit" / "old.pt"
        t = time.perf_counter()  # what every epoch wrote before: weights, moments and the best state
        tmp = old_path.with_name(f".{old_path.name}.tmp")
        torch.save({"trainable": _trainable_state(trainable), "optim": opt.state_dict(), "gen": gen.get_state(),
                    "aug_gen": aug.get_state(), "rng": {"torch": torch.get_rng_state()}, "epoch": i + 1,
                    "best": best, "curves": [], "bad_epochs": 0, "stopped": False}, tmp)
        os.replace(tmp, old_path)
        old.append(time.perf_counter() - t)
        size_old = old_path.stat().st_size
    shutil.rmtree(work / "vit")
    return statistics.median(new), float(size_new), statistics.median(old), float(size_old)


def bench_checkpoint(a, work: Path) -> None:
    data_root = a.data_root
    backbone = ["--backbone", "resnet18_28"]
    common = ["--epochs", str(a.epochs), "--patience", "0"]
    default = None
    from bench.options import get

    default = get("checkpoint_every").default
    wall: dict[str, list[float]] = {"default": [], "off": []}
    cpu: dict[str, list[float]] = {"default": [], "off": []}
    train: dict[str, list[float]] = {"default": [], "off": []}
    scores: dict[str, list] = {"default": [], "off": []}
    order = ["off", "default"] * a.repeats
    for i, which in enumerate(order):
        tag = f"ft-{which}-{i}"
        extra = ["--checkpoint-every", "0"] if which == "off" else []  # default: the option's default
        w, c, _ = _child(_finetune_argv(work, tag, backbone, data_root, common + extra), ROOT)
        wall[which].append(w)
        cpu[which].append(c)
        meta = _meta(work / tag)
        train[which].append(meta["timings"]["train_s"])
        with np.load(next((work / tag / "scores").glob("*.npz"))) as z:
            scores[which].append(z["y_score"])
        print(f"  {which}: wall {w:.1f} s, cpu {c:.1f} s, train {train[which][-1]:.1f} s", flush=True)
    same = all(np.array_equal(s, scores["off"][0]) for v in scores.values() for s in v)
    med = {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]),
               "train": statistics.median(train[k])} for k in wall}
    rows = [("default_interval_s", float(default)),
            ("default_wall_s", med["default"]["wall"]), ("off_wall_s", med["off"]["wall"]),
            ("default_over_off_wall", med["default"]["wall"] / med["off"]["wall"]),
            ("default_cpu_s", med["default"]["cpu"]), ("off_cpu_s", med["off"]["cpu"]),
            ("default_over_off_cpu", med["default"]["cpu"] / med["off"]["cpu"]),
            ("default_train_s", med["default"]["train"]), ("off_train_s", med["off"]["train"]),
            ("default_over_off_train", med["default"]["train"] / med["off"]["train"]),
            ("same_scores", float(same))]
    record("scale-checkpoint", f"resnet18_28 random, --unfreeze all, breastmnist 28 px (546/78/156), "
                               f"{a.epochs} epochs, --patience 0, default --checkpoint-every vs 0, "
                               f"fresh process each, median of {a.repeats} alternated, {cores_context()}", rows, a.out)

    # ViT-B: one save of its full fine-tune state against one epoch
    limit = ["--limit", str(a.vit_limit)] if a.vit_limit else []
    tag = "vit-epoch"
    _child(_finetune_argv(work, tag, ["--backbone", "deit", "--variant", "base"], data_root,
                          ["--epochs", "1", "--patience", "0", "--checkpoint-every", "0", *limit]), ROOT)
    epoch_s = _meta(work / tag)["timings"]["train_s"]
    n = _meta(work / tag)["dataset"]["n"]
    save_s, save_bytes, old_s, old_bytes = vit_save_seconds(work)
    rows = [("epoch_s", epoch_s), ("train_images", float(n["train"])), ("val_images", float(n["val"])),
            ("save_s", save_s), ("save_mb", save_bytes / 1e6), ("save_over_epoch", save_s / epoch_s),
            ("old_per_epoch_save_s", old_s), ("old_per_epoch_save_mb", old_bytes / 1e6)]
    if a.vit_limit:
        full = 546 + 78  # train + val images an epoch reads
        rows.append(("epoch_projected_full_s", epoch_s * full / (n["train"] + n["val"])))
    record("scale-checkpoint-vit", f"deit base (ViT-B/16) random, --unfreeze all, 224 px, breastmnist"
                                   + (f" --limit {a.vit_limit}" if a.vit_limit else "") +
                                   f", 1 epoch (train + val) vs one Checkpoint.save (AdamW moments filled), "
                                   f"{cores_context()}", rows, a.out)


# -- decoding ------------------------------------------------------------------------------------------

def write_jpegs(folder: Path, n: int, px: int = 256, seed: int = 0) -> None:
    """``n`` JPEGs (q 90) of smooth blobs plus noise in two class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cx, cy, r = rng.random(3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * r))
        img = np.stack([blob * 200 + rng.normal(0, 12, (px, px)) + k * 20 for k in range(3)], -1)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / "ab"[i % 2] / f"{i:05d}.jpg", quality=90)


def bench_decode(a, work: Path) -> None:
    from bench import datasets
    from bench.datasets import LoadOptions, images

    folder = work / "jpegs"
    t = time.perf_counter()
    write_jpegs(folder, a.decode_images)
    write_s = time.perf_counter() - t
    manifest = datasets.source_for(f"folder:{folder}").manifest(f"folder:{folder}", LoadOptions(quiet=True))
    settings = [1, 2] + ([os.cpu_count()] if os.cpu_count() not in (1, 2) else [])
    fp: dict[int, list[float]] = {w: [] for w in settings}
    dec: dict[int, list[float]] = {w: [] for w in settings}
    loop: dict[int, list[float]] = {w: [] for w in settings}
    from bench import parallel

    real_run_tasks = parallel.run_tasks
    spent: list[float] = []

    def timed_run_tasks(*args, **kw):  # the decode loop alone: images decoded into their files
        t0 = time.perf_counter()
        yield from real_run_tasks(*args, **kw)
        spent.append(time.perf_counter() - t0)

    digests: dict[int, bytes] = {}
    for r in range(a.repeats):
        for w in settings:
            cache = work / f"cache-{w}-{r}"
            opts = LoadOptions(cache_dir=cache, splits_dir=work / "splits", quiet=True, workers=w)
            images._SHAS.clear()  # as a fresh process: every file read again
            t = time.perf_counter()
            fingerprint = images.fingerprint(manifest, a.decode_size, opts)
            fp[w].append(time.perf_counter() - t)
            target = cache / "decoded" / fingerprint
            target.mkdir(parents=True)
            spent.clear()
            parallel.run_tasks = timed_run_tasks  # _decode_all imports it from bench.parallel when called
            try:
                t = time.perf_counter()
                images._decode_all(manifest, a.decode_size, target, fingerprint, opts)
                dec[w].append(time.perf_counter() - t)
            finally:
                parallel.run_tasks = real_run_tasks
            loop[w].append(sum(spent))
            h = hashlib.sha256()
            for f in sorted(os.listdir(target)):
                h.update((target / f).read_bytes())
            digests[w] = h.digest()
            shutil.rmtree(cache)
            os.sync()  # the next run starts with nothing of this one left to write back
            time.sleep(1)
    same = all(d == digests[1] for d in digests.values())
    rows = [("write_s", write_s)]
    for w in settings:
        rows += [(f"fingerprint_{w}threads_s", statistics.median(fp[w])), (f"decode_{w}workers_s", statistics.median(dec[w])),
                 (f"decode_loop_{w}workers_s", statistics.median(loop[w]))]
    rows += [("decode_serial_over_2workers", statistics.median(dec[1]) / statistics.median(dec[2])),
             ("decode_loop_serial_over_2workers", statistics.median(loop[1]) / statistics.median(loop[2])),
             ("fingerprint_serial_over_2threads", statistics.median(fp[1]) / statistics.median(fp[2])),
             ("decode_serial_over_cpu_count_workers", statistics.median(dec[1]) / statistics.median(dec[settings[-1]])),
             ("cpu_count", float(os.cpu_count() or 1)), ("same_bytes", float(same))]
    record("scale-decode", f"{a.decode_images} JPEGs 256 px RGB -> {a.decode_size} px, fingerprint (sha256) and "
                           f"decode (PIL; N workers: threads) + split files, fresh cache each, median of {a.repeats} alternated, "
                           f"{cores_context()}", rows, a.out)


# -- 200k images through the probe ---------------------------------------------------------------------

def _write_pngs(task: tuple[str, int, int, int]) -> int:
    folder, start, stop, px = task
    from PIL import Image

    rng = np.random.default_rng(start)
    yy = np.linspace(0, 1, px, dtype=np.float32)[:, None]
    for i in range(start, stop):
        label = i % 2
        band = np.exp(-((yy - (0.3 + 0.4 * label)) ** 2) / 0.01) * 120  # the class: where a band lies
        img = np.stack([band + rng.normal(60 + 30 * k, 10, (px, px)) for k in range(3)], -1)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(Path(folder) / "ab"[label] / f"{i:06d}.png",
                                                                compress_level=1)
    return stop - start


class RSSSampler:
    """Peaks of VmRSS, RssAnon and RssFile of this process and the largest VmRSS of any of its
    child processes (the decode pool), MiB, sampled on a thread from /proc."""

    FIELDS = ("VmRSS", "RssAnon", "RssFile")

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak = every, {k: 0.0 for k in self.FIELDS}
        self.child_peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def now(pid: str = "self") -> dict[str, float]:
        out = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in RSSSampler.FIELDS:
                    out[k] = int(v.split()[0]) / 1024
        except OSError:  # a child that has just exited
            pass
        return out

    @staticmethod
    def children() -> list[str]:
        kids: list[str] = []
        for tid in os.listdir("/proc/self/task"):
            try:
                kids += Path(f"/proc/self/task/{tid}/children").read_text().split()
            except OSError:
                pass
        return kids

    def sample(self) -> None:
        for k, v in self.now().items():
            self.peak[k] = max(self.peak[k], v)
        for pid in self.children():
            self.child_peak = max(self.child_peak, self.now(pid).get("VmRSS", 0.0))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.every)

    def __enter__(self) -> "RSSSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()


def _test_auc(rows) -> float:
    got = rows[(rows["split"] == "test") & (rows["metric"] == "auc")]["value"]
    return float(got.iloc[0]) if len(got) else float("nan")


def bench_probe(a, work: Path) -> None:
    from bench import parallel

    folder = work / "pngs"
    for c in "ab":
        (folder / c).mkdir(parents=True, exist_ok=True)
    n, px = a.probe_images, 64
    t = time.perf_counter()
    step = 2000
    tasks = [(str(folder), s, min(n, s + step), px) for s in range(0, n, step)]
    written = sum(parallel.run_tasks(_write_pngs, tasks, parallel.core_share()))
    write_s = time.perf_counter() - t
    disk_mb = sum(f.stat().st_size for f in folder.rglob("*.png")) / 2**20
    print(f"  wrote {written} PNGs ({disk_mb:.0f} MiB) in {write_s:.0f} s", flush=True)

    import torch

    import backbones
    from bench.api import run

    torch.set_num_threads(os.cpu_count() or 1)
    model = backbones.build("dummy", "tiny", "random", input_size=64)
    after_model = RSSSampler.now()
    del model
    with RSSSampler() as rss:
        t = time.perf_counter()
        result = run(backbone="dummy", dataset=f"folder:{folder}", weights="random", size=px, input_size=64,
                     head="linear", head_epochs=a.head_epochs, results_dir=str(work / "results"),
                     cache_dir=str(work / "cache"), device="cpu", quiet=True)
        total_s = time.perf_counter() - t
    meta = json.loads(next((work / "results" / "meta").glob("*.json")).read_text())
    tm = meta["timings"]
    decoded = work / "cache" / "decoded"
    decoded_mb = sum(f.stat().st_size for f in decoded.rglob("*.npy")) / 2**20
    extract_s = sum(v for k, v in tm.items() if k.startswith("features_"))
    rows = [("images", float(written)), ("write_s", write_s), ("files_mib", disk_mb), ("decoded_mib", decoded_mb),
            ("load_data_s", tm.get("load_data_s", 0.0)), ("extraction_s", extract_s),
            ("probe_head_s", tm.get("head_s", 0.0)), ("total_s", total_s),
            ("rss_after_model_mib", after_model["VmRSS"]), ("peak_rss_mib", rss.peak["VmRSS"]),
            ("peak_rss_beyond_model_mib", rss.peak["VmRSS"] - after_model["VmRSS"]),
            ("peak_rss_anon_beyond_model_mib", rss.peak["RssAnon"] - after_model["RssAnon"]),
            ("peak_rss_file_mib", rss.peak["RssFile"]),
            ("test_auc", _test_auc(result.metrics)),
            ("decode_workers", float(parallel.decode_workers(0)))]
    # the largest child process (the PNG writers; decode processes only for DICOM): outside this RSS
    rows.append(("child_process_peak_rss_mib", rss.child_peak))
    record("scale-probe", f"{written} PNGs 64 px RGB (folder:, written here), dummy/tiny random at 64 px, "
                          f"linear probe (16-head grid, {a.head_epochs} epochs), fingerprint+decode on "
                          f"{parallel.decode_workers(0)} threads, RSS sampled every 20 ms, {cores_context()}",
           rows, a.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=("plan", "checkpoint", "decode", "probe", "all"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-tree", type=Path, help="plan: also time an older checkout's dry runs")
    p.add_argument("--data-root", type=Path, default=SHARED)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--vit-limit", type=int, default=0, help="images per split of the ViT-B epoch (0: all)")
    p.add_argument("--decode-images", type=int, default=5000)
    p.add_argument("--decode-size", type=int, default=224)
    p.add_argument("--probe-images", type=int, default=200_000)
    p.add_argument("--head-epochs", type=int, default=100)
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=a.work))
    try:
        if a.part in ("plan", "all"):
            bench_plan(a)
        if a.part in ("checkpoint", "all"):
            bench_checkpoint(a, work)
        if a.part in ("decode", "all"):
            bench_decode(a, work)
        if a.part in ("probe", "all"):
            bench_probe(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
