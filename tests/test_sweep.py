"""`bench sweep`: grid expansion, executors, shards, and exactly-once execution under kills,
concurrent sweeps and failures. Only the dummy backbone with probe heads, on synthetic data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_synthetic_npz

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--skip-md5", "--limit", "32", "--head-epochs", "2", "--device", "cpu", "-q"]


def base(tmp_path: Path, data_root: Path, *more: str) -> list[str]:
    return ["sweep", "--data-root", str(data_root), "--results-dir", str(tmp_path / "results"), *FAST, *more]


def plan(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv + ["--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def csvs(results: Path) -> set[str]:
    return {p.stem for p in (results / "runs").glob("*.csv")}


def tmp_files(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if "tmp" in p.name]


def assert_complete(results: Path, run_ids: set[str]) -> None:
    """Every run present once, each file whole (parses), no leftovers."""
    assert csvs(results) == run_ids
    for rid in run_ids:
        rows = (results / "runs" / f"{rid}.csv").read_text().splitlines()
        assert rows[0].startswith("run_id,") and len(rows) > 4
        assert json.loads((results / "meta" / f"{rid}.json").read_text())["run_id"] == rid
    assert not list((results / "failures").glob("*.json")) if (results / "failures").exists() else True
    assert tmp_files(results, Path(os.environ["BENCH_CACHE_DIR"])) == []


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # the dummy backbone is tiny: on a shared CPU one thread per process is fastest, here and in
    # the sweeps' subprocesses
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(n)


# -- expansion and planning ------------------------------------------------------------------------

def test_yaml_grid_protocols_fixed_and_flags(tmp_path, data_root, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("""
backbones: [dummy]
datasets: [breastmnist, retinamnist]
protocols:
  - {head: linear}
  - {head: knn, knn_k: 5}
seeds: [0, 1]
grid:
  variant: [tiny, small]
fixed:
  head_epochs: 3
limit: 32
skip_md5: true
""")
    s = plan(capsys, ["sweep", str(cfg), "--data-root", str(data_root), "--results-dir", str(tmp_path / "r")])
    # 2 datasets x 2 protocols (paired, not crossed with anything else) x 2 seeds x 2 variants
    assert s["runs"] == 16 and s["probe_runs"] == 16 and s["to_run"] == 16 and s["done"] == 0
    # one extraction per backbone variant x dataset, shared by its linear and kNN runs of all seeds
    assert s["feature_groups"] == 4 and all(len(g["runs"]) == 4 for g in s["groups"])
    ids = [r["run_id"] for r in s["run_list"]]
    assert len(set(ids)) == 16 and sum("-knn-" in i for i in ids) == 8
    # flags replace the YAML's entry for that option, here an axis and a key inside the protocols
    s = plan(capsys, ["sweep", str(cfg), "--data-root", str(data_root), "--results-dir", str(tmp_path / "r"),
                      "--seed", "7", "--dataset", "breastmnist", "--head", "knn"])
    # (2 variants x the two protocol entries, now kNN with k=11 and k=5)
    assert s["runs"] == 4 and all("-knn-none-s7-" in r["run_id"] for r in s["run_list"])


def test_flags_only_and_invalid_entries_fail_fast(tmp_path, data_root, capsys):
    s = plan(capsys, base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                          "--head", "linear", "knn", "--seed", "0", "1", "2"))
    assert s["runs"] == 12 and s["feature_groups"] == 2
    # one bad value anywhere: a one-line error, exit 2, nothing created
    capsys.readouterr()
    rc = main(base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnsit"))
    err = capsys.readouterr().err
    assert rc == 2 and "retinamnist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [dummy]\ndatasets: [breastmnist]\nheds: [linear]\n")
    assert main(["sweep", str(bad)]) == 2
    assert "heads" in capsys.readouterr().err  # did-you-mean
    assert main(["sweep", "--dataset", "breastmnist"]) == 2  # no backbone
    assert main(base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "--shard", "3/3")) == 2


def test_shipped_configs(tmp_path, capsys):
    from bench.sweep.grid import load

    paper = load(ROOT / "configs" / "paper.yaml").points()
    assert len(paper) == 6 * 12 * 4 * 3 and {p["recipe"] for p in paper} == {"paper"}
    protocols = {(p.get("head", "linear"), p.get("unfreeze", "none")) for p in paper}
    assert protocols == {("linear", "none"), ("deit", "none"), ("linear", "last2"), ("linear", "all")}
    assert {p["size"] for p in paper} == {224}
    plus = load(ROOT / "configs" / "medmnistplus.yaml").points()
    assert {p["size"] for p in plus} == {28, 64, 128, 224} and len(plus) == 9 * 12 * 4 * 3 * 3
    assert {p["recipe"] for p in plus} == {"medmnistplus"} and {p["seed"] for p in plus} == {9930641, 115149041, 252139603}
    # the smoke grid runs as shipped, on the real file shipped with it (MD5 checked)
    argv = ["sweep", str(ROOT / "configs" / "smoke.yaml"), "--data-root", str(ROOT / "bench" / "samples" / "medmnist"),
            "--results-dir", str(tmp_path / "results"), "-q"]
    assert main(argv) == 0
    assert len(csvs(tmp_path / "results")) == 16


# -- inline runs, resume, cache accounting ---------------------------------------------------------

def test_inline_sweep_resumes_and_counts_cached_features(tmp_path, data_root, capsys):
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--head", "linear", "knn", "--seed", "0", "1")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 done, 0 already done, 0 failed" in out
    # the dry run's feature-cache key equals the one bench.run used: every extraction is cached
    s = plan(capsys, argv)
    assert s["done"] == 8 and s["to_run"] == 0
    assert s["features_cached"] == s["feature_groups"] == 2 and s["features_unknown"] == 0
    assert main(argv) == 0
    assert "0 done, 8 already done, 0 failed" in capsys.readouterr().out
    assert_complete(tmp_path / "results", {r["run_id"] for r in s["run_list"]})


def test_shards_split_the_grid_exactly(tmp_path, data_root, capsys, monkeypatch):
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--head", "linear", "knn", "--seed", "0", "1", "--weights", "default", "random")
    everything = {r["run_id"] for r in plan(capsys, argv)["run_list"]}
    parts = [{r["run_id"] for r in plan(capsys, argv + ["--shard", f"{i}/3"])["run_list"]} for i in range(3)]
    assert set().union(*parts) == everything and sum(map(len, parts)) == len(everything) == 16
    assert all(parts)
    # SLURM_PROCID/SLURM_NTASKS are the same split
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert {r["run_id"] for r in plan(capsys, argv)["run_list"]} == parts[1]
    monkeypatch.delenv("SLURM_NTASKS")
    # running the shards one after the other completes the grid, each run once
    done = 0
    for i in range(3):
        assert main(argv + ["--shard", f"{i}/3"]) == 0
        out = capsys.readouterr().out
        done += int(out.split(" done,")[0].split()[-1])
        assert csvs(tmp_path / "results") >= parts[i]
    assert done == 16
    assert_complete(tmp_path / "results", everything)


def test_failing_run_is_recorded_and_retried(tmp_path, data_root, capsys):
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--head", "linear", "knn")
    good = data_root / "retinamnist.npz"
    good.write_bytes(b"not a zip file")  # every retinamnist run raises, breastmnist ones must not care
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "2 done, 0 already done, 2 failed" in out
    results = tmp_path / "results"
    failures = sorted((results / "failures").glob("*.json"))
    assert [f.name.split("-")[1] for f in failures] == ["retinamnist_28", "retinamnist_28"]
    rec = json.loads(failures[0].read_text())
    assert "not a readable MedMNIST" in rec["error"] and "Traceback" in rec["traceback"]
    stamps = {f: f.stat().st_mtime_ns for f in failures}
    # without --retry-failed they are skipped and reported, and the exit code still says so
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "0 done, 2 already done, 0 failed, 2 not run: failure recorded earlier" in out
    assert {f: f.stat().st_mtime_ns for f in failures} == stamps
    # --retry-failed reruns them (the same data: they fail again, and their records are renewed)
    assert main(argv + ["--retry-failed"]) == 1
    assert "0 done, 2 already done, 2 failed" in capsys.readouterr().out
    assert all(f.stat().st_mtime_ns != stamps[f] for f in failures)
    # another file under the same name is other data: new runs, not a retry of the old ones
    write_synthetic_npz(data_root, "retinamnist", n=(100, 40, 50))
    assert main(argv) == 0
    assert "2 done, 2 already done, 0 failed" in capsys.readouterr().out
    assert len(csvs(results)) == 4 and sorted((results / "failures").glob("*.json")) == failures
    from bench.datasets.medmnist import md5sum

    retina = [json.loads(p.read_text()) for p in (results / "meta").glob("*retinamnist*.json")]
    assert {m["config"]["data_fingerprint"] for m in retina} == {md5sum(data_root / "retinamnist.npz")}


def test_run_locked_by_another_sweep_is_waited_for(tmp_path, data_root, capsys):
    from filelock import FileLock

    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "--head", "linear", "knn",
                "--seed", "0", "1")
    ids = [r["run_id"] for r in plan(capsys, argv)["run_list"]]
    results = tmp_path / "results"
    (results / "locks").mkdir(parents=True)
    held = FileLock(str(results / "locks" / f"{ids[0]}.lock"), thread_local=False)
    held.acquire()  # "another sweep" is running ids[0]
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(main(argv)))
    t.start()
    deadline = time.time() + 60
    while len(csvs(results)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert csvs(results) == set(ids[1:]) and t.is_alive()  # the others ran, the locked one waits
    held.release()  # the other sweep died without a result: ours runs it
    t.join(60)
    assert rc == [0] and csvs(results) == set(ids)


# -- executors --------------------------------------------------------------------------------------

@pytest.mark.slow  # spawns Python processes (torch import each)
def test_local_executor_workers(tmp_path, data_root, capsys):
    from bench.sweep.executors import worker_envs

    envs = worker_envs(2, ["0", "3"], None)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "3"]
    assert all(int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--head", "linear", "knn", "--executor", "local", "--workers", "2", "--threads", "1")
    ids = {r["run_id"] for r in plan(capsys, argv)["run_list"]}
    assert main(argv) == 0
    assert "4 done, 0 already done, 0 failed" in capsys.readouterr().out
    assert_complete(tmp_path / "results", ids)


@pytest.mark.slow  # spawns Python processes (torch import each)
def test_submitit_local_executor(tmp_path, data_root, capsys):
    pytest.importorskip("submitit")
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--head", "linear", "knn", "--executor", "slurm", "--cluster", "local", "--tasks", "1",
                "--time", "10", "--wait")
    ids = {r["run_id"] for r in plan(capsys, argv)["run_list"]}
    assert main(argv) == 0
    assert "4 done, 0 already done, 0 failed" in capsys.readouterr().out
    assert_complete(tmp_path / "results", ids)
    assert list((tmp_path / "results" / "slurm").rglob("*_result.pkl"))


def test_slurm_job_array_parameters(tmp_path, data_root, capsys, monkeypatch):
    pytest.importorskip("submitit")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "Submitted batch job 4242"\n')
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist",
                "--executor", "slurm", "--partition", "gpu", "--time", "2:00:00", "--mem", "32",
                "--setup", "module load cuda", "--slurm-param", "mail_type=FAIL", "--array-parallelism", "1")
    assert main(argv) == 0  # submitted, not waited for
    script = (tmp_path / "job.sh").read_text()
    for line in ("--array=0-1%1", "--partition=gpu", "--time=120", "--mem=32GB", "--mail-type=FAIL",
                 "--signal=USR2@", "module load cuda"):  # USR2: submitit's requeue-on-preemption hook
        assert line in script, line
    assert not csvs(tmp_path / "results")
    # preempted or timed out, a task is requeued with the same bundle (done runs then skip)
    from bench.sweep.slurm_task import SweepTask

    task = SweepTask()
    again = task.checkpoint([{"backbone": "dummy"}], "settings")
    assert again.function is task and again.args == ([{"backbone": "dummy"}], "settings")


# -- nothing lost, nothing twice -------------------------------------------------------------------

COUNTING_DRIVER = """
import os, sys
from bench import results

counter, argv = sys.argv[1], sys.argv[2:]
write_run = results.ResultStore.write_run

def counted(self, cfg, *args, **kwargs):  # every result write, by any sweep, leaves one line
    path = write_run(self, cfg, *args, **kwargs)
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (cfg.run_id + "\\n").encode())
    os.close(fd)
    return path

results.ResultStore.write_run = counted
from bench.cli import main
sys.exit(main(argv))
"""


def slow_grid(tmp_path: Path, data_root: Path) -> list[str]:
    # random weights: each seed extracts its own features, so runs take a moment each
    return ["sweep", "--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist", "retinamnist",
            "--seed", "0", "1", "2", "3", "4", "5", "--head", "linear", "--data-root", str(data_root),
            "--results-dir", str(tmp_path / "results"), "--skip-md5", "--limit", "64", "--head-epochs", "15",
            "--device", "cpu", "-q"]


@pytest.mark.slow  # spawns Python processes (torch import each)
def test_killed_sweep_resumes_exactly_once(tmp_path, data_root, capsys, monkeypatch):
    argv = slow_grid(tmp_path, data_root)
    ids = {r["run_id"] for r in plan(capsys, argv)["run_list"]}
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not csvs(results) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {rid: (results / "runs" / f"{rid}.csv").stat().st_mtime_ns for rid in csvs(results)}
    assert 0 < len(before) < len(ids), "the sweep should have been killed part-way"
    # the rerun writes each missing run once and touches no finished one
    from bench import results as results_mod

    writes: list[str] = []
    write_run = results_mod.ResultStore.write_run
    monkeypatch.setattr(results_mod.ResultStore, "write_run",
                        lambda self, cfg, *a, **k: writes.append(cfg.run_id) or write_run(self, cfg, *a, **k))
    assert main(argv) == 0
    assert sorted(writes) == sorted(ids - set(before))
    assert {rid: (results / "runs" / f"{rid}.csv").stat().st_mtime_ns for rid in before} == before
    assert_complete(results, ids)


@pytest.mark.slow  # spawns Python processes (torch import each)
def test_two_concurrent_sweeps_run_each_run_once(tmp_path, data_root, capsys, monkeypatch):
    argv = slow_grid(tmp_path, data_root)
    ids = {r["run_id"] for r in plan(capsys, argv)["run_list"]}
    driver, counter = tmp_path / "driver.py", tmp_path / "writes.txt"
    driver.write_text(COUNTING_DRIVER)
    other = subprocess.Popen([sys.executable, str(driver), str(counter), *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    # start ours as soon as the other sweep holds its first run, so the two surely overlap
    locks = tmp_path / "results" / "locks"
    deadline = time.time() + 60
    while not (locks.exists() and any(locks.iterdir())) and other.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    from bench import results as results_mod

    write_run = results_mod.ResultStore.write_run

    def counted(self, cfg, *a, **k):  # the same counter as the driver's
        path = write_run(self, cfg, *a, **k)
        with open(counter, "a") as f:
            f.write(cfg.run_id + "\n")
        return path

    monkeypatch.setattr(results_mod.ResultStore, "write_run", counted)
    capsys.readouterr()
    assert main(argv) == 0
    ours = capsys.readouterr().out
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    assert sorted(counter.read_text().split()) == sorted(ids)  # every run written exactly once
    done = [int(o.split(" done,")[0].split()[-1]) for o in (out, ours)]
    assert sum(done) == len(ids) and done[0] > 0, (out, ours)
    assert_complete(tmp_path / "results", ids)


def test_dry_run_costs_the_grid_in_image_passes(tmp_path, data_root, capsys):
    """--dry-run prints what the grid costs: probes of one backbone x dataset x seed (random weights
    are drawn per seed) share one frozen pass over the three (limited) splits, whatever the head."""
    argv = base(tmp_path, data_root, "--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist",
                "retinamnist", "--head", "linear", "knn", "--seed", "0", "1")
    assert plan(capsys, argv)["image_passes"] == {"dummy": 2 * 2 * 3 * 32}  # datasets x seeds x splits x 32
    assert main(argv + ["--dry-run"]) == 0
    assert "cost of the whole grid (done runs and cached features included): 384 backbone image passes" in \
        capsys.readouterr().out


# -- `datasets: present` and configs/reproductions.yaml ------------------------------------------------

def test_datasets_present_is_every_dataset_whose_file_is_here(tmp_path):
    from bench.sweep.grid import expand_present, load

    point = {"backbone": "dummy", "dataset": "present", "size": 28}
    # the default data root: the BreastMNIST and RetinaMNIST shipped with the package (nothing else here)
    shipped = {p["dataset"] for p in expand_present([point], None)}
    assert {"breastmnist", "retinamnist"} <= shipped
    assert expand_present([point], tmp_path) == []  # an empty --data-root: nothing is present
    write_synthetic_npz(tmp_path, "pneumoniamnist")
    assert [p["dataset"] for p in expand_present([point], tmp_path, skip_md5=True)] == ["pneumoniamnist"]
    assert expand_present([{**point, "dataset": "breastmnist"}], tmp_path) == [{**point, "dataset": "breastmnist"}]
    # the reproductions config: the primer and MedMNIST v2 at 3 seeds, the kNN side by side at one
    points = expand_present(load(ROOT / "configs" / "reproductions.yaml").points(), None)
    by = {}
    for p in points:
        by.setdefault((p["backbone"], p["recipe"]), set()).add((p["dataset"], p["seed"]))
    assert {d for d, _ in by[("simplecnn", "primer")]} == shipped
    assert len(by[("simplecnn", "primer")]) == len(by[("resnet18_28", "medmnist-v2")]) == 3 * len(shipped)
    assert len(by[("timm:resnet18.a1_in1k", "medmnistplus")]) == len(shipped)
