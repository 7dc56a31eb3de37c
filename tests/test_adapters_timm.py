"""timm-based adapters (deit, dino, dinov2, timm:NAME) on tiny random models and self-made files.

Checks: the stem/blocks/readout split reproduces timm's own pooled output; weight files (timm
layout, official DINOv2 release layout) load; wrong architectures fail with a UserError; other
input sizes run; `--unfreeze` picks the right parameters; `--weights default` fails fast offline.
"""
from __future__ import annotations

import re
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

import backbones
from backbones import deit, dino, dinov2
from bench.run_config import parse_unfreeze
from bench.errors import UserError
from test_adapters_foundation import check_unfreeze


def _tiny(module, variant: str, size: int = 224, **override) -> torch.nn.Module:
    """The timm model an adapter's tiny variant builds (same class and kwargs), as a reference."""
    v = module.VARIANTS[variant]
    return timm.create_model(v.model, num_classes=0, img_size=size, **{**v.tiny, **override})


# case -> (backbone name, variant, reference factory, patch size or None for CNNs, test image size)
# real timm architectures run at 64 px to keep the file fast on a shared 2-core machine
CASES = {
    "deit": ("deit", "tiny", lambda: _tiny(deit, "tiny"), 16, 224),
    "deit_distilled": ("deit", "tiny_distilled", lambda: _tiny(deit, "tiny_distilled"), 16, 224),
    "dino": ("dino", "tiny", lambda: _tiny(dino, "tiny"), 16, 224),
    "dinov2": ("dinov2", "tiny", lambda: _tiny(dinov2, "tiny"), 14, 224),
    "dinov2_reg": ("dinov2", "tiny_reg", lambda: _tiny(dinov2, "tiny_reg"), 14, 224),
    "timm_vit": ("timm:vit_tiny_patch16_224", None,
                 lambda: timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64), 16, 64),
    # no class token, a register token and an attention-pool head: readout "default" is timm's
    "timm_vit_map": ("timm:test_vit3", None,
                     lambda: timm.create_model("test_vit3", num_classes=0, img_size=64), 16, 64),
    "timm_convnext": ("timm:convnext_atto", None, lambda: timm.create_model("convnext_atto", num_classes=0),
                      None, 64),
    "timm_resnet": ("timm:resnet10t", None, lambda: timm.create_model("resnet10t", num_classes=0), None, 64),
}
VITS = [c for c, (*_, patch, _size) in CASES.items() if patch and c != "timm_vit_map"]


def _reference(case: str, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return CASES[case][2]().eval()


def _save(sd: dict[str, torch.Tensor], path) -> str:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, str(path))
    return str(path)


def _pooled(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("case", list(CASES))
def test_split_and_loading_reproduce_timm(case, tmp_path):
    """(1) readout(blocks(stem(x))) == timm's pooled output, (2) for weights loaded from a file."""
    name, variant, _, _, size = CASES[case]
    ref = _reference(case)
    ext = ".pth" if case in ("deit", "dinov2_reg", "timm_resnet") else ".safetensors"
    path = _save(ref.state_dict(), tmp_path / f"ref{ext}")
    bb = backbones.build(name, variant, weights=path, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = _pooled(ref, x)
        k = bb.num_blocks // 2
        got = bb.readout(bb.run_blocks(bb.run_blocks(bb.stem(x), 0, k), k))
        random = backbones.build(name, variant, weights="random", input_size=size).eval()(x)
    assert got.shape == (2, bb.embed_dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(random, want, atol=1e-3)  # the file really was loaded
    assert bb.weights_id.startswith("sha256:")
    if CASES[case][3]:  # ViTs keep timm's key names, so a saved backbone is a timm checkpoint
        assert set(bb.state_dict()) == set(ref.state_dict())


def test_generic_block_granularity():
    # ConvNeXt stages split into their blocks (2+2+6+2), ResNet layers into residual blocks
    assert backbones.build("timm:convnext_atto", weights="random", input_size=64).num_blocks == 12
    assert backbones.build("timm:resnet10t", weights="random", input_size=64).num_blocks == 4


@pytest.mark.parametrize("case,readout", [(c, r) for c in VITS if c != "timm_vit" for r in ("cls", "mean", "cls+mean")]
                         + [("timm_vit", "cls+mean")])
def test_vit_readouts_and_tokens(case, readout, tmp_path):
    name, variant, _, _, size = CASES[case]
    ref = _reference(case)
    bb = backbones.build(name, variant, weights=_save(ref.state_dict(), tmp_path / "w.safetensors"),
                         readout=readout, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = ref.forward_features(x)  # tokens after the final norm
        h = bb.run_blocks(bb.stem(x))
        got, tokens = bb.readout(h), bb.tokens(h)
    n_cls = 2 if "distilled" in (variant or "") else 1  # DeiT predicts from class + distillation token
    parts = {"cls": feats[:, :n_cls].mean(1), "mean": feats[:, ref.num_prefix_tokens:].mean(1)}
    want = torch.cat([parts[p] for p in readout.split("+")], dim=-1)
    assert bb.embed_dim == want.shape[-1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, feats, atol=1e-5, rtol=1e-5)


def _official_dinov2(sd: dict[str, torch.Tensor], registers: bool) -> dict[str, torch.Tensor]:
    """A timm DINOv2 state dict renamed the way facebookresearch/dinov2 releases it.

    dinov2_vit*14[_reg4]_pretrain.pth: plus ``mask_token`` (1, D); registers are
    ``register_tokens``, and the position embedding keeps an entry for the class token (timm folds
    it into ``cls_token``). Block keys (norm1, attn.qkv, attn.proj, ls1.gamma, mlp.fc1, ...) and
    ``patch_embed``/``norm`` are named alike in both.
    """
    sd = {k: v.clone() for k, v in sd.items()}
    dim = sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.zeros(1, dim)
    if registers:
        pos_cls = 0.02 * torch.randn(1, 1, dim)
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - pos_cls
        sd["pos_embed"] = torch.cat([pos_cls, sd["pos_embed"]], dim=1)
    return sd


@pytest.mark.parametrize("variant", ["tiny", "tiny_reg"])
def test_dinov2_official_release_layout(variant, tmp_path):
    """An official-layout file at the release's 518 px grid loads into a 224 px backbone."""
    torch.manual_seed(2)
    ref = _tiny(dinov2, variant, size=518, dynamic_img_size=True).eval()  # resamples per batch
    sd = _official_dinov2(ref.state_dict(), registers=variant.endswith("reg"))
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma", "blocks.0.mlp.fc1.weight", "norm.weight"} <= set(sd)
    assert sd["pos_embed"].shape[1] == 1 + 37 * 37 and "reg_token" not in sd
    path = _save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    bb = backbones.build("dinov2", variant, weights=path).eval()
    assert bb.input_size == 224 and bb.pos_embed.shape[1] == 16 * 16 + (0 if variant.endswith("reg") else 1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), _pooled(ref, x), atol=1e-5, rtol=1e-5)


def test_dino_training_checkpoint_layout(tmp_path):
    """DINO's full checkpoints: {"teacher": {"backbone.*": ..., "head.*": ...}} (DINO head dropped)."""
    ref = _reference("dino")
    teacher = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    teacher["head.last_layer.weight_g"] = torch.ones(8, 1)
    path = _save({"teacher": teacher, "epoch": torch.tensor(100)}, tmp_path / "checkpoint.pth")
    bb = backbones.build("dino", "tiny", weights=path).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), _pooled(ref, x), atol=1e-5, rtol=1e-5)


def test_wrong_architecture_is_a_user_error(tmp_path):
    deit_file = _save(_tiny(deit, "tiny").state_dict(), tmp_path / "deit.pth")
    with pytest.raises(UserError, match=r"do not fit backbone 'dinov2@tiny'.*missing keys.*ls1\.gamma"):
        backbones.build("dinov2", "tiny", weights=deit_file)
    with pytest.raises(UserError, match=r"do not fit backbone 'deit@tiny_distilled'"):
        backbones.build("deit", "tiny_distilled", weights=deit_file)
    wide = _save(_tiny(dinov2, "tiny", embed_dim=64).state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(UserError, match=r"shape mismatches.*file \(.*64.*\) vs model"):
        backbones.build("dinov2", "tiny", weights=wide)
    resnet = _save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "r.pth")
    with pytest.raises(UserError, match=r"do not fit backbone 'timm:convnext_atto'"):
        backbones.build("timm:convnext_atto", weights=resnet, input_size=64)


@pytest.mark.parametrize("case", list(CASES))
def test_input_sizes(case):
    name, variant, _, patch, size = CASES[case]
    # 224 and another size for the adapters; real timm CNNs at smaller sizes to stay fast
    sizes = (224, 98 if patch == 14 else 112) if size == 224 or patch else (64, 96)
    for s in sizes:
        bb = backbones.build(name, variant, weights="random", input_size=s).eval()
        assert bb.input_size == s
        with torch.no_grad():
            assert bb(torch.randn(1, 3, s, s)).shape == (1, bb.embed_dim)
    if patch:  # ViTs also run sizes they were not built for, and sizes off the patch grid (padded)
        with torch.no_grad():
            assert bb(torch.randn(1, 3, 64, 64)).shape == (1, bb.embed_dim)
            small = backbones.build(name, variant, weights="random", input_size=28).eval()
            assert small(torch.randn(1, 3, 28, 28)).shape == (1, small.embed_dim)
        prefix = 0 if small.no_embed_class else small.num_prefix_tokens
        assert small.pos_embed.shape[1] - prefix == (-(-28 // patch)) ** 2  # 28 px: 2 x 2 patches


@pytest.mark.parametrize("case", list(CASES))
def test_unfreeze_sets(case):
    name, variant, _, patch, size = CASES[case]
    bb = backbones.build(name, variant, weights="random", input_size=size)
    names = {id(p): n for n, p in bb.named_parameters()}
    L = bb.num_blocks
    readout = {names[id(p)] for m in bb.readout_modules() for p in m.parameters()}

    def chosen(k: int) -> set[str]:
        return {names[id(p)] for p in bb.trainable_parameters(k)}

    def last(k: int) -> set[str]:
        return {n for n in names.values() if n.startswith("blocks.") and int(n.split(".")[1]) >= L - k}

    assert L >= 3 and last(1) and last(2) > last(1)
    assert chosen(0) == set()
    assert chosen(1) == last(1) | readout
    assert chosen(2) == last(2) | readout
    assert chosen(L) == set(names.values())
    stem = chosen(L) - chosen(L - 1) - last(L)
    if case == "timm_vit_map":
        assert readout == {"norm.weight", "norm.bias"} | {n for n in names.values() if n.startswith("attn_pool.")}
        assert {"reg_token", "pos_embed"} <= stem
    elif patch:
        assert readout == {"norm.weight", "norm.bias"}
        assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= stem
        assert ("reg_token" in stem) == (variant == "tiny_reg")
        assert ("dist_token" in stem) == (variant == "tiny_distilled")
    elif case == "timm_convnext":
        assert readout == {"head.norm.weight", "head.norm.bias"} and any(n.startswith("stem_layers.stem.") for n in stem)
    else:
        assert any(n.startswith("stem_layers.conv1.") for n in stem)


@pytest.mark.parametrize("name,variant,repo", [
    ("deit", None, "timm/deit_base_patch16_224.fb_in1k"),
    ("dino", "vits8", "timm/vit_small_patch8_224.dino"),
    ("dinov2", "vitg14_reg", "timm/vit_giant_patch14_reg4_dinov2.lvd142m"),
    ("timm:convnext_atto.d2_in1k", None, "timm/convnext_atto.d2_in1k"),
    ("timm:eva02_base_patch16_clip_224.merged2b", None, "timm/eva02_base_patch16_clip_224.merged2b"),
    ("timm:samvit_base_patch16.sa1b", None, "timm/samvit_base_patch16.sa1b"),
])
def test_default_weights_fail_fast_offline(name, variant, repo, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty, whatever this machine has
    t = time.perf_counter()
    with pytest.raises(UserError, match=re.escape(f"{repo}/model.safetensors") + r".*HF_HUB_OFFLINE"):
        backbones.build(name, variant, weights="default")
    assert time.perf_counter() - t < 5  # checked before building (ViT-g is 1.1B parameters)


def test_tiny_default_weights_are_a_fixed_seed():
    x = torch.randn(1, 3, 56, 56)
    a, b = (backbones.build("dinov2", "tiny", weights="default", input_size=56).eval() for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    assert a.weights_id == "dinov2-tiny-seed0"


def test_specs():
    for module, adapter, default in ((deit, deit.DEIT, "base"), (dino, dino.DINO, "vitb16"),
                                     (dinov2, dinov2.DINOV2, "vitb14")):
        spec = adapter.spec
        assert spec.default_variant == default == spec.variants[0]
        assert set(spec.variants) == set(module.VARIANTS) and spec.readouts == ("cls", "mean", "cls+mean")
        assert spec.input_size == 224 and {"blocks", "embed_dim", "params"} <= set(spec.facts)
        assert adapter.weight_files("tiny") == []
    [f] = dinov2.DINOV2.weight_files("vitb14_reg")
    assert (f.location, f.filename) == ("timm/vit_base_patch14_reg4_dinov2.lvd142m", "model.safetensors")


def test_timm_names():
    spec = backbones.get("timm:resnet10t").spec
    assert spec.variants == ("c3_in1k",) and spec.input_size == 176 and spec.readouts == ("default",)
    assert backbones.get("timm:vit_small_patch16_224.augreg_in21k").spec.readouts[0] == "default"
    with pytest.raises(UserError, match="did you mean.*convnext_atto"):
        backbones.get("timm:convnext_ato")
    with pytest.raises(UserError, match="no pretrained tag 'fb_in23k'.*fb_in22k"):
        backbones.get("timm:convnext_tiny.fb_in23k")
    with pytest.raises(UserError, match="cannot be split into stem -> blocks -> readout"):
        backbones.build("timm:dla34", weights="random", input_size=64)  # levels, not stages: refused, not guessed
    with pytest.raises(UserError, match="no class token"):
        backbones.build("timm:test_vit3", weights="random", readout="cls", input_size=64)


def test_mean_readout_skips_register_tokens(tmp_path):
    ref = _reference("timm_vit_map")
    bb = backbones.build("timm:test_vit3", weights=_save(ref.state_dict(), tmp_path / "w.pth"),
                         readout="mean", input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref.forward_features(x)[:, 1:].mean(1)  # one register token, no class token
        torch.testing.assert_close(bb(x), want, atol=1e-5, rtol=1e-5)


# -- timm classes with their own split (backbones.timm_special), as configs/medmnistplus.yaml uses them --------
# case -> (backbone name, timm model, kwargs of a tiny random config of the same class and forward): EVA-02 CLIP
# passes a rotary embedding to each block; SAM's global block (1) interpolates its native-grid relative-position
# table, its small windows (4) need padding at 112 px, and its conv neck (16 channels here) feeds the pooled head
SPECIAL = {
    "eva02": ("timm:eva02_base_patch16_clip_224.merged2b", "eva02_base_patch16_clip_224",
              dict(depth=3, embed_dim=32, num_heads=2)),
    "samvit": ("timm:samvit_base_patch16.sa1b", "samvit_base_patch16",
               dict(depth=3, embed_dim=32, num_heads=2, global_attn_indexes=(1,), window_size=4, neck_chans=16)),
}


@pytest.fixture
def tiny_special(monkeypatch):
    """backbones.build("timm:NAME") builds NAME's tiny config (through the adapter's own build path)."""
    from backbones import timm_any

    real = timm_any.create_model
    tiny = {model: kw for _, model, kw in SPECIAL.values()}

    def create(model_name: str, weights: str, *, name: str, **kwargs):
        return real(model_name, weights, name=name, **kwargs, **tiny[model_name.partition(".")[0]])

    monkeypatch.setattr(timm_any, "create_model", create)


def _special_source(case: str, seed: int = 3) -> torch.nn.Module:
    """The tiny model at timm's defaults, every parameter random (SAM zero-inits pos_embed and
    the rel-pos tables, which would hide their resampling)."""
    torch.manual_seed(seed)
    _, model, kw = SPECIAL[case]
    m = timm.create_model(model, num_classes=0, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def _special_reference(case: str, sd: dict, size: int) -> torch.nn.Module:
    """timm's own model for ``size`` px with ``sd`` loaded as timm loads pretrained weights (its
    checkpoint filter resamples EVA's position grid; SAM stays at its native grid)."""
    import sys

    _, model, kw = SPECIAL[case]
    extra = {"img_size": size} if case == "eva02" and size != 224 else {}
    ref = timm.create_model(model, num_classes=0, **kw, **extra).eval()
    ref.load_state_dict(sys.modules[type(ref).__module__].checkpoint_filter_fn(sd, ref))
    return ref


@pytest.mark.parametrize("size", [224, 112])
@pytest.mark.parametrize("case", list(SPECIAL))
def test_special_split_reproduces_timm(case, size, tiny_special, tmp_path):
    name = SPECIAL[case][0]
    src = _special_source(case)
    path = _save(src.state_dict(), tmp_path / "w.safetensors")
    bb = backbones.build(name, weights=path, input_size=size).eval()
    ref = _special_reference(case, src.state_dict(), size)
    assert type(bb).__name__ == {"eva02": "TimmEva", "samvit": "TimmSamViT"}[case] and bb.num_blocks == 3
    assert set(bb.state_dict()) == set(ref.state_dict())  # timm's keys: a saved backbone is a timm checkpoint
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = _pooled(ref, x)
        got = bb.readout(bb.run_blocks(bb.run_blocks(bb.stem(x), 0, 1), 1))
        random = backbones.build(name, weights="random", input_size=size).eval()(x)
    assert got.shape == (2, bb.embed_dim) == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(random, want, atol=1e-3)  # the file really was loaded
    if case == "samvit":
        assert bb.embed_dim == 16  # the neck's channels, pooled
    with torch.no_grad():  # the per-patch features the DeiT head reads, and the maps bench explain shows
        h = bb.run_blocks(bb.stem(x))
        tokens, fmap = bb.tokens(h), bb.feature_map(h)
    grid = size // 16
    assert tokens.shape[:2] == (2, bb.num_prefix_tokens + grid * grid) and fmap.shape[-2:] == (grid, grid)
    if case == "eva02":
        torch.testing.assert_close(tokens, ref.forward_features(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", list(SPECIAL))
def test_special_sizes_off_the_patch_grid_are_padded(case, tiny_special):
    bb = backbones.build(SPECIAL[case][0], weights="random", input_size=28).eval()
    with torch.no_grad():
        h = bb.run_blocks(bb.stem(torch.randn(1, 3, 28, 28)))
        assert bb.feature_map(h).shape[-2:] == (2, 2) and bb.readout(h).shape == (1, bb.embed_dim)


def test_eva_blocks_run_on_a_prefix_of_another_size(tiny_special):
    """Blocks on a prefix cached from an earlier stem call still get its grid's rotary embedding."""
    bb = backbones.build(SPECIAL["eva02"][0], weights="random", input_size=224).eval()
    x, small = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        want = bb(x)
        h = bb.run_blocks(bb.stem(x), 0, 1)
        bb.stem(small)  # the latest stem call saw another grid
        torch.testing.assert_close(bb.readout(bb.run_blocks(h, 1)), want, atol=1e-5, rtol=1e-5)
        with pytest.raises(UserError, match="not a square grid"):
            bb.run_blocks(torch.randn(1, 1 + 14 * 13, 32), 1)
    with torch.inference_mode():  # how bench.train caches a frozen prefix; the last blocks then train on it
        cached = bb.run_blocks(bb.stem(x), 0, 1)
    out = bb.readout(bb.run_blocks(cached.clone(), 1))
    (out * torch.randn_like(out)).sum().backward()  # not out.sum(): a LayerNorm's output sums to a constant
    torch.testing.assert_close(out.detach(), want, atol=1e-5, rtol=1e-5)
    assert bb.blocks[1].attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("case", list(SPECIAL))
def test_special_unfreeze_and_readout_parts(case, tiny_special):
    bb = backbones.build(SPECIAL[case][0], weights="random", input_size=224)
    check_unfreeze(bb)
    names = {id(p): n for n, p in bb.named_parameters()}
    last1 = {names[id(p)] for p in bb.trainable_parameters(parse_unfreeze("last1", bb.num_blocks))}
    readout = {n for n in last1 if not n.startswith("blocks.")}
    assert {n.split(".")[1] for n in last1 - readout} == {"2"}  # the last block, nothing before it
    if case == "eva02":  # class-token readout: the final norm (no fc_norm); tokens and rope stay in the stem
        assert readout == {"norm.weight", "norm.bias"}
        stem = set(names.values()) - {names[id(p)] for p in bb.trainable_parameters(bb.num_blocks - 1)}
        assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= stem
    else:  # the conv neck trains with the last block
        assert readout and all(n.startswith("neck.") for n in readout)
    assert bb.lora_targets() and all(t.startswith("attn.") for t in bb.lora_targets())


def test_special_bench_run(tiny_special, capsys, data_root, tmp_path):
    """bench run --limit 32 (linear head, and the last block fine-tuned) on breastmnist at 224 px."""
    from bench.cli import main

    results = tmp_path / "r"
    common = ["--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--limit", "32",
              "--results-dir", str(results), "--cache-dir", str(tmp_path / "c"), "--weights", "random",
              "--input-size", "224", "--head-epochs", "3", "-q"]
    for name, *_ in SPECIAL.values():
        for extra in (["--head", "linear"], ["--unfreeze", "last1", "--epochs", "1", "--warmup", "0"]):
            code = main(["run", "--backbone", name, *extra, *common])
            assert code == 0, capsys.readouterr().err
    assert len(list((results / "runs").glob("*.csv"))) == 4
