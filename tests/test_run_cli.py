"""`bench run` end to end through the CLI entry point: results, cache, resume, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.results import ROW_COLUMNS
from conftest import write_synthetic_npz


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def base(data_root, tmp_path):
    return ["--data-root", str(data_root), "--skip-md5", "--results-dir", str(tmp_path / "results"),
            "--head-epochs", "30"]


def only_csv(results):
    return sorted((results / "runs").glob("*.csv"))


def test_linear_probe_far_above_chance_and_tidy_csv(capsys, base, tmp_path):
    code, out, err = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", *base)
    assert code == 0, err
    [csv] = only_csv(tmp_path / "results")
    df = pd.read_csv(csv)
    assert tuple(df.columns) == ROW_COLUMNS
    test = df[df.split == "test"].set_index("metric").value
    assert test["auc"] > 0.9 and test["acc"] > 0.8  # chance is 0.5
    run_id = csv.stem
    meta = json.loads((csv.parent.parent / "meta" / f"{run_id}.json").read_text())
    assert meta["config"]["seed"] == 0 and meta["versions"]["torch"] == torch.__version__
    assert {"git", "timings", "device", "selected"} <= set(meta)
    scores = np.load(csv.parent.parent / "scores" / f"{run_id}.npz")
    assert scores["y_score"].shape == (48, 2) and scores["y_true"].shape == (48,)
    assert "test  acc" in out and str(csv) in out
    assert not list((tmp_path / "results").rglob("*.tmp*"))


def test_knn_on_ordinal_retinamnist(capsys, base, tmp_path):
    code, _, err = run(capsys, "--backbone", "dummy", "--dataset", "retinamnist", "--head", "knn",
                       "--seed", "1", *base)
    assert code == 0, err
    df = pd.read_csv(only_csv(tmp_path / "results")[0])
    assert {"kappa", "recall_4"} <= set(df.metric) and (df.seed == 1).all()
    assert df[(df.split == "test") & (df.metric == "auc")].value.item() > 0.7  # chance 0.5


def test_second_run_hits_cache_then_skips_then_force_reruns(capsys, base):
    args = ["--backbone", "dummy", "--dataset", "breastmnist", *base]
    code, _, err = run(capsys, *args)
    assert code == 0 and err.count("extracted") == 3
    code, out, err = run(capsys, *args)
    assert code == 0 and "skipped" in out
    code, _, err = run(capsys, *args, "--head", "knn")
    assert code == 0 and err.count("cache hit") == 3 and "extracted" not in err
    code, _, err = run(capsys, *args, "--force")
    assert code == 0 and err.count("cache hit") == 3


def test_same_seed_same_numbers_and_seed_changes_random_init(capsys, base, tmp_path):
    args = ["--backbone", "dummy", "--weights", "random", "--dataset", "breastmnist", *base]
    assert run(capsys, *args)[0] == 0
    first = pd.read_csv(only_csv(tmp_path / "results")[0])
    assert run(capsys, *args, "--force", "--cache-dir", str(tmp_path / "fresh"))[0] == 0
    again = pd.read_csv(only_csv(tmp_path / "results")[0])
    assert first.value.tolist() == again.value.tolist()
    assert run(capsys, *args, "--seed", "3")[0] == 0
    assert len(only_csv(tmp_path / "results")) == 2


def test_limit_is_recorded(capsys, base, tmp_path):
    assert run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", "--limit", "16", *base)[0] == 0
    df = pd.read_csv(only_csv(tmp_path / "results")[0])
    assert (df["limit"] == 16).all()


def test_dry_run_touches_nothing(capsys, base, tmp_path):
    code, out, _ = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", "--dry-run", *base)
    assert code == 0
    plan = json.loads(out)
    assert plan["trainable_parameters"]["head"] == 32 * 2 + 2
    assert plan["run_id"].startswith("dummy-breastmnist_28-linear-none-s0-")
    assert not (tmp_path / "results").exists()


def test_unfreeze_dry_run_counts_blocks(capsys, base):
    code, out, _ = run(capsys, "--backbone", "resnet18", "--weights", "random", "--dataset", "breastmnist",
                       "--unfreeze", "last2", "--dry-run", *base)
    counts = json.loads(out)["trainable_parameters"]
    assert code == 0 and counts["blocks"] == 8 and counts["unfrozen_blocks"] == 2
    assert 0 < counts["backbone"] < counts["backbone_total"]


@pytest.mark.parametrize("args,match", [
    (["--backbone", "resnet5O"], "unknown backbone 'resnet5O'; did you mean: resnet50"),
    (["--dataset", "breastmnis"], "unknown dataset 'breastmnis'; did you mean: breastmnist"),
    (["--size", "32"], "unknown size 32"),
    (["--head", "lineer"], "unknown head 'lineer'; did you mean: linear"),
    (["--unfreeze", "last-2"], "malformed --unfreeze 'last-2'"),
    (["--unfreeze", "last9"], "only 4 blocks"),
    (["--resize", "crop"], "unknown resize 'crop'"),
    (["--weights", "/nonexistent/w.pth"], "no such file"),
])
def test_bad_input_is_one_line_exit_2(capsys, base, tmp_path, args, match):
    argv = {"--backbone": "dummy", "--dataset": "breastmnist"}
    rest = []
    for k, v in zip(args[::2], args[1::2]):
        if k in argv:
            argv[k] = v
        else:
            rest += [k, v]
    flat = [x for kv in argv.items() for x in kv]
    code, out, err = run(capsys, *flat, *rest, *base)
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list((tmp_path / "results").rglob("*.csv"))


def test_md5_mismatch_without_skip(capsys, data_root, tmp_path):
    code, _, err = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
                       "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "expected 750601b1f35ba3300ea97c75c52ff8f6" in err and "--skip-md5" in err


def test_unreadable_npz(capsys, base, data_root):
    (data_root / "breastmnist.npz").write_bytes(b"\x00garbage")
    code, _, err = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", *base)
    assert code == 2 and "not a readable MedMNIST .npz" in err


def test_missing_weights_offline_is_fast_and_clear(capsys, base):
    import time

    t = time.perf_counter()
    code, _, err = run(capsys, "--backbone", "resnet18", "--dataset", "breastmnist", *base)
    assert code == 2 and time.perf_counter() - t < 10
    assert "timm/resnet18.tv_in1k/model.safetensors" in err and "bench weights fetch resnet18" in err
    assert err.count("\n") == 1


def test_weights_of_wrong_architecture(capsys, base, tmp_path):
    import timm

    path = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    code, _, err = run(capsys, "--backbone", "resnet18", "--weights", str(path), "--dataset", "breastmnist", *base)
    assert code == 2 and "do not fit backbone 'resnet18'" in err and "shape mismatches" in err


def test_local_timm_weights_file_loads(capsys, base, tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    code, _, err = run(capsys, "--backbone", "resnet18", "--weights", str(path), "--input-size", "32",
                       "--dataset", "breastmnist", "--limit", "16", *base)
    assert code == 0, err
    df = pd.read_csv(only_csv(tmp_path / "results")[0])
    assert df.weights.iloc[0] == str(path.resolve())


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir(capsys, base, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, _, err = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", *base[:3], "--results-dir", str(ro))
    assert code == 2 and "is a file, not a folder" in err


def test_results_dir_that_is_a_file(capsys, base, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "--backbone", "dummy", "--dataset", "breastmnist", *base[:3],
                       "--results-dir", str(blocker / "sub"))
    assert code == 2 and "is a file, not a folder" in err


@pytest.mark.slow
def test_real_breastmnist_resnet18_random(capsys, shared_medmnist, tmp_path):
    code, out, err = run(capsys, "--backbone", "resnet18", "--weights", "random", "--dataset", "breastmnist",
                         "--input-size", "64", "--data-root", str(shared_medmnist),
                         "--results-dir", str(tmp_path / "r"), "--head-epochs", "20")
    assert code == 0, err
    df = pd.read_csv(only_csv(tmp_path / "r")[0])
    assert set(df.split) == {"val", "test"} and df.value.notna().all()
    assert 0.0 <= df[df.metric == "auc"].value.min() <= 1.0
