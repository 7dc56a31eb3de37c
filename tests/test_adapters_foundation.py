"""CLIP (open_clip), SAM (segment_anything) and BLIP (transformers) adapters on tiny random models.

For each: the stem/blocks/readout split reproduces the library model's own output; state dicts in
the library's official key layout load through ``backbones.build``; a wrong architecture is a
UserError; block-wise unfreezing; and `--weights default` offline fails fast naming the file.
No test downloads anything.
"""
from __future__ import annotations

import copy
import json
import time
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import backbones
from backbones.registry import BENCH_FORMAT
from bench.errors import UserError

ATOL = 1e-5


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


def forward_split(b: backbones.Backbone, x: torch.Tensor) -> torch.Tensor:
    """readout(run_blocks(stem(x))), running the blocks in two halves as prefix caching does."""
    h = b.stem(x)
    h = b.run_blocks(h, 0, 1)
    return b.readout(b.run_blocks(h, 1))


def check_unfreeze(b: backbones.Backbone) -> None:
    n, total = b.num_blocks, {id(p) for p in b.parameters()}
    readout = {id(p) for m in b.readout_modules() for p in m.parameters()}
    assert n >= 3 and b.trainable_parameters(0) == []
    for k in (1, 2):
        got = {id(p) for p in b.trainable_parameters(k)}
        want = {id(p) for blk in b.blocks[n - k:] for p in blk.parameters()} | readout
        assert got == want
    assert {id(p) for p in b.trainable_parameters(n)} == total


def assert_fails_fast_offline(name: str, variant: str | None, needle: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        backbones.build(name, variant, "default")
    assert time.monotonic() - start < 5
    assert needle in str(err.value) and "--weights" in str(err.value)


def save_bench_checkpoint(b: backbones.Backbone, path) -> str:
    # what `bench run --save-model` writes: the Backbone's own keys, safetensors, tagged
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, str(path), metadata={"format": BENCH_FORMAT})
    return str(path)


def sam_tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from backbones.sam import make_encoder

    torch.manual_seed(seed)
    enc = make_encoder("tiny", 64)
    with torch.no_grad():  # SAM zero-inits these; random values make the resizing visible
        enc.pos_embed.normal_()
        for blk in enc.blocks:
            blk.attn.rel_pos_h.normal_()
            blk.attn.rel_pos_w.normal_()
    return enc.state_dict()


# --------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_model():
    from open_clip.model import CLIP

    from backbones.clip import TINY_CFG

    torch.manual_seed(0)
    return CLIP(**TINY_CFG).eval()


@pytest.fixture
def clip_file(clip_model, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_model.state_dict(), path)  # the full CLIP layout: "visual.*" + text tower
    return str(path)


def test_clip_decomposition_matches_open_clip(clip_model, clip_file):
    x = torch.randn(2, 3, 32, 32)
    pre_proj = copy.deepcopy(clip_model.visual)
    pre_proj.proj = None  # open_clip then returns the pooled, ln_post'ed token
    with torch.no_grad():
        for readout, want in (("cls", pre_proj(x)), ("proj", clip_model.visual(x))):
            b = backbones.build("clip", "tiny", weights=clip_file, readout=readout).eval()
            assert b.embed_dim == want.shape[1]
            assert close(forward_split(b, x), want) and close(b(x), want)
            tokens = b.tokens(b.run_blocks(b.stem(x)))
            assert tokens.shape == (2, 1 + 16, 32)
    assert b.weights_id.startswith("sha256:")


def test_clip_avg_pool_tower_matches_open_clip():
    # CLIPA-style towers: mean of patch tokens, ln_post after pooling, no ln_pre
    from open_clip.model import _build_vision_tower

    from backbones.clip import TINY_CFG, CLIPBackbone, SPEC

    vision = dict(TINY_CFG["vision_cfg"], pool_type="avg", final_ln_after_pool=True, no_ln_pre=True)
    torch.manual_seed(0)
    visual = _build_vision_tower(16, vision).eval()
    b = CLIPBackbone(copy.deepcopy(visual), SPEC, "tiny", "proj").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(forward_split(b, x), visual(x))


def test_clip_loads_visual_only_and_resizes_like_open_clip(clip_model, tmp_path):
    import open_clip

    from backbones.clip import TINY_CFG

    visual_only = tmp_path / "visual.safetensors"
    save_file({k: v.contiguous() for k, v in clip_model.visual.state_dict().items()}, str(visual_only))
    x = torch.randn(2, 3, 32, 32)
    b = backbones.build("clip", "tiny", weights=str(visual_only), readout="proj").eval()
    with torch.no_grad():
        assert close(b(x), clip_model.visual(x))
    # another input size: open_clip's own force_image_size path is the reference
    full = tmp_path / "full.pt"
    torch.save(clip_model.state_dict(), full)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "medfm-tiny-clip.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path / "cfg" / "medfm-tiny-clip.json")
    ref = open_clip.create_model("medfm-tiny-clip", pretrained=str(full), force_image_size=48).eval()
    b48 = backbones.build("clip", "tiny", weights=str(full), readout="proj", input_size=48).eval()
    assert b48.input_size == 48 and b48.positional_embedding.shape[0] == 1 + 6 * 6
    x48 = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert close(b48(x48), ref.visual(x48))
        # a 32 px batch still runs on the 48 px model (pos-embed resampled per batch)
        assert b48(x).shape == (2, 16)


def test_clip_variants_and_quick_gelu():
    from open_clip.transformer import QuickGELU

    from backbones.clip import SPEC, build_from_config, model_config

    assert "ViT-B-16/openai" in SPEC.variants and "ViT-B-16/dfn2b" in SPEC.variants  # any open_clip tag
    assert "ViT-B-16/nope" not in SPEC.variants
    with pytest.raises(UserError, match="no variant"):
        backbones.build("clip", "ViT-B-16/nope", "random")
    with pytest.raises(UserError, match="timm / ResNet"):
        backbones.build("clip", "RN50/openai", "random")
    # OpenAI weights were trained with QuickGELU; the arch config alone does not say so
    cfg, pcfg = model_config("ViT-B-16/openai")
    assert pcfg["quick_gelu"] and not cfg.get("quick_gelu")
    tiny_cfg, _ = model_config("tiny")
    b = build_from_config(tiny_cfg, {"quick_gelu": True}, "tiny", "cls")
    assert isinstance(b.blocks[0].mlp.gelu, QuickGELU)


def test_clip_sequence_first_blocks(clip_model):
    # open_clip releases that run resblocks sequence-first still give (N, L, D) blocks
    from open_clip.transformer import Transformer

    from backbones.clip import SPEC, CLIPBackbone

    visual = copy.deepcopy(clip_model.visual)
    seq_first = Transformer(32, 3, 2, 4.0, batch_first=False)
    seq_first.load_state_dict(visual.transformer.state_dict())
    visual.transformer = seq_first
    b = CLIPBackbone(visual, SPEC, "tiny", "proj").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(b(x), clip_model.visual(x))
        assert b.run_blocks(b.stem(x)).shape == (2, 17, 32)


def test_clip_wrong_architecture_and_unfreeze(tmp_path):
    from open_clip.model import CLIP

    from backbones.clip import TINY_CFG

    wider = copy.deepcopy(TINY_CFG)
    wider["vision_cfg"]["width"] = 48
    path = tmp_path / "wider.pt"
    torch.save(CLIP(**wider).state_dict(), path)
    with pytest.raises(UserError, match="do not fit backbone 'clip@tiny'.*shape mismatch"):
        backbones.build("clip", "tiny", weights=str(path))
    sam_file = tmp_path / "sam.pt"
    torch.save(sam_tiny_state(), sam_file)
    with pytest.raises(UserError, match="missing keys"):
        backbones.build("clip", "tiny", weights=str(sam_file))
    b = backbones.build("clip", "tiny", weights="random", readout="proj")
    check_unfreeze(b)
    assert {id(p) for p in b.readout_modules()[1].parameters()} == {id(b.proj.weight)}
    assert b.weights_id == "random"


def assert_bench_roundtrip(name: str, tmp_path, size: int = 48):
    """A `--save-model` file of the tiny fixed-seed model reloads to the same outputs."""
    seeded = backbones.build(name, "tiny", "default", input_size=size).eval()
    path = save_bench_checkpoint(seeded, tmp_path / "model.safetensors")
    again = backbones.build(name, "tiny", path, input_size=size).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert close(again(x), seeded(x))
    return seeded


def test_clip_bench_checkpoint_roundtrip(tmp_path):
    assert assert_bench_roundtrip("clip", tmp_path).weights_id == "clip-tiny-seed0"


def test_clip_default_weights_offline_fail_fast():
    assert_fails_fast_offline("clip", None, "laion/CLIP-ViT-B-16-laion2B-s34B-b88K/open_clip_model.safetensors")
    assert_fails_fast_offline("clip", "ViT-B-16/openai", "timm/vit_base_patch16_clip_224.openai/")


# ---------------------------------------------------------------------------------------------- SAM


def sam_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean over H x W of the last block, computed with segment_anything's own native encoder.

    At another input size the pos_embed grid is resized as the paper's code does (bicubic,
    antialiased); the global blocks' rel-pos tables are resized by segment_anything itself at
    run time (get_rel_pos), which is what the adapter's load-time resizing must agree with.
    """
    from backbones.sam import make_encoder

    enc = make_encoder("tiny", 64).eval()
    enc.load_state_dict(sd)
    h = enc.patch_embed(x)
    pos = enc.pos_embed
    if tuple(h.shape[1:3]) != tuple(pos.shape[1:3]):
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=h.shape[1:3], mode="bicubic",
                            antialias=True).permute(0, 2, 3, 1)
    h = h + pos
    for blk in enc.blocks:
        h = blk(h)
    return h.mean(dim=(1, 2))


@pytest.fixture(scope="module")
def sam_full_state():
    """A tiny Sam in the official full-model layout: image_encoder.* + prompt_encoder / mask_decoder."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from backbones.sam import make_encoder

    enc = make_encoder("tiny", 64)
    enc.load_state_dict(sam_tiny_state())
    sam = Sam(image_encoder=enc,
              prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                           mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=16, iou_head_depth=2,
                                       iou_head_hidden_dim=16,
                                       transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
                                                                     num_heads=2)))
    return sam.state_dict()


@pytest.mark.parametrize("size", [64, 32, 224])
def test_sam_decomposition_and_official_layout(sam_full_state, tmp_path, size):
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam_full_state, path)
    b = backbones.build("sam", "tiny", weights=str(path), input_size=size).eval()
    grid = size // 8
    assert b.input_size == size and tuple(b.pos_embed.shape[1:3]) == (grid, grid)
    for i, blk in enumerate(b.blocks):  # global block 1 follows the grid, windowed ones keep 2*4-1
        assert blk.attn.rel_pos_h.shape[0] == (2 * grid - 1 if i == 1 else 7)
    encoder = {k[len("image_encoder."):]: v for k, v in sam_full_state.items() if k.startswith("image_encoder.")}
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = sam_reference(encoder, x)
        assert close(forward_split(b, x), want) and close(b(x), want)
        assert b.tokens(b.run_blocks(b.stem(x))).shape == (2, grid * grid, 32)


def test_sam_encoder_only_layout_and_wrong_architecture(tmp_path, clip_file):
    path = tmp_path / "encoder.safetensors"
    save_file(sam_tiny_state(), str(path))  # encoder-only, neck included (dropped on load)
    b = backbones.build("sam", "tiny", weights=str(path), input_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert close(b(x), sam_reference(sam_tiny_state(), x))
    with pytest.raises(UserError, match="do not fit backbone 'sam@tiny'"):
        backbones.build("sam", "tiny", weights=clip_file, input_size=32)
    wider = {k: torch.zeros(*v.shape[:-1], 48) if k == "pos_embed" else v for k, v in sam_tiny_state().items()}
    torch.save(wider, tmp_path / "wider.pt")
    with pytest.raises(UserError, match="shape mismatch"):
        backbones.build("sam", "tiny", weights=str(tmp_path / "wider.pt"), input_size=32)


def test_sam_vit_b_at_224_and_native_grid():
    b = backbones.build("sam", "vit_b", "random", input_size=224).eval()
    assert b.num_blocks == 12 and b.embed_dim == 768 and b.weights_id == "random"
    # at 224 the 14 x 14 grid equals the window: every table has 2*14-1 rows
    assert {blk.attn.rel_pos_h.shape[0] for blk in b.blocks} == {27}
    with torch.no_grad():
        assert b(torch.randn(1, 3, 224, 224)).shape == (1, 768)
    check_unfreeze(b)
    assert b.readout_modules() == []
    # native 1024: global blocks (2, 5, 8, 11) span the 64 x 64 grid (shapes only: no 1024 forward)
    from backbones.sam import make_encoder

    with torch.device("meta"):
        native = make_encoder("vit_b", 1024)
    assert [blk.attn.rel_pos_h.shape[0] for blk in native.blocks] == [27, 27, 127] * 4
    assert tuple(native.pos_embed.shape) == (1, 64, 64, 768)


def test_sam_bench_checkpoint_and_offline():
    assert_fails_fast_offline("sam", None, "sam_vit_b_01ec64.pth")
    assert_fails_fast_offline("sam", "vit_h", "sam_vit_h_4b8939.pth")


# --------------------------------------------------------------------------------------------- BLIP


@pytest.fixture(scope="module")
def blip_model():
    """A tiny BlipForConditionalGeneration: the layout of Salesforce/blip-image-captioning-*."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    from backbones.blip import vision_config

    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                encoder_hidden_size=32, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                sep_token_id=2, eos_token_id=2)
    torch.manual_seed(0)
    return BlipForConditionalGeneration(BlipConfig(vision_config=vision_config("tiny").to_dict(),
                                                   text_config=text)).eval()


@pytest.fixture
def blip_file(blip_model, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(blip_model.state_dict(), path)
    return str(path)


def test_blip_decomposition_matches_transformers(blip_model, blip_file):
    b = backbones.build("blip", "tiny", weights=blip_file).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = blip_model.vision_model(pixel_values=x)
        cls = out.last_hidden_state[:, 0]
        assert close(forward_split(b, x), cls) and close(b(x), cls)
        # pooler_output is post_layernorm applied a second time (transformers' BLIP quirk)
        assert close(b.post_layernorm(b(x)), out.pooler_output)
        assert close(b.tokens(b.run_blocks(b.stem(x))), out.last_hidden_state)


def test_blip_vision_only_layout_and_other_input_size(blip_model, tmp_path):
    path = tmp_path / "vision.safetensors"
    vision = blip_model.vision_model.state_dict()
    save_file({k: v.contiguous() for k, v in vision.items()}, str(path))
    b48 = backbones.build("blip", "tiny", weights=str(path), input_size=48).eval()
    assert b48.input_size == 48 and b48.embeddings.position_embedding.shape[1] == 1 + 6 * 6
    x48 = torch.randn(2, 3, 48, 48)
    with torch.no_grad():  # same bicubic resampling as transformers' interpolate_pos_encoding
        want = blip_model.vision_model(pixel_values=x48, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        assert close(b48(x48), want)


def test_blip_original_release_layout(tmp_path):
    # the BLIP release (model_base.pth) stores a timm-style ViT under "visual_encoder."; timm's
    # VisionTransformer has exactly that layout, so it serves as the independent reference
    import timm.models.vision_transformer as tvit

    torch.manual_seed(1)
    vit = tvit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0,
                                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0).eval()
    sd = {f"visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    sd |= {f"visual_encoder_m.{k}": torch.zeros_like(v) for k, v in vit.state_dict().items()}  # momentum copy
    sd["text_encoder.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)
    path = tmp_path / "model_base.pth"
    torch.save({"model": sd}, path)
    b = backbones.build("blip", "tiny", weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(b(x), vit.forward_features(x)[:, 0])


def test_blip_wrong_architecture_unfreeze_and_roundtrip(tmp_path, clip_file):
    with pytest.raises(UserError, match="do not fit backbone 'blip@tiny'"):
        backbones.build("blip", "tiny", weights=clip_file)
    b = backbones.build("blip", "tiny", "random")
    assert b.weights_id == "random" and b(torch.randn(2, 3, 32, 32)).std() > 0.1  # a real init, not 1e-10
    check_unfreeze(b)
    assert_bench_roundtrip("blip", tmp_path)


def test_blip_default_weights_offline_fail_fast():
    assert_fails_fast_offline("blip", None, "model_base.pth")
    assert_fails_fast_offline("blip", "captioning-base", "Salesforce/blip-image-captioning-base/model.safetensors")


def test_weight_files_declared():
    from backbones.registry import get

    assert get("clip").weight_files("ViT-B-16/laion2b_s34b_b88k")[0].location == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    assert get("sam").weight_files("vit_l")[0].filename == "sam_vit_l_0b3195.pth"
    assert get("blip").weight_files("base")[0].kind == "url"
    assert all(get(n).weight_files("tiny") == [] for n in ("clip", "sam", "blip"))
