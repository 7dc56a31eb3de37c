"""Layer-wise probing (--layers): per-layer features, layer indexing, one pass, rows per layer,
the disk cache shared with ordinary probes, memory (features of one layer at a time)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import bench
from backbones.base import Backbone, Spec
from bench.cli import main
from bench.errors import UserError
from bench.protocols.layers import after_blocks, parse_layers

SPEC = Spec(name="layertest", family="test", variants=("v",), default_variant="v", input_size=16,
            mean=(0.5,) * 3, std=(0.5,) * 3)


class _Add(nn.Module):
    def __init__(self, value: float, keep: float = 1.0) -> None:
        super().__init__()
        self.value, self.keep = value, keep

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.keep + self.value


class Marked(Backbone):
    """Block i adds i+1 (``keep=0`` from block ``wash`` on: the image is gone after it)."""

    def __init__(self, depth: int = 5, wash: int | None = None) -> None:
        super().__init__()
        self.spec, self.variant, self.embed_dim, self.input_size = SPEC, "v", 12, 16
        self.blocks = nn.ModuleList(_Add(float(i + 1), 0.0 if wash is not None and i >= wash else 1.0)
                                    for i in range(depth))
        self.scale = nn.Parameter(torch.ones(1))  # something to fingerprint

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)  # keeps where the band is

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2).transpose(1, 2)


def test_parse_layers():
    assert parse_layers("all", 4) == [1, 2, 3, 4]
    assert parse_layers("every:3", 12) == [3, 6, 9, 12]
    assert parse_layers("every:5", 12) == [5, 10, 12]  # the readout is always kept
    assert parse_layers("4, 1,4", 12) == [1, 4]
    assert parse_layers("all") is None and parse_layers("2,3") == [2, 3]
    for bad in ("", "every:0", "first", "1,,2", "0,3"):
        with pytest.raises(UserError):
            parse_layers(bad, 12)
    with pytest.raises(UserError, match="has 12 blocks"):
        parse_layers("13", 12)


def test_layer_indexing_is_blocks_run():
    """Layer k is the readout after exactly k blocks (block i adds i+1: the mean grows by k(k+1)/2)."""
    model = Marked(depth=5).eval()
    x = torch.zeros(2, 3, 16, 16)
    with torch.no_grad():
        outs = after_blocks(model, [1, 3, 5])(x)
    assert [float(o[0, 0]) for o in outs] == [1.0, 6.0, 15.0]


@pytest.mark.parametrize("name,variant", [("dummy", "tiny"), ("deit", "tiny"), ("resnet18_28", "scratch")])
def test_last_layer_equals_readout_exactly(name, variant):
    import backbones

    torch.manual_seed(0)
    model = backbones.build(name, variant, "random", input_size=28 if name == "resnet18_28" else 32).eval()
    x = torch.randn(3, 3, model.input_size, model.input_size)
    with torch.inference_mode():
        outs = after_blocks(model, list(range(1, model.num_blocks + 1)))(x)
        ref = model(x)
    assert len(outs) == model.num_blocks
    assert torch.equal(outs[-1], ref)
    assert all(o.ndim == 2 and o.shape[0] == 3 for o in outs)


# every built-in family on a tiny random model: (variant, input size)
TINY_MODELS = {
    "resnet18": ("tv_in1k", 64), "resnet50": ("tv_in1k", 64), "deit": ("tiny_distilled", 32), "dino": ("tiny", 32),
    "dinov2": ("tiny_reg", 28), "clip": ("tiny", 32), "sam": ("tiny", 32), "blip": ("tiny", 32),
    "biomedclip": ("tiny", 32), "rad-dino": ("tiny", 28), "medsam": ("tiny", 32), "retfound": ("tiny", 32),
    "uni": ("tiny", 32), "seem": ("tiny", 64), "simplecnn": ("scratch", 28), "timm:convnext_atto": (None, 64),
    "timm:vit_tiny_patch16_224": (None, 32),
}


def _readouts(name: str) -> list[str | None]:
    import backbones

    return [None] if name.startswith("timm:") else list(backbones.get(name).spec.readouts) or [None]


@pytest.mark.parametrize("name,readout", [(n, r) for n in TINY_MODELS for r in _readouts(n)])
def test_last_layer_equals_readout_of_every_family(name, readout):
    """The layer-wise feature after the last block is each adapter's readout, for every readout it
    offers (CLS, mean, CLIP's projection, SAM's neck, SEEM's norm3...)."""
    import backbones

    variant, size = TINY_MODELS[name]
    torch.manual_seed(0)
    model = backbones.build(name, variant, "random", readout=readout, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        outs = after_blocks(model, [1, model.num_blocks])(x)
        ref = model(x)
    assert torch.allclose(outs[-1], ref, atol=1e-6, rtol=1e-5)
    # layer 1 is another feature, not the readout returned for every layer (CNNs: a narrower stage;
    # exact inequality, since random layer scale 1e-5 leaves DINOv2's and UNI's tokens nearly as they were)
    assert outs[0].ndim == 2 and outs[0].shape[0] == 2
    assert outs[0].shape != ref.shape or not torch.equal(outs[0], ref)


@pytest.fixture
def opts(data_root, tmp_path):
    return dict(data_root=str(data_root), skip_md5=True, results_dir=str(tmp_path / "results"),
                cache_dir=str(tmp_path / "cache"), head_epochs=20, device="cpu", quiet=True)


def test_early_layer_wins_where_depth_washes_the_signal_out(opts, tmp_path):
    """The band signal survives blocks 1-2 and is erased from block 3 on: the probe finds it early,
    chance late, selects an early layer on val, and writes one row set per layer."""
    model = Marked(depth=5, wash=2)
    res = bench.run(model, "breastmnist", layers="all", **opts)
    rows = pd.read_csv(res.path, keep_default_na=False)
    assert "layer" in rows.columns
    test_auc = rows[(rows.split == "test") & (rows.metric == "auc")]
    by_layer = {int(r.layer): float(r.value) for r in test_auc.itertuples() if r.layer != ""}
    assert sorted(by_layer) == [1, 2, 3, 4, 5]
    assert min(by_layer[1], by_layer[2]) > 0.9
    assert max(by_layer[3], by_layer[4], by_layer[5]) < 0.6
    assert res.selected["layer"] in (1, 2)
    selected = test_auc[test_auc.layer == ""].value.astype(float).tolist()
    assert selected == [by_layer[res.selected["layer"]]]  # the unlabelled rows: the layer chosen on val
    with np.load(tmp_path / "results" / "scores" / f"{res.run_id}.npz") as z:
        assert {f"y_score_layer{k}" for k in range(1, 6)} <= set(z.files)


def test_one_pass_cache_shared_with_probe_and_memory_mapped(opts, monkeypatch, capsys):
    """A layers run extracts each split once (every layer from the same pass, written through memory
    maps); a plain probe then hits the last layer's entry; a second layers run extracts nothing."""
    import bench.features as features
    from bench.cache import FeatureCache

    calls = []
    real = features.extract

    def counting(fn, images, *a, **k):
        calls.append(len(images))
        return real(fn, images, *a, **k)

    monkeypatch.setattr(features, "extract", counting)
    seen_maps = []
    real_many = FeatureCache.compute_many

    def spy(self, parts, compute, rows=None):
        def watched(missing, allocate):
            def alloc(i, shape):
                arr = allocate(i, shape)
                seen_maps.append(isinstance(arr, np.memmap))
                return arr
            compute(missing, alloc)
        return real_many(self, parts, watched, rows)

    monkeypatch.setattr(FeatureCache, "compute_many", spy)
    layered = bench.run("dummy", "breastmnist", weights="random", layers="every:2", **opts)
    assert calls == [96, 32, 48] and seen_maps and all(seen_maps)
    probe = bench.run("dummy", "breastmnist", weights="random", **opts)
    assert calls == [96, 32, 48]  # the probe read layer L = the readout, cached by the layers run
    rows = layered.metrics
    last = rows[(rows.layer == 4) & (rows.split == "val") & (rows.metric == "auc")].value.iloc[0]
    assert last == pytest.approx(probe.metric("auc", "val"))  # same features, same head grid
    bench.run("dummy", "breastmnist", weights="random", layers="all", **opts)  # 1 and 3 new, 2 and 4 cached
    assert calls == [96, 32, 48] * 2
    bench.run("dummy", "breastmnist", weights="random", layers="1,2,3,4", head="knn", **opts)
    assert calls == [96, 32, 48] * 2  # nothing left to extract


def test_plain_runs_unchanged_and_ids_stable(opts):
    """No --layers: no layer column; --layers changes the id, unset it leaves ids as they were."""
    from bench.api import config

    res = bench.run("dummy", "breastmnist", weights="random", **opts)
    assert "layer" not in pd.read_csv(res.path).columns
    plain = config("dummy", "breastmnist", weights="random")
    assert config("dummy", "breastmnist", weights="random", layers="").run_id == plain.run_id
    assert config("dummy", "breastmnist", weights="random", layers="all").run_id != plain.run_id


@pytest.mark.parametrize("args,match", [
    (["--layers", "all", "--head", "mlp"], "--layers probes the frozen features"),
    (["--layers", "all", "--unfreeze", "last1"], "--layers probes the frozen features"),
    (["--layers", "top"], "malformed --layers"),
    (["--layers", "7"], "has 4 blocks"),
])
def test_bad_layers_one_line_exit_2(capsys, data_root, tmp_path, args, match):
    code = main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
                 "--skip-md5", "--results-dir", str(tmp_path / "r"), "--head-epochs", "2", *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_dry_run_and_meta_record_layers(capsys, opts, tmp_path):
    res = bench.run("dummy", "breastmnist", weights="random", layers="2,4", head="knn", **opts)
    meta = json.loads((tmp_path / "results" / "meta" / f"{res.run_id}.json").read_text())
    assert meta["protocol"] == "layers" and sorted(meta["layers"]) == ["2", "4"]
    assert meta["selected"]["layers"] == [2, 4]


def test_report_depth_section(opts, tmp_path):
    """`bench report`: --layers runs get a depth section (best layer chosen on val, figure); their
    per-layer rows never enter the ordinary tables; without such runs the section is absent."""
    from bench.report import make_report

    out = tmp_path / "report"
    bench.run("dummy", "breastmnist", weights="random", **opts)
    make_report(tmp_path / "results", out, formats=("md",), n_boot=50)
    assert "Where transfer breaks" not in (out / "report.md").read_text()
    for seed in (0, 1):
        bench.run(Marked(depth=5, wash=2), "breastmnist", layers="all", seed=seed, **opts)
    make_report(tmp_path / "results", out, formats=("md", "png"), n_boot=50)
    md = (out / "report.md").read_text()
    assert "## Where transfer breaks: layer-wise probes" in md and (out / "figures" / "metric_vs_depth.png").exists()
    best = pd.read_csv(out / "tables" / "layers_best.csv")
    assert best.best_layer.tolist() in ([1], [2]) and best.seeds.tolist() == [2] and best.last_layer.tolist() == [5]
    assert best.best_test.iloc[0] > 0.9 > 0.6 > best.last_test.iloc[0]
    seeds = pd.read_csv(next((out / "tables").glob("seeds_*.csv")))
    assert set(seeds.model) == {"dummy (random) (test model)"}
    # layers probed on 2 shots per class are a curve of their own, not averaged into the full one
    bench.run(Marked(depth=5, wash=2), "breastmnist", layers="all", seed=0, shots=2, **opts)
    make_report(tmp_path / "results", out, formats=("md",), n_boot=50)
    both = pd.read_csv(out / "tables" / "layers_best.csv").set_index("model")
    assert len(both) == 2 and both.loc[best.model.iloc[0]].last_test == pytest.approx(best.last_test.iloc[0])
    assert both.seeds.tolist() == [2, 1] and "(2 shots)" in both.index[1]


def test_sweep_groups_layers_and_fractions_on_one_extraction():
    """The planner bundles the layer-wise probes, plain probes and every label fraction of one
    backbone x dataset x size into one group, costed as one frozen pass; a fine-tune on a fraction
    trains on the subset but its prefix covers the whole split."""
    from bench.sweep.plan import Plan, cost, group_key, split_sizes

    points = [{"backbone": "deit", "variant": "tiny", "weights": "random", "dataset": "breastmnist", "seed": s, **p}
              for s in (0, 1) for p in ({"head": "linear"}, {"head": "knn"}, {"head": "linear", "layers": "all"},
                                        {"head": "knn", "layers": "every:2"}, {"head": "linear", "train_fraction": 0.1},
                                        {"head": "linear", "shots": 5}, {"head": "knn", "train_fraction": 0.5})]
    plan = Plan.build(points)
    # random weights are drawn from the seed: one group per seed (default weights: one for all seeds)
    assert len(plan.runs) == 14 and sorted(len(b) for b in plan.bundles) == [7, 7]
    n = split_sizes(plan.runs[0])
    assert [cost(b) for b in plan.bundles] == [n.total] * 2  # one pass over train+val+test for 7 runs
    ft = Plan.build([{"backbone": "deit", "variant": "tiny", "weights": "random", "dataset": "breastmnist",
                      "unfreeze": "last1", "train_fraction": f} for f in (0.1, 0.5, 1.0)])
    assert len(ft.bundles) == 1 and len({group_key(c) for c in ft.runs}) == 1
    sizes = sorted((split_sizes(c) for c in ft.runs), key=lambda s: s.train)
    assert [s.train for s in sizes] == [55, 273, 546] and {s.total for s in sizes} == {546 + 78 + 156}


def test_layer_heads_are_counted_at_each_layers_width(opts, tmp_path):
    """A CNN's early stages are narrower: each layer's head is counted at its own width, and the
    run records the selected layer's head as its trainable parameters."""
    res = bench.run("resnet18_28", "breastmnist", weights="random", layers="1,8", limit=32, **opts)
    meta = json.loads((tmp_path / "results" / "meta" / f"{res.run_id}.json").read_text())
    per = {k: v["head_parameters"] for k, v in meta["layers"].items()}
    assert per == {"1": 64 * 2 + 2, "8": 512 * 2 + 2}  # ResNet-18: 64 channels after block 1, 512 at the end
    best = str(meta["selected"]["layer"])
    assert meta["trainable_parameters"] == {"backbone": 0, "head": per[best], "total": per[best], "adapt": "none"}
