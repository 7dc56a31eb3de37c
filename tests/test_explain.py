"""`bench explain`: heads saved with runs, models rebuilt from them, Grad-CAM / rollout through the
backbone contract on every family, chosen images, sheets, comparison, report section, errors; and
the sanity check that can fail: on data whose label lives in one quadrant, a trained model's
Grad-CAM mass concentrates there and the same model's with random heads does not."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import backbones
from bench.cli import main
from bench.run_config import make_run_options
from bench.errors import UserError
from bench.explain import heatmaps, stage_outputs
from bench.explain.cams import layer_names
from bench.explain.model import Net, Rebuilt, rebuild
from bench.explain.select import KINDS, choose, parse_classes
from bench.heads import ProbeHead
from bench.results import ResultStore

PNG = b"\x89PNG\r\n\x1a\n"


def write_quadrant_npz(root: Path, n=(128, 48, 64), size: int = 28, seed: int = 0) -> Path:
    """breastmnist-format data whose label is only in the top-right quadrant: a bright (1) or dark
    (0) 8 px square somewhere inside it; noise everywhere else. Top-right, so a transposed or
    flipped heatmap would miss it."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = (np.arange(count) % 2).astype(np.uint8)
        rng.shuffle(labels)
        imgs = rng.normal(128, 30, (count, size, size))
        for i in range(count):
            r, c = rng.integers(0, size // 2 - 8, 2)
            imgs[i, r:r + 8, size // 2 + c:size // 2 + c + 8] += 90 if labels[i] else -90
        arrays[f"{split}_images"] = np.clip(imgs, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "breastmnist.npz"
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One data root and results folder shared by this module's runs (each run once)."""
    tmp = tmp_path_factory.mktemp("explain")
    write_quadrant_npz(tmp / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TQDM_DISABLE", "1")
        yield SimpleNamespace(tmp=tmp, results=tmp / "results",
                              common=["--dataset", "breastmnist", "--data-root", str(tmp / "data"), "--skip-md5",
                                      "--results-dir", str(tmp / "results"), "-q"])


def _run(env, *args: str) -> str:
    code = main(["run", *args, *env.common])
    assert code == 0
    store = ResultStore(env.results)
    return max(store.run_ids(), key=lambda r: store.path("meta", r).stat().st_mtime)


@pytest.fixture(scope="module")
def probe_id(env) -> str:
    return _run(env, "--backbone", "dummy", "--head-epochs", "30")


@pytest.fixture(scope="module")
def deit_head_id(env) -> str:
    return _run(env, "--backbone", "deit", "--variant", "tiny", "--weights", "random", "--input-size", "32",
                "--head", "deit", "--head-arch", "deit_tiny", "--epochs", "1")


def _opts(env):
    return make_run_options(results_dir=env.results, data_root=env.tmp / "data", skip_md5=True, quiet=True)


def _explain(env, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args, "--results-dir", str(env.results), "--data-root", str(env.tmp / "data"),
                 "--skip-md5", "-q"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tr_mass(maps: np.ndarray) -> float:
    s = maps.shape[-1]
    return float((maps[:, :s // 2, s // 2:].sum((1, 2)) / maps.sum((1, 2)).clip(1e-8)).mean())


# -- heads saved with runs, models rebuilt --------------------------------------------------------------

def test_probe_head_saved_with_the_run_and_rebuild_reproduces_test_scores(env, probe_id):
    store = ResultStore(env.results)
    head = store.model_path(probe_id, "head")
    assert head.is_file() and not store.model_path(probe_id, "backbone").exists()
    assert not list(head.parent.glob(".*tmp*"))
    from safetensors import safe_open

    with safe_open(str(head), "pt") as f:
        assert f.metadata()["head"] == "probe" and set(f.keys()) == {"weight", "bias", "mean", "std"}
    rb = rebuild(store, probe_id, _opts(env))
    saved = store.read_scores(probe_id)[1]
    assert np.abs(rb.scores("test") - saved).max() < 1e-5


def test_deit_head_saved_and_rebuilt(env, deit_head_id):
    store = ResultStore(env.results)
    assert store.model_path(deit_head_id, "head").is_file()
    rb = rebuild(store, deit_head_id, _opts(env))
    assert rb.reads_tokens
    assert np.abs(rb.scores("test") - store.read_scores(deit_head_id)[1]).max() < 1e-4


# -- the sanity check that can fail ------------------------------------------------------------------------

def test_gradcam_mass_in_the_label_quadrant_for_trained_not_random_heads(env, probe_id):
    rb = rebuild(ResultStore(env.results), probe_id, _opts(env))
    y = rb.dataset.splits["test"].labels[:, 0]
    x = rb.inputs("test", np.arange(len(y)))
    assert (rb.scores("test").argmax(1) == y).mean() > 0.9  # the probe learned the quadrant's square
    trained = _tr_mass(heatmaps(rb, x, y.tolist(), "gradcam"))
    gen = torch.Generator().manual_seed(0)
    random_heads = []
    for _ in range(5):  # the same backbone, the head's weights redrawn
        rb.head.weight.copy_(torch.randn(rb.head.weight.shape, generator=gen))
        random_heads.append(_tr_mass(heatmaps(rb, x, y.tolist(), "gradcam")))
    # a quarter of the image is 0.25 of the mass when spread evenly
    assert trained > 0.6, trained
    assert np.mean(random_heads) < trained - 0.2, (trained, random_heads)


# -- image choice ------------------------------------------------------------------------------------------

def test_choose_picks_per_class_and_is_seeded():
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.95, 0.05], [0.55, 0.45]])
    labels = np.array([[0], [0], [0], [1], [1], [1]])
    picks = choose(scores, labels, [0, 1], None, seed=0)
    got = [(p.kind, p.label, p.index) for p in picks]
    assert got == [(KINDS[0], 0, 0), (KINDS[0], 1, 3), (KINDS[1], 0, 2), (KINDS[1], 1, 4),
                   (KINDS[2], 0, 1), (KINDS[2], 1, 5)]
    assert [p.correct for p in picks] == [True, True, False, False, True, False]
    assert choose(scores, labels, [1], 2, seed=0) == picks[1:2] + picks[3:4]
    more = choose(scores, labels, [0, 1], 6, seed=3)
    assert more == choose(scores, labels, [0, 1], 6, seed=3) and len({p.index for p in more}) == 6
    multi = choose(scores, np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0], [0, 0]]), [0, 1], None, seed=0,
                   multilabel=True)
    assert [(p.kind, p.label, p.index, p.correct) for p in multi][:2] == [(KINDS[0], 0, 4, True), (KINDS[0], 1, 2, True)]
    # an unknown label (-1, --uncertain ignore) is not a positive: image 4 is no longer label 0's pick
    unknown = choose(scores, np.array([[1, 0], [1, 1], [0, 1], [0, 1], [-1, 0], [0, 0]]), [0, 1], None, seed=0,
                     multilabel=True)
    assert (unknown[0].kind, unknown[0].label) == (KINDS[0], 0) and unknown[0].index != 4
    assert not any(p.index == 4 and p.label == 0 and p.correct for p in unknown)
    # what is explained: the prediction; multi-label: the label the image was picked for, and its score
    assert all(p.target == p.prediction and p.target_score == p.score for p in picks)
    wrong = next(p for p in multi if p.kind == KINDS[1])
    assert wrong.target == wrong.label != wrong.prediction and wrong.target_score == scores[wrong.index, wrong.label]
    assert parse_classes(["1"], ["a", "b"]) == [1] and parse_classes(["b,a"], ["a", "b"]) == [1, 0]
    with pytest.raises(UserError, match="did you mean: benign"):
        parse_classes(["benig"], ["malignant", "benign"])


# -- CLI: sheets, records, comparison, report ----------------------------------------------------------------

def test_explain_cli_writes_sheets_records_comparison_and_report(env, probe_id, deit_head_id, capsys, tmp_path):
    code, out, err = _explain(env, capsys, probe_id[:-4], "--filters", "--feature-maps")
    assert code == 0, err
    folder = env.results / "explain" / probe_id
    for stem in ("gradcam-test", "filters", "feature-maps-test"):
        assert (folder / f"{stem}.png").read_bytes().startswith(PNG) and str(folder / f"{stem}.png") in out
    rec = json.loads((folder / "gradcam-test.json").read_text())
    # 3 per class, less a kind with no image (a class without a wrong prediction)
    assert rec["indices"] == [p["index"] for p in rec["picks"]] and 4 <= len(rec["indices"]) <= 6
    assert {p["kind"] for p in rec["picks"]} <= set(KINDS) and rec["target_layers"] == ["blocks.3"]
    assert rec["score_check"]["checked"] == len(rec["indices"]) and rec["score_check"]["max_abs_diff"] < 1e-5
    assert json.loads((folder / "filters.json").read_text())["shape"] == [32, 3, 3, 3]

    code, out, err = _explain(env, capsys, probe_id, deit_head_id, "--images", "3", "--classes", "1")
    assert code == 0, err
    [sheet] = (env.results / "explain" / "compare").glob("gradcam-test-*.png")
    comp = json.loads(sheet.with_suffix(".json").read_text())
    assert comp["runs"] == [probe_id, deit_head_id] and len(comp["indices"]) == 3
    first = json.loads((folder / "gradcam-test.json").read_text())
    assert comp["indices"] == first["indices"]  # the first run's picks, shown for every run
    labels = np.load(env.tmp / "data" / "breastmnist.npz")["test_labels"][:, 0]
    assert (labels[comp["indices"]] == 1).all()

    assert main(["report", "--results-dir", str(env.results), "--out", str(tmp_path / "rep"), "--format", "md",
                 "--format", "png", "--n-boot", "10"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Explanations" in md and f"explain-{probe_id}-gradcam-test.png" in md
    assert (tmp_path / "rep" / "figures" / f"explain-{probe_id}-gradcam-test.png").is_file()


def test_rollout_on_deit_head_run_and_a_split_without_saved_scores(env, deit_head_id, capsys):
    code, out, err = _explain(env, capsys, deit_head_id, "--method", "rollout", "--images", "2", "--split", "val")
    assert code == 0, err
    rec = json.loads((env.results / "explain" / deit_head_id / "rollout-val.json").read_text())
    assert len(rec["indices"]) == 2 and rec["score_check"]["checked"] == 0  # val scores are not saved
    assert rec["picks"][0]["kind"] == KINDS[0]


# -- bad input: one line, exit 2 ----------------------------------------------------------------------------

def _one_line_error(env, capsys, *args) -> str:
    code, _, err = _explain(env, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("bench: error: "), err
    return err


def test_bad_input_is_one_line(env, probe_id, capsys):
    err = _one_line_error(env, capsys, probe_id[:-3] + "zzz")
    assert "unknown run" in err and f"did you mean: {probe_id}" in err
    assert "rollout needs attention maps" in _one_line_error(env, capsys, probe_id, "--method", "rollout")
    assert "did you mean: gradcam" in _one_line_error(env, capsys, probe_id, "--method", "gradcm")
    assert "no class 'tumour'" in _one_line_error(env, capsys, probe_id, "--classes", "tumour")
    assert "unknown --split" in _one_line_error(env, capsys, probe_id, "--split", "tst")


def test_knn_run_cannot_be_explained(env, capsys):
    run_id = _run(env, "--backbone", "dummy", "--head", "knn")
    err = _one_line_error(env, capsys, run_id)
    assert "kNN probe" in err and "--head linear" in err


def test_finetuned_run_needs_save_model_and_the_suggested_rerun_has_its_id(env, capsys):
    run_id = _run(env, "--backbone", "dummy", "--unfreeze", "last1", "--epochs", "1")
    store = ResultStore(env.results)
    assert store.model_path(run_id, "head").is_file() and not store.model_path(run_id, "backbone").exists()
    err = _one_line_error(env, capsys, run_id)
    assert "trained its backbone (--unfreeze last1)" in err and "--save-model" in err
    command = err.split("--save-model: ", 1)[1].strip()
    argv = shlex.split(command)[1:]
    assert argv[:1] == ["run"] and "--force" in argv
    assert main(argv + env.common[2:]) == 0  # the suggested rerun, in this results folder...
    assert store.model_path(run_id, "backbone").is_file()  # ...is the same run id, now with its backbone
    code, _, err = _explain(env, capsys, run_id, "--images", "2")
    assert code == 0, err
    rec = json.loads((env.results / "explain" / run_id / "gradcam-test.json").read_text())
    assert rec["score_check"]["max_abs_diff"] < 1e-5


# -- the contract on every family ---------------------------------------------------------------------------

FAMILIES = {  # name: (variant, input size); CNNs of stride 32 at 64 px, a 2x2 last map
    "dummy": ("tiny", 32), "resnet18": ("tv_in1k", 64), "deit": ("tiny_distilled", 32), "dino": ("tiny", 32),
    "dinov2": ("tiny_reg", 28), "clip": ("tiny", 32), "sam": ("tiny", 32), "blip": ("tiny", 32),
    "timm:convnext_atto": (None, 64),  # stride 32: 64 px gives a 2x2 map (32 px: one value)
    # the medical-domain adapters
    "biomedclip": ("tiny", 32), "rad-dino": ("tiny", 28), "medsam": ("tiny", 32), "retfound": ("tiny", 32),
    "uni": ("tiny", 32), "seem": ("tiny", 64), "simplecnn": ("scratch", 28),
    "timm:vit_tiny_patch16_224": (None, 32),
}
# timm ViTs (weights captured before attn_drop) and CLIP/BLIP (recomputed from the attention input)
ROLLOUT = {"deit", "dino", "dinov2", "biomedclip", "rad-dino", "retfound", "uni", "timm:vit_tiny_patch16_224",
           "clip", "blip"}


def _fake(name: str, readout: str | None = None) -> Rebuilt:
    variant, size = FAMILIES[name]
    torch.manual_seed(0)
    bb = backbones.build(name, variant, "random", input_size=size, readout=readout).eval()
    head = ProbeHead(bb.embed_dim, 3)
    head.weight.normal_()
    head.std.fill_(1.0)
    for p in bb.parameters():
        p.requires_grad_(False)
    return Rebuilt("t", SimpleNamespace(backbone=name), {}, bb, head, Net(bb, head).eval(), None, None,
                   torch.device("cpu"))


@pytest.mark.parametrize("method", ["gradcam++", "scorecam", "eigencam"])
def test_other_cam_methods_run_through_pytorch_grad_cam(method):
    rb = _fake("dummy")
    maps = heatmaps(rb, torch.randn(2, 3, 32, 32), [0, 1], method)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.max() > maps.min()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_gives_heatmaps_filters_and_feature_maps(name):
    rb = _fake(name)
    size = FAMILIES[name][1]
    x = torch.randn(2, 3, size, size)
    maps = heatmaps(rb, x, [0, 2], "gradcam")
    assert maps.shape == (2, size, size) and np.isfinite(maps).all() and maps.max() > maps.min()
    stages = stage_outputs(rb, x)
    assert len(stages) == rb.backbone.num_blocks + 1 and all(m.ndim == 4 and m.shape[0] == 2 for _, m in stages)
    assert rb.backbone.first_conv() is not None and rb.backbone.first_conv().in_channels == 3
    if name in ROLLOUT:
        roll = heatmaps(rb, x, [0, 0], "rollout")
        assert roll.shape == (2, size, size) and np.isfinite(roll).all() and roll.max() > roll.min()
    else:
        with pytest.raises(UserError, match="rollout"):
            heatmaps(rb, x, [0, 0], "rollout")


def test_recomputed_attention_equals_the_libraries_own():
    """CLIP and BLIP run attention without returning weights; what rollout recomputes from each
    block's input must be what nn.MultiheadAttention / BlipAttention compute."""
    from backbones.base import capture_inputs

    x = torch.randn(2, 3, 32, 32)
    clip = _fake("clip").backbone
    attns = [b.attn for b in clip.blocks]
    inputs = capture_inputs(attns, lambda: clip(x))
    for a, t, mine in zip(attns, inputs, clip.attention_maps(x).maps):
        theirs = a(t, t, t, need_weights=True, average_attn_weights=False)[1]
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    blip = _fake("blip").backbone
    attns = [b.self_attn for b in blip.blocks]
    inputs = capture_inputs(attns, lambda: blip(x))
    for a, t, mine in zip(attns, inputs, blip.attention_maps(x).maps):
        with torch.no_grad():
            theirs = a(hidden_states=t)[1]
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


# -- what a heatmap explains: the class its caption names, in the run's precision ----------------------------

def test_heatmaps_are_for_the_saved_prediction_the_caption_names(env, capsys, monkeypatch):
    """Captions name the run's saved prediction; a rebuilt model that decides otherwise (here: saved
    scores with their classes swapped) must not get its own argmax explained under that caption."""
    import bench.explain as ex

    run_id = _run(env, "--backbone", "dummy", "--head-epochs", "5", "--seed", "3")
    store = ResultStore(env.results)
    path = store.path("scores", run_id)
    with np.load(path) as z:
        arrays = dict(z)
    arrays["y_score"] = arrays["y_score"][:, ::-1].copy()
    np.savez(path, **arrays)
    explained = []
    real = ex.heatmaps

    def spy(rb, x, targets, method):
        explained.extend(targets)
        return real(rb, x, targets, method)

    monkeypatch.setattr(ex, "heatmaps", spy)
    code, _, err = _explain(env, capsys, run_id, "--images", "4")
    assert code == 0, err
    rec = json.loads((env.results / "explain" / run_id / "gradcam-test.json").read_text())
    idx = rec["indices"]
    saved_pred = arrays["y_score"][idx].argmax(1).tolist()
    assert explained == saved_pred
    assert rec["targets"] == [p["target"] for p in rec["picks"]] == saved_pred
    rebuilt_pred = rebuild(store, run_id, _opts(env)).scores("test", np.array(idx)).argmax(1).tolist()
    assert all(a != b for a, b in zip(saved_pred, rebuilt_pred))  # the swap made them differ...
    assert rec["score_check"]["max_abs_diff"] > 0.01  # ...and the check says the rebuilt model is not the run's


def test_rebuilt_scores_in_the_runs_precision_heatmaps_in_fp32(monkeypatch, capsys):
    """A run recorded in bf16 (a GPU run) has its scores recomputed under bf16 autocast, as it
    computed them; heatmaps are fp32 whatever the run used (fp16 gradients without loss scaling
    underflow). CPU autocast stands in for the GPU's here (bench run keeps CPU runs fp32). A device
    without the run's precision falls back to fp32 with one line."""
    import bench.features as features
    from bench.errors import UserError

    rb = _fake("deit")
    x = torch.randn(2, 3, 32, 32)
    fp32 = {m: heatmaps(rb, x, [0, 1], m) for m in ("gradcam", "rollout")}
    rb.meta = {"preprocess": {"precision": "bf16"}}
    monkeypatch.setattr(features, "precision", lambda device, requested="auto": requested)
    assert rb.precision == "bf16"
    seen: list[torch.dtype] = []
    hook = rb.backbone.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.no_grad(), rb.autocast():  # what Rebuilt.scores runs the model under
        rb.net(x)
    assert seen and set(seen) == {torch.bfloat16}
    for method in ("gradcam", "rollout"):
        seen.clear()
        maps = heatmaps(rb, x, [0, 1], method)
        assert set(seen) == {torch.float32} and np.array_equal(maps, fp32[method]), method
    hook.remove()

    def lacks(device, requested="auto"):
        raise UserError("--precision bf16: this GPU has no bf16; use fp16, fp32 or auto")

    monkeypatch.setattr(features, "precision", lacks)
    assert rb.precision == "fp32" and rb.precision == "fp32"
    told = capsys.readouterr().err
    assert told.count("its scores are recomputed in fp32") == 1


# -- which runs can be explained ---------------------------------------------------------------------------

def test_lora_run_saved_with_save_model_is_explained(env, capsys):
    from safetensors.torch import load_file

    from bench.run_config import RunConfig
    from bench.assemble import build_backbone

    run_id = _run(env, "--backbone", "dummy", "--unfreeze", "last1", "--adapt", "lora", "--epochs", "2",
                  "--lr", "1e-2", "--save-model")
    store = ResultStore(env.results)
    assert store.model_path(run_id, "adapter").is_file()
    merged = load_file(str(store.model_path(run_id, "backbone")))
    start = build_backbone(RunConfig.from_dict(store.read_meta(run_id)["config"])).state_dict()
    assert any(k in start and not torch.equal(v, start[k]) for k, v in merged.items())  # LoRA moved them
    code, _, err = _explain(env, capsys, run_id, "--images", "2")
    assert code == 0, err
    rec = json.loads((env.results / "explain" / run_id / "gradcam-test.json").read_text())
    assert rec["score_check"]["checked"] == 2 and rec["score_check"]["max_abs_diff"] < 1e-5


def test_layerwise_run_says_what_to_explain_instead(env, probe_id, capsys):
    run_id = _run(env, "--backbone", "dummy", "--head-epochs", "30", "--layers", "all")
    err = _one_line_error(env, capsys, run_id)
    assert "layer-wise probe (--layers all)" in err and "none is saved" in err
    argv = shlex.split(err.split("cached features): ", 1)[1].strip())[1:]
    assert argv[:1] == ["run"] and "--layers" not in argv
    store = ResultStore(env.results)
    before = set(store.run_ids())
    assert main(argv + env.common[2:]) == 0
    assert set(store.run_ids()) == before and probe_id in before  # the suggestion is the ordinary probe


# -- target layers, token grids, rollout through a DeiT head ---------------------------------------------------

def test_vit_target_layer_follows_what_the_readout_pools():
    """Class-token readouts: the last block's input norm; mean readouts: the block's output, which
    they pool. With the last block's attention silenced, a mean readout still depends on every patch
    token (residual + MLP): its Grad-CAM must show it, which the input norm (attention only) cannot."""
    for readout, want in (("cls", ["{L}.norm1"]), ("mean", ["{L}"]), ("cls+mean", ["{L}.norm1", "{L}"])):
        rb = _fake("deit", readout)
        rb.backbone.blocks[-1].attn.proj.weight.zero_()
        rb.backbone.blocks[-1].attn.proj.bias.zero_()
        maps = heatmaps(rb, torch.randn(2, 3, 32, 32), [0, 1], "gradcam")
        assert np.isfinite(maps).all()
        if readout == "mean":
            assert maps.max() > maps.min()
        if readout == "cls":  # the class token no longer reads the last block's patches: nothing to show
            assert maps.max() == maps.min()
        last = f"blocks.{rb.backbone.num_blocks - 1}"
        assert layer_names(rb) == [w.format(L=last) for w in want], readout


def test_a_token_grid_that_is_not_square_is_a_one_line_error():
    bb = _fake("deit").backbone
    with pytest.raises(UserError) as e:
        bb.feature_map(torch.zeros(1, bb.num_prefix_tokens + 12, 8))
    msg = str(e.value)
    assert "\n" not in msg and "deit" in msg and "12 patch tokens" in msg and "not a square grid" in msg


def test_rollout_of_a_deit_head_run_goes_through_the_heads_blocks(env, deit_head_id, monkeypatch):
    from pytorch_grad_cam.utils.image import scale_cam_image

    from bench.explain import cams

    rb = rebuild(ResultStore(env.results), deit_head_id, _opts(env))
    x = rb.inputs("test", np.arange(4))
    assert cams.head_blocks(rb) == len(rb.head.blocks) > 0
    heads = cams.head_attention(rb, x)
    assert len(heads) == len(rb.head.blocks)
    # a head whose class token attends to one backbone token only: the map is that token's rollout
    bb, prefix = rb.backbone, rb.backbone.num_prefix_tokens
    offset = 0 if rb.head.token_choice == "all" else prefix
    k = prefix + 3
    onehot = torch.eye(heads[0].shape[-1]).expand_as(heads[0]).clone()
    onehot[:, :, 0] = 0
    onehot[:, :, 0, 1 + k - offset] = 1
    monkeypatch.setattr(cams, "head_attention", lambda _rb, _x: [onehot])
    got = cams.rollout(rb, x)
    joint = cams._chain(bb.attention_maps(x).maps)[:, k, prefix:]
    grid = bb.feature_map(torch.cat([joint.new_zeros(len(x), prefix), joint], 1).unsqueeze(-1))[:, 0]
    np.testing.assert_allclose(got, scale_cam_image(grid.numpy(), (x.shape[-1], x.shape[-2])), atol=1e-5)
    monkeypatch.undo()
    # and the head's real attention changes the map
    before = heatmaps(rb, x, [0] * 4, "rollout")
    gen = torch.Generator().manual_seed(1)
    for b in rb.head.blocks:
        b.attn.qkv.weight.copy_(torch.randn(b.attn.qkv.weight.shape, generator=gen))
    assert np.abs(heatmaps(rb, x, [0] * 4, "rollout") - before).max() > 0.05


# -- the report leaves out sheets of a model that was rerun ------------------------------------------------

def test_report_leaves_out_a_sheet_made_before_a_rerun(env, capsys):
    from bench.report.explain import explanations_section

    args = ("--backbone", "dummy", "--head-epochs", "5", "--seed", "4")
    run_id = _run(env, *args)
    name = f"explain-{run_id}-gradcam-test"

    def shown() -> tuple[list[str], str]:
        sec = explanations_section(env.results, {run_id})
        return ([f.name for f in sec.figures], sec.intro) if sec else ([], "")

    assert _explain(env, capsys, run_id, "--images", "2")[0] == 0
    assert name in shown()[0]
    time.sleep(1.1)  # records are timed to the second
    _run(env, *args, "--force")  # the same run id, a new model
    figures, intro = shown()
    assert name not in figures and "Left out: 1 sheet(s) made before a run they show was rerun" in intro
    assert _explain(env, capsys, run_id, "--images", "2")[0] == 0
    assert name in shown()[0]


@pytest.mark.parametrize("name,readout,reads_cls", [
    ("biomedclip", "proj", True), ("biomedclip", "cls", True), ("deit", "mean", False), ("deit", "cls+mean", True),
])
def test_rollout_and_cam_layers_agree_on_what_the_readout_pools(name, readout, reads_cls):
    """Rollout starts from the class token's row exactly when the readout pools it (BiomedCLIP's
    projection of its class token included), the Grad-CAM target layers follow the same rule."""
    variant, size = FAMILIES[name]
    torch.manual_seed(0)
    b = backbones.build(name, variant, "random", readout=readout, input_size=size).eval()
    maps = b.attention_maps(torch.randn(1, 3, size, size))
    assert (maps.query_rows is not None) == reads_cls and len(maps.maps) == b.num_blocks
    assert (b.blocks[-1].norm1 in b.cam_layers()) == reads_cls
