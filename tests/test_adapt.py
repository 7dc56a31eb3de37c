"""`--adapt lora|bitfit` (bench.adapt): LoRA through peft on the layers each backbone names, BitFit,
trainable counts in dry runs and results, prefix caching under LoRA, saved adapters loading back,
run ids, sweep and cost. Tiny random backbones on CPU, nothing downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import backbones
from bench import adapt
from bench.cli import main
from bench.errors import UserError
from bench.resolve import resolve

SIZE = 32
# name -> variant; one per family: CNN (timm ResNet, the dummy), timm ViT, open_clip (MHA), SAM, BLIP
FAMILIES = {"dummy": "tiny", "resnet18": "tv_in1k", "deit": "tiny", "clip": "tiny", "sam": "tiny", "blip": "tiny"}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return backbones.build(name, FAMILIES[name], "random", input_size=SIZE).eval()


def expected_lora_params(model, blocks, r: int) -> int:
    """What LoRA of rank r adds, from the shapes of the layers it adapts (peft's layout: A is r x in
    (a conv A keeps the kernel), B is out x r; an nn.MultiheadAttention adapts in_proj and out_proj)."""
    total = 0
    for i in blocks:
        for name in model.lora_targets():
            try:
                m = model.blocks[i].get_submodule(name)
            except AttributeError:  # e.g. a downsample conv only the first block of a stage has
                continue
            if isinstance(m, nn.MultiheadAttention):
                e = m.embed_dim
                total += r * (e + 3 * e) + r * (e + e)
            elif isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                total += r * m.in_channels * kh * kw + m.out_channels * r
            else:
                total += r * (m.in_features + m.out_features)
    return total


def base_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- 1. LoRA through peft, per family ------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_adds_the_parameters_its_layer_shapes_imply(name):
    model = build(name)
    before = sum(p.numel() for p in model.parameters())
    k, r = model.num_blocks - 2, 4
    targets = model.lora_targets()
    if name in ("deit", "sam", "blip", "clip"):  # ViTs: attention projections only, no MLP
        assert targets and all("attn" in t for t in targets), targets
    else:  # CNNs: their convolutions
        layers = {n: m for b in model.blocks for n, m in b.named_modules()}
        assert targets and all(isinstance(layers[t], nn.Conv2d) for t in targets), targets
    expected = expected_lora_params(model, range(k, model.num_blocks), r)
    adapt.inject_lora(model, range(k, model.num_blocks), r, 8.0, 0.0, seed=0)
    lora = adapt.lora_parameters(model)
    assert expected > 0 and sum(p.numel() for p in lora) == expected
    assert sum(p.numel() for p in model.parameters()) == before + expected
    # only the adapted blocks hold LoRA layers; the frozen prefix is untouched
    assert not adapt.lora_parameters(model.blocks[:k])
    assert all(not any(".lora_" in n for n, _ in b.named_parameters()) for b in model.blocks[:k])


@pytest.mark.parametrize("name", ["deit", "clip", "resnet18"])
def test_lora_changes_outputs_only_after_training_and_leaves_base_weights(name):
    model = build(name)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        y0 = model(x)
    base = base_state(model)
    k = model.num_blocks - 2
    adapt.inject_lora(model, range(k, model.num_blocks), 4, 8.0, 0.0, seed=0)
    with torch.no_grad():
        y1 = model(x)
        # the stem/blocks/readout contract still holds after injection (a cached prefix, then the rest)
        y_contract = model.readout(model.run_blocks(model.run_blocks(model.stem(x), 0, k), k))
    assert torch.allclose(y0, y1, atol=1e-6), "LoRA must start as the identity (B = 0)"
    assert torch.allclose(y1, y_contract, atol=1e-6)
    lora = adapt.lora_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lora:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(lora, lr=1e-2)
    target = torch.randn_like(y0)
    for _ in range(3):
        loss = ((model(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is not None for p in lora)
    with torch.no_grad():
        y2 = model(x)
    assert not torch.allclose(y1, y2, atol=1e-4), "a few steps must change the outputs"
    # the original weights did not move (they sit under base_layer while adapted); peft adapts an
    # nn.MultiheadAttention (CLIP) by adding the update to its weights for each forward and
    # subtracting it after, which leaves rounding-level differences
    adapted = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert set(adapted) == set(base)
    fixed = [k for k in base if "running_" not in k and "num_batches" not in k]
    if name == "clip":
        assert all(torch.allclose(adapted[k], base[k], rtol=0, atol=1e-6) for k in fixed)
    else:
        assert all(torch.equal(adapted[k], base[k]) for k in fixed)
    # merging gives a plain backbone with the adapted function
    adapt.unload(model)
    assert set(model.state_dict()) == set(base) and not adapt.lora_parameters(model)
    with torch.no_grad():
        assert torch.allclose(model(x), y2, atol=1e-5)


def test_lora_init_is_seeded_and_does_not_move_the_global_generator():
    a, b = build("deit"), build("deit")
    torch.manual_seed(123)
    adapt.inject_lora(a, range(a.num_blocks), 4, 8.0, 0.0, seed=7)
    after = torch.rand(1)
    adapt.inject_lora(b, range(b.num_blocks), 4, 8.0, 0.0, seed=7)
    la, lb = adapt.lora_parameters(a), adapt.lora_parameters(b)
    assert all(torch.equal(p, q) for p, q in zip(la, lb))
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)


# --- 2. options, ids, errors ---------------------------------------------------------------------

def test_adapt_leaves_existing_ids_and_lora_options_only_under_lora(data_root):
    base = dict(dataset="breastmnist", unfreeze="last1", weights="random", variant="tiny")
    plain = resolve("deit", **base)
    assert resolve("deit", **base, adapt="none").run_id == plain.run_id
    # LoRA's knobs are not read by other adaptations, so they never change their ids
    assert resolve("deit", **base, adapt="none", lora_rank=4).run_id == plain.run_id
    assert resolve("deit", **base, adapt="none", lora_rank=4).lora_rank is None
    lora = resolve("deit", **base, adapt="lora")
    assert lora.lora_rank == 8 and "-last1-lora-" in lora.run_id and lora.run_id != plain.run_id
    assert resolve("deit", **base, adapt="lora", lora_rank=4).run_id != lora.run_id
    assert resolve("deit", **base, adapt="bitfit").run_id not in (plain.run_id, lora.run_id)
    probe = resolve("deit", dataset="breastmnist", weights="random", variant="tiny")
    assert probe.adapt == "none" and probe.lora_rank is None


@pytest.mark.parametrize("flags,msg", [
    (["--adapt", "lora"], "--unfreeze none selects none"),
    (["--adapt", "bitfit", "--head", "mlp"], "--unfreeze all"),
    (["--adapt", "lora", "--unfreeze", "all", "--head", "knn"], "--head knn"),
    (["--adapt", "lora", "--unfreeze", "all", "--lora-rank", "0"], "--lora-rank 0"),
    (["--adapt", "loar", "--unfreeze", "all"], "unknown adapt 'loar'"),
])
def test_bad_adapt_choices_are_one_line_errors(capsys, data_root, flags, msg):
    code = main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
                 "--skip-md5", "--dry-run", *flags])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


# --- 3. BitFit -----------------------------------------------------------------------------------

def test_bitfit_selects_biases_and_norms_only():
    model = build("deit")
    chosen = adapt.bitfit_parameters(model, model.trainable_parameters(model.num_blocks))
    names = {id(p): n for n, p in model.named_parameters()}
    got = sorted(names[id(p)] for p in chosen)
    norm_params = {n for mn, m in model.named_modules() if isinstance(m, nn.LayerNorm)
                   for n in (f"{mn}.weight", f"{mn}.bias")}
    biases = {n for n in names.values() if n.endswith(".bias")}
    assert set(got) == (norm_params | biases) and got
    assert not any(n.endswith(("qkv.weight", "proj.weight", "fc1.weight", "cls_token", "pos_embed")) for n in got)
    # norms of libraries that do not subclass torch's (SAM's LayerNorm2d) are found by their name
    from segment_anything.modeling.common import LayerNorm2d

    assert adapt.is_norm(LayerNorm2d(4)) and not adapt.is_norm(nn.Linear(4, 4))


# --- 4. through the CLI: counts, prefix cache, saved adapters ------------------------------------

def common(data_root: Path, results: Path) -> list[str]:
    return ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--results-dir", str(results),
            "--device", "cpu", "-q", "--weights", "random", "--input-size", str(SIZE), "--epochs", "2",
            "--batch-size", "32"]


def run_ok(capsys, *args: str) -> str:
    code = main(["run", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out.split(":", 1)[0].strip()


def dry_counts(capsys, *args: str) -> dict:
    assert main(["run", *args, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)["trainable_parameters"]


def test_bitfit_run_changes_only_biases_and_norms(capsys, data_root, tmp_path):
    results = tmp_path / "res"
    flags = ["--backbone", "deit", "--variant", "tiny", "--unfreeze", "all", "--adapt", "bitfit", "--lr", "1e-2"]
    rid = run_ok(capsys, *flags, *common(data_root, results), "--save-model")
    saved = load_file(str(results / "models" / rid / "backbone.safetensors"))
    before = build("deit").state_dict()
    changed = {k for k in before if not torch.equal(before[k], saved[k])}
    model = build("deit")
    expected = {n for n, p in model.named_parameters()
                if id(p) in {id(q) for q in adapt.bitfit_parameters(model, list(model.parameters()))}}
    assert changed and changed <= expected, sorted(changed - expected)[:5]
    meta = json.loads((results / "meta" / f"{rid}.json").read_text())
    n_bitfit = sum(before[k].numel() for k in expected)
    assert meta["trainable_parameters"]["backbone"] == n_bitfit
    assert dry_counts(capsys, *flags, *common(data_root, results))["backbone"] == n_bitfit


def test_lora_run_caches_the_prefix_and_its_adapter_loads_back(capsys, data_root, tmp_path):
    results = tmp_path / "res"
    flags = ["--backbone", "deit", "--variant", "tiny", "--unfreeze", "last1", "--adapt", "lora",
             "--lora-rank", "4", "--lr", "1e-2", "--head", "mlp"]
    rid = run_ok(capsys, *flags, *common(data_root, results), "--save-model")
    meta = json.loads((results / "meta" / f"{rid}.json").read_text())
    model = build("deit")
    k = model.num_blocks - 1
    n_lora = expected_lora_params(model, [k], 4)
    assert meta["trainable_parameters"]["backbone"] == n_lora and meta["trainable_parameters"]["adapt"] == "lora"
    assert meta["trainable_parameters"]["total"] == n_lora + meta["trainable_parameters"]["head"]
    assert dry_counts(capsys, *flags, *common(data_root, results))["backbone"] == n_lora
    # LoRA leaves stem + blocks[:k] untouched: their output is cached as for --unfreeze last1
    assert meta["selected"]["prefix_cached"] == ["train", "val", "test"]

    folder = results / "models" / rid
    merged = load_file(str(folder / "backbone.safetensors"))
    base = model.state_dict()
    assert set(merged) == set(base)  # the merged backbone is a plain one
    moved = {n for n in base if not torch.equal(base[n], merged[n])}
    assert moved and all(n.startswith(f"blocks.{k}.attn.") for n in moved), sorted(moved)
    adapter = load_file(str(folder / "adapter.safetensors"))
    assert sum(v.numel() for n, v in adapter.items() if ".lora_" in n) == n_lora
    assert all(n.startswith(f"blocks.{k}.") for n in adapter)

    # a later run: --weights adapter.safetensors rebuilds the base, loads and merges the adapter,
    # and gives the same model as the merged file
    x = torch.randn(4, 3, SIZE, SIZE)
    from_adapter = adapt.build("deit", "tiny", str(folder / "adapter.safetensors"), input_size=SIZE).eval()
    from_merged = backbones.build("deit", "tiny", str(folder / "backbone.safetensors"), input_size=SIZE).eval()
    with torch.no_grad():
        assert torch.allclose(from_adapter(x), from_merged(x), atol=1e-6)
        assert not torch.allclose(from_adapter(x), model(x), atol=1e-5)
    later = run_ok(capsys, "--backbone", "deit", "--variant", "tiny", "--dataset", "breastmnist",
                   "--data-root", str(data_root), "--skip-md5", "--results-dir", str(results), "--device", "cpu",
                   "-q", "--weights", str(folder / "adapter.safetensors"), "--input-size", str(SIZE),
                   "--head-epochs", "5")
    later_meta = json.loads((results / "meta" / f"{later}.json").read_text())
    assert later_meta["backbone"]["weights_id"].startswith("sha256:")
    assert later_meta["trainable_parameters"] == {"backbone": 0, "head": 32 * 2 + 2, "total": 32 * 2 + 2,
                                                  "adapt": "none"}

    with pytest.raises(UserError, match="was trained on deit@tiny"):
        adapt.build("dinov2", "tiny", str(folder / "adapter.safetensors"), input_size=SIZE)


def test_lora_under_unfreeze_all_keeps_the_stem_frozen_and_cached(capsys, data_root, tmp_path):
    results = tmp_path / "res"
    rid = run_ok(capsys, "--backbone", "dummy", "--unfreeze", "all", "--adapt", "lora", "--lr", "1e-2",
                 *common(data_root, results), "--save-model")
    meta = json.loads((results / "meta" / f"{rid}.json").read_text())
    assert meta["selected"]["prefix_cached"] == ["train", "val", "test"]  # the stem's output, once
    merged = load_file(str(results / "models" / rid / "backbone.safetensors"))
    base = build("dummy").state_dict()
    moved = {n for n in base if not torch.equal(base[n], merged[n])}
    assert moved and all(n.startswith("blocks.") for n in moved)  # stem and readout norm unchanged
    assert all(".conv." in n or "running_" in n or "num_batches" in n for n in moved), sorted(moved)


# --- 5. sweep and cost ---------------------------------------------------------------------------

def test_sweep_grid_takes_adapt_and_cost_counts_it(tmp_path, data_root):
    from bench.protocols import SplitSizes
    from bench.sweep import grid
    from bench.sweep.plan import resolve_points

    cfg_file = tmp_path / "g.yaml"
    cfg_file.write_text(
        "backbones: [dummy]\ndatasets: [breastmnist]\nsizes: [28]\nweights: random\n"
        "protocols:\n  - {unfreeze: last2}\n  - {unfreeze: last2, adapt: lora}\n  - {unfreeze: last2, adapt: bitfit}\n"
        "seeds: [0]\nfixed: {lora_rank: 4}\n"
        f"data_root: {data_root}\nresults_dir: {tmp_path / 'res'}\n")
    cfgs, _ = resolve_points(grid.load(cfg_file).points())
    by = {c.adapt: c for c in cfgs}
    assert set(by) == {"none", "lora", "bitfit"}
    assert by["lora"].lora_rank == 4 and by["none"].lora_rank is None and by["bitfit"].lora_rank is None
    assert len({c.run_id for c in cfgs}) == 3
    n = SplitSizes(100, 20, 20)
    cost = {a: c.protocol.cost(c, n, 4) for a, c in by.items()}
    assert cost["bitfit"] < cost["none"] and cost["lora"] == cost["none"]  # as measured by bench_adapt.py
    # LoRA under --unfreeze all caches the stem's output: the train split runs the blocks only
    lora_all, full = (c.replace(unfreeze="all") for c in (by["lora"], by["none"]))
    assert lora_all.protocol.shares(lora_all) is not None and full.protocol.shares(full) is None
    # the frozen prefix is shared by all three (same blocks frozen, same key)
    assert by["lora"].protocol.shares(by["lora"]) == by["none"].protocol.shares(by["none"])
    assert not np.isnan(cost["lora"])


# --- 6. the report's "how much adaptation" figure ---------------------------------------------------

def test_report_plots_metric_against_trainable_parameters(capsys, data_root, tmp_path):
    from bench.report import make_report
    from bench.report import figures as F
    from bench.report.load import load_results
    from bench.report.tables import Analysis

    results = tmp_path / "res"
    ways = {"linear probe": [], "last-N": ["--unfreeze", "last1"],
            "LoRA": ["--unfreeze", "all", "--adapt", "lora"], "BitFit": ["--unfreeze", "all", "--adapt", "bitfit"]}
    ids = {w: run_ok(capsys, "--backbone", "dummy", "--head-epochs", "5", *flags, *common(data_root, results))
           for w, flags in ways.items()}
    a = Analysis(load_results(results), "auc", None)
    labels = set(a.rs.rows.model)
    assert not any("lora_rank" in m for m in labels), labels  # a knob the other runs did not read
    meta = {w: json.loads((results / "meta" / f"{rid}.json").read_text()) for w, rid in ids.items()}
    assert {w: F.adaptation_kind(m["config"]) for w, m in meta.items()} == {w: w for w in ways}
    plain = meta["last-N"]["config"]
    assert F.adaptation_kind({**plain, "unfreeze": "all"}) == "full fine-tuning"
    assert F.adaptation_kind({**plain, "head": "deit", "unfreeze": "none"}) == "DeiT head"
    assert F.adaptation_kind({**plain, "head": "knn", "unfreeze": "none"}) is None  # trains nothing
    assert F.adaptation_kind({**plain, "train_fraction": 0.1}) is None  # another question (labels)
    counts = {w: F.trainable_total(m) for w, m in meta.items()}
    assert counts["linear probe"] == 32 * 2 + 2 and counts["linear probe"] < counts["BitFit"] < counts["LoRA"]
    assert counts["last-N"] == meta["last-N"]["selected"]["trainable_params"]
    fig, note = F.adaptation_figure(a)
    assert fig is not None and note is None and fig.png
    out = make_report(results, tmp_path / "rep", formats=("md", "png"), n_boot=20)
    md = (out / "report.md").read_text() if out.is_dir() else out.read_text()
    assert "How much adaptation" in md and (tmp_path / "rep" / "figures" / "metric_vs_trainable_parameters.png").exists()
