"""Regression tests for defects found in review: each one failed before its fix."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

import backbones
from bench import results
from bench.datasets import medmnist as data
from bench.cli import main
from bench.context import feature_parts
from bench.trained_heads import build_head
from conftest import write_synthetic_npz


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["run", *args])
    return code, capsys.readouterr().err


def common(data_root, results_dir) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(results_dir), "-q"]


@pytest.mark.parametrize("name,variant,size", [("deit", "tiny", 64), ("deit", "tiny_distilled", 64),
                                               ("dinov2", "tiny_reg", 56), ("clip", "tiny", 48)])
def test_deit_head_gives_patch_tokens_their_2d_positions(name, variant, size):
    model = backbones.build(name, variant, "random", input_size=size)
    head = build_head("deit", model, 2, size, arch="deit_tiny", pretrained=False)
    tokens = model.tokens(model.run_blocks(model.stem(torch.zeros(1, 3, size, size))))
    n_prefix = model.num_prefix_tokens
    assert n_prefix >= 1
    n_patches = tokens.shape[1] - n_prefix
    side = int(n_patches ** 0.5)
    assert side * side == n_patches
    pos = head.pos_embed.detach()
    assert pos.shape[1] == 1 + n_prefix + n_patches
    # prefix tokens share the CLS position; patches are a 2D resampling of a 14x14 grid
    assert torch.equal(pos[:, 1:1 + n_prefix], pos[:, :1].expand(-1, n_prefix, -1))
    assert head(tokens).shape == (1, 2)
    # the patch part is the 2D resampling of DeiT's 14x14 grid (before the fix: 1D over all tokens)
    from bench.trained_heads import _resize_pos_embed

    deit_pos = torch.randn(1, 197, 8)
    out = _resize_pos_embed(deit_pos, n_patches, n_prefix)
    img = deit_pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(img, size=(side, side), mode="bicubic", align_corners=False)
    assert torch.allclose(out[:, 1 + n_prefix:], expected.permute(0, 2, 3, 1).reshape(1, n_patches, 8))


def test_knn_with_unfreeze_is_refused(capsys, data_root, tmp_path):
    code, err = run(capsys, "--backbone", "dummy", "--head", "knn", "--unfreeze", "last1",
                    *common(data_root, tmp_path / "r"))
    assert code == 2 and "--head knn has nothing to train" in err


def test_frozen_readout_batchnorm_does_not_drift(capsys, data_root, tmp_path, captured):
    from bench.resolve import resolve
    from bench.assemble import build_backbone

    args = ["--backbone", "timm:efficientnet_b0", "--weights", "random", "--input-size", "32",
            "--head", "mlp", "--epochs", "1", "--limit", "16", *common(data_root, tmp_path / "r")]
    before = {k: v.clone() for k, v in build_backbone(resolve("timm:efficientnet_b0", "breastmnist",
              weights="random", input_size=32, head="mlp", epochs=1, limit=16)).state_dict().items()}
    code, err = run(capsys, *args)
    assert code == 0, err
    after = captured["models"][0].state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k].cpu())]
    assert changed == []  # no running statistic of the frozen backbone moved


def test_resume_after_early_stop_trains_no_further(capsys, data_root, tmp_path, monkeypatch):
    write_synthetic_npz(data_root, "breastmnist", 28, signal=6.0)
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "12",
            "--patience", "1", "--lr", "0.05"]
    assert run(capsys, *args, *common(data_root, tmp_path / "plain"))[0] == 0
    calls = {"n": 0}
    real_write = results.ResultStore.write_run

    def crash_once(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # killed after training, before the results exist
        return real_write(self, *a, **k)

    monkeypatch.setattr(results.ResultStore, "write_run", crash_once)
    assert run(capsys, *args, *common(data_root, tmp_path / "killed"))[0] == 130
    code, err = run(capsys, *args, *[a for a in common(data_root, tmp_path / "killed") if a != "-q"])
    assert code == 0 and "resuming fine-tune" in err
    curves = [pd.read_csv(next((d / "curves").glob("*.csv"))) for d in (tmp_path / "plain", tmp_path / "killed")]
    assert len(curves[0]) < 12  # it did stop early
    pd.testing.assert_frame_equal(curves[0], curves[1])
    assert not list((tmp_path / "killed" / "checkpoints").glob("*"))


def test_cache_key_has_precision_and_library_versions():
    from bench.resolve import resolve

    cfg = resolve("dummy", "breastmnist")
    parts = feature_parts(cfg, "w", "md5", "train")
    assert parts["precision"] == "fp32" and parts["libraries"]["torch"] == torch.__version__
    assert feature_parts(cfg, "w", "md5", "train", precision="bf16") != parts


@pytest.mark.parametrize("flags,match", [
    (["--unfreeze", "all", "--lr", "nan"], "--lr nan"),
    (["--unfreeze", "all", "--grad-clip", "nan"], "--grad-clip nan"),
    (["--device", "mps"], "MPS (Apple GPU) is not available here"),
    (["--device", "gpu0"], "--device 'gpu0': not one of auto|cpu|cuda|cuda:N|mps"),
    (["--device", "cuda:x"], "not one of auto|cpu|cuda|cuda:N|mps"),
    (["--input-size", "3"], "at least 16"),
    (["--resize", "none", "--input-size", "64"], "--resize none keeps 28 px"),
    (["--extract-batch-size", "0"], "--extract-batch-size 0"),
    (["--unfreeze", "last1", "--schedule", "cosin"], "did you mean: cosine"),
    (["--unfreeze", "last1", "--epochs", "0"], "--epochs 0"),
])
def test_more_bad_input_is_one_line_exit_2(capsys, data_root, tmp_path, flags, match):
    code, err = run(capsys, "--backbone", "dummy", *flags, *common(data_root, tmp_path / "r"))
    assert code == 2 and match in err and err.count("\n") == 1


def test_force_rerun_that_fails_to_write_keeps_the_old_result(capsys, data_root, tmp_path, monkeypatch):
    import errno

    from bench import fsio

    args = ["--backbone", "dummy", "--head", "knn", *common(data_root, tmp_path / "r")]
    assert run(capsys, *args)[0] == 0
    store = results.ResultStore(tmp_path / "r")
    run_id = next((tmp_path / "r" / "runs").glob("*.csv")).stem
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and "locks" not in p.parts}
    real = fsio._write_tmp

    def full_on_json(path, data):
        if str(path).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(fsio, "_write_tmp", full_on_json)
    code, err = run(capsys, *args, "--force")
    assert code == 2 and "No space left on device" in err
    assert store.is_done(run_id)
    after = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and "locks" not in p.parts}
    assert after == before  # the completed result as it was, and no temporaries


def test_fortran_order_arrays_survive_memory_mapping(tmp_path, monkeypatch):
    path = write_synthetic_npz(tmp_path, "breastmnist", 28, n=(12, 4, 4))
    arrays = dict(np.load(path))
    arrays["train_images"] = np.asfortranarray(arrays["train_images"])
    np.savez_compressed(path, **arrays)
    monkeypatch.setattr(data, "MMAP_THRESHOLD", 0)
    ds = data.load("breastmnist", 28, tmp_path, check_md5=False, cache_dir=tmp_path / "c")
    assert np.array_equal(ds.splits["train"].images, arrays["train_images"])
