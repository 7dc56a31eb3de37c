"""What only a GPU can show (marked ``cuda``, skipped without one; benchmarks/gpu_check.sh runs
them): autocast bf16/fp16, the fp16 grad scaler, the pinned-memory reader and its stream sync, the
prefix cache, checkpoint resume, the local executor with two workers on one GPU, and channels-last
and compiled features against eager ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import backbones
from bench import datapath
from bench.cli import main
from bench.execution import Frozen, prepare
from bench.features import extract
from bench.preprocess import Preprocess

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _common(data_root: Path, results: Path) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--device", "cuda",
            "--results-dir", str(results), "--limit", "48"]


def _meta(results: Path) -> dict:
    return json.loads(next((results / "meta").glob("*.json")).read_text())


def _curves(results: Path) -> pd.DataFrame:
    return pd.read_csv(next((results / "curves").glob("*.csv")))


@pytest.fixture
def mapped(tmp_path) -> np.ndarray:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (70, 28, 28, 3), dtype=np.uint8))
    return np.load(tmp_path / "x.npy", mmap_mode="r")


def test_pinned_reader_delivers_every_batch_intact_while_the_gpu_is_busy(mapped):
    order = np.random.default_rng(1).permutation(len(mapped))
    index = [np.sort(order[s:s + 16]) for s in range(0, len(mapped), 16)] + datapath.sequential(len(mapped), 9)
    ring = datapath._PinnedRing()
    big = torch.randn(2048, 2048, device=CUDA)
    kept = []
    for t in datapath.device_batches(mapped, index, CUDA, ring=ring):
        assert t.device.type == "cuda" and t.dtype == torch.uint8
        for _ in range(4):  # keep the compute stream busy while the next copies are in flight
            big = (big @ big).tanh_()
        kept.append(t.sum(dim=tuple(range(1, t.ndim)), dtype=torch.int64))  # reads t on the compute stream
    torch.cuda.synchronize()
    want = [mapped[i].reshape(len(mapped[i]), -1).astype(np.int64).sum(1) for i in index]
    assert all(np.array_equal(k.cpu().numpy(), w) for k, w in zip(kept, want))
    assert all(b is not None and b.is_pinned() for b in ring.buffers)
    assert ring.allocated <= 4  # two buffers, grown at most once each (slices 9 rows, index 16 rows)


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_autocast_features_are_close_to_fp32(mapped, prec):
    if prec == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    torch.manual_seed(0)
    model = backbones.build("resnet18", None, "random", input_size=32).eval()
    pre = Preprocess(32, "resize", *model.normalization())
    ref = extract(model, mapped, pre, torch.device("cpu"), 16, quiet=True)
    model.to(CUDA)
    fp32 = extract(model, mapped, pre, CUDA, 16, quiet=True, requested_precision="fp32")
    half = extract(model, mapped, pre, CUDA, 16, quiet=True, requested_precision=prec)
    assert fp32.dtype == half.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(fp32 - ref).max() < 1e-2 * scale  # TF32 may be on for convolutions
    assert np.abs(half - ref).max() < 5e-2 * scale and not np.array_equal(half, fp32)


@pytest.mark.parametrize("name", ["resnet18", "deit@tiny"])
def test_channels_last_and_compiled_features_match_eager(mapped, name):
    backbone, _, variant = name.partition("@")
    mapped = mapped[:64]  # whole batches only: one compilation, no recompile for a shorter last batch
    torch.manual_seed(0)
    model = backbones.build(backbone, variant or None, "random", input_size=32).eval().to(CUDA)
    pre = Preprocess(32, "resize", *model.normalization())
    ref = extract(Frozen(model), mapped, pre, CUDA, 16, quiet=True, requested_precision="fp32")
    ref_bf16 = extract(Frozen(model), mapped, pre, CUDA, 16, quiet=True, requested_precision="bf16")
    compiled = Frozen(model, compile=True)
    comp = extract(compiled, mapped, pre, CUDA, 16, quiet=True, requested_precision="fp32")
    assert compiled.status == "on", compiled.status  # compiled, not the eager fallback
    prepare(model, True)
    cl = extract(Frozen(model, True), mapped, pre, CUDA, 16, quiet=True, requested_precision="fp32")
    cl_bf16 = extract(Frozen(model, True), mapped, pre, CUDA, 16, quiet=True, requested_precision="bf16")
    scale = np.abs(ref).max()
    # other kernels round differently: TF32 may be on for convolutions and matmuls, bf16 keeps 8 bits
    for other in (comp, cl):
        assert other.shape == ref.shape and np.abs(other - ref).max() < 1e-2 * scale
    assert np.abs(cl_bf16 - ref_bf16).max() < 5e-2 * scale
    assert np.abs(cl_bf16 - ref).max() < 5e-2 * scale


def test_fp16_fine_tune_uses_the_grad_scaler(data_root, tmp_path, monkeypatch, capsys):
    import bench.train

    scalers = []
    real = torch.amp.GradScaler

    def recording(*a, **k):
        scalers.append(real(*a, **k))
        return scalers[-1]

    monkeypatch.setattr(bench.train.torch.amp, "GradScaler", recording)
    args = ["run", "--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "2",
            "--precision", "fp16", *_common(data_root, tmp_path / "r"), "-q"]
    assert main(args) == 0, capsys.readouterr().err
    assert len(scalers) == 1 and scalers[0].is_enabled() and scalers[0].get_scale() > 0
    assert _meta(tmp_path / "r")["preprocess"]["precision"] == "fp16"
    assert np.isfinite(_curves(tmp_path / "r").train_loss).all()


def test_prefix_cache_on_cuda_is_hit_by_a_rerun(data_root, tmp_path, capsys):
    args = ["run", "--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--unfreeze", "last2",
            "--epochs", "2", *_common(data_root, tmp_path / "r")]
    assert main(args) == 0
    first = capsys.readouterr().err
    assert "prefix stem+blocks[:6] train: computed once" in first, first
    assert main([*args, "--force"]) == 0
    again = capsys.readouterr().err
    assert "prefix stem+blocks[:6] train: cache hit" in again, again
    assert _meta(tmp_path / "r")["device"].startswith("cuda")


def test_killed_fine_tune_resumes_on_cuda(data_root, tmp_path, monkeypatch, capsys):
    from bench.train import Checkpoint

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # same kernels in both runs
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    args = ["run", "--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "4",
            "--batch-size", "16", "--augment", "light", "--checkpoint-every", "1e-9"]
    assert main([*args, *_common(data_root, tmp_path / "ref"), "-q"]) == 0
    save = Checkpoint.save

    def save_then_stop(self, *a, **kw):
        save(self, *a, **kw)
        if kw["epoch"] == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "save", save_then_stop)
        assert main([*args, *_common(data_root, tmp_path / "r"), "-q"]) == 130
    state = torch.load(next((tmp_path / "r" / "checkpoints").glob("*.pt")), weights_only=True)
    assert "cuda" in state["rng"]
    capsys.readouterr()
    assert main([*args, *_common(data_root, tmp_path / "r")]) == 0
    assert "resuming fine-tune from epoch 2" in capsys.readouterr().err
    a, b = _curves(tmp_path / "r"), _curves(tmp_path / "ref")
    assert list(a.epoch) == list(b.epoch) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-4)  # GPU kernels: not bit-exact


def test_local_executor_runs_two_workers_on_one_gpu(data_root, tmp_path, capsys):
    if torch.cuda.device_count() != 1:
        pytest.skip("for a machine with one visible GPU (CUDA_VISIBLE_DEVICES=N)")
    results = tmp_path / "results"
    argv = ["sweep", "--backbone", "dummy", "--dataset", "breastmnist", "retinamnist", "--head", "linear", "knn",
            "--data-root", str(data_root), "--results-dir", str(results), "--skip-md5", "--limit", "32",
            "--head-epochs", "2", "--device", "cuda", "--executor", "local", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "2 local workers on GPUs" in out.err  # both pinned to the one visible GPU
    assert "4 done, 0 already done, 0 failed" in out.out, out.out
    metas = [json.loads(p.read_text()) for p in (results / "meta").glob("*.json")]
    assert len(metas) == 4 and all(m["device"].startswith("cuda") for m in metas)
