"""CLIP image towers from open_clip (``open_clip.transformer.VisionTransformer``).

stem    conv1 -> flatten -> [CLS] + patches -> + positional embedding -> patch_dropout -> ln_pre
blocks  transformer.resblocks
readout "cls": ln_post on the pooled token, before the projection (default);
        "proj": the same @ proj, i.e. the CLIP image embedding (what the paper's code fed its head)

A variant is an open_clip ``ARCH/TAG`` pair (any of ``open_clip.list_pretrained()`` whose image
tower is a plain ViT), or ``tiny`` (a small random tower of the same classes, for tests). The tower
is built at the run's input size and the checkpoint's position grid is resized to it on load, as
open_clip does for ``force_image_size``. The text tower is built only when a zero-shot run asks for it
(``text_tower``): open_clip's own TextTransformer, loaded from the same checkpoint (read again), with
open_clip's tokenizer, whose BPE vocabulary ships in the package (offline).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError, did_you_mean

from . import hub
from .base import AttentionMaps, Backbone, Spec, TextTower, capture_inputs, layer_names
from .registry import Adapter, WeightFile

DEFAULT = "ViT-B-16/laion2b_s34b_b88k"  # the paper's checkpoint
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN/STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# an open_clip model config (same schema as open_clip/model_configs/*.json), random init only; its
# text tower takes open_clip's own tokenizer (vocabulary 49408, 77 tokens), so zero-shot runs on it
TINY_CFG: dict = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # open_clip's CLIP init: the logit scale of a random text tower


class _Variants(tuple):
    """The well-known tags (listed by `bench ls`); membership also accepts any open_clip ARCH/TAG."""

    def __contains__(self, item: object) -> bool:
        return tuple.__contains__(self, item) or (isinstance(item, str) and _is_pretrained_tag(item))


def _is_pretrained_tag(variant: str) -> bool:
    arch, sep, tag = variant.partition("/")
    if not sep:
        return False
    from open_clip.pretrained import is_pretrained_cfg

    return is_pretrained_cfg(arch, tag)


SPEC = Spec(
    name="clip", family="clip",
    variants=_Variants((DEFAULT, "ViT-B-16/openai", "ViT-B-16/datacomp_xl_s13b_b90k",
                        "ViT-B-32/openai", "ViT-B-32/laion2b_s34b_b79k", "ViT-L-14/openai",
                        "ViT-L-14/datacomp_xl_s13b_b90k", "tiny")),
    default_variant=DEFAULT, input_size=224, mean=OPENAI_MEAN, std=OPENAI_STD,
    weights_source="open_clip pretrained tag (HF hub); any ARCH/TAG of open_clip.list_pretrained()",
    license="mit (open_clip code and LAION / OpenAI weights; other tags: see their cards)",
    readouts=("cls", "proj"), text_readout="proj",
    description="OpenCLIP image tower (ViT-B/16 LAION-2B by default); text tower only for --head zeroshot",
    training_data="LAION-2B image-text pairs",
    paper_use="OpenCLIP ViT-B/16 LAION-2B, projected embedding",
    facts={"blocks": 12, "embed_dim": "768 (proj: 512)", "params": "86M"},
)


class _Projection(nn.Module):
    """Holds open_clip's bare ``proj`` parameter so it can be listed as a readout module."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight


class CLIPBackbone(Backbone):
    def __init__(self, visual: nn.Module, spec: Spec, variant: str, readout: str) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or visual.pool_type not in ("tok", "avg"):
            raise UserError(f"clip variant {variant!r}: attentional / unpooled towers are not supported")
        self.spec, self.variant, self.readout_name = spec, variant, readout
        # the tower's own modules, re-homed so the state dict has no duplicate (aliased) keys
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.patch_dropout = visual.patch_dropout
        self.ln_pre = visual.ln_pre
        self.blocks = visual.transformer.resblocks
        self.ln_post = visual.ln_post
        self.proj = _Projection(visual.proj)
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = visual.final_ln_after_pool
        self.grid_size = tuple(visual.grid_size)
        self.lnd = not getattr(visual.transformer, "batch_first", True)
        if self.lnd:
            _make_batch_first(self.blocks)
        self.input_size = visual.image_size[0]
        self.embed_dim = visual.proj.shape[1] if readout == "proj" else visual.proj.shape[0]
        # what text_tower() needs: the seed a random init drew from, and the file weights came from
        self.init_seed = torch.initial_seed()
        self.weights_source = ""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding
        if grid != self.grid_size:  # images of another size than the one built for
            pos = resize_pos_embed(pos, grid)
        x = x + pos.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        # open_clip's VisionTransformer._pool without attentional pooling: "tok" = CLS, "avg" =
        # mean of patch tokens; ln_post before pooling unless final_ln_after_pool
        tokens = h[:, :1] if self.pool_type == "tok" else h[:, 1:]
        if self.final_ln_after_pool:
            pooled = self.ln_post(tokens.mean(dim=1))
        else:
            pooled = self.ln_post(tokens).mean(dim=1)
        if self.readout_name == "proj":
            pooled = pooled @ self.proj.weight
        return pooled

    num_prefix_tokens = 1  # the class token leads the sequence

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return self.ln_post(h)

    def text_tower(self) -> TextTower:
        """open_clip's TextTransformer of this variant: random (seeded like the image tower) with
        random weights, else loaded from the checkpoint the image tower came from; the logit scale
        is the checkpoint's ``logit_scale.exp()`` (open_clip's init, 1/0.07, when random)."""
        from open_clip.model import _build_text_tower

        name = self.spec.name if self.variant == self.spec.default_variant else f"{self.spec.name}@{self.variant}"
        cfg, pcfg = model_config(self.variant)
        text_cfg = dict(cfg.get("text_cfg", {}))
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
            raise UserError(f"--head zeroshot: {name}'s text tower is a Hugging Face model "
                            f"({text_cfg.get('hf_model_name') or text_cfg.get('hf_tokenizer_name')}); zero-shot "
                            f"supports open_clip tags with a CLIP text tower (e.g. {DEFAULT})")
        quick_gelu = bool(cfg.get("quick_gelu", False) or pcfg.get("quick_gelu", False))
        with torch.random.fork_rng():
            torch.manual_seed(self.init_seed + 1)  # not the image tower's draws: those are done
            text = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=quick_gelu)
        scale = math.exp(cfg.get("init_logit_scale", INIT_LOGIT_SCALE))
        if self.weights_source:
            sd = hub.load_state_dict(self.weights_source)
            scale = load_text_tower(text, sd, name=name, source=self.weights_source) or scale
        elif self.weights_id != "random" and not self.weights_id.endswith("-seed0"):
            raise UserError(f"--head zeroshot: {name}'s weights ({self.weights_id}) hold no text tower (a model "
                            f"saved by bench keeps the image tower only); pass the full open_clip checkpoint")
        text = text.eval().to(next(self.parameters()).device)
        tokenizer = _tokenizer(self.variant, text_cfg)

        def encode(prompts: list[str]) -> torch.Tensor:
            with torch.no_grad():
                return text(tokenizer(prompts).to(next(text.parameters()).device)).float()

        return TextTower(encode, float(scale), f"open_clip {self.variant.partition('/')[0]} text tower, "
                         f"{type(tokenizer).__name__}", self.weights_id)

    def lora_targets(self) -> tuple[str, ...]:
        # open_clip's nn.MultiheadAttention: peft adapts its in_proj (q, k, v) and out_proj together
        return layer_names(self.blocks, "attn")

    def readout_modules(self) -> Sequence[nn.Module]:
        return [self.ln_post, self.proj] if self.readout_name == "proj" else [self.ln_post]

    def cam_layers(self) -> list[nn.Module]:
        # the class token reads the last block's patch tokens through its attention (see Backbone)
        return [self.blocks[-1].ln_1] if self.pool_type == "tok" else [self.blocks[-1]]

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim == 3 and self.lnd and h.shape[0] == 1 + self.grid_size[0] * self.grid_size[1]:
            h = h.transpose(0, 1)  # ln_1 inside a sequence-first block
        return super().feature_map(h)

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """open_clip calls nn.MultiheadAttention with need_weights=False: the weights are recomputed
        from each block's attention input, softmax(q k^T / sqrt(d)) with its in-projection."""
        attns = [getattr(b, "attn", None) for b in self.blocks]
        if not all(isinstance(a, nn.MultiheadAttention) and a._qkv_same_embed_dim for a in attns):
            raise UserError(f"--method rollout: clip variant {self.variant!r} has blocks without a plain "
                            f"nn.MultiheadAttention; use --method gradcam")
        maps = []
        for a, t in zip(attns, capture_inputs(attns, lambda: self(x))):
            t = t.transpose(0, 1) if self.lnd else t
            b, n, c = t.shape
            w, bias = a.in_proj_weight, a.in_proj_bias
            q, k = (F.linear(t, w[i * c:(i + 1) * c], None if bias is None else bias[i * c:(i + 1) * c])
                    .view(b, n, a.num_heads, c // a.num_heads).transpose(1, 2) for i in (0, 1))
            maps.append((q @ k.transpose(-2, -1) * (c // a.num_heads) ** -0.5).softmax(-1))
        return AttentionMaps(maps, slice(0, 1) if self.pool_type == "tok" else None)


def _make_batch_first(blocks: nn.ModuleList) -> None:
    # Older open_clip runs resblocks sequence-first (L, N, D). Hooks transpose around each block so
    # every block maps (N, L, D) -> (N, L, D) without wrapper modules that would rename the keys.
    for block in blocks:
        block.register_forward_pre_hook(lambda _m, args: (args[0].transpose(0, 1), *args[1:]))
        block.register_forward_hook(lambda _m, _args, out: out.transpose(0, 1))


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + H*W, C) position table -> (1 + grid_h*grid_w, C); bicubic + antialias like open_clip."""
    old = int(math.sqrt(pos.shape[0] - 1))
    if old * old != pos.shape[0] - 1:
        return pos  # not a square grid: leave it, load_into reports the shape mismatch
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls, patches], dim=0)


def model_config(variant: str) -> tuple[dict, dict]:
    """(open_clip model config, pretrained config) of a variant; UserError for unknown or unsupported."""
    if variant == "tiny":
        return copy.deepcopy(TINY_CFG), {}
    from open_clip import list_pretrained
    from open_clip.factory import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    arch, _, tag = variant.partition("/")
    cfg, pcfg = get_model_config(arch), get_pretrained_cfg(arch, tag)
    if cfg is None or not pcfg:
        tags = [f"{a}/{t}" for a, t in list_pretrained()]
        raise UserError(f"clip variant {variant!r} is not an open_clip ARCH/TAG pair; {did_you_mean(variant, tags)}")
    vision = cfg["vision_cfg"]
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)) \
            or vision.get("attentional_pool"):
        raise UserError(f"clip variant {variant!r} has a timm / ResNet / attention-pooled image tower; "
                        f"this adapter handles open_clip VisionTransformer towers (e.g. {DEFAULT}); "
                        f"use timm:NAME for timm towers")
    return cfg, pcfg


def hf_location(variant: str) -> tuple[str, list[str]]:
    """HF repo and candidate file names (safetensors first) of a tag, as open_clip downloads them."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    _, pcfg = model_config(variant)
    if not pcfg.get("hf_hub"):
        raise UserError(f"clip variant {variant!r} has no Hugging Face weights; pass --weights PATH")
    repo, filename = os.path.split(pcfg["hf_hub"])  # "org/repo/" or "org/repo/file.bin"
    filename = filename or HF_WEIGHTS_NAME
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else os.path.splitext(filename)[0] + ".safetensors"
    return repo, ([safe, filename] if filename != safe else [filename])


def _fetch_default(variant: str, name: str) -> tuple[str, str]:
    repo, candidates = hf_location(variant)
    for filename in candidates:  # a cached copy of any candidate wins over a download
        found = hub.hf_cached(repo, filename)
        if found:
            return found, f"hf:{repo}/{filename}"
    first_error: UserError | None = None
    for filename in candidates:
        try:
            return hub.hf_file(repo, filename, name=name), f"hf:{repo}/{filename}"
        except UserError as e:  # e.g. the repo has only the .bin: try the next name
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def open_clip_visual_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip state dict (full CLIP "visual.*" or image tower only) keyed like CLIPBackbone."""
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):  # full model: keep the image tower, drop the text
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    out = {}
    for k, v in sd.items():
        if k.startswith("transformer.resblocks."):
            k = "blocks." + k[len("transformer.resblocks."):]
        elif k == "proj":
            k = "proj.weight"
        out[k] = v
    return out


def _tokenizer(variant: str, text_cfg: dict):
    """open_clip's tokenizer of a variant (its BPE vocabulary ships in the package: nothing is
    downloaded); the tiny test model takes the same one."""
    from open_clip import get_tokenizer
    from open_clip.tokenizer import SimpleTokenizer

    if variant == "tiny":
        return SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    return get_tokenizer(variant.partition("/")[0])


TEXT_SKIP = ("visual.", "logit_scale", "logit_bias", "attn_mask")


def load_text_tower(text: nn.Module, sd: dict[str, torch.Tensor], *, name: str, source: str) -> float | None:
    """The text keys of a full open_clip CLIP state dict into a TextTransformer; the checkpoint's
    ``logit_scale.exp()`` (None when it has none). A file without a text tower: one line."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if "logit_bias" in sd:
        raise UserError(f"--head zeroshot: {name}'s checkpoint has a logit bias (a SigLIP-style sigmoid model); "
                        f"zero-shot here is CLIP's softmax over classes")
    text_sd = {k: v for k, v in sd.items() if not k.startswith(TEXT_SKIP)}
    if "token_embedding.weight" not in text_sd:
        raise UserError(f"--head zeroshot: weights {source!r} hold no text tower (token_embedding.weight etc.); "
                        f"pass the full open_clip checkpoint of {name}")
    hub.load_into(text, text_sd, name=f"{name} text tower", source=source)
    scale = sd.get("logit_scale")
    return float(scale.float().exp().reshape(-1)[0]) if scale is not None else None


def load_open_clip(backbone: CLIPBackbone, sd: dict[str, torch.Tensor], *, name: str, source: str) -> None:
    backbone.weights_source = str(source)
    sd = open_clip_visual_state(sd)
    pos = sd.get("positional_embedding")
    if pos is not None and pos.ndim == 2 and pos.shape[0] != backbone.positional_embedding.shape[0]:
        sd["positional_embedding"] = resize_pos_embed(pos, backbone.grid_size)
    hub.load_into(backbone, sd, name=name, source=source)


def build_from_config(cfg: dict, pcfg: dict, variant: str, readout: str,
                      input_size: int | None = None, spec: Spec = SPEC) -> CLIPBackbone:
    """Build the image tower of an open_clip model config at ``input_size`` (None = native)."""
    from open_clip.model import _build_vision_tower

    vision_cfg = dict(cfg["vision_cfg"])
    if input_size:
        vision_cfg["image_size"] = input_size
    # OpenAI-style tags were trained with QuickGELU even when the arch config does not say so
    quick_gelu = bool(cfg.get("quick_gelu", False) or pcfg.get("quick_gelu", False))
    visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu)
    backbone = CLIPBackbone(visual, spec, variant, readout)
    if pcfg.get("mean") and pcfg.get("std"):  # some tags (LAION ViT-L, CLIPA) use 0.5/0.5
        backbone._normalization = (tuple(pcfg["mean"]), tuple(pcfg["std"]))
    return backbone


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    readout = readout or SPEC.readouts[0]
    if readout not in SPEC.readouts:
        raise UserError(f"clip has no readout {readout!r}; {did_you_mean(readout, SPEC.readouts)}")
    cfg, pcfg = model_config(variant)
    name = "clip" if variant == SPEC.default_variant else f"clip@{variant}"
    return hub.build_with_weights(
        lambda: build_from_config(cfg, pcfg, variant, readout, input_size),
        lambda m, sd, source: load_open_clip(m, sd, name=name, source=source),
        weights, lambda: _fetch_default(variant, name),
        fixed_seed_id=f"{SPEC.name}-tiny-seed0" if variant == "tiny" else None)

def weight_files(variant: str) -> list[WeightFile]:
    if variant == "tiny":
        return []
    repo, candidates = hf_location(variant)
    return [WeightFile("hf", repo, candidates[0])]


CLIP = Adapter(SPEC, build, weight_files)
