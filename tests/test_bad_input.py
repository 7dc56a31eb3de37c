"""Bad input, tried adversarially: each class is one line and exit 2, with nothing written into the
results folder (locks included) or the cache (a memo of a data file's hash aside); a diverging
loss leaves its grid member out, or stops the run with its reason. Each test failed before its fix."""
from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import heads
from bench.cli import main
from bench.errors import TrainingDiverged
from conftest import write_synthetic_npz


def common(data_root: Path, results: Path, *extra: str) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--results-dir", str(results),
            "-q", *extra]


def cache_dir() -> Path:
    return Path(os.environ["BENCH_CACHE_DIR"])


def written(folder: Path) -> list[str]:
    """What a folder holds, digest memos of data files aside (a hash of a file, whatever the run)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "digests" not in p.parts)


def assert_refused(code: int, err: str, match: str, results: Path) -> None:
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert not results.exists(), written(results)
    assert not written(cache_dir()), written(cache_dir())


# --- a refused run writes nothing -----------------------------------------------------------------

@pytest.mark.parametrize("flags,match", [
    (["--unfreeze", "last99"], "--unfreeze last99: the backbone has only"),
    (["--layers", "99"], "--layers 99: the backbone has"),
])
def test_a_run_refused_for_its_model_writes_nothing(capsys, data_root, tmp_path, flags, match):
    code = main(["run", "--backbone", "dummy", *flags, *common(data_root, tmp_path / "r")])
    assert_refused(code, capsys.readouterr().err, match, tmp_path / "r")


@pytest.mark.parametrize("var", ["BENCH_PROGRESS_SECONDS", "BENCH_PREFIX_MEMORY_GB"])
def test_a_bad_environment_number_is_one_line_before_anything_is_written(capsys, data_root, tmp_path, monkeypatch,
                                                                         var):
    monkeypatch.setenv(var, "abc")
    code = main(["run", "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1",
                 *common(data_root, tmp_path / "r")])
    assert_refused(code, capsys.readouterr().err, f"{var}='abc' is not a number", tmp_path / "r")


@pytest.mark.parametrize("argv,var", [
    (["run", "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1"], "BENCH_PREFIX_MEMORY_GB"),
    (["sweep", "--backbone", "dummy", "--dry-run"], "SLURM_NTASKS"),
])
def test_a_bad_environment_number_is_no_traceback_in_a_fresh_process(data_root, tmp_path, argv, var):
    bench = str(Path(sys.executable).parent / "bench")
    p = subprocess.run([bench, *argv, *common(data_root, tmp_path / "r")], env={**os.environ, var: "abc"},
                       capture_output=True, text=True)
    assert p.returncode == 2 and f"{var}='abc' is not" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,channels,match", [
    ("breastmnist", 3, "train_images is RGB (96, 28, 28, 3), but BreastMNIST is gray"),
    ("retinamnist", 1, "train_images is gray (96, 28, 28), but RetinaMNIST is RGB"),
])
def test_an_array_of_the_wrong_channels_is_refused(capsys, tmp_path, flag, channels, match):
    root = tmp_path / "data"
    write_synthetic_npz(root, flag, channels=channels)
    args = [a if a != "breastmnist" else flag for a in common(root, tmp_path / "r")]
    code = main(["run", "--backbone", "dummy", *args])
    assert_refused(code, capsys.readouterr().err, match, tmp_path / "r")


def test_a_dataset_whose_arrays_contradict_its_channels_is_refused_whatever_its_source():
    from bench.datasets import Dataset, Split
    from bench.errors import UserError

    split = Split(np.zeros((4, 8, 8, 3), np.uint8), np.array([[0], [1], [0], [1]]))
    ds = Dataset("own", 8, "binary-class", {"0": "a", "1": "b"}, 1, {s: split for s in ("train", "val", "test")}, "fp")
    with pytest.raises(UserError, match="has 1 channel"):
        ds.validate()


def test_an_empty_class_folder_is_not_a_class(capsys, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "xray"
    for c in ("normal", "pneumonia"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "effusion").mkdir()  # made for later, still empty
    code = main(["run", "--backbone", "dummy", "--dataset", f"folder:{root}", "--size", "16",
                 "--results-dir", str(tmp_path / "r"), "-q"])
    assert_refused(code, capsys.readouterr().err, "class folder(s) effusion hold no images", tmp_path / "r")


# --- reports, exports and explanations of damaged or odd files ------------------------------------

@pytest.fixture(scope="module")
def done_runs(tmp_path_factory) -> Path:
    """Results of two probes: seed 0 layer-wise (a ``layer`` column) and seed 1 plain."""
    tmp = tmp_path_factory.mktemp("done")
    root = tmp / "data"
    write_synthetic_npz(root, "breastmnist")
    base = ["run", "--backbone", "dummy", "--head-epochs", "5", *common(root, tmp / "results")]
    env = {"BENCH_CACHE_DIR": str(tmp / "cache")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main([*base, "--layers", "all"]) == 0 and main([*base, "--seed", "1"]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return tmp


def _copy_results(done_runs: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(done_runs / "results", tmp_path / "results")
    return tmp_path / "results"


@pytest.mark.parametrize("column,value,which,match", [
    ("value", "abc", "s1", "val acc = 'abc' is not a number"),
    ("seed", "abc", "s1", "column seed holds 'abc', not an integer"),
    ("seed", "1.5", "s1", "column seed holds '1.5'"),
    ("seed", "", "s1", "column seed holds ''"),
    ("size", "x", "s1", "column size holds 'x'"),
    ("input_size", "1e400", "s1", "column input_size holds '1e400'"),
    ("layer", "abc", "s0", "column layer holds 'abc'"),
])
def test_a_report_column_that_is_not_a_number_leaves_its_run_out(capsys, done_runs, tmp_path, column, value,
                                                                  which, match):
    from bench.report import make_report

    results = _copy_results(done_runs, tmp_path)
    [path] = [p for p in (results / "runs").glob("*.csv") if f"-{which}-" in p.name]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if column != "layer" or r["layer"] == "2":
            r[column] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    out = make_report(results, tmp_path / "rep", formats=("md",), n_boot=10)
    err = capsys.readouterr().err
    assert f"skipping {path.name}: {match}" in err, err
    assert path.stem in out.read_text()  # listed in the report as left out


def test_a_damaged_saved_head_is_one_line_in_explain(capsys, done_runs, tmp_path):
    results = _copy_results(done_runs, tmp_path)
    [head] = [p for p in (results / "models").glob("*/head.safetensors") if "-s1-" in p.parent.name]
    run_id = head.parent.name
    args = ["explain", run_id, "--results-dir", str(results), "--data-root", str(done_runs / "data"), "--skip-md5",
            "-q"]
    good = head.read_bytes()
    for damaged in (b"garbage", good[:len(good) // 2], b""):
        head.write_bytes(damaged)
        before = written(results)
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and f"{head} is damaged" in err and err.count("\n") == 1, err
        assert written(results) == before  # nothing drawn, nothing written


def test_export_out_that_cannot_be_written_is_one_line(capsys, done_runs, tmp_path):
    results = _copy_results(done_runs, tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "taken.csv").mkdir()
    outs = [tmp_path / "a-file" / "all.csv", tmp_path / "taken.csv"]
    if Path("/proc/self").is_dir() and sys.platform.startswith("linux"):
        outs.append(Path("/proc/medfm-export.csv"))  # a folder nobody can create files in, root included
    for out in outs:
        code = main(["results", "export", "--results-dir", str(results), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("bench: error:") and err.count("\n") == 1, (out, err)
    assert main(["results", "export", "--results-dir", str(results), "--out", str(tmp_path / "ok" / "all.csv")]) == 0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_report_out_that_cannot_be_written_is_one_line(capsys, done_runs, tmp_path):
    results = _copy_results(done_runs, tmp_path)
    code = main(["report", "--results-dir", str(results), "--out", "/proc/medfm-report", "--format", "md",
                 "--n-boot", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write report /proc/medfm-report" in err and err.count("\n") == 1, err


# --- divergence -----------------------------------------------------------------------------------

def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x[:, 0] += 2 * y[:, 0]
    return x, y


def test_a_diverging_grid_member_is_left_out_of_selection_with_a_note():
    (x, y), (xv, yv) = _separable(200, 0), _separable(80, 1)
    res = heads.train_linear_grid(x, y, xv, yv, "binary-class", 2, lrs=(1e-2, 1e7), epochs=10, quiet=True)
    assert res.lr == 1e-2 and np.isfinite(res.val_value)
    assert {(d["lr"], d["wd"]) for d in res.diverged} == {(1e7, 0.0), (1e7, 1e-3)}
    assert all("over 1e+06 times its first value" in d["why"] or "became nan" in d["why"] for d in res.diverged)
    assert res.weight.isfinite().all()
    # no member diverges: the same head as before the check existed (nothing changed for them)
    plain = heads.train_linear_grid(x, y, xv, yv, "binary-class", 2, lrs=(1e-2,), epochs=10, quiet=True)
    assert plain.diverged == [] and (plain.lr, plain.epoch) == (res.lr, res.epoch)


def test_a_grid_whose_every_member_diverges_stops_with_its_reason():
    (x, y), (xv, yv) = _separable(200, 0), _separable(80, 1)
    with pytest.raises(TrainingDiverged, match="every member of the linear grid diverged"):
        heads.train_linear_grid(x, y, xv, yv, "binary-class", 2, lrs=(1e7,), epochs=5, quiet=True)
    x[3, 5] = np.nan  # a backbone that overflowed on one image: every head's loss is NaN
    with pytest.raises(TrainingDiverged, match="the training loss became nan"):
        heads.train_linear_grid(x, y, xv, yv, "binary-class", 2, epochs=5, quiet=True)


def test_a_run_notes_the_grid_members_it_left_out(capsys, data_root, tmp_path, monkeypatch):
    # an infinite learning rate: the member's weights are NaN after one step (this data is separable,
    # so a merely huge one could still fit it)
    monkeypatch.setattr(heads, "train_linear_grid", functools.partial(heads.train_linear_grid, lrs=(1e-2, np.inf)))
    code = main(["run", "--backbone", "dummy", "--head-epochs", "5", *common(data_root, tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0 and "2 of 4 linear heads diverged and were left out of selection" in err, err
    [meta] = [json.loads(p.read_text()) for p in (tmp_path / "r" / "meta").glob("*.json")]
    assert meta["selected"]["diverged"] == len(meta["diverged"]) == 2 and meta["selected"]["lr"] == 1e-2
    assert {d["lr"] for d in meta["diverged"]} == {np.inf}


def test_a_run_whose_every_grid_member_diverges_fails_and_a_sweep_records_it(capsys, data_root, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(heads, "train_linear_grid", functools.partial(heads.train_linear_grid, lrs=(np.inf,)))
    code = main(["run", "--backbone", "dummy", "--head-epochs", "3", *common(data_root, tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "every member of the linear grid diverged" in err and err.count("\n") == 1, err
    assert not list((tmp_path / "r").glob("runs/*.csv"))
    assert main(["sweep", "--backbone", "dummy", "--head-epochs", "3", "--dataset", "breastmnist", "--data-root",
                 str(data_root), "--skip-md5", "--results-dir", str(tmp_path / "s")]) == 1
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "s" / "failures").glob("*.json")]
    assert rec["kind"] == "run" and "every member of the linear grid diverged" in rec["error"]


def test_a_fine_tune_loss_that_explodes_finitely_stops_the_run(capsys, data_root, tmp_path):
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "all", "--lr", "1e3", "--epochs", "2"]
    code = main(["run", *args, *common(data_root, tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "over 1e+06 times its first value" in err and err.count("\n") == 1, err
    assert not list((tmp_path / "r").glob("runs/*.csv"))
    assert main(["sweep", *args, "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
                 "--results-dir", str(tmp_path / "s")]) == 1
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "s" / "failures").glob("*.json")]
    assert rec["kind"] == "run" and "over 1e+06 times its first value" in rec["error"]
