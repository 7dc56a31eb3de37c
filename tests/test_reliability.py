"""Nothing lost, nothing silently wrong: full and read-only disks (real tmpfs mounts where this
runs as root; skipped otherwise), stale temporaries, half-written results, bad labels, bad
environment variables and sweep settings, and progress in logs."""
from __future__ import annotations

import contextlib
import re
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from conftest import write_synthetic_npz


def common(data_root: Path, results: Path, *extra: str) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--results-dir", str(results),
            "-q", *extra]


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["run", *args])
    return code, capsys.readouterr().err


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "locks" not in p.parts}


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m"):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts (a real full / read-only disk)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with open(folder / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    with contextlib.suppress(OSError):  # the last partial block
        with open(folder / "filler2", "wb") as f:
            while True:
                f.write(b"\0")
                f.flush()


# --- full and read-only disks -------------------------------------------------------------------

def test_force_rerun_on_a_full_disk_keeps_the_completed_result(capsys, data_root, tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        out = disk / "results"
        args = ["--backbone", "dummy", "--head", "knn", "--cache-dir", str(tmp_path / "cache"), *common(data_root, out)]
        assert run(capsys, *args)[0] == 0
        before = digest(out)
        fill(disk)
        code, err = run(capsys, *args, "--force")
        assert code == 2 and "No space left on device" in err and err.count("\n") == 1, err
        assert digest(out) == before  # every old file as it was, no temporaries beside them
        (disk / "filler").unlink()
        assert run(capsys, *args, "--force")[0] == 0  # with space again, the rerun completes


def test_read_only_results_folder_is_one_line_and_creates_nothing(capsys, data_root, tmp_path):
    with tmpfs(tmp_path / "ro") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, err = run(capsys, "--backbone", "dummy", *common(data_root, disk / "results"))
        assert code == 2 and "not writable" in err and err.count("\n") == 1, err
        assert not (disk / "results").exists()


def test_sweep_with_a_full_cache_disk_records_an_environment_failure_and_retries_it(capsys, data_root, tmp_path):
    with tmpfs(tmp_path / "cache", size="256k") as cache:
        fill(cache)
        argv = ["sweep", "--backbone", "dummy", "--dataset", "breastmnist", "--head", "knn", "--data-root",
                str(data_root), "--skip-md5", "--results-dir", str(tmp_path / "r"), "--cache-dir", str(cache)]
        assert main(argv) == 1
        out = capsys.readouterr()
        assert "0 done, 0 already done, 1 failed" in out.out and "environment failure" in out.err
        assert not list(cache.glob("features/*.tmp*"))  # the partial feature file was removed
        for p in cache.glob("filler*"):
            p.unlink()
        assert main(argv) == 0  # a full disk is not the run's fault: retried without --retry-failed
        assert "1 done" in capsys.readouterr().out


# --- half-written and stale state ---------------------------------------------------------------

def test_stale_temporaries_are_removed_and_a_header_only_csv_is_not_done(capsys, data_root, tmp_path):
    out = tmp_path / "r"
    args = ["--backbone", "dummy", "--head", "knn", *common(data_root, out)]
    assert run(capsys, *args)[0] == 0
    [csv] = (out / "runs").glob("*.csv")
    rid = csv.stem
    stale = [out / "meta" / f".{rid}.json.tmp99999", out / "runs" / f".{rid}.csv.tmp99999"]
    for p in stale:
        p.write_text("partial")
    csv.write_text(csv.read_text().splitlines()[0] + "\n")  # a copy cut short: header only
    code, err = run(capsys, *args)
    assert code == 0 and "already done" not in err
    assert len(csv.read_text().splitlines()) > 1 and not any(p.exists() for p in stale)


def test_an_early_bad_input_creates_no_folders(capsys, data_root, tmp_path):
    code, err = run(capsys, "--backbone", "dummy", "--head", "nope", *common(data_root, tmp_path / "r"))
    assert code == 2 and not (tmp_path / "r").exists()


# --- labels, splits, environment ----------------------------------------------------------------

@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(train_labels=a["train_labels"].astype(np.int64) - 1), "values -1"),
    (lambda a: a.update(val_labels=np.zeros((32, 2), np.uint8)), "shape (32, 2)"),
    (lambda a: a.update(test_labels=a["test_labels"].astype(np.float32) + 0.5), "fractional"),
    (lambda a: a.update(val_images=a["val_images"][:0], val_labels=a["val_labels"][:0]), "val split is empty"),
])
def test_bad_labels_and_empty_splits_are_one_line(capsys, tmp_path, mutate, match):
    path = write_synthetic_npz(tmp_path / "data", "breastmnist")
    arrays = dict(np.load(path))
    mutate(arrays)
    np.savez_compressed(path, **arrays)
    code, err = run(capsys, "--backbone", "dummy", *common(tmp_path / "data", tmp_path / "r"))
    assert code == 2 and match in err and err.count("\n") == 1, err
    assert not list((tmp_path / "r").glob("runs/*.csv"))


@pytest.mark.parametrize("var", ["BENCH_PROBE_TIMEOUT", "BENCH_MMAP_THRESHOLD", "BENCH_PROGRESS_SECONDS"])
def test_bad_environment_numbers_are_one_line(tmp_path, data_root, var):
    env = {**os.environ, var: "abc"}
    bench = str(Path(os.sys.executable).parent / "bench")
    p = subprocess.run([bench, "run", "--backbone", "dummy", *common(data_root, tmp_path / "r")], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2 and f"{var}='abc' is not" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr


@pytest.mark.parametrize("seed,ok", [(2**63 - 1, True), (2**63, False), (-1, False)])
def test_seeds_are_checked_against_the_generator_range(capsys, data_root, tmp_path, seed, ok):
    code, err = run(capsys, "--backbone", "dummy", "--head", "knn", "--seed", str(seed), *common(data_root, tmp_path / "r"))
    assert (code == 0) == ok, err
    if not ok:
        assert "--seed" in err and err.count("\n") == 1


# --- sweep settings -----------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text,match", [
    ('retry_failed: "no"\n', "retry_failed: expected true or false"),
    ("workers: abc\n", "workers: 'abc' is not a valid int"),
    ("threads: -3\n", "--threads -3: must be a finite number at least 1"),
    ("seeds: [0]\nseeds: [1]\n", "key 'seeds' is written twice"),
    ("executor: slrum\n", "did you mean: slurm"),
])
def test_sweep_settings_are_typed(capsys, tmp_path, yaml_text, match):
    f = tmp_path / "grid.yaml"
    f.write_text("backbones: [dummy]\ndatasets: [breastmnist]\n" + yaml_text)
    assert main(["sweep", str(f), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err


def test_sweep_prints_progress_with_eta(capsys, data_root, tmp_path):
    argv = ["sweep", "--backbone", "dummy", "--dataset", "breastmnist", "--head", "knn", "--seed", "0", "1",
            "--data-root", str(data_root), "--skip-md5", "--results-dir", str(tmp_path / "r")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/2] done" in err and "[2/2] done" in err and "ETA 0:00:00" in err


# --- caches -------------------------------------------------------------------------------------

def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _fewer_rows(p: Path) -> None:
    np.save(p, np.load(p)[:10])


def _flip_a_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-3] ^= 0xFF
    p.write_bytes(bytes(b))


def _objects(p: Path) -> None:
    np.save(p, np.array([object()] * 4), allow_pickle=True)


@pytest.mark.parametrize("damage", [_truncate, _fewer_rows, _flip_a_byte, _objects, lambda p: p.write_bytes(b"")])
def test_a_damaged_cache_entry_is_reported_and_rebuilt(capsys, data_root, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    args = ["--backbone", "dummy", "--head", "knn", "--cache-dir", str(cache), *common(data_root, tmp_path / "a")]
    assert run(capsys, *args)[0] == 0
    scores = np.load(next((tmp_path / "a" / "scores").glob("*.npz")))["y_score"]
    for p in (cache / "features").glob("*.npy"):
        damage(p)
    args = [a if a != str(tmp_path / "a") else str(tmp_path / "b") for a in args]
    code, err = run(capsys, *[a for a in args if a != "-q"])
    assert code == 0 and err.count("is unusable") == 3 and err.count("extracted") == 3, err
    again = np.load(next((tmp_path / "b" / "scores").glob("*.npz")))["y_score"]
    assert np.array_equal(scores, again)  # rebuilt, not served: the same numbers as the first run
    code, err = run(capsys, *[a for a in args if a != "-q"], "--force")
    assert code == 0 and err.count("cache hit") == 3 and "unusable" not in err


def test_a_truncated_memory_mapped_image_array_is_extracted_again(tmp_path, monkeypatch):
    from bench.datasets import medmnist

    path = write_synthetic_npz(tmp_path, "breastmnist", 28, n=(12, 4, 4))
    monkeypatch.setattr(medmnist, "MMAP_THRESHOLD", 0)
    ds = medmnist.load("breastmnist", 28, tmp_path, check_md5=False, cache_dir=tmp_path / "c")
    first = np.array(ds.splits["train"].images)
    del ds  # its memory map must be gone before the file is cut (else SIGBUS)
    for p in (tmp_path / "c" / "npy").rglob("train_images.npy"):
        _truncate(p)
    again = medmnist.load("breastmnist", 28, tmp_path, check_md5=False, cache_dir=tmp_path / "c")
    assert np.array_equal(first, np.asarray(again.splits["train"].images))
    assert path.exists()


def test_progress_lines_off_a_terminal(capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS_SECONDS", "0")
    code, err = run(capsys, "--backbone", "dummy", "--head", "knn", *[a for a in common(data_root, tmp_path / "r")
                                                                      if a != "-q"])
    assert code == 0 and "readout train: 96/96 img (100%)" in err and "img/s" in err, err


# --- report inputs ------------------------------------------------------------------------------

def _two_runs(capsys, data_root: Path, out: Path) -> list[str]:
    for backbone in ("dummy", "resnet18_28"):
        assert run(capsys, "--backbone", backbone, "--weights", "random", "--head", "knn", *common(data_root, out))[0] == 0
    return sorted(p.stem for p in (out / "runs").glob("*.csv"))


def _auc_7_5(out: Path, rid: str) -> None:
    p = out / "runs" / f"{rid}.csv"
    lines = p.read_text().splitlines()
    lines = [lines[0]] + [re.sub(r",[^,]*$", ",7.5", l) if ",test,auc," in l else l for l in lines[1:]]
    p.write_text("\n".join(lines) + "\n")


def _copied(out: Path, rid: str) -> None:
    (out / "runs" / f"{rid}-copy.csv").write_bytes((out / "runs" / f"{rid}.csv").read_bytes())


def _duplicated_rows(out: Path, rid: str) -> None:
    p = out / "runs" / f"{rid}.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + lines[1:]) + "\n")


def _garbage_scores(out: Path, rid: str) -> None:
    (out / "scores" / f"{rid}.npz").write_bytes(b"garbage")


def _short_scores(out: Path, rid: str) -> None:
    np.savez(out / "scores" / f"{rid}.npz", y_true=np.zeros(3), y_score=np.zeros((3, 2)))


def _meta_list(out: Path, rid: str) -> None:
    (out / "meta" / f"{rid}.json").write_text("[1, 2]")


@pytest.mark.parametrize("damage,reason", [
    (_auc_7_5, "test auc = 7.5 is out of its range"), (_copied, "a copied or merged file"),
    (_duplicated_rows, "written twice"), (_garbage_scores, "is unreadable"),
    (_short_scores, "has 3 labels"), (_meta_list, "holds a list, not a mapping"),
])
def test_report_skips_and_lists_invalid_runs(capsys, data_root, tmp_path, damage, reason):
    out = tmp_path / "r"
    good, bad = _two_runs(capsys, data_root, out)
    damage(out, bad)
    assert main(["report", "--results-dir", str(out), "--out", str(tmp_path / "rep"), "--format", "md",
                 "--n-boot", "20"]) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and reason in err, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "skipped because their files are invalid" in md and reason in md
    import pandas as pd

    # the skipped run is in no table: nothing of it is averaged in
    tables = [pd.read_csv(t) for t in (tmp_path / "rep" / "tables").glob("*.csv")]
    models = {str(m) for t in tables if "model" in t.columns for m in t["model"]}
    if damage is _copied:  # the original stays valid: the model is there, once
        assert "resnet18_28 (random)" in models and re.search(r"runs in report \| 2 \(of 2 completed", md), md
    else:
        assert models and not any(m.startswith("resnet18_28") for m in models), models


def test_report_out_that_is_a_file_is_one_line(capsys, data_root, tmp_path):
    out = tmp_path / "r"
    _two_runs(capsys, data_root, out)
    (tmp_path / "file").write_text("x")
    assert main(["report", "--results-dir", str(out), "--out", str(tmp_path / "file"), "--format", "md"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and err.count("\n") == 1


# --- identity of data ---------------------------------------------------------------------------

def test_a_different_file_under_the_same_name_is_a_different_run(capsys, tmp_path):
    import pandas as pd

    out = tmp_path / "r"
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_npz(a, "breastmnist", seed=0)
    write_synthetic_npz(b, "breastmnist", seed=1)
    for root in (a, b, a):
        code, err = run(capsys, "--backbone", "dummy", "--head", "knn", *common(root, out))
        assert code == 0, err
    runs = pd.concat(pd.read_csv(p) for p in (out / "runs").glob("*.csv"))
    assert runs.run_id.nunique() == 2  # a and b apart; a's second run was "already done"
    from bench.report.load import load_results

    rs = load_results(out)
    assert rs.rows.model.nunique() == 2  # never merged into one cell


def test_the_published_file_needs_no_data_fingerprint(capsys, shared_medmnist, tmp_path):
    from bench.resolve import resolve

    cfg = resolve("dummy", "breastmnist", head="knn")
    out = tmp_path / "r"
    assert run(capsys, "--backbone", "dummy", "--head", "knn", "--data-root", str(shared_medmnist), "--dataset",
               "breastmnist", "--results-dir", str(out), "-q")[0] == 0
    assert (out / "runs" / f"{cfg.run_id}.csv").exists()  # the id of the plain config: same data, same run


# --- training edge cases ------------------------------------------------------------------------

def test_a_last_batch_of_one_is_merged_for_batchnorm(capsys, data_root, tmp_path):
    from bench.train import batch_starts

    assert batch_starts(65, 64) == [0] and batch_starts(66, 64) == [0, 64] and batch_starts(1, 64) == [0]
    code, err = run(capsys, "--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--unfreeze",
                    "last1", "--limit", "65", "--batch-size", "64", "--epochs", "1",
                    *common(data_root, tmp_path / "r"))
    assert code == 0, err


def test_a_diverging_loss_stops_the_run_with_its_reason(capsys, data_root, tmp_path):
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "all", "--lr", "1e30", "--grad-clip", "0",
            "--epochs", "2"]
    code, err = run(capsys, *args, *common(data_root, tmp_path / "r"))
    assert code == 1 and "the training loss became nan" in err and err.count("\n") == 1, err
    assert not list((tmp_path / "r").glob("runs/*.csv"))
    argv = ["sweep", *args, "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(tmp_path / "s")]
    assert main(argv) == 1
    import json

    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "s" / "failures").glob("*.json")]
    assert rec["kind"] == "run" and "training loss became nan" in rec["error"]


def test_fine_tune_progress_off_a_terminal(capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_PROGRESS_SECONDS", "0")
    code, err = run(capsys, "--backbone", "dummy", "--weights", "random", "--head", "mlp", "--epochs", "3",
                    *[a for a in common(data_root, tmp_path / "r") if a != "-q"])
    assert code == 0 and "fine-tune: 1/3 epoch" in err and "fine-tune: 3/3 epoch (100%)" in err, err


def test_file_digests_are_remembered_on_disk_and_follow_changes(tmp_path, monkeypatch):
    import hashlib as _h

    from backbones import hub

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "data.bin"
    f.write_bytes(b"a" * 1000)
    hub._digest.cache_clear()
    assert hub.file_digest(f, "sha256") == _h.sha256(b"a" * 1000).hexdigest()
    [memo] = (tmp_path / "cache" / "digests").iterdir()  # the next process reads this, not the file
    assert memo.read_text() == _h.sha256(b"a" * 1000).hexdigest()
    hub._digest.cache_clear()
    os.utime(f, ns=(1, 1))  # another mtime is another key: the file is read again
    f.write_bytes(b"b" * 1000)
    assert hub.file_digest(f, "sha256") == _h.sha256(b"b" * 1000).hexdigest()
