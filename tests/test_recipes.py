"""Recipes (bench.recipes) and the knobs they set: resolution and precedence, run ids, the
fidelity tables of docs/recipes.md, normalise-then-pad, euclidean/majority kNN, the paper's DeiT
head, pixel-space augmentation, per-dataset normalisation and the online linear protocol."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import augment, docgen, options, recipes
from bench.cli import main
from bench.errors import UserError
from bench.preprocess import Preprocess
from bench.resolve import resolve

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# run ids from before recipes and their knobs existed: they must not move
PINNED_IDS = [
    (dict(backbone="dummy", dataset="breastmnist"), "dummy-breastmnist_28-linear-none-s0-e5c52cafe3"),
    (dict(backbone="dummy", dataset="breastmnist", head="knn", seed=1), "dummy-breastmnist_28-knn-none-s1-b82d5a6ec9"),
    (dict(backbone="dummy", dataset="retinamnist", unfreeze="last2", epochs=3),
     "dummy-retinamnist_28-linear-last2-s0-37136d8dff"),
    (dict(backbone="dummy", dataset="breastmnist", head="deit", head_arch="deit_tiny", epochs=1),
     "dummy-breastmnist_28-deit-none-s0-4a0a4da2f6"),
    (dict(backbone="dummy", dataset="breastmnist", head="mlp", resize="pad", input_size=32, augment="light"),
     "dummy-breastmnist_28-mlp-none-s0-5d9d8c0b7e"),
    (dict(backbone="dummy", dataset="pathmnist", size=64, unfreeze="all", select="loss", schedule="constant"),
     "dummy-pathmnist_64-linear-all-s0-155cac8e88"),
]


def cfg_of(**kw):
    kw = dict(kw)
    return resolve(kw.pop("backbone", "dummy"), kw.pop("dataset", "breastmnist"), **kw)


@pytest.mark.parametrize("kw,run_id", PINNED_IDS)
def test_existing_run_ids_unchanged_and_medfm_is_the_default(kw, run_id):
    assert cfg_of(**kw).run_id == run_id
    assert cfg_of(**kw, recipe="medfm").run_id == run_id
    # the knobs added with recipes, at their defaults, do not move an id either
    assert cfg_of(**kw, normalize="backbone", precision="auto", crop_from=0).run_id == run_id


def test_recipe_names_are_declared_once_and_values_pass_their_options():
    assert options.choices("recipe") == recipes.RECIPE_NAMES == ("medfm", "paper", "medmnistplus", "medmnist-v2",
                                                                 "primer")
    assert recipes.get("medfm").sets == {}
    docgen.check_recipes()
    for r in recipes.RECIPES.values():
        for s in r.sets.values():
            if s.source == recipes.PR:  # the seed document: a tutorial with no repository to cite a line of
                continue
            assert s.source.split(":")[0].split("@")[0] in ("joanaapa/Foundation-Medical",
                                                         "sdoerrich97/rethinking-model-prototyping-MedMNISTPlus",
                                                         "MedMNIST/experiments", "timm==0.9.16"), s.source
            assert re.search(r"@[0-9a-f]{7}:|timm==", s.source), s.source


# a head x unfreeze per recipe whose protocol reads every per-protocol option the recipe sets
PROTOCOL_RUNS = {"paper": [dict(head="deit"), dict(head="linear")],
                 "medmnistplus": [dict(head="linear"), dict(head="knn"), dict(unfreeze="all")],
                 "medmnist-v2": [dict(unfreeze="all")],
                 "primer": [dict(backbone="simplecnn", unfreeze="all")]}


@pytest.mark.parametrize("name", ["paper", "medmnistplus", "medmnist-v2", "primer"])
def test_each_recipe_resolves_to_its_documented_values(name):
    r = recipes.get(name)
    seen = set()
    for run in PROTOCOL_RUNS[name]:
        cfg = cfg_of(recipe=name, **run)
        prov = recipes.provenance(cfg)
        for k, s in r.sets.items():
            if getattr(cfg, k) is None:
                assert k in prov["not_used"] and options.get(k).per_protocol
                continue
            seen.add(k)
            assert getattr(cfg, k) == s.value, (name, k)
            assert prov["set"][k] == s.value
        assert prov["overridden"] == {}
        assert name in cfg.id_dict().values()  # the recipe is in the run id
    assert seen == set(r.sets)  # every value was checked on some protocol


def test_explicit_options_win_and_are_recorded():
    cfg = cfg_of(recipe="paper", head="deit", epochs=3, head_depth=4, resize="resize", augment="none")
    assert (cfg.epochs, cfg.head_depth, cfg.resize, cfg.augment) == (3, 4, "resize", "none")
    assert cfg.lr == 1e-4 and cfg.head_arch == "deit_base"  # the rest still from the recipe
    assert cfg.crop_from == 0  # the recipe's crop size gave way to the explicit resize policy
    prov = recipes.provenance(cfg)
    assert prov["overridden"] == {"epochs": [100, 3], "head_depth": [12, 4], "resize": ["resize-crop", "resize"],
                                  "augment": ["huix", "none"], "crop_from": [256, 0]}
    # knn reads none of the paper's training options: they are recorded as not used
    knn = cfg_of(recipe="paper", head="knn")
    assert knn.protocol.name == "knn" and "epochs" in recipes.provenance(knn)["not_used"]
    assert cfg_of(recipe="medmnistplus", head="knn", knn_k=5).knn_k == 5
    with pytest.raises(UserError, match="unknown recipe"):
        cfg_of(recipe="papr")
    with pytest.raises(UserError, match="--crop-from applies to --resize resize-crop"):
        cfg_of(crop_from=256)


def test_recipes_are_distinct_runs_in_a_sweep(capsys, tmp_path):
    code = main(["sweep", "--backbone", "dummy", "--dataset", "breastmnist", "--head", "knn",
                 "--recipe", "medfm", "medmnistplus", "--results-dir", str(tmp_path), "--dry-run", "--list"])
    out = capsys.readouterr().out
    assert code == 0 and "sweep: 2 runs" in out
    assert "recipe medmnistplus (explicit options win): resize=pad-normalized" in out
    assert "recipe medfm (explicit options win): nothing" in out


def test_paper_yaml_dry_run_shows_the_recipe(capsys, tmp_path):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"
    assert main(["sweep", str(cfg), "--dataset", "breastmnist", "--results-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe paper (explicit options win): epochs=100" in out and "head-depth=12" in out


def test_ls_recipes_lists_every_value(capsys):
    assert main(["ls", "recipes", "--wide"]) == 0
    out = capsys.readouterr().out
    for r in recipes.RECIPES.values():
        assert f"{r.name}: " in out
        for k, s in r.sets.items():
            assert f"{options.get(k).flag} {s.value}    [{s.source}]" in out


def test_docs_fidelity_tables_are_the_generated_ones():
    assert docgen.block("recipes") == docgen.recipe_tables(), \
        "docs/recipes.md is stale: regenerate with python -m bench.docgen --write"
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:  # README and docs alike
        assert "MedMNIST+ zero-padding" not in page.read_text(), page  # our `pad` is not MedMNIST+'s order


# -- preprocessing --------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def test_normalise_then_pad_puts_exactly_zero_in_the_padding():
    imgs = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    pre = Preprocess(64, "pad-normalized", MEAN, STD)
    x = pre(pre.to_device(imgs, CPU))
    assert x.shape == (2, 3, 64, 64)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[18:46, 18:46] = True
    assert torch.equal(x[:, :, ~inside], torch.zeros_like(x[:, :, ~inside]))  # exactly 0
    ref = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x[:, :, 18:46, 18:46], ref)
    # ours (pad): black canvas first, so the border is -mean/std after normalisation
    ours = Preprocess(64, "pad", MEAN, STD)(pre.to_device(imgs, CPU))
    for c in range(3):
        assert torch.allclose(ours[:, c, 0, 0], torch.tensor(-MEAN[c] / STD[c]))


def test_resize_then_centre_crop():
    # a 256 px image is already at --crop-from: the crop keeps rows/cols 16..239 (torchvision's offset)
    img = np.random.default_rng(1).integers(0, 256, (1, 256, 256), dtype=np.uint8)
    pre = Preprocess(224, "resize-crop", (0, 0, 0), (1, 1, 1), crop_from=256)
    x = pre(pre.to_device(img, CPU))
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(img[0, 16:240, 16:240]).float() / 255)
    assert cfg_of(resize="resize-crop", input_size=224).crop_from == 256  # 224 x 256/224 by default


# -- kNN ------------------------------------------------------------------------------------------

def test_euclidean_majority_knn_equals_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    from bench.heads import knn_scores

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))
    y_train = rng.integers(0, 4, 400)
    x_train = (centres[y_train] * rng.uniform(0.5, 3, (400, 1)) + rng.normal(0, 1.5, (400, 16))).astype(np.float32)
    y_q = rng.integers(0, 4, 300)
    x_q = (centres[y_q] + rng.normal(0, 1.5, (300, 16))).astype(np.float32)
    scores = knn_scores(x_train, y_train[:, None], x_q, "multi-class", 4, k=11, metric="euclidean",
                        vote="majority", chunk=128)
    expected = KNeighborsClassifier(n_neighbors=11).fit(x_train, y_train).predict(x_q)
    assert np.array_equal(scores.argmax(1), expected)
    assert set(np.unique(scores)) == {0.0, 1.0} and (scores.sum(1) == 1).all()  # one-hot votes
    # cosine differs from euclidean on features of different norms (the check above is not vacuous)
    cos = knn_scores(x_train, y_train[:, None], x_q, "multi-class", 4, k=11, metric="cosine", vote="majority")
    assert not np.array_equal(cos.argmax(1), expected)


def test_knn_options_reach_the_probe(capsys, data_root, tmp_path):
    code = main(["run", "--backbone", "dummy", "--dataset", "retinamnist", "--recipe", "medmnistplus", "--head",
                 "knn", "--input-size", "32", "--data-root", str(data_root), "--skip-md5",
                 "--results-dir", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    [meta] = (tmp_path / "r" / "meta").glob("*.json")
    m = json.loads(meta.read_text())
    assert m["selected"] == {"head": "knn", "k": 11, "metric": "euclidean", "vote": "majority"}
    assert m["recipe"]["name"] == "medmnistplus" and m["recipe"]["overridden"] == {"input_size": [224, 32]}
    assert m["preprocess"]["resize"] == "pad-normalized"
    scores = np.load(tmp_path / "r" / "scores" / f"{meta.stem}.npz")["y_score"]
    assert set(np.unique(scores)) <= {0.0, 1.0}


# -- the paper's DeiT head ------------------------------------------------------------------------

def test_paper_deit_head_has_deit_b_blocks():
    import backbones
    from bench.train import build_head

    cfg = cfg_of(recipe="paper", head="deit", input_size=32)
    model = backbones.build("dummy", "tiny", "random", input_size=32)
    head = build_head(cfg, model, 2, pretrained=False)  # never downloads
    d, mlp = 768, 3072
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * (2 * d)
    assert len(head.blocks) == 12 and block == 7_087_872
    assert sum(p.numel() for p in head.blocks.parameters()) == 12 * block  # 85.05M, DeiT-B's 12 blocks
    # pre-norm patch tokens: the dummy has no prefix tokens, so its token count is the grid
    n_tokens = model.tokens(model.run_blocks(model.stem(torch.zeros(1, 3, 32, 32)))).shape[1]
    assert head.token_choice == "patches-prenorm" and head.pos_embed.shape[1] == 1 + n_tokens


def test_paper_deit_dry_run_shows_twelve_blocks(capsys):
    assert main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--recipe", "paper", "--head", "deit",
                 "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["head"] == {"head": "deit", "arch": "deit_base", "blocks": 12, "tokens": "patches-prenorm"}
    assert plan["config"]["head_depth"] == 12 and plan["trainable_parameters"]["head"] > 12 * 7_087_872


def test_head_tokens_patches_drop_the_prefix():
    from bench.trained_heads import take_tokens

    class Vit:
        num_prefix_tokens = 1

        def tokens(self, h):
            return h * 2  # stands for the final norm

    h = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    assert torch.equal(take_tokens(Vit(), h, "all"), h * 2)
    assert torch.equal(take_tokens(Vit(), h, "patches"), h[:, 1:] * 2)
    assert torch.equal(take_tokens(Vit(), h, "patches-prenorm"), h[:, 1:])


# -- augmentation ---------------------------------------------------------------------------------

def test_intensity_jitter_is_a_fraction_of_the_pixel_range():
    # a constant grey image: contrast has nothing to scale, brightness shifts by up to +-0.1 of [0, 1]
    u8 = torch.full((256, 1, 16, 16), 128, dtype=torch.uint8)
    pre = Preprocess(16, "none", (0.5,) * 3, (0.25,) * 3)
    x = augment.augmented(pre, u8, augment.Policy(intensity=0.1), torch.Generator().manual_seed(0))
    pixels = x * 0.25 + 0.5  # undo the normalisation
    shift = pixels.mean(dim=(1, 2, 3)) - 128 / 255
    assert shift.abs().max() <= 0.1 + 1e-6 and shift.abs().max() > 0.09  # +-10% of the pixel range
    assert torch.allclose(pixels, pixels[:, :, :1, :1].expand_as(pixels), atol=1e-5)  # still constant


def test_huix_policy_is_deterministic_and_in_pixel_range():
    x = torch.rand(4, 3, 32, 32)
    p = augment.policy_for("huix", "")
    a = augment.apply(x, p, torch.Generator().manual_seed(3))
    b = augment.apply(x, p, torch.Generator().manual_seed(3))
    c = augment.apply(x, p, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # scale above 1 cannot fit: the fallback box is the whole (square) image
    big = augment.Torchvision(scale=(1.5, 1.6))
    assert augment._crop_box(32, 32, big, torch.Generator().manual_seed(0)) == (0, 0, 32, 32)


# -- per-dataset normalisation and the online linear protocol --------------------------------------

def test_online_linear_with_dataset_stats_runs_through_finetune(capsys, data_root, tmp_path):
    from bench import datasets
    from bench.datasets.stats import train_stats

    cfg = cfg_of(recipe="paper", head="linear")
    assert cfg.protocol.name == "finetune" and cfg_of(head="linear").protocol.name == "probe"
    code = main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--recipe", "paper", "--epochs", "1",
                 "--input-size", "32", "--crop-from", "36", "--limit", "24", "--data-root", str(data_root),
                 "--skip-md5", "--results-dir", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    [meta] = (tmp_path / "r" / "meta").glob("*.json")
    m = json.loads(meta.read_text())
    assert m["protocol"] == "finetune" and m["selected"]["head"] == "linear"
    imgs = datasets.load("breastmnist", 28, datasets.LoadOptions(root=data_root, check_md5=False)).splits["train"].images[:24]
    mean, std = imgs.astype(np.float64).mean() / 255, imgs.astype(np.float64).std() / 255
    np.testing.assert_allclose(m["preprocess"]["mean"], [mean] * 3, rtol=1e-9)
    np.testing.assert_allclose(m["preprocess"]["std"], [std] * 3, rtol=1e-9)
    assert m["preprocess"]["precision"] == "fp32"  # CPU, whatever the recipe asks
    ds = datasets.load("breastmnist", 28, datasets.LoadOptions(root=data_root, check_md5=False, limit=24))
    assert train_stats(ds) == (tuple(m["preprocess"]["mean"]), tuple(m["preprocess"]["std"]))


# -- the knobs that make the MedMNIST+ and MedMNIST v2 training loops exact -------------------------

def test_cosine_epoch_is_timms_cosine_stepped_after_each_epoch():
    from bench.train import lr_factor

    cfg = resolve("dummy", "breastmnist", recipe="medmnistplus", unfreeze="all")
    assert (cfg.schedule, cfg.warmup, cfg.grad_clip, cfg.decay_scope, cfg.frozen_mode) == \
        ("cosine-epoch", 0, 0.0, "all", "train")
    steps = 7
    per_epoch = [lr_factor(cfg, e * steps + i, steps) for e in range(cfg.epochs) for i in range(steps)]
    assert len(set(per_epoch[:steps])) == 1  # one value per epoch
    # timm's CosineLRScheduler(t_initial=100) evaluated at t = max(e - 1, 0), written out
    expected = [0.5 * (1 + math.cos(math.pi * max(e - 1, 0) / 100)) for e in range(100)]
    np.testing.assert_allclose(per_epoch[::steps], expected, rtol=0, atol=1e-12)
    assert per_epoch[0] == per_epoch[steps] == 1.0  # epochs 0 and 1 both at the base lr


def test_decay_scope_all_decays_norms_and_biases_too():
    import backbones
    from bench.train import build_head, param_groups, plan_for

    for scope, decayed_1d in (("weights", False), ("all", True)):
        cfg = resolve("dummy", "breastmnist", unfreeze="all", decay_scope=scope, weight_decay=0.01)
        model = backbones.build("dummy", weights="random")
        groups = param_groups(cfg, model, build_head(cfg, model, 2), plan_for(cfg, model))
        one_d = [g["weight_decay"] for g in groups for p in g["params"] if p.ndim == 1]
        assert one_d and all((wd == 0.01) == decayed_1d for wd in one_d)


def test_frozen_mode_train_lets_batchnorm_statistics_adapt(capsys, data_root, tmp_path):
    from bench.cli import main

    def run_stats(mode: str) -> dict:
        out = tmp_path / mode
        args = ["run", "--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--dataset",
                "breastmnist", "--linear-mode", "online", "--frozen-mode", mode, "--epochs", "1", "--data-root",
                str(data_root), "--skip-md5", "--results-dir", str(out), "-q", "--save-model"]
        assert main(args) == 0, capsys.readouterr().err
        from safetensors.torch import load_file

        [f] = (out / "models").glob("*/backbone.safetensors")
        return load_file(str(f))

    from bench.assemble import build_backbone

    init = build_backbone(resolve("resnet18", "breastmnist", weights="random", input_size=32)).state_dict()
    frozen, adapted = run_stats("eval"), run_stats("train")
    stats = [k for k in init if k.endswith("running_mean")]
    assert all(np.array_equal(frozen[k].numpy(), init[k].numpy()) for k in stats)
    assert any(not np.array_equal(adapted[k].numpy(), init[k].numpy()) for k in stats)
    weights = [k for k in init if k.endswith("weight")]
    assert all(np.array_equal(adapted[k].numpy(), init[k].numpy()) for k in weights)  # still frozen


def test_resize_nearest_replicates_pixels():
    from bench.preprocess import Preprocess

    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2) * 60
    pre = Preprocess(8, "resize-nearest", (0.0,) * 3, (1.0,) * 3)
    y = pre(x)[0, 0]
    want = torch.repeat_interleave(torch.repeat_interleave(x[0, 0].float() / 255, 4, 0), 4, 1)
    assert torch.equal(y, want)


# -- the SimpleCNN primer (the seed document) ------------------------------------------------------

def test_primer_recipe_is_the_primers_choices_each_sourced():
    r = recipes.get("primer")
    assert r.values() == {"epochs": 5, "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "warmup": 0,
                          "schedule": "constant", "patience": 0, "select": "last", "augment": "none",
                          "normalize": "half", "grad_clip": 0.0}
    assert {s.source for s in r.sets.values()} == {"the SimpleCNN primer (seed document)"}
    cfg = cfg_of(backbone="simplecnn", recipe="primer", unfreeze="all")
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.select, cfg.normalize) == (5, 1e-3, 64, "last", "half")
    assert "primer" in cfg.id_dict().values()


def test_select_last_is_for_trained_models_only():
    assert options.choices("select") == ("auc", "acc", "loss", "last")
    cfg = cfg_of(unfreeze="all", select="last")
    assert not cfg.protocol.selects_on_val(cfg)  # nothing is chosen on val: no small-val warning
    assert cfg_of(unfreeze="all").protocol.selects_on_val(cfg_of(unfreeze="all"))
    with pytest.raises(UserError, match="--select last tests the model after its last epoch"):
        cfg_of(head="linear", select="last")  # the linear-probe grid chooses its head on val
    assert cfg_of(head="knn", select="last").protocol.name == "knn"  # kNN chooses nothing


def test_select_last_tests_the_model_after_the_last_epoch(tmp_path):
    """--select last: the epoch tested is the last, whatever val says; the recorded val number is its loss."""
    res = tmp_path / "r"
    common = ["run", "--backbone", "dummy", "--dataset", "breastmnist", "--limit", "40", "--unfreeze", "all",
              "--epochs", "4", "--lr", "0.05", "--results-dir", str(res), "--device", "cpu", "-q"]
    assert main([*common, "--select", "last"]) == 0
    (meta,) = [json.loads(p.read_text()) for p in (res / "meta").glob("*.json")]
    assert meta["selected"]["epoch"] == 4 and "val_loss" in meta["selected"]
    import pandas as pd

    (curve,) = [pd.read_csv(p) for p in (res / "curves").glob("*.csv")]
    assert math.isclose(meta["selected"]["val_loss"], float(curve.val_loss.iloc[-1]), rel_tol=1e-6)
