"""Medical-domain adapters (BiomedCLIP, RAD-DINO, MedSAM, RETFound, UNI), SEEM's FocalNet and the
primer's SimpleCNN, on tiny random models of the same classes.

For each: the stem/blocks/readout split reproduces the library's own pooled output (or, for SEEM
and RETFound, whose code is not an installable library, a reference written from their forward);
a state dict in the release's key layout loads through ``backbones.build``; a wrong one is a
one-line UserError; `--weights default` offline fails fast naming the file (and, for gated
repos, how to get access); and `bench run --limit 32` works with linear and kNN heads.
"""
from __future__ import annotations

import argparse
import json
import re
from functools import partial
from unittest import mock

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import backbones
from bench.cli import main
from bench.errors import UserError
from test_adapters_foundation import (assert_bench_roundtrip, assert_fails_fast_offline, check_unfreeze, close,
                                      forward_split, sam_reference, sam_tiny_state)

# ---------------------------------------------------------------------------------------- BiomedCLIP


@pytest.fixture(scope="module")
def biomedclip_model():
    """A tiny open_clip CLIP with BiomedCLIP's image tower config (open_clip_config.json:
    timm vit_base_patch16_224, timm_pool "", timm_proj "linear"); timm.create_model is given a
    small depth/width so open_clip's own TimmModel construction runs on a tiny trunk."""
    import timm
    from open_clip.model import CLIP

    real = timm.create_model

    def tiny(name, **kw):
        return real(name, **{**kw, "depth": 3, "embed_dim": 32, "num_heads": 2, "img_size": 32})

    with mock.patch("timm.create_model", tiny):
        torch.manual_seed(0)
        model = CLIP(embed_dim=16,
                     vision_cfg={"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                 "timm_pool": "", "timm_proj": "linear", "image_size": 32},
                     text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1})
    return model.eval()


def test_biomedclip_matches_open_clip(biomedclip_model, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    sd = biomedclip_model.state_dict()
    assert "visual.trunk.blocks.0.attn.qkv.weight" in sd and "visual.head.proj.weight" in sd  # the release layout
    torch.save(sd, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for readout, want in (("cls", biomedclip_model.visual.trunk(x)), ("proj", biomedclip_model.visual(x))):
            b = backbones.build("biomedclip", "tiny", str(path), readout=readout, input_size=32).eval()
            assert b.embed_dim == want.shape[1]
            assert close(forward_split(b, x), want) and close(b(x), want)
    assert b.weights_id.startswith("sha256:") and b.normalization()[0] == (0.48145466, 0.4578275, 0.40821073)
    check_unfreeze(b)
    assert b.proj in b.readout_modules()


def test_biomedclip_tower_only_other_size_and_wrong_file(biomedclip_model, tmp_path):
    tower = tmp_path / "visual.safetensors"
    save_file({k: v.contiguous() for k, v in biomedclip_model.visual.state_dict().items()}, str(tower))
    b48 = backbones.build("biomedclip", "tiny", str(tower), readout="proj", input_size=48).eval()
    assert b48.pos_embed.shape[1] == 1 + 3 * 3  # resampled to the 48 px grid by timm's filter
    assert b48(torch.randn(1, 3, 48, 48)).shape == (1, 16)
    sam_file = tmp_path / "sam.pt"
    torch.save(sam_tiny_state(), sam_file)
    with pytest.raises(UserError, match="do not fit backbone 'biomedclip@tiny'.*visual.trunk"):
        backbones.build("biomedclip", "tiny", str(sam_file), input_size=32)
    assert_fails_fast_offline("biomedclip", None,
                              "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/open_clip_pytorch_model.bin")


# ------------------------------------------------------------------------------------------ RAD-DINO


def _release_names(key: str) -> str:
    """transformers 5's Dinov2 attention names -> those of the released model.safetensors."""
    return (key.replace("attention.q_proj.", "attention.attention.query.")
            .replace("attention.k_proj.", "attention.attention.key.")
            .replace("attention.v_proj.", "attention.attention.value.")
            .replace("attention.o_proj.", "attention.output.dense."))


@pytest.fixture(scope="module")
def rad_dino_model():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=4, image_size=56,
                       patch_size=14, layerscale_value=0.5)
    return Dinov2Model(cfg).eval()


@pytest.mark.parametrize("layout", ["release", "transformers5"])
def test_rad_dino_matches_transformers(rad_dino_model, tmp_path, layout):
    sd = rad_dino_model.state_dict()
    if layout == "release":
        sd = {_release_names(k): v for k, v in sd.items()}
        assert "encoder.layer.0.attention.attention.query.weight" in sd
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        out = rad_dino_model(pixel_values=x)
        b = backbones.build("rad-dino", "tiny", str(path), input_size=56).eval()
        assert close(forward_split(b, x), out.pooler_output) and close(b(x), out.pooler_output)
        assert close(b.tokens(b.run_blocks(b.stem(x))), out.last_hidden_state)
        mean = backbones.build("rad-dino", "tiny", str(path), readout="mean", input_size=56).eval()
        assert close(mean(x), out.last_hidden_state[:, 1:].mean(1))


def test_rad_dino_other_size_wrong_file_and_offline(rad_dino_model, tmp_path, biomedclip_model):
    path = tmp_path / "model.safetensors"
    save_file({_release_names(k): v.contiguous() for k, v in rad_dino_model.state_dict().items()}, str(path))
    b = backbones.build("rad-dino", "tiny", str(path), input_size=84).eval()
    x = torch.randn(1, 3, 84, 84)
    with torch.no_grad():  # timm resamples the grid once, transformers per forward: close, not equal
        want = rad_dino_model(pixel_values=x).pooler_output
        assert b.pos_embed.shape[1] == 1 + 6 * 6 and F.cosine_similarity(b(x), want).min() > 0.99
    wrong = tmp_path / "clip.bin"
    torch.save(biomedclip_model.state_dict(), wrong)
    with pytest.raises(UserError, match="do not fit backbone 'rad-dino@tiny'"):
        backbones.build("rad-dino", "tiny", str(wrong), input_size=56)
    assert_fails_fast_offline("rad-dino", None, "microsoft/rad-dino/model.safetensors")
    assert backbones.get("rad-dino").spec.input_size == 518


# -------------------------------------------------------------------------------------------- MedSAM


def test_medsam_loads_sam_layout_like_sam(tmp_path, monkeypatch):
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from backbones.sam import make_encoder

    enc = make_encoder("tiny", 64)
    enc.load_state_dict(sam_tiny_state(seed=3))
    full = Sam(image_encoder=enc,
               prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                            mask_in_chans=4),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=16, iou_head_depth=2,
                                        iou_head_hidden_dim=16,
                                        transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
                                                                      num_heads=2))).state_dict()
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(full, path)  # MedSAM's release: a full SAM state dict
    x = torch.randn(2, 3, 32, 32)
    b = backbones.build("medsam", "tiny", str(path), input_size=32).eval()
    with torch.no_grad():
        assert close(forward_split(b, x), sam_reference(sam_tiny_state(seed=3), x))
    assert b.normalization() == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # MedSAM: [0, 1] input, no mean/std
    with pytest.raises(UserError, match="do not fit backbone 'medsam'.*shape mismatch"):  # a tiny file for ViT-B
        backbones.build("medsam", "vit_b", str(path), input_size=32)
    # --weights default: no library download; found in torch.hub's checkpoint folder, else one line
    assert_fails_fast_offline("medsam", None, "medsam_vit_b.pth")
    from backbones import hub

    target = hub.torch_hub_dir() / "medsam_vit_b.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="do not fit backbone 'medsam'.*shape mismatch"):  # found, then checked
        backbones.build("medsam", None, "default", input_size=32)


# ------------------------------------------------------------------------------------------ RETFound


@pytest.fixture(scope="module")
def retfound_state():
    """A tiny MAE checkpoint in RETFound's released layout: {"model": encoder (timm keys) + decoder}."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    enc = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4,
                            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    sd = dict(enc.state_dict())
    with torch.no_grad():
        sd["norm.weight"] = torch.randn(32)  # a trained-looking MAE norm (the cls readout uses it)
    sd |= {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32),
           "decoder_blocks.0.norm1.weight": torch.ones(16), "decoder_pred.weight": torch.zeros(768, 16)}
    # MAE's save_model keeps the training script's argparse.Namespace beside the weights
    return {"model": sd, "epoch": 799, "args": argparse.Namespace(model="vit_large_patch16", lr=1e-3)}, enc


def test_retfound_global_pool_as_models_vit(retfound_state, tmp_path):
    ckpt, enc = retfound_state
    path = tmp_path / "RETFound_mae_natureCFP.pth"
    torch.save(ckpt, path)
    enc = enc.eval()
    enc.load_state_dict({k: v for k, v in ckpt["model"].items() if k in enc.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = enc.norm_pre(enc._pos_embed(enc.patch_embed(x)))
        for blk in enc.blocks:
            h = blk(h)
        # models_vit.py: global_pool -> mean of patch tokens through a fresh fc_norm (MAE norm deleted);
        # --cls_token -> the pre-trained norm, class token
        refs = {"mean": F.layer_norm(h[:, 1:].mean(1), (32,), eps=1e-6), "cls": enc.norm(h)[:, 0]}
        for readout, want in refs.items():
            b = backbones.build("retfound", "tiny", str(path), readout=readout, input_size=32).eval()
            assert close(forward_split(b, x), want) and close(b(x), want)
    assert backbones.build("retfound", "tiny", str(path)).readout_name == "mean"  # RETFound's default
    b64 = backbones.build("retfound", "tiny", str(path), input_size=64)
    assert b64.pos_embed.shape[1] == 1 + 4 * 4  # RETFound's interpolate_pos_embed equivalent
    check_unfreeze(b64)


def test_retfound_wrong_file_and_gated_offline(tmp_path):
    torch.save({"model": {"decoder_embed.weight": torch.zeros(4, 4)}}, tmp_path / "decoder.pth")
    with pytest.raises(UserError, match="no ViT encoder keys"):
        backbones.build("retfound", "tiny", str(tmp_path / "decoder.pth"))
    torch.save({"model": sam_tiny_state()}, tmp_path / "sam.pth")
    with pytest.raises(UserError, match="do not fit backbone 'retfound@tiny'"):
        backbones.build("retfound", "tiny", str(tmp_path / "sam.pth"))
    assert_fails_fast_offline("retfound", None, "YukunZhou/RETFound_mae_natureCFP/RETFound_mae_natureCFP.pth")
    with pytest.raises(UserError, match="is gated: request access at https://huggingface.co/YukunZhou/RETFound_mae_natureOCT"):
        backbones.build("retfound", "oct", "default")


# ----------------------------------------------------------------------------------------------- UNI


def test_uni_matches_timm_and_gated_offline(tmp_path):
    import timm

    torch.manual_seed(0)
    # MahmoodLab's model: timm vit_large_patch16_224 with init_values=1e-5; tiny width/depth here
    ref = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5,
                            depth=3, embed_dim=32, num_heads=2, img_size=32).eval()
    with torch.no_grad():
        for blk in ref.blocks:  # make the layer scale visible
            blk.ls1.gamma.normal_()
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    b = backbones.build("uni", "tiny", str(tmp_path / "pytorch_model.bin"), input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(forward_split(b, x), ref(x))
    with pytest.raises(UserError, match="do not fit backbone 'uni@tiny'"):
        torch.save(sam_tiny_state(), tmp_path / "sam.pt")
        backbones.build("uni", "tiny", str(tmp_path / "sam.pt"), input_size=32)
    assert_fails_fast_offline("uni", None, "MahmoodLab/UNI/pytorch_model.bin")
    with pytest.raises(UserError, match=r"is gated: request access at https://huggingface.co/MahmoodLab/UNI, then `hf auth login`"):
        backbones.build("uni", None, "default")


def test_uni_denied_access_and_card_spelling_in_cache(tmp_path, monkeypatch):
    """Online without access: the error is the access steps, not 'run it on a connected machine';
    a file downloaded through the model card's `hf-hub:MahmoodLab/uni` is found in the cache."""
    import types

    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from backbones import hub, uni

    def denied(repo, filename, **_):  # what the hub raises (its response: status, headers, request)
        response = types.SimpleNamespace(status_code=401, headers={}, request=None)
        raise GatedRepoError("401 Client Error: Cannot access gated repo", response=response)

    monkeypatch.setattr(hub, "hf_offline", lambda: False)  # the tests run offline; here the hub answers
    monkeypatch.setattr(hub, "host_reachable", lambda host: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", denied)
    with pytest.raises(UserError) as err:
        backbones.build("uni", None, "default")
    msg = str(err.value)
    assert "refused MahmoodLab/UNI/pytorch_model.bin" in msg and "request access" in msg
    assert "connected machine" not in msg and len(msg.splitlines()) == 1
    seen = []
    monkeypatch.setattr(hub, "hf_cached", lambda repo, f: seen.append(repo) or (None if repo != uni.CARD_REPO else
                                                                               str(tmp_path / "nothing.bin")))
    with pytest.raises(UserError, match="does not exist|cannot read"):  # the card's cached path is the one read
        backbones.build("uni", None, "default")
    assert seen[0] == "MahmoodLab/uni"
    assert uni.weight_files("vitl16")[0].location == "MahmoodLab/uni"  # `bench weights` reports the same file


# ---------------------------------------------------------------------------------------------- SEEM
# The reference below is written from SEEM's modeling/vision/backbone/focal_dw.py
# (UX-Decoder/Segment-Everything-Everywhere-All-At-Once@7b2e76d: PatchEmbed.forward,
# FocalModulation.forward, FocalModulationBlock.forward with use_postln, BasicLayer.forward,
# FocalNet.forward), reading SEEM's own state-dict keys, independent of the adapter's modules.

SEEM_TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), levels=3, window=3)


def seem_layout_state(embed_dim: int, depths: tuple[int, ...], levels: int, window: int,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes SEEM's FocalNet (focal_dw) registers."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}

    def ln(name: str, dim: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (dim,), (dim,)

    dims = [embed_dim * 2 ** i for i in range(len(depths))]
    shapes["patch_embed.proj.weight"], shapes["patch_embed.proj.bias"] = (dims[0], 3, 7, 7), (dims[0],)
    ln("patch_embed.norm", dims[0])
    for s, (dim, depth) in enumerate(zip(dims, depths)):
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}"
            for dw in ("dw1", "dw2"):
                shapes[f"{p}.{dw}.weight"], shapes[f"{p}.{dw}.bias"] = (dim, 1, 3, 3), (dim,)
            ln(f"{p}.norm1", dim)
            ln(f"{p}.norm2", dim)
            shapes[f"{p}.modulation.f.weight"] = (2 * dim + levels + 1, dim)
            shapes[f"{p}.modulation.f.bias"] = (2 * dim + levels + 1,)
            shapes[f"{p}.modulation.h.weight"], shapes[f"{p}.modulation.h.bias"] = (dim, dim, 1, 1), (dim,)
            shapes[f"{p}.modulation.proj.weight"], shapes[f"{p}.modulation.proj.bias"] = (dim, dim), (dim,)
            for k in range(levels):
                ks = 2 * k + window
                shapes[f"{p}.modulation.focal_layers.{k}.0.weight"] = (dim, 1, ks, ks)
            shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
            shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
            shapes[f"{p}.gamma_1"] = shapes[f"{p}.gamma_2"] = (dim,)
        if s < len(depths) - 1:
            shapes[f"layers.{s}.downsample.proj.weight"] = (2 * dim, dim, 3, 3)
            shapes[f"layers.{s}.downsample.proj.bias"] = (2 * dim,)
            ln(f"layers.{s}.downsample.norm", 2 * dim)
        ln(f"norm{s}", dim)
    sd = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if k.endswith("norm.weight") or re.search(r"norm\d?\.weight$", k) or "gamma" in k:
            t = 1 + 0.3 * t
        else:
            t = 0.3 * t
        sd[k] = t
    return sd


def seem_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, depths: tuple[int, ...], levels: int,
                   window: int) -> torch.Tensor:
    """SEEM's FocalNet forward (use_conv_embed, use_postln, scaling_modulator, layer scale) -> res5,
    then the paper's readout: mean over H x W (Foundation-Medical defaults/models.py:232-236)."""

    def norm(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])

    def embed(t: torch.Tensor, p: str, patch: int, stride: int, pad: int):
        H, W = t.shape[-2:]
        if W % patch:
            t = F.pad(t, (0, patch - W % patch))
        if H % patch:
            t = F.pad(t, (0, 0, 0, patch - H % patch))
        t = F.conv2d(t, sd[f"{p}.proj.weight"], sd[f"{p}.proj.bias"], stride=stride, padding=pad)
        h, w = t.shape[-2:]
        return norm(t.flatten(2).transpose(1, 2), f"{p}.norm"), h, w

    def dw(t, p, B, H, W, C):
        t = t.view(B, H, W, C).permute(0, 3, 1, 2)
        t = t + F.conv2d(t, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=1, groups=C)
        return t.permute(0, 2, 3, 1).reshape(B, H * W, C)

    def block(t, p, H, W):
        B, L, C = t.shape
        t = dw(t, f"{p}.dw1", B, H, W, C)
        shortcut = t
        m = F.linear(t, sd[f"{p}.modulation.f.weight"], sd[f"{p}.modulation.f.bias"])
        m = m.view(B, H, W, -1).permute(0, 3, 1, 2)
        q, ctx, gates = torch.split(m, (C, C, levels + 1), 1)
        ctx_all = 0
        for lvl in range(levels):
            ks = 2 * lvl + window
            ctx = F.gelu(F.conv2d(ctx, sd[f"{p}.modulation.focal_layers.{lvl}.0.weight"], padding=ks // 2, groups=C))
            ctx_all = ctx_all + ctx * gates[:, lvl:lvl + 1]
        ctx_all = ctx_all + F.gelu(ctx.mean(2, keepdim=True).mean(3, keepdim=True)) * gates[:, levels:]
        ctx_all = ctx_all / (levels + 1)
        out = q * F.conv2d(ctx_all, sd[f"{p}.modulation.h.weight"], sd[f"{p}.modulation.h.bias"])
        out = F.linear(out.permute(0, 2, 3, 1), sd[f"{p}.modulation.proj.weight"], sd[f"{p}.modulation.proj.bias"])
        t = norm(shortcut + sd[f"{p}.gamma_1"] * out.reshape(B, L, C), f"{p}.norm1")
        t = dw(t, f"{p}.dw2", B, H, W, C)
        mlp = F.linear(F.gelu(F.linear(t, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                       sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        return norm(t + sd[f"{p}.gamma_2"] * mlp, f"{p}.norm2")

    t, H, W = embed(x, "patch_embed", 4, 4, 3)
    for s, depth in enumerate(depths):
        for b in range(depth):
            t = block(t, f"layers.{s}.blocks.{b}", H, W)
        out = t
        if s < len(depths) - 1:
            B, L, C = t.shape
            t, H2, W2 = embed(t.transpose(1, 2).reshape(B, C, H, W), f"layers.{s}.downsample", 2, 2, 1)
            assert (H2, W2) == ((H + 1) // 2, (W + 1) // 2)
            H, W = H2, W2
    return norm(out, f"norm{len(depths) - 1}").mean(1)


@pytest.mark.parametrize("size", [32, 45])
def test_seem_matches_reference_forward(tmp_path, size):
    sd = seem_layout_state(**SEEM_TINY)
    full = {f"backbone.{k}": v for k, v in sd.items()}  # the released checkpoint: the whole SEEM model
    full |= {"sem_seg_head.predictor.class_embed": torch.zeros(4, 4), "criterion.empty_weight": torch.ones(3)}
    path = tmp_path / "seem_focalt_v0.pt"
    torch.save(full, path)
    b = backbones.build("seem", "tiny", str(path), input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = seem_reference(sd, x, SEEM_TINY["depths"], SEEM_TINY["levels"], SEEM_TINY["window"])
        assert want.shape == (2, 128)
        assert close(forward_split(b, x), want, atol=1e-4) and close(b(x), want, atol=1e-4)
        h = b.run_blocks(b.stem(x))
        assert b.tokens(h).shape[-1] == 128 and b.feature_map(h).shape[:2] == (2, 128)


def test_seem_wrong_files_unfreeze_and_real_config(tmp_path):
    sd = seem_layout_state(**SEEM_TINY)
    torch.save({k: v for k, v in sd.items() if "dw1" not in k}, tmp_path / "focalnet.pt")  # no depthwise convs
    with pytest.raises(UserError, match="do not fit backbone 'seem@tiny'.*missing keys.*dw1"):
        backbones.build("seem", "tiny", str(tmp_path / "focalnet.pt"))
    torch.save(sam_tiny_state(), tmp_path / "sam.pt")
    with pytest.raises(UserError, match="do not fit backbone 'seem@tiny'"):
        backbones.build("seem", "tiny", str(tmp_path / "sam.pt"))
    # keys of a stage SEEM lacks (or unnumbered blocks) are extras like any other (a few tolerated,
    # many reported), never an IndexError out of the key mapping
    extra = {"layers.4.blocks.0.gamma_1": torch.ones(8), "layers.0.blocks.x.gamma_1": torch.ones(8)}
    torch.save({**sd, **extra}, tmp_path / "five.pt")
    backbones.build("seem", "tiny", str(tmp_path / "five.pt"))
    torch.save({**extra, **{f"layers.{5 + i}.blocks.0.w": torch.ones(1) for i in range(len(sd))}}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="do not fit backbone 'seem@tiny'.*unexpected keys"):
        backbones.build("seem", "tiny", str(tmp_path / "x.pt"))
    check_unfreeze(backbones.build("seem", "tiny", "random"))
    # the paper's Focal-T: 12 blocks, 768-d readout, SEEM's key set exactly (every key mapped)
    real = backbones.build("seem", "focalt_v0", "random")
    assert real.num_blocks == 12 and real.embed_dim == 768
    assert 29.8e6 < sum(p.numel() for p in real.parameters()) < 30e6  # Spec facts: 29.9M
    from backbones.seem import VARIANTS, seem_to_backbone

    layout = seem_layout_state(96, (2, 2, 6, 2), 3, 3)
    mapped = seem_to_backbone({f"backbone.{k}": v for k, v in layout.items()}, VARIANTS["focalt_v0"])
    own = real.state_dict()
    assert set(mapped) == set(own) and all(mapped[k].shape == own[k].shape for k in own)
    assert_fails_fast_offline("seem", None, "xdecoder/SEEM/seem_focalt_v0.pt")
    assert_bench_roundtrip("seem", tmp_path, size=32)


# ----------------------------------------------------------------------------------------- SimpleCNN


def test_simplecnn_is_the_primer_cnn(tmp_path):
    b = backbones.build("simplecnn", None, "default").eval()
    convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64] and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in b.modules()) == 3
    assert (b.fc.in_features, b.fc.out_features, b.embed_dim, b.input_size) == (64 * 3 * 3, 128, 128, 28)
    # the same network written as one nn.Sequential
    ref = nn.Sequential(*[m for blk in b.blocks for m in blk], nn.Flatten(), b.fc, nn.ReLU())
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert close(forward_split(b, x), ref(x))
    assert [p for p in b.trainable_parameters(1)] == [*b.blocks[-1].parameters(), *b.fc.parameters()]
    assert len(b.trainable_parameters(3)) == len(list(b.parameters()))
    assert backbones.build("simplecnn", None, "default", input_size=64).fc.in_features == 64 * 8 * 8
    with pytest.raises(UserError, match="at least 8"):
        backbones.build("simplecnn", None, "default", input_size=4)
    with pytest.raises(UserError, match="one readout"):
        backbones.build("simplecnn", None, "default", readout="cls")
    assert backbones.get("simplecnn").weight_files("scratch") == []


def test_simplecnn_is_the_primers_model_exactly():
    """The primer's network: Conv2d(3x3, pad 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2, 2) three times
    (16, 32, 64), Flatten -> Linear(576, 128) -> ReLU -> Linear(128, classes); gray input stays 1
    channel: 97,634 parameters for 1 channel, 28 px, 2 classes."""
    spec = backbones.get("simplecnn").spec
    assert spec.in_chans == 0 and spec.version("scratch") == 2  # the dataset's own channels; version bumped
    b = backbones.build("simplecnn", None, "random", in_chans=1)
    layers = [type(m) for blk in b.blocks for m in blk]
    assert layers == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d] * 3
    convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    pools = [m for m in b.modules() if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    head = nn.Linear(b.embed_dim, 2)  # the run's linear head: Linear(128, classes)
    assert sum(p.numel() for p in [*b.parameters(), *head.parameters()]) == 97_634
    assert b.in_chans == 1 and tuple(b(torch.randn(2, 1, 28, 28)).shape) == (2, 128)
    assert backbones.build("simplecnn", None, "random", in_chans=3).blocks[0][0].in_channels == 3
    with pytest.raises(UserError, match="1 \\(gray\\) or 3"):
        backbones.build("simplecnn", None, "random", in_chans=2)


def test_simplecnn_keeps_gray_images_one_channel_in_a_run(tmp_path):
    from bench.assemble import open_context
    from bench.resolve import resolve
    from bench.run_config import RunOptions

    opts = RunOptions(results_dir=tmp_path / "r", cache_dir=tmp_path / "c", device="cpu", quiet=True)
    gray = open_context(resolve("simplecnn", "breastmnist", unfreeze="all", recipe="primer"), opts)
    assert gray.model.in_chans == 1 and gray.pre.in_chans == 1
    x = gray.pre.layout(torch.from_numpy(gray.dataset.splits["test"].images[:4]))
    assert tuple(gray.pre(x).shape) == (4, 1, 28, 28)
    assert sum(p.numel() for p in gray.model.parameters()) == 97_634 - 258  # the head comes on top
    rgb = open_context(resolve("simplecnn", "retinamnist", unfreeze="all", recipe="primer"), opts)
    assert rgb.model.in_chans == 3 and rgb.model.blocks[0][0].in_channels == 3
    # other backbones still see gray images repeated to RGB
    dummy = open_context(resolve("dummy", "breastmnist"), opts)
    assert dummy.pre.in_chans == 3
    # the feature-cache key knows the channels and the bumped version
    parts = gray.feature_parts("test")
    assert parts["in_chans"] == "dataset" and parts["backbone_version"] == 2
    assert "in_chans" not in dummy.feature_parts("test")


# ----------------------------------------------------------------------------- listing and end to end

MEDICAL = {
    "biomedclip": ["--backbone", "biomedclip", "--variant", "tiny", "--readout", "proj", "--input-size", "32"],
    "rad-dino": ["--backbone", "rad-dino", "--variant", "tiny", "--input-size", "28"],
    "medsam": ["--backbone", "medsam", "--variant", "tiny", "--input-size", "32"],
    "retfound": ["--backbone", "retfound", "--variant", "tiny", "--input-size", "32"],
    "uni": ["--backbone", "uni", "--variant", "tiny", "--input-size", "32"],
    "seem": ["--backbone", "seem", "--variant", "tiny", "--input-size", "32"],
    "simplecnn": ["--backbone", "simplecnn"],
}


def test_listed_with_source_and_license(capsys):
    assert main(["ls", "backbones", "--wide"]) == 0
    out = capsys.readouterr().out
    for name in MEDICAL:
        spec = backbones.get(name).spec
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert spec.license.split()[0] in line and spec.default_variant in line
        assert spec.weights_source.split(" (")[0] in line  # where --weights default comes from


@pytest.mark.parametrize("name", sorted(MEDICAL))
def test_runs_end_to_end(name, capsys, data_root, tmp_path):
    results = tmp_path / "r"
    common = ["--dataset", "retinamnist", "--data-root", str(data_root), "--skip-md5", "--limit", "32",
              "--results-dir", str(results), "--head-epochs", "5", "-q"]
    for head in ("linear", "knn"):
        code = main(["run", *MEDICAL[name], "--head", head, *common])
        assert code == 0, capsys.readouterr().err
    csvs = list((results / "runs").glob("*.csv"))
    assert len(csvs) == 2
    for csv in csvs:
        df = pd.read_csv(csv)
        assert set(df.split) == {"val", "test"} and df.value.notna().all()
        meta = json.loads((results / "meta" / f"{csv.stem}.json").read_text())
        assert meta["backbone"]["blocks"] >= 3 and meta["dataset"]["n"]["test"] == 32


# ------------------------------------------------------------------------- configs/natural-vs-medical


def test_natural_vs_medical_config_pairs_models_with_their_datasets():
    from pathlib import Path

    from bench.sweep.grid import load

    points = load(Path(__file__).resolve().parents[1] / "configs" / "natural-vs-medical.yaml").points()
    assert len(points) == (9 * 12 + 2 + 1) * 3 * 3
    datasets = {}
    for p in points:
        datasets.setdefault(p["backbone"], set()).add(p["dataset"])
    assert datasets["rad-dino"] == {"chestmnist", "pneumoniamnist"} and datasets["retfound"] == {"retinamnist"}
    assert all(len(datasets[b]) == 12 for b in ("biomedclip", "medsam", "seem", "dinov2", "resnet50"))
    assert {(p.get("unfreeze", "none"), p.get("adapt", "none")) for p in points} == \
        {("none", "none"), ("last2", "none"), ("all", "lora")}
    assert {p["seed"] for p in points} == {0, 1, 2} and {p["size"] for p in points} == {224}


def test_grids_union_flags_and_errors(tmp_path, data_root, capsys):
    from bench.sweep.grid import from_mapping

    doc = {"sizes": [28], "seeds": [0, 1], "fixed": {"head_epochs": 2},
           "grids": [{"backbones": ["dummy", "simplecnn"], "datasets": ["breastmnist", "retinamnist"]},
                     {"backbones": ["dummy"], "datasets": ["retinamnist"], "fixed": {"head_batch_size": 64}}]}
    points = from_mapping(doc).points()
    assert len(points) == 2 * 2 * 2 + 2  # the second part's points differ (head_batch_size), so all are kept
    assert all(p["head_epochs"] == 2 for p in points) and sum("head_batch_size" in p for p in points) == 2
    same = from_mapping({**doc, "grids": [doc["grids"][0], {"backbones": ["dummy"], "datasets": ["retinamnist"]}]})
    assert len(same.points()) == 8  # a point listed by two parts runs once
    same.set_option("dataset", ["breastmnist"])  # a flag replaces the entry in every part
    assert {p["dataset"] for p in same.points()} == {"breastmnist"} and len(same.points()) == 4
    with pytest.raises(UserError, match=r"grids\[0\]: 'results_dir' is a setting of the whole sweep"):
        from_mapping({"grids": [{"backbones": ["dummy"], "results_dir": "x"}]})
    with pytest.raises(UserError, match="grids: expected a non-empty list"):
        from_mapping({"grids": []})
    # through `bench sweep --dry-run` as a file
    path = tmp_path / "union.yaml"
    path.write_text("sizes: [28]\nseeds: [0]\ngrids:\n  - {backbones: [dummy, simplecnn], datasets: [breastmnist]}\n"
                    "  - {backbones: [dummy], datasets: [retinamnist]}\n")
    capsys.readouterr()
    assert main(["sweep", str(path), "--data-root", str(data_root), "--results-dir", str(tmp_path / "r"),
                 "--skip-md5", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 3


def test_docs_backbone_table_is_generated():

    from backbones.catalog import markdown_table

    from bench import docgen

    assert docgen.block("backbones") == markdown_table(), "docs/backbones.md: regenerate with python -m bench.docgen --write"
    table = markdown_table()
    for name in MEDICAL:
        spec = backbones.get(name).spec
        assert f"| `{name}` | {spec.family} | `{spec.default_variant}` | {spec.training_data} |" in table


@pytest.mark.parametrize("name", ["biomedclip", "rad-dino", "retfound", "uni"])
def test_unknown_readout_is_one_line_with_suggestion(name):
    with pytest.raises(UserError, match=rf"backbone '{name}' has no readout 'clss'; did you mean: cls"):
        backbones.build(name, "tiny", "random", readout="clss")
