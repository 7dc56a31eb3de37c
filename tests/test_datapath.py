"""The read-ahead data path (bench.datapath): the bytes that arrive, early exits and errors, and the
same numbers as a plain loop on CPU (extraction, fine-tuning with and without the cached prefix)."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench import datapath
from bench.cli import main
from bench.features import extract
from bench.preprocess import Preprocess

CPU = torch.device("cpu")


@pytest.fixture
def mapped(tmp_path) -> np.ndarray:
    """A read-only memory-mapped uint8 image array, as a large dataset file is read."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npy"
    np.save(path, rng.integers(0, 256, (37, 28, 28, 3), dtype=np.uint8))
    return np.load(path, mmap_mode="r")


def _reader_threads() -> int:
    return sum(t.name == "bench-datapath" for t in threading.enumerate())


def test_batches_arrive_in_order_with_the_source_bytes(mapped):
    order = np.random.default_rng(1).permutation(len(mapped))
    index = [np.sort(order[s:s + 8]) for s in range(0, len(mapped), 8)] + datapath.sequential(len(mapped), 10)
    got = list(datapath.batches_of(mapped, index, CPU))
    assert [i is j for (i, _), j in zip(got, index)] == [True] * len(index)
    for i, t in got:
        assert t.dtype == torch.uint8 and np.array_equal(t.numpy(), mapped[i])
        assert t.numpy().flags.writeable and not isinstance(t.numpy().base, np.memmap)  # read now, not later
    assert _reader_threads() == 0


def test_leaving_early_stops_the_reader_and_errors_reach_the_caller(mapped):
    batches = datapath.device_batches(mapped, datapath.sequential(len(mapped), 2), CPU, depth=1)
    next(batches)
    batches.close()
    assert _reader_threads() == 0

    class Broken:
        shape, dtype = (4, 2), np.dtype(np.uint8)

        def __len__(self):
            return 4

        def __getitem__(self, index):
            raise OSError("disk read failed")

    with pytest.raises(OSError, match="disk read failed"):
        list(datapath.device_batches(Broken(), [slice(0, 2), slice(2, 4)], CPU))
    assert _reader_threads() == 0


def _old_extract(fn, images, pre, batch_size):
    """The frozen pass as it was before the reader: one synchronous batch after another."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(fn(pre(pre.to_device(images[start:start + batch_size], CPU))).float().numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("resize", ["resize", "pad-normalized"])
def test_extraction_is_bit_identical_to_the_plain_loop(mapped, resize):
    torch.manual_seed(0)
    fn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    pre = Preprocess(40, resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ours = extract(fn, mapped, pre, CPU, batch_size=8, quiet=True)
    assert ours.dtype == np.float32 and np.array_equal(ours, _old_extract(fn, mapped, pre, 8))
    gray = np.ascontiguousarray(mapped[..., 0])  # (B,H,W): the 1-channel layout
    assert np.array_equal(extract(fn, gray, pre, CPU, batch_size=5, quiet=True), _old_extract(fn, gray, pre, 5))


def _plain_batches(source, batches, device, depth=datapath.DEPTH, ring=None):
    """The reader's contract without a thread, read-ahead or buffers."""
    for index in batches:
        yield torch.from_numpy(np.ascontiguousarray(source[index])).to(device)


@pytest.mark.parametrize("extra", [[], ["--augment", "light"]])
def test_finetune_numbers_do_not_depend_on_the_reader(capsys, data_root, tmp_path, monkeypatch, extra):
    """Cached prefix (no augmentation) and images every step (augmentation): the same curves and
    scores with the threaded reader as with a plain synchronous one."""
    args = ["run", "--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "2",
            "--batch-size", "16", "--limit", "40", "--dataset", "breastmnist", "--data-root", str(data_root),
            "--skip-md5", "--device", "cpu", "-q", *extra]
    assert main([*args, "--results-dir", str(tmp_path / "threaded")]) == 0
    monkeypatch.setattr(datapath, "device_batches", _plain_batches)
    assert main([*args, "--results-dir", str(tmp_path / "plain"), "--cache-dir", str(tmp_path / "c2")]) == 0
    capsys.readouterr()
    for sub in ("curves", "runs"):
        a, b = (pd.read_csv(next((tmp_path / d / sub).glob("*.csv"))) for d in ("threaded", "plain"))
        pd.testing.assert_frame_equal(a, b)
    a, b = (np.load(next((tmp_path / d / "scores").glob("*.npz")))["y_score"] for d in ("threaded", "plain"))
    assert np.array_equal(a, b)


# -- execution options: --channels-last, --compile, --device, --precision ----------------------------

def _run(data_root, results, *extra, cache=None):
    args = ["run", "--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--limit", "32",
            "--head-epochs", "2", "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--device", "cpu", "--results-dir", str(results), *(["--cache-dir", str(cache)] if cache else []), *extra]
    return main(args)


def _outcome(results):
    import json

    meta = json.loads(next((results / "meta").glob("*.json")).read_text())
    df = pd.read_csv(next((results / "runs").glob("*.csv")))
    return meta, df[df.split == "test"].set_index("metric").value


def test_channels_last_keeps_the_run_id_has_its_own_cache_entry_and_close_numbers(capsys, data_root, tmp_path):
    assert _run(data_root, tmp_path / "plain", "-q") == 0
    assert _run(data_root, tmp_path / "cl", "--channels-last") == 0
    err = capsys.readouterr().err
    assert "features train: extracted" in err  # not the entry the plain run wrote
    (m0, t0), (m1, t1) = _outcome(tmp_path / "plain"), _outcome(tmp_path / "cl")
    assert m0["run_id"] == m1["run_id"]
    assert m0["execution"] == {"channels_last": False, "compile": "off"}
    assert m1["execution"]["channels_last"] is True
    pd.testing.assert_series_equal(t0, t1, atol=1e-3, check_exact=False)
    # the same id is done: a later run with the option reads the result back
    assert _run(data_root, tmp_path / "cl", "--channels-last") == 0
    assert "already done" in capsys.readouterr().err


def test_compile_runs_the_frozen_part_through_dynamo(capsys, data_root, tmp_path, monkeypatch):
    calls = []
    real = torch.compile

    def eager_backend(fn, **kw):  # inductor needs minutes on 2 cores; dynamo's capture is what we test
        calls.append(fn)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_backend)
    assert _run(data_root, tmp_path / "plain", "-q") == 0
    assert _run(data_root, tmp_path / "compiled", "-q", "--compile") == 0
    (m0, t0), (m1, t1) = _outcome(tmp_path / "plain"), _outcome(tmp_path / "compiled")
    assert len(calls) == 1 and m1["execution"]["compile"] == {calls[0].__class__.__name__: "on"}
    pd.testing.assert_series_equal(t0, t1, atol=1e-4, check_exact=False)
    assert m0["run_id"] == m1["run_id"]


def test_compile_that_fails_warns_once_and_runs_eager(capsys, data_root, tmp_path, monkeypatch):
    def broken(fn, **kw):
        def call(x):
            raise RuntimeError("inductor: no C++ compiler found\nlong traceback ...")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    assert _run(data_root, tmp_path / "plain", "-q") == 0
    assert _run(data_root, tmp_path / "compiled", "-q", "--compile") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "--compile" in line]
    assert warnings == ["bench: warning: --compile: torch.compile failed (RuntimeError: inductor: no C++ "
                        "compiler found); running eager"]
    (m0, t0), (m1, t1) = _outcome(tmp_path / "plain"), _outcome(tmp_path / "compiled")
    pd.testing.assert_series_equal(t0, t1)  # eager: the very same numbers
    assert next(iter(m1["execution"]["compile"].values())).startswith("failed, eager: RuntimeError")


def test_execution_options_enter_the_cache_key_only_when_on():
    from bench.run_config import make_run_options
    from bench.context import feature_parts
    from bench.execution import cache_parts
    from bench.resolve import resolve

    cfg = resolve("dummy", "breastmnist")
    plain = feature_parts(cfg, "w", "md5", "train", execution=cache_parts(make_run_options()))
    assert plain == feature_parts(cfg, "w", "md5", "train")  # existing entries keep their key
    on = cache_parts(make_run_options(channels_last=True, compile=True))
    assert on == {"channels_last": True, "compile": True}
    assert feature_parts(cfg, "w", "md5", "train", execution=on) != plain


def test_precision_per_device():
    from bench.features import autocast, precision

    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert [precision(cpu, p) for p in ("auto", "bf16", "fp16", "fp32")] == ["fp32"] * 4
    assert [precision(mps, p) for p in ("auto", "bf16", "fp16", "fp32")] == ["fp32", "bf16", "fp16", "fp32"]
    ctx = autocast(mps, "fp16")
    assert isinstance(ctx, torch.autocast) and ctx.device == "mps" and ctx.fast_dtype == torch.float16
