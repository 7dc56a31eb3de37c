"""Fine-tuning (`--unfreeze lastN|all`, trained heads): what trains, what must not move, prefix
caching, learning, the DeiT head on every family, resume after a kill, --save-model transfer,
the training options, and reproducibility. Everything runs on CPU with random/tiny backbones."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import backbones
import bench.train
from bench import augment
from bench.cli import main
from bench.run_config import parse_unfreeze
from bench.errors import UserError
from bench.resolve import resolve
from bench.train import Checkpoint, class_weights, epoch_order, lr_factor, param_groups, plan_for
from conftest import write_synthetic_npz

# name -> (variant, CLI flags). Every family at 32 px with random weights: no download anywhere,
# and `--head deit` then builds a random DeiT too.
FAMILIES = {
    "dummy": ("tiny", ["--backbone", "dummy", "--variant", "tiny"]),
    "resnet18": ("tv_in1k", ["--backbone", "resnet18"]),
    "deit": ("tiny", ["--backbone", "deit", "--variant", "tiny"]),
    "dino": ("tiny", ["--backbone", "dino", "--variant", "tiny"]),
    "dinov2": ("tiny", ["--backbone", "dinov2", "--variant", "tiny"]),
    "clip": ("tiny", ["--backbone", "clip", "--variant", "tiny"]),
    "sam": ("tiny", ["--backbone", "sam", "--variant", "tiny"]),
    "blip": ("tiny", ["--backbone", "blip", "--variant", "tiny"]),
    "timm:resnet10t": (None, ["--backbone", "timm:resnet10t"]),
}
CNNS = ("dummy", "resnet18", "timm:resnet10t")
SIZE = 32


def require(name: str) -> None:
    """Skip (only) when an adapter module does not import yet; any other error is a failure."""
    try:
        backbones.get(name)
    except ImportError as e:
        pytest.skip(f"adapter for {name!r} does not import: {e}")


def build(name: str):
    require(name)
    variant = FAMILIES[name][0]
    return backbones.build(name, variant, "random", input_size=SIZE)


def family_flags(name: str) -> list[str]:
    require(name)
    return [*FAMILIES[name][1], "--weights", "random", "--input-size", str(SIZE)]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_ok(capsys, *args: str) -> str:
    """Run, assert success, return the run id."""
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return out.split(":", 1)[0].strip()


def common(data_root: Path, results: Path, quiet: bool = True) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(results), "--device", "cpu", *(["-q"] if quiet else [])]


def run_csvs(results: Path) -> list[Path]:
    return sorted((results / "runs").glob("*.csv"))


def scores(results: Path, run_id: str) -> np.ndarray:
    return np.load(results / "scores" / f"{run_id}.npz")["y_score"]


def curves(results: Path, run_id: str) -> pd.DataFrame:
    return pd.read_csv(results / "curves" / f"{run_id}.csv")


def final_test_metrics(results: Path, run_id: str) -> pd.Series:
    df = pd.read_csv(results / "runs" / f"{run_id}.csv")
    return df[df.split == "test"].set_index("metric").value


def ids(params) -> set[int]:
    return {id(p) for p in params}


# --- 1. which parameters train ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_trainable_parameter_sets(name):
    model = build(name)
    n_blocks = model.num_blocks
    everything = ids(model.parameters())
    readout = ids(p for m in model.readout_modules() for p in m.parameters())

    assert parse_unfreeze("none", n_blocks) == 0 and model.trainable_parameters(0) == []
    for n in (1, 2):
        if n > n_blocks:
            continue
        expected = ids(p for b in model.blocks[n_blocks - n:] for p in b.parameters()) | readout
        got = model.trainable_parameters(parse_unfreeze(f"last{n}", n_blocks))
        assert len(got) == len(ids(got)), "a parameter is listed twice"
        assert ids(got) == expected
        assert not ids(got) & ids(p for b in model.blocks[:n_blocks - n] for p in b.parameters())
    got_all = model.trainable_parameters(parse_unfreeze("all", n_blocks))
    assert ids(got_all) == everything and len(got_all) == len(everything)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("unfreeze", ["none", "last1", "last2", "all"])
def test_optimizer_groups_hold_exactly_trainable_and_head(name, unfreeze):
    model = build(name)
    cfg = resolve(name, "breastmnist", variant=FAMILIES[name][0], weights="random", input_size=SIZE,
                  head="mlp", unfreeze=unfreeze)
    plan = plan_for(cfg, model)
    n = parse_unfreeze(unfreeze, model.num_blocks)
    assert plan.k == model.num_blocks - n
    assert plan.train_stem == (unfreeze == "all")
    assert plan.cache_prefix == (unfreeze != "all")  # augment none: the frozen prefix is cached
    head = bench.train.build_head(cfg, model, 2)
    groups = param_groups(cfg, model, head, plan)
    in_groups = [p for g in groups for p in g["params"]]
    assert len(in_groups) == len(ids(in_groups)), "a parameter is in two optimizer groups"
    assert ids(in_groups) == ids(model.trainable_parameters(n)) | ids(head.parameters())


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in CNNS])
def test_position_embeddings_and_class_tokens_get_no_weight_decay(name):
    """param_groups' contract: "no weight decay on norms, biases, tokens and position embeddings"."""
    model = build(name)
    cfg = resolve(name, "breastmnist", variant=FAMILIES[name][0], weights="random", input_size=SIZE,
                  head="linear", unfreeze="all")
    head = bench.train.build_head(cfg, model, 2)
    groups = param_groups(cfg, model, head, plan_for(cfg, model))
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    markers = ("pos_embed", "position_embedding", "positional_embedding", "cls_token", "class_embedding",
               "reg_token")
    special = [(n, p) for n, p in model.named_parameters() if any(m in n for m in markers)]
    assert special, "no position embedding found"
    decayed = [n for n, p in special if wd[id(p)] != 0.0]
    assert not decayed, f"weight decay applied to {decayed}"


def test_deit_head_tokens_get_no_weight_decay():
    model = build("dummy")
    cfg = resolve("dummy", "breastmnist", weights="random", head="deit", head_arch="deit_tiny", unfreeze="none")
    head = bench.train.build_head(cfg, model, 2)
    groups = param_groups(cfg, model, head, plan_for(cfg, model))
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    decayed = [n for n, p in head.named_parameters() if n in ("cls_token", "pos_embed") and wd[id(p)] != 0.0]
    assert not decayed, f"the DeiT head's {decayed} get weight decay"


def test_layer_decay_scales_lr_from_head_down_to_stem():
    model = build("dummy")
    cfg = resolve("dummy", "breastmnist", weights="random", unfreeze="all", layer_decay=0.5, lr=1.0)
    head = bench.train.build_head(cfg, model, 2)
    groups = param_groups(cfg, model, head, plan_for(cfg, model))
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    top = model.num_blocks + 1
    assert all(lr[id(p)] == 1.0 for p in head.parameters())
    assert all(lr[id(p)] == 1.0 for p in model.norm.parameters())  # readout trains with the head
    for i, block in enumerate(model.blocks):
        assert all(lr[id(p)] == pytest.approx(0.5 ** (top - (i + 1))) for p in block.parameters())
    assert all(lr[id(p)] == pytest.approx(0.5 ** top) for p in model.stem_parameters())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_unfreeze_more_blocks_than_exist_is_one_line_exit_2(capsys, data_root, tmp_path, name):
    n_blocks = build(name).num_blocks
    code, out, err = run(capsys, *family_flags(name), "--unfreeze", f"last{n_blocks + 1}", "--dry-run",
                         *common(data_root, tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"only {n_blocks} blocks" in err and f"last1..last{n_blocks}" in err


def test_unfreeze_too_many_blocks_in_a_real_run(capsys, data_root, tmp_path):
    code, _, err = run(capsys, *family_flags("resnet18"), "--unfreeze", "last9", *common(data_root, tmp_path / "r"))
    assert code == 2 and "only 8 blocks" in err and err.count("\n") == 1
    assert not list((tmp_path / "r").rglob("*.csv"))


# --- 9. dry run counts ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dummy", "resnet18", "deit", "sam"])
def test_dry_run_trainable_parameters_grow_with_unfreeze(capsys, data_root, tmp_path, name):
    counts = {}
    for unfreeze in ("none", "last1", "last2", "all"):
        code, out, err = run(capsys, *family_flags(name), "--unfreeze", unfreeze, "--dry-run",
                             *common(data_root, tmp_path / "r"))
        assert code == 0, err
        counts[unfreeze] = json.loads(out)["trainable_parameters"]
    backbone = [counts[u]["backbone"] for u in ("none", "last1", "last2", "all")]
    total = [counts[u]["total"] for u in ("none", "last1", "last2", "all")]
    assert backbone[0] == 0 and backbone == sorted(set(backbone)), backbone  # strictly increasing
    assert total == sorted(set(total))
    assert backbone[-1] == counts["all"]["backbone_total"]
    assert [counts[u]["unfrozen_blocks"] for u in ("none", "last1", "last2")] == [0, 1, 2]
    assert counts["all"]["unfrozen_blocks"] == counts["all"]["blocks"]
    assert not (tmp_path / "r").exists()


def test_dry_run_with_deit_head_needs_no_download(capsys, data_root, tmp_path):
    """`--dry-run` builds the backbone with random weights ("counting parameters needs no
    download"); the DeiT head must not need the pretrained DeiT either."""
    code, out, err = run(capsys, "--backbone", "dummy", "--head", "deit", "--head-arch", "deit_tiny", "--dry-run",
                         *common(data_root, tmp_path / "r"))
    assert code == 0, err
    assert json.loads(out)["trainable_parameters"]["head"] > 0


# --- 2. frozen weights do not move ----------------------------------------------------------

@pytest.mark.parametrize("name,unfreeze,extra", [
    ("dummy", "last1", []),
    ("resnet18", "last1", []),
    ("dummy", "last2", ["--augment", "light"]),  # no prefix cache: the frozen prefix runs every batch
])
def test_frozen_weights_and_batchnorm_stats_bit_identical(capsys, data_root, tmp_path, captured, name, unfreeze, extra):
    results = tmp_path / "r"
    run_ok(capsys, *family_flags(name), "--unfreeze", unfreeze, "--epochs", "2", *extra, *common(data_root, results))
    [model], [before] = captured["models"], captured["init"]
    n = parse_unfreeze(unfreeze, model.num_blocks)
    k = model.num_blocks - n
    trainable = ids(model.trainable_parameters(n))
    after = model.state_dict()
    frozen_changed, trained_same = [], []
    for pname, p in model.named_parameters():
        same = torch.equal(before[pname], after[pname])
        if id(p) in trainable and same:
            trained_same.append(pname)
        if id(p) not in trainable and not same:
            frozen_changed.append(pname)
    assert not frozen_changed, f"frozen parameters changed: {frozen_changed[:5]}"
    assert not trained_same, f"trainable parameters did not change: {trained_same[:5]}"
    # BatchNorm statistics: frozen blocks and the stem keep theirs, the unfrozen blocks update
    bn_stats = [b for b, _ in model.named_buffers() if b.endswith(("running_mean", "running_var"))]
    assert bn_stats
    in_trained_block = lambda b: b.startswith("blocks.") and int(b.split(".")[1]) >= k  # noqa: E731
    moved = [b for b in bn_stats if not torch.equal(before[b], after[b])]
    assert [b for b in moved if not in_trained_block(b)] == []
    assert any(in_trained_block(b) for b in moved), "BatchNorm of the unfrozen blocks never updated"
    meta = json.loads(next((results / "meta").glob("*.json")).read_text())
    n_head = sum(p.numel() for p in captured["heads"][0].parameters())
    assert meta["selected"]["trainable_params"] == sum(p.numel() for p in model.trainable_parameters(n)) + n_head


# --- 3. prefix cache equivalence --------------------------------------------------------------

@pytest.mark.parametrize("name,unfreeze", [("dummy", "last2"), ("deit", "last1")])
def test_prefix_cache_gives_the_same_numbers(capsys, data_root, tmp_path, monkeypatch, name, unfreeze):
    args = [*family_flags(name), "--unfreeze", unfreeze, "--epochs", "2", "--batch-size", "32"]
    cached, recomputed, uncached = tmp_path / "cached", tmp_path / "again", tmp_path / "uncached"
    code, _, err = run(capsys, *args, *common(data_root, cached, quiet=False))
    assert code == 0 and err.count("computed once") == 3, err
    run_id = next(iter(run_csvs(cached))).stem
    code, _, err = run(capsys, *args, *common(data_root, recomputed, quiet=False))
    assert code == 0 and err.count("cache hit") == 3, err  # the prefix from disk
    with monkeypatch.context() as m:  # over the memory budget: batches are read from the file on disk
        m.setattr(bench.train, "PREFIX_MEMORY_BYTES", 0)
        assert run(capsys, *args, *common(data_root, tmp_path / "spilled"))[0] == 0
    assert np.array_equal(scores(tmp_path / "spilled", run_id), scores(cached, run_id))
    from bench.protocols import PROTOCOLS, register_protocol
    from bench.protocols.finetune import Finetune

    class NoTrainCache(Finetune):  # the protocol seam: same configs, train prefix recomputed every step
        name = "no-train-cache"

        def plan(self, cfg, model):
            return dataclasses.replace(super().plan(cfg, model), cache_prefix=False)

    register_protocol(NoTrainCache())
    try:
        code, _, err = run(capsys, *args, *common(data_root, uncached, quiet=False))
    finally:
        PROTOCOLS.unregister("no-train-cache")
    # without the train cache only val and test (never augmented) reuse their prefix
    assert code == 0 and "prefix stem+blocks[:2] train" not in err and err.count("prefix stem") == 2, err
    meta = {d: json.loads((d / "meta" / f"{run_id}.json").read_text()) for d in (cached, uncached)}
    assert meta[cached]["selected"]["prefix_cached"] == ["train", "val", "test"]
    assert meta[uncached]["selected"]["prefix_cached"] == ["val", "test"]
    assert np.array_equal(scores(cached, run_id), scores(recomputed, run_id))
    np.testing.assert_allclose(scores(uncached, run_id), scores(cached, run_id), atol=1e-5, rtol=0)
    a, b = curves(cached, run_id), curves(uncached, run_id)
    assert list(a.epoch) == list(b.epoch) == [1, 2]
    for col in ("train_loss", "val_loss", "val_auc", "val_acc", "lr"):
        np.testing.assert_allclose(a[col], b[col], atol=1e-5, rtol=0, err_msg=col)
    assert meta[cached]["selected"]["epoch"] == meta[uncached]["selected"]["epoch"]


# --- 4. learning ---------------------------------------------------------------------------

def test_val_auc_rises_on_a_harder_synthetic_set(capsys, tmp_path):
    root = tmp_path / "hard"
    write_synthetic_npz(root, "breastmnist", 28, n=(128, 64, 64), signal=6)
    results = tmp_path / "r"
    run_id = run_ok(capsys, "--backbone", "dummy", "--weights", "random", "--unfreeze", "last2", "--lr", "1e-3",
                    "--epochs", "5", "--warmup", "0", *common(root, results))
    c = curves(results, run_id)
    assert list(c.epoch) == [1, 2, 3, 4, 5] and (c.split == "val").all()
    assert c.val_auc.iloc[0] < 0.85, "saturated at epoch 1: the check below would prove nothing"
    assert c.val_auc.iloc[-1] > c.val_auc.iloc[0] + 0.1
    assert c.val_auc.iloc[-1] > 0.85
    assert c.train_loss.iloc[-1] < 0.5 * c.train_loss.iloc[0]
    assert final_test_metrics(results, run_id)["auc"] > 0.8


# --- 5. DeiT head on every family's tokens ------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_deit_head_on_every_adapter(capsys, data_root, tmp_path, captured, name):
    results = tmp_path / "r"
    run_id = run_ok(capsys, *family_flags(name), "--head", "deit", "--head-arch", "deit_tiny", "--epochs", "1",
                    "--limit", "16", *common(data_root, results))
    [model], [head] = captured["models"], captured["heads"]
    assert head.weights_id == "random"  # --weights random: the head's DeiT is random too
    model.eval()
    with torch.no_grad():
        h = model.run_blocks(model.stem(torch.zeros(1, 3, SIZE, SIZE)))
        tokens = model.tokens(h)
    assert tokens.ndim == 3
    if name in CNNS:  # feature map (B, C, H, W) flattened to H*W tokens of width C
        assert h.ndim == 4 and tokens.shape[1:] == (h.shape[2] * h.shape[3], h.shape[1])
    assert head.pos_embed.shape[1] == 1 + tokens.shape[1]  # own class token + every backbone token
    assert head.proj[0].in_features == tokens.shape[2]
    assert len(head.blocks) == 2
    meta = json.loads((results / "meta" / f"{run_id}.json").read_text())
    assert meta["selected"]["head"] == "deit" and meta["config"]["head_arch"] == "deit_tiny"
    assert len(curves(results, run_id)) == 1
    assert np.isfinite(scores(results, run_id)).all()


# --- 6. interrupted fine-tunes -----------------------------------------------------------------

# a short --checkpoint-every: saved at the end of the first epoch 10 ms after the last save (the
# default, minutes, would save only when training ends)
RESUME_ARGS = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "8",
               "--batch-size", "16", "--lr", "1e-3", "--checkpoint-every", "0.01"]
EVERY_EPOCH = ["--checkpoint-every", "1e-9"]  # every epoch ends later than that after the last save


def leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if ".tmp" in p.name]


def test_killed_finetune_resumes_and_matches_an_uninterrupted_run(capsys, data_root, tmp_path):
    results = tmp_path / "r"
    args = [*RESUME_ARGS, *common(data_root, results)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = results / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while not list(ckpt_dir.glob("*.pt")):
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    [ckpt] = list(ckpt_dir.glob("*.pt"))
    assert not run_csvs(results), "the run finished before the kill; nothing was interrupted"

    code, out, err = run(capsys, *[a for a in args if a != "-q"])
    assert code == 0, err
    assert "resuming fine-tune from epoch" in err
    resumed_from = int(err.split("resuming fine-tune from epoch ")[1].split()[0])
    assert 1 <= resumed_from < 8
    run_id = out.split(":", 1)[0]
    assert ckpt.stem == run_id
    assert [p.stem for p in run_csvs(results)] == [run_id]  # final results exactly once
    assert not ckpt.exists() and not list(ckpt_dir.glob("*"))
    assert not leftovers(results, Path(os.environ["BENCH_CACHE_DIR"]))
    c = curves(results, run_id)
    assert list(c.epoch) == list(range(1, 9))  # epochs before the kill are kept, none twice

    fresh = tmp_path / "fresh"
    assert run_ok(capsys, *RESUME_ARGS, *common(data_root, fresh)) == run_id
    assert np.array_equal(scores(results, run_id), scores(fresh, run_id))
    pd.testing.assert_frame_equal(c, curves(fresh, run_id))
    pd.testing.assert_series_equal(final_test_metrics(results, run_id), final_test_metrics(fresh, run_id))


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Stop a run (KeyboardInterrupt) right after the checkpoint of ``epoch`` is written."""
    save = Checkpoint.save

    def save_then_stop(self, *a, **kw):
        save(self, *a, **kw)
        if kw["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)


@pytest.mark.parametrize("extra", [
    [],
    ["--augment", "light", "--balance", "sampler"],  # augmentation and sampler generators resume
    ["--unfreeze", "all"],  # stem and every BatchNorm train
    ["--head", "mlp"],  # dropout in the head
], ids=["linear", "augment+sampler", "all-blocks", "mlp-head"])
def test_interrupted_run_resumes_to_the_same_numbers(capsys, data_root, tmp_path, monkeypatch, extra):
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "4",
            "--batch-size", "32", "--lr", "1e-3", *EVERY_EPOCH, *extra]
    ref = tmp_path / "ref"
    run_id = run_ok(capsys, *args, *common(data_root, ref))
    results = tmp_path / "r"
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 2)
        code, _, err = run(capsys, *args, *common(data_root, results))
    assert code == 130 and "rerun to resume" in err
    assert (results / "checkpoints" / f"{run_id}.pt").exists() and not run_csvs(results)
    code, _, err = run(capsys, *args, *common(data_root, results, quiet=False))
    assert code == 0 and "resuming fine-tune from epoch 2" in err, err
    assert not (results / "checkpoints" / f"{run_id}.pt").exists()
    pd.testing.assert_frame_equal(curves(results, run_id), curves(ref, run_id))
    assert np.array_equal(scores(results, run_id), scores(ref, run_id))


def test_unreadable_checkpoint_restarts_from_scratch(capsys, data_root, tmp_path):
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "2"]
    ref = tmp_path / "ref"
    run_id = run_ok(capsys, *args, *common(data_root, ref))
    results = tmp_path / "r"
    (results / "checkpoints").mkdir(parents=True)
    (results / "checkpoints" / f"{run_id}.pt").write_bytes(b"\x00 not a checkpoint")
    code, _, err = run(capsys, *args, *common(data_root, results, quiet=False))
    assert code == 0 and "resuming" not in err, err
    assert np.array_equal(scores(results, run_id), scores(ref, run_id))
    assert not (results / "checkpoints" / f"{run_id}.pt").exists()


def test_checkpoint_that_fails_half_way_through_loading_restarts_cleanly(capsys, data_root, tmp_path, monkeypatch):
    """A checkpoint whose weights load but whose optimizer state does not (e.g. written by code
    with other parameter groups) is discarded; the restart must then begin from the initial
    weights, not from the half-loaded ones."""
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "3", "--lr", "1e-3",
            *EVERY_EPOCH]
    ref = tmp_path / "ref"
    run_id = run_ok(capsys, *args, *common(data_root, ref))
    results = tmp_path / "r"
    with monkeypatch.context() as m:
        interrupt_after_epoch(m, 2)
        assert run(capsys, *args, *common(data_root, results))[0] == 130
    path = results / "checkpoints" / f"{run_id}.pt"
    state = torch.load(path, weights_only=True)
    state["optim"]["param_groups"] = state["optim"]["param_groups"][:-1]  # one group fewer
    torch.save(state, path)
    code, _, err = run(capsys, *args, *common(data_root, results, quiet=False))
    assert code == 0 and "resuming" not in err, err
    pd.testing.assert_frame_equal(curves(results, run_id), curves(ref, run_id))
    assert np.array_equal(scores(results, run_id), scores(ref, run_id))


def resolve_run_id(capsys, data_root, results, args) -> str:
    code, out, err = run(capsys, *args, "--dry-run", *common(data_root, results))
    assert code == 0, err
    return json.loads(out)["run_id"]


def test_temp_checkpoint_of_a_process_killed_mid_save_is_cleaned_up(capsys, data_root, tmp_path):
    """A SIGKILL during Checkpoint.save leaves `.<run_id>.pt.tmp<pid>` behind (as large as the
    optimizer state); the run that finishes the fine-tune should not leave it there."""
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "1", "--limit", "16"]
    results = tmp_path / "r"
    run_id = resolve_run_id(capsys, data_root, results, args)
    stale = results / "checkpoints" / f".{run_id}.pt.tmp999999"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    assert run_ok(capsys, *args, *common(data_root, results)) == run_id
    assert not leftovers(results)


# --- 7. --save-model and transfer -------------------------------------------------------------

@pytest.mark.parametrize("name", ["dummy", "deit"])
def test_save_model_then_start_a_later_run_from_it(capsys, data_root, tmp_path, captured, name):
    from safetensors import safe_open
    from safetensors.torch import load_file

    results = tmp_path / "r"
    run_id = run_ok(capsys, *family_flags(name), "--unfreeze", "last1", "--epochs", "1", "--limit", "16",
                    "--save-model", *common(data_root, results))
    folder = results / "models" / run_id
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "head.safetensors"]
    [model], [head] = captured["models"], captured["heads"]
    saved = load_file(str(folder / "backbone.safetensors"))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # the trained (best) model
    assert any(not torch.equal(saved[k], captured["init"][0][k]) for k in saved)
    saved_head = load_file(str(folder / "head.safetensors"))
    assert all(torch.equal(saved_head[k], v) for k, v in head.state_dict().items())
    with safe_open(str(folder / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "medfm-bench-backbone" and f.metadata()["backbone"] == name

    second = run_ok(capsys, *family_flags(name), "--weights", str(folder / "backbone.safetensors"),
                    "--unfreeze", "last1", "--epochs", "1", "--limit", "16", *common(data_root, results))
    assert second != run_id
    start = captured["init"][1]
    assert start.keys() == saved.keys() and all(torch.equal(start[k], saved[k]) for k in saved)
    meta = json.loads((results / "meta" / f"{second}.json").read_text())
    assert meta["config"]["weights"] == str((folder / "backbone.safetensors").resolve())
    assert meta["backbone"]["weights_id"] not in ("random", "")


# --- 8. options --------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset,extra", [
    ("breastmnist", ["--balance", "weighted-loss"]),
    ("retinamnist", ["--balance", "weighted-loss"]),
    ("retinamnist", ["--balance", "sampler"]),
    ("chestmnist", ["--balance", "weighted-loss"]),  # multi-label: pos_weight
    ("chestmnist", ["--balance", "sampler"]),  # multi-label: falls back to a permutation
    ("breastmnist", ["--augment", "auto"]),
    ("breastmnist", ["--augment", "light"]),
    ("breastmnist", ["--augment", "paper"]),
    ("breastmnist", ["--schedule", "step"]),
    ("breastmnist", ["--schedule", "constant"]),
    ("breastmnist", ["--layer-decay", "0.75", "--unfreeze", "all"]),
], ids=lambda v: v if isinstance(v, str) else "_".join(a.lstrip("-") for a in v))
def test_training_options_run(capsys, data_root, tmp_path, dataset, extra):
    if dataset == "chestmnist":
        write_synthetic_npz(data_root, "chestmnist", 28, n=(64, 32, 32))
    results = tmp_path / "r"
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--epochs", "4", "--limit", "32",
            *extra, *common(data_root, results)]
    args[args.index("breastmnist")] = dataset
    run_id = run_ok(capsys, *args)
    c = curves(results, run_id)
    assert list(c.epoch) == [1, 2, 3, 4] and c.train_loss.notna().all()
    meta = json.loads((results / "meta" / f"{run_id}.json").read_text())
    for flag, value in zip(extra[::2], extra[1::2]):
        key = flag.lstrip("-").replace("-", "_")
        assert str(meta["config"][key]) == value
    assert ("train" in meta["selected"]["prefix_cached"]) == ("--augment" not in extra and "all" not in extra)
    if "--schedule" in extra:
        expected = {"constant": [1e-4] * 4, "step": [1e-4, 1e-4, 1e-5, 1e-6]}[extra[1]]
        np.testing.assert_allclose(c.lr, expected, rtol=1e-9)


@pytest.mark.parametrize("flag,value,match", [
    ("--schedule", "cosin", "schedule"),
    ("--balance", "weigthed-loss", "balance"),
    ("--augment", "ligth", "augment"),
    ("--epochs", "0", "epochs"),
    ("--batch-size", "0", "batch"),
])
def test_bad_finetune_option_is_one_line_exit_2(capsys, data_root, tmp_path, flag, value, match):
    code, _, err = run(capsys, "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1", "--limit", "16",
                       flag, value, *common(data_root, tmp_path / "r"))
    assert code == 2, f"{flag} {value} accepted (exit {code}): {err[-300:]}"
    assert match in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list((tmp_path / "r").rglob("*.csv"))


def test_lr_factor_schedules():
    cfg = resolve("dummy", "breastmnist", unfreeze="last1", epochs=4, warmup=1, schedule="cosine")
    spe = 10
    f = [lr_factor(cfg, s, spe) for s in range(40)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up over epoch 1
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:]))
    step = cfg.replace(schedule="step", warmup=0)
    assert [lr_factor(step, s, spe) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    const = cfg.replace(schedule="constant")
    assert all(lr_factor(const, s, spe) == 1.0 for s in range(10, 40))


def test_class_weights_and_sampler():
    labels = np.array([[0]] * 30 + [[1]] * 10)
    w = class_weights("binary-class", labels, 2)
    assert w.tolist() == pytest.approx([40 / 60, 40 / 20])
    ml = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    assert class_weights("multi-label, binary-class", ml, 2).tolist() == pytest.approx([1 / 3, 3.0])
    cfg = resolve("dummy", "breastmnist", unfreeze="last1", balance="sampler")
    order = epoch_order(cfg, "binary-class", labels, 4000, torch.Generator().manual_seed(0)).numpy()
    share = (labels[order, 0] == 1).mean()
    assert 0.45 < share < 0.55  # balanced, although only a quarter of the labels are 1
    plain = epoch_order(cfg.replace(balance="none"), "binary-class", labels, 40, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(40))


def test_augment_keeps_shape_and_is_deterministic_per_seed():
    x = torch.randn(6, 3, 32, 32)
    for name in ("light", "paper", "auto"):
        policy = augment.policy_for(name, "pathmnist")
        a = augment.apply(x, policy, torch.Generator().manual_seed(7))
        b = augment.apply(x, policy, torch.Generator().manual_seed(7))
        c = augment.apply(x, policy, torch.Generator().manual_seed(8))
        assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert augment.policy_for("none", "pathmnist") is None


def test_augment_geometry():
    x = torch.randn(8, 3, 16, 16)
    # the identity policy is the identity; a flip-only policy flips some images and keeps the rest
    same = augment.apply(x, augment.Policy(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = augment.apply(x, augment.Policy(hflip=True), torch.Generator().manual_seed(0))
    kinds = []
    for i in range(len(x)):
        if torch.allclose(flipped[i], x[i], atol=1e-5):
            kinds.append("same")
        else:
            torch.testing.assert_close(flipped[i], x[i].flip(-1), atol=1e-5, rtol=0)
            kinds.append("flip")
    assert set(kinds) == {"same", "flip"}


def test_auto_augment_respects_anatomy():
    from bench.datasets.medmnist import MODALITY

    chest = augment.policy_for("auto", MODALITY["chestmnist"])
    assert not (chest.hflip or chest.vflip or chest.rot90)
    path = augment.policy_for("auto", MODALITY["pathmnist"])
    assert path.hflip and path.vflip and path.rot90
    with pytest.raises(UserError, match="unknown augment"):
        augment.policy_for("ligth", "pathmnist")


# --- reproducibility ------------------------------------------------------------------------------

def test_same_seed_twice_gives_identical_finetune_results(capsys, data_root, tmp_path):
    args = ["--backbone", "dummy", "--weights", "random", "--unfreeze", "last1", "--head", "mlp",
            "--augment", "light", "--epochs", "2"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_id = run_ok(capsys, *args, *common(data_root, a))
    assert run_ok(capsys, *args, "--cache-dir", str(tmp_path / "fresh-cache"), *common(data_root, b)) == run_id
    assert np.array_equal(scores(a, run_id), scores(b, run_id))
    pd.testing.assert_frame_equal(curves(a, run_id), curves(b, run_id))
    other = run_ok(capsys, *args, "--seed", "1", *common(data_root, c))
    assert not np.array_equal(scores(a, run_id), scores(c, other))
