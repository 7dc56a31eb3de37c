"""At the user's scale: registries read their entry points once, planning asks per dataset and
backbone rather than per run, checkpoints follow the clock (and the end of training) and keep the
best weights without rewriting them, own images decode and fingerprint on several threads (processes
for DICOM) with the bytes of one, and a run's decode workers fit its share of the cores. No timings here: those
are benchmarks/bench_scale.py's."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.errors import UserError


def _counting(monkeypatch, obj, name: str) -> list:
    calls: list = []
    real = getattr(obj, name)

    def wrapper(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


# -- registries and planning -----------------------------------------------------------------------

def test_entry_points_are_read_once_per_process_until_refresh(monkeypatch):
    import backbones.registry as backbone_registry
    from bench import registry
    from bench.datasets import SOURCES
    from bench.protocols import PROTOCOLS

    calls = _counting(monkeypatch, metadata, "entry_points")
    registry.refresh()
    for _ in range(100):
        PROTOCOLS.names(), SOURCES.names(), backbone_registry.names()
        PROTOCOLS.get("probe"), SOURCES.get("medmnist"), backbone_registry.get("dummy")
        PROTOCOLS.all(), SOURCES.all()
        with pytest.raises(UserError, match="did you mean"):
            backbone_registry.get("dumy")
        with pytest.raises(UserError):
            PROTOCOLS.get("no-such-protocol")
    assert len(calls) == 1
    registry.refresh()  # explicit: a plugin installed since is seen
    backbone_registry.names()
    PROTOCOLS.names()
    assert len(calls) == 2


def test_a_registration_is_seen_at_once_by_memoised_lookups():
    """Planning memoises a config's protocol per registry generation: registering or removing a
    protocol makes the next lookup fresh."""
    from bench.protocols import PROTOCOLS, register_protocol
    from bench.protocols.probe import LinearProbe
    from bench.resolve import resolve

    cfg = resolve("dummy", "breastmnist", weights="random")
    assert cfg.protocol.name == "probe"

    class Mine(LinearProbe):
        name = "mine"

    register_protocol(Mine())
    try:
        assert cfg.protocol.name == "mine"  # registered ahead of the built-ins
    finally:
        PROTOCOLS.unregister("mine")
    assert cfg.protocol.name == "probe"


def test_planning_asks_each_dataset_once_not_each_run(monkeypatch, data_root):
    from bench.run_config import RunOptions
    from bench.datasets import SOURCES
    from bench.sweep.plan import Plan, summarize

    src = SOURCES.get("medmnist")
    sizes = _counting(monkeypatch, src, "n_samples")
    identity = _counting(monkeypatch, src, "identity")
    eps = _counting(monkeypatch, metadata, "entry_points")
    points = [{"backbone": b, "dataset": d, "head": h, "seed": s, "weights": "random", "head_epochs": 2}
              for b in ("dummy", "simplecnn") for d in ("breastmnist", "retinamnist")
              for h in ("linear", "knn") for s in range(6)]
    opts = RunOptions(data_root=data_root, skip_md5=True)
    plan = Plan.build(points, opts=opts)
    summarize(plan, opts, retry_failed=False)
    assert len(plan.runs) == 48
    assert len(sizes) <= 2 and len(identity) <= 2  # once per dataset (and size), not per run
    assert eps == []  # read before (once per process), not per lookup


def test_run_ids_survive_the_memos():
    """The run id is cached on the frozen config; pickling leaves the memos behind."""
    import pickle

    from bench.resolve import resolve

    cfg = resolve("dummy", "breastmnist", weights="random", head="knn")
    first = cfg.run_id
    assert cfg.protocol.name == "knn" and cfg.run_id == first
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.run_id == first and "_protocol" not in again.__dict__
    assert cfg.replace(seed=1).run_id != first


# -- checkpoints -----------------------------------------------------------------------------------

def _common(data_root: Path, results: Path) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(results), "--device", "cpu", "-q"]


FINETUNE = ["run", "--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "4",
            "--batch-size", "32", "--lr", "1e-3", "--patience", "0"]


def _saved_epochs(monkeypatch) -> list[int]:
    from bench.train import Checkpoint

    saved: list[int] = []
    real = Checkpoint.save

    def save(self, *a, **kw):
        saved.append(kw["epoch"])
        return real(self, *a, **kw)

    monkeypatch.setattr(Checkpoint, "save", save)
    return saved


@pytest.mark.parametrize("every,expected", [("1e6", [4]), ("0", []), ("1e-9", [1, 2, 3, 4])],
                         ids=["long-interval", "off", "every-epoch"])
def test_checkpoints_follow_the_clock_and_the_end(monkeypatch, capsys, data_root, tmp_path, every, expected):
    saved = _saved_epochs(monkeypatch)
    results = tmp_path / "r"
    assert main([*FINETUNE, "--checkpoint-every", every, *_common(data_root, results)]) == 0
    assert saved == expected  # a long interval: not every epoch, but at the end
    assert not list((results / "checkpoints").glob("*"))  # dropped once the results are written


def test_checkpoint_interval_is_not_in_the_run_id(capsys, data_root, tmp_path):
    ids = []
    for every in ("0", "1e6"):
        assert main([*FINETUNE, "--checkpoint-every", every, "--dry-run", *_common(data_root, tmp_path)]) == 0
        ids.append(json.loads(capsys.readouterr().out)["run_id"])
    assert ids[0] == ids[1]


def test_early_stop_is_checkpointed_at_the_epoch_it_stops(monkeypatch, capsys, data_root, tmp_path):
    from conftest import write_synthetic_npz

    write_synthetic_npz(data_root, "breastmnist", 28, signal=6.0)
    saved = _saved_epochs(monkeypatch)
    args = [*FINETUNE[:-2], "--epochs", "12", "--patience", "1", "--lr", "0.05", "--checkpoint-every", "1e6"]
    assert main([*args, *_common(data_root, tmp_path / "r")]) == 0
    curves = pd.read_csv(next((tmp_path / "r" / "curves").glob("*.csv")))
    assert len(curves) < 12 and saved == [int(curves.epoch.max())]


def test_best_weights_are_written_once_while_unchanged(monkeypatch, tmp_path):
    from bench.train import Checkpoint, _trainable_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen, aug = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def step() -> None:
        model.train()
        loss = model(torch.randn(16, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    writes = _counting(monkeypatch, torch, "save")
    ck = Checkpoint(tmp_path / "run.pt")

    def save(epoch: int, best: dict) -> None:
        ck.save(model, opt, gen, aug, epoch=epoch, best=best, curves=[{"epoch": epoch}], bad_epochs=0,
                stopped=False)

    def best_files() -> list[Path]:
        return sorted(tmp_path.glob("run.pt.best-e*"))

    step()
    best1 = {"value": 0.9, "val_loss": 0.3, "epoch": 1, "state": _trainable_state(model)}
    save(1, best1)
    assert len(writes) == 1 and best_files() == []  # the best is this save's own weights
    step()
    save(2, best1)  # the epoch-1 .pt becomes the best's file (a hard link): no bytes written for it
    [held] = best_files()
    assert len(writes) == 2 and held.name == "run.pt.best-e1"
    stamp = (held.stat().st_ino, held.stat().st_mtime_ns)
    for epoch in (3, 4):
        step()
        save(epoch, best1)
    assert len(writes) == 4 and best_files() == [held]
    assert (held.stat().st_ino, held.stat().st_mtime_ns) == stamp  # not rewritten while unchanged
    step()
    best5 = {"value": 0.95, "val_loss": 0.2, "epoch": 5, "state": _trainable_state(model)}
    step()  # epoch 5 improved but was not saved (the interval had not passed); epoch 6 is
    save(6, best5)
    assert len(writes) == 6 and [p.name for p in best_files()] == ["run.pt.best-e5"]  # its weights alone
    step()
    save(7, best5)
    assert len(writes) == 7
    current = _trainable_state(model)

    torch.manual_seed(1)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    fopt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = Checkpoint(tmp_path / "run.pt").load(fresh, fopt, torch.Generator(), torch.Generator())
    assert state is not None and state["epoch"] == 7 and state["best"]["epoch"] == 5
    for k, v in best5["state"].items():
        assert torch.equal(state["best"]["state"][k], v)
    for k, v in _trainable_state(fresh).items():
        assert torch.equal(v, current[k])
    Checkpoint(tmp_path / "run.pt").remove()
    assert list(tmp_path.iterdir()) == []


def test_a_missing_best_file_restarts_from_scratch(tmp_path):
    from bench.train import Checkpoint, _trainable_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    ck = Checkpoint(tmp_path / "run.pt")
    best = {"value": 1.0, "val_loss": 0.1, "epoch": 1, "state": _trainable_state(model)}
    ck.save(model, opt, torch.Generator(), torch.Generator(), epoch=1, best=best, curves=[])
    ck.save(model, opt, torch.Generator(), torch.Generator(), epoch=2, best=best, curves=[])
    for p in tmp_path.glob("run.pt.best-e*"):
        p.unlink()
    assert Checkpoint(tmp_path / "run.pt").load(model, opt, torch.Generator(), torch.Generator()) is None


# -- own images on several threads or processes ---------------------------------------------------------------

def _write_images(root: Path, n_per_class: int = 60) -> Path:
    rng = np.random.default_rng(0)
    shapes = ((20, 30), (33, 17), (24, 24), (40, 28))
    for c, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = shapes[i % len(shapes)]
            a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            a[c * h // 2:(c + 1) * h // 2] //= 3
            ext = ("png", "jpg", "bmp")[i % 3]
            Image.fromarray(a if i % 4 else a[..., 0]).save(root / name / f"{i}.{ext}")
    (root / "benign" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_parallel_decode_and_fingerprint_give_the_serial_bytes(tmp_path, monkeypatch, pool):
    from bench import datasets, parallel
    from bench.datasets import LoadOptions
    from bench.datasets import images

    root = _write_images(tmp_path / "own")
    if pool == "processes":  # a DICOM among the files: pydicom parses in Python, so processes decode
        pydicom = pytest.importorskip("pydicom")
        from test_own_data import _write_dicom

        _write_dicom(pydicom, root / "malignant" / "scan.dcm", np.arange(300, dtype=np.uint16).reshape(15, 20) * 9,
                     "MONOCHROME2")
    assert 2 * 60 >= images.PARALLEL_MIN  # enough images for the pool (1 unreadable of 121: < 1%)
    real, seen = parallel.run_tasks, []

    def watched(fn, tasks, workers, in_flight=None, threads=False):
        if fn is images._decode_chunk:
            seen.append((workers, threads))
        return real(fn, tasks, workers, in_flight, threads)

    monkeypatch.setattr(parallel, "run_tasks", watched)
    got = {}
    for workers in (1, 2):
        opts = LoadOptions(cache_dir=tmp_path / f"cache{workers}", splits_dir=tmp_path / f"splits{workers}",
                           quiet=True, workers=workers)
        got[workers] = datasets.load(f"folder:{root}", 16, opts)
    assert seen[-1] == (2, pool == "threads")
    one, two = got[1], got[2]
    assert one.fingerprint == two.fingerprint and one.n_channels == two.n_channels == 3
    assert one.extra["skipped_unreadable"] == two.extra["skipped_unreadable"] == ["benign/broken.png"]
    for s in ("train", "val", "test"):
        assert isinstance(two.splits[s].images, np.memmap)  # mapped from the cache, not loaded
        np.testing.assert_array_equal(one.splits[s].images, two.splits[s].images)
        np.testing.assert_array_equal(one.splits[s].labels, two.splits[s].labels)
    files = [sorted((tmp_path / f"cache{w}" / "decoded").glob("*/*")) for w in (1, 2)]
    assert [p.name for p in files[0]] == [p.name for p in files[1]] and len(files[0]) == 7
    for a, b in zip(*files):
        assert a.read_bytes() == b.read_bytes(), a.name  # every array and meta.json
    paths = sorted(root.rglob("*.*"))
    images._SHAS.clear()  # as a new process: read on two processes again
    shas = images.image_shas(paths, LoadOptions(cache_dir=tmp_path / "fresh", workers=2, quiet=True))
    assert shas == [images.file_sha(p) for p in paths]
    # the digests are remembered in one index file per dataset, not one file per image
    assert [p.name.startswith("images-") for p in (tmp_path / "fresh" / "digests").iterdir()] == [True]


def test_a_changed_image_is_read_again(tmp_path):
    from bench.datasets import LoadOptions
    from bench.datasets import images

    root = _write_images(tmp_path / "own", n_per_class=4)
    paths = sorted(root.rglob("*.png"))
    opts = LoadOptions(cache_dir=tmp_path / "c", workers=1, quiet=True)
    before = images.image_shas(paths, opts)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(paths[0])
    images._SHAS.clear()  # as a new process: only the index on disk is left
    after = images.image_shas(paths, opts)
    assert after[0] != before[0] and after[1:] == before[1:]
    assert after == [images.file_sha(p) for p in paths]


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16])
def test_sweep_workers_times_decode_workers_fit_the_cores(monkeypatch, cores):
    from bench import parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: cores)
    for run_workers in (None, 1, 2, 3, 4, 16):
        if run_workers is None:
            monkeypatch.delenv(parallel.RUN_WORKERS_ENV, raising=False)
        else:
            monkeypatch.setenv(parallel.RUN_WORKERS_ENV, str(run_workers))
        w = run_workers or 1
        for requested in (0, 1, 2, 5, 64):
            d = parallel.decode_workers(requested)
            assert d >= 1 and (w * d <= cores or d == 1), (cores, w, requested, d)
            assert d <= (requested or d)
        assert parallel.decode_workers(0) == max(1, cores // w)  # the default: the run's whole share


def test_local_sweep_workers_tell_runs_their_share(monkeypatch):
    from bench import parallel
    from bench.run_config import RunOptions
    from bench.datasets import load_options
    from bench.resolve import resolve
    from bench.sweep.executors import worker_envs

    envs = worker_envs(4, [], None)
    assert [e[parallel.RUN_WORKERS_ENV] for e in envs] == ["4"] * 4
    cfg = resolve("dummy", "breastmnist", weights="random")
    assert load_options(cfg, RunOptions(decode_workers=3)).workers == 3  # --decode-workers reaches the source
    assert load_options(cfg, RunOptions()).workers == 0


def test_folder_run_with_decode_workers_scores_as_with_one(capsys, tmp_path):
    root = _write_images(tmp_path / "own")
    scores = []
    for workers in ("1", "2"):
        results = tmp_path / f"r{workers}"
        argv = ["run", "--backbone", "dummy", "--weights", "random", "--dataset", f"folder:{root}", "--size", "16",
                "--head", "knn", "--results-dir", str(results), "--cache-dir", str(tmp_path / f"c{workers}"),
                "--device", "cpu", "--decode-workers", workers, "-q"]
        assert main(argv) == 0, capsys.readouterr().err
        with np.load(next((results / "scores").glob("*.npz"))) as z:
            scores.append(z["y_score"])
    np.testing.assert_array_equal(*scores)


# -- memory maps -----------------------------------------------------------------------------------

def _rss_file_mb() -> float:
    import re

    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+)", status).group(1)) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_pass_over_a_memory_map_keeps_about_a_batch_resident(tmp_path):
    """Extraction and fine-tuning read splits through bench.datapath: the pages of a batch leave
    the resident set once copied, so a split larger than RAM is not held whole (same bytes)."""
    from bench import datapath

    n, row = 4096, 16384  # 64 MiB
    a = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(n, row))
    a[:] = (np.arange(n, dtype=np.int64)[:, None] * 7 + np.arange(row)[None]) % 251
    a.flush()
    del a
    src = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = _rss_file_mb()
    total = 0
    for t in datapath.device_batches(src, datapath.sequential(n, 128), "cpu"):
        total += int(t[:, :3].sum())
    assert _rss_file_mb() - before < 16  # without the release: about 64
    assert total == int(((np.arange(n)[:, None] * 7 + np.arange(3)[None]) % 251).sum())
    np.testing.assert_array_equal(datapath.gather(src, slice(100, 140)), np.asarray(src[100:140]))


# -- timm specs without importing timm -------------------------------------------------------------

def test_a_timm_spec_is_remembered_per_timm_version(tmp_path):
    """Planning a sweep over timm:NAME backbones reads what their Specs are made of from a memo
    per timm version (timm's registry is code), so a later process need not import timm."""
    import os
    import subprocess
    import sys

    import backbones
    from backbones import timm_any

    name = "resnet10t.c3_in1k"
    timm_any.adapter_for.cache_clear()
    fresh = backbones.get(f"timm:{name}").spec  # from timm; remembered now
    memo = timm_any._memo_path()
    assert memo is not None and name in json.loads(memo.read_text())
    assert json.loads(memo.read_text())[name] == timm_any._describe(name)  # the memo is what timm says
    timm_any.adapter_for.cache_clear()
    assert backbones.get(f"timm:{name}").spec == fresh  # from the memo
    code = ("import sys, backbones; s = backbones.get('timm:resnet10t.c3_in1k').spec; "
            "print('timm' in sys.modules, s.input_size, s.variants, s.readouts)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         check=True).stdout.split()
    assert out[0] == "False" and out[1] == str(fresh.input_size)  # no import of timm for it
    with pytest.raises(UserError, match="no pretrained tag"):
        backbones.get("timm:resnet10t.c3_in2k")
    assert "resnet10t.c3_in2k" not in json.loads(memo.read_text())  # refusals are not remembered
