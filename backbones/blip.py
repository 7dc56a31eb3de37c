"""BLIP image encoders through transformers' ``BlipVisionModel``.

stem    embeddings ([CLS] + patch embedding + position embedding, interpolated for other sizes)
blocks  encoder.layers (BlipEncoderLayer: tensor in, tensor out in transformers 5)
readout "cls": post_layernorm on CLS, i.e. ``last_hidden_state[:, 0]``, the image feature BLIP's own
        heads use. (``BlipVisionModel.pooler_output`` applies post_layernorm a second time.)
        "proj" (base, tiny): the same through ``vision_proj`` (768 -> 256), the image side of BLIP's
        image-text contrastive (ITC) space, what zero-shot runs read

Text tower (zero-shot runs only, base and tiny): BLIP's ITC text side, the BERT text encoder in text
mode (``BlipTextModel`` without cross-attention inputs) -> CLS -> ``text_proj``, its similarity
divided by BLIP's learned temperature ``temp`` (logit scale 1 / temp), prompts tokenised as BLIP does
(bert-base-uncased, 35 tokens). The tokenizer files come from the Hugging Face hub: offline without
them in the HF cache it refuses in one line naming them. The captioning variants have no ITC
projections and refuse.

Variants:
  base              the paper's checkpoint: BLIP ViT-B/16 pre-trained on 14M+ images at 224 px
                    (model_base.pth from the BLIP release, original "visual_encoder.*" layout,
                    converted to transformers keys on load)
  captioning-base   Salesforce/blip-image-captioning-base (HF hub, 384 px, COCO captioning)
  captioning-large  Salesforce/blip-image-captioning-large (HF hub, ViT-L/16, 384 px)
  tiny              a small random BlipVisionConfig, for tests
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError

from . import hub
from .base import AttentionMaps, Backbone, Spec, TextTower, capture_inputs, layer_names
from .registry import Adapter, WeightFile

_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16)


@dataclass(frozen=True)
class Variant:
    config: dict  # BlipVisionConfig fields
    kind: str = ""  # "url" (original BLIP release) | "hf" (transformers repo) | "" (none)
    location: str = ""


VARIANTS: dict[str, Variant] = {
    # the original BLIP ViT uses LayerNorm eps 1e-6; the transformers conversions kept the 1e-5 default
    "base": Variant(dict(_B16, image_size=224, layer_norm_eps=1e-6), "url",
                    "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base.pth"),
    "captioning-base": Variant(dict(_B16, image_size=384, layer_norm_eps=1e-5), "hf",
                               "Salesforce/blip-image-captioning-base"),
    "captioning-large": Variant(dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, patch_size=16, image_size=384, layer_norm_eps=1e-5),
                                "hf", "Salesforce/blip-image-captioning-large"),
    "tiny": Variant(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                         patch_size=8, image_size=32, layer_norm_eps=1e-6)),
}
HF_CANDIDATES = ("model.safetensors", "pytorch_model.bin")
ITC = {"base": 256, "tiny": 16}  # variants with BLIP's image-text contrastive projections: their dim
TEXT_REPO, TEXT_FILES, TEXT_LENGTH = "bert-base-uncased", ("vocab.txt", "tokenizer_config.json"), 35
BASE_TEXT = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, layer_norm_eps=1e-12)
TINY_TEXT = dict(hidden_size=16, encoder_hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=64, layer_norm_eps=1e-12)

class _Spec(Spec):
    def text_refusal(self, variant: str) -> str:
        return "" if variant in ITC else (f"blip@{variant} is a captioning model without BLIP's image-text "
                                          f"contrastive projections (use blip, base)")


SPEC = _Spec(
    name="blip", family="blip", variants=tuple(VARIANTS), default_variant="base", input_size=224,
    mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),  # BLIP uses CLIP's
    weights_source="BLIP release model_base.pth (URL, torch.hub cache); captioning-*: HF hub Salesforce/*",
    license="bsd-3-clause", readouts=("cls", "proj"), text_readout="proj",
    description="BLIP ViT-B/16 image encoder (pre-trained, as in the paper); ITC text side only for --head zeroshot",
    training_data="14M images with captions (COCO, Visual Genome, CC3M, CC12M, SBU)",
    paper_use="BLIP base (model_base.pth), CLS",
    facts={"blocks": 12, "embed_dim": 768, "params": "86M"},
)


def vision_config(variant: str, input_size: int | None = None):
    from transformers import BlipVisionConfig

    cfg = dict(VARIANTS[variant].config)
    if input_size:
        cfg["image_size"] = input_size
    # transformers' BLIP default initializer_range is 1e-10 (weights are always loaded there);
    # --weights random needs a real init, BLIP's own trunc-normal std
    return BlipVisionConfig(**cfg, initializer_range=0.02)


class BLIPBackbone(Backbone):
    def __init__(self, model: nn.Module, spec: Spec, variant: str, readout: str = "cls") -> None:
        super().__init__()
        self.spec, self.variant, self.readout_name = spec, variant, readout
        self.embeddings = model.embeddings
        self.blocks = model.encoder.layers
        self.post_layernorm = model.post_layernorm
        self.embed_dim = model.config.hidden_size
        if readout == "proj":  # BLIP's ITC image projection (only then in the state dict)
            self.vision_proj = nn.Linear(model.config.hidden_size, ITC[variant])
            self.embed_dim = ITC[variant]
        self.init_seed = torch.initial_seed()  # what text_tower() needs: a random init's seed, the weights file
        self.weights_source = ""
        self.input_size = model.config.image_size
        self.patch_size = model.config.patch_size

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        # transformers returns the stored table when the grid matches, else interpolates it
        return self.embeddings(x, interpolate_pos_encoding=True)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        cls = self.post_layernorm(h[:, 0])
        return self.vision_proj(cls) if self.readout_name == "proj" else cls

    def text_tower(self) -> TextTower:
        """BLIP's ITC text side: BlipTextModel in text mode -> CLS -> text_proj; logit scale 1 / temp."""
        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel

        name = self.spec.name if self.variant == self.spec.default_variant else f"{self.spec.name}@{self.variant}"
        tiny = self.variant == "tiny"
        if tiny:
            from .biomedclip import TINY_VOCAB, tiny_tokenizer_dir

            folder, cfg = tiny_tokenizer_dir(), dict(TINY_TEXT, vocab_size=len(TINY_VOCAB))
        else:
            folder, cfg = text_files(name), BASE_TEXT
        config = BlipTextConfig(**cfg, pad_token_id=0, bos_token_id=None, sep_token_id=None, eos_token_id=None)
        with torch.random.fork_rng():
            torch.manual_seed(self.init_seed + 1)
            text = BlipTextModel(config, add_pooling_layer=False)
            text_proj = nn.Linear(cfg["hidden_size"], ITC[self.variant])
        temp = 0.07  # BLIP's init
        if self.weights_source:
            sd = hub.load_state_dict(self.weights_source)
            if sd and all(k.startswith("module.") for k in sd):
                sd = {k[len("module."):]: v for k, v in sd.items()}
            text_sd = {k[len("text_encoder."):]: v for k, v in sd.items() if k.startswith("text_encoder.")}
            proj_sd = {k[len("text_proj."):]: v for k, v in sd.items() if k.startswith("text_proj.")}
            if not text_sd or not proj_sd:
                raise UserError(f"--head zeroshot: weights {self.weights_source!r} hold no BLIP text encoder "
                                f"(text_encoder.*, text_proj.*); pass the BLIP release's model_base.pth")
            hub.load_into(text, text_sd, name=f"{name} text encoder", source=self.weights_source,
                          ignore_unexpected=("pooler.",))
            hub.load_into(text_proj, proj_sd, name=f"{name} text_proj", source=self.weights_source)
            if "temp" in sd:
                temp = float(sd["temp"].float().reshape(-1)[0])
        elif self.weights_id != "random" and not self.weights_id.endswith("-seed0"):
            raise UserError(f"--head zeroshot: {name}'s weights ({self.weights_id}) hold no text encoder; pass the "
                            f"BLIP release's model_base.pth")
        device = next(self.parameters()).device
        text, text_proj = text.eval().to(device), text_proj.eval().to(device)
        tokenizer = BertTokenizer.from_pretrained(str(folder))
        length = min(TEXT_LENGTH, cfg["max_position_embeddings"])

        def encode(prompts: list[str]) -> torch.Tensor:
            t = tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
            with torch.no_grad():
                out = text(input_ids=t.input_ids.to(device), attention_mask=t.attention_mask.to(device))
                return text_proj(out.last_hidden_state[:, 0]).float()

        return TextTower(encode, 1.0 / temp, f"BLIP ITC text encoder ({'tiny BERT' if tiny else TEXT_REPO} tokenizer)",
                         self.weights_id)

    num_prefix_tokens = 1  # the class token leads the sequence

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(h)

    def lora_targets(self) -> tuple[str, ...]:
        return layer_names(self.blocks, "self_attn")  # qkv and projection

    def readout_modules(self) -> Sequence[nn.Module]:
        return [self.post_layernorm] + ([self.vision_proj] if self.readout_name == "proj" else [])

    def cam_layers(self) -> list[nn.Module]:
        # the class token reads the last layer's patch tokens through its attention (see Backbone)
        return [self.blocks[-1].layer_norm1]

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        """The layers run without returning their weights: recomputed from each self-attention's
        input as BlipAttention does, softmax(q k^T * scale) from its fused qkv projection."""
        attns = [b.self_attn for b in self.blocks]
        maps = []
        for a, t in zip(attns, capture_inputs(attns, lambda: self(x))):
            b, n, c = t.shape
            qkv = a.qkv(t).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
            maps.append((qkv[0] @ qkv[1].transpose(-2, -1) * a.scale).softmax(-1))
        return AttentionMaps(maps, slice(0, 1))


# original BLIP (timm-style ViT) names -> transformers names, as transformers' conversion script does
_ORIGINAL_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^norm\.", "post_layernorm."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
    (r"\.attn\.proj\.", ".self_attn.projection."),
    (r"\.attn\.qkv\.", ".self_attn.qkv."),
]


def vision_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP state dicts -> BLIPBackbone keys. Accepted layouts: transformers full model
    ("vision_model.*") or vision-only ("embeddings.*", "encoder.layers.*"), and the original BLIP
    release ("visual_encoder.*", or the bare ViT: "cls_token", "blocks.*")."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    original = any(k.startswith("visual_encoder.") for k in sd)
    if original:  # "visual_encoder_m.*" (the momentum copy) is not matched by the dot
        sd = {k[len("visual_encoder."):]: v for k, v in sd.items() if k.startswith("visual_encoder.")}
    elif any(k.startswith("vision_model.") for k in sd):
        sd = {k[len("vision_model."):]: v for k, v in sd.items() if k.startswith("vision_model.")}
    original = original or "cls_token" in sd
    out = {}
    for k, v in sd.items():
        if original:
            for pattern, repl in _ORIGINAL_RENAMES:
                k = re.sub(pattern, repl, k)
        if k.startswith("encoder.layers."):
            k = "blocks." + k[len("encoder.layers."):]
        out[k] = v
    return out


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + n*n, C) -> (1, 1 + grid*grid, C), bicubic like BLIP's interpolate_pos_embed."""
    n = int(round((pos.shape[1] - 1) ** 0.5))
    if n * n != pos.shape[1] - 1:
        return pos  # not a square grid: load_into reports the shape mismatch
    patches = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([pos[:, :1], patches], dim=1)


def text_files(name: str):
    """The folder (HF cache snapshot) of BLIP's tokenizer files (bert-base-uncased); one line naming
    them when they are not cached and cannot be downloaded."""
    return hub.hf_folder(TEXT_REPO, TEXT_FILES, name=name, what=f"{name}'s text encoder needs BLIP's BERT tokenizer")


def load_blip(backbone: BLIPBackbone, sd: dict[str, torch.Tensor], *, name: str, source: str) -> None:
    backbone.weights_source = str(source)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    proj = {k: v for k, v in sd.items() if k.startswith("vision_proj.")} if backbone.readout_name == "proj" else {}
    if backbone.readout_name == "proj" and not proj:
        raise UserError(f"weights {source!r} hold no BLIP vision_proj (the image-text contrastive projection) for "
                        f"--readout proj of {name!r}; pass the BLIP release's model_base.pth")
    sd = {**vision_state(sd), **proj}
    key = "embeddings.position_embedding"
    pos = sd.get(key)
    if pos is not None and pos.ndim == 3 and pos.shape[1] != backbone.embeddings.position_embedding.shape[1]:
        sd[key] = resize_pos_embed(pos, backbone.grid)
    hub.load_into(backbone, sd, name=name, source=source)


def _fetch_default(variant: str, name: str) -> tuple[str, str]:
    v = VARIANTS[variant]
    if v.kind == "url":
        return hub.url_file(v.location, name=name), f"url:{v.location}"
    for filename in HF_CANDIDATES:  # a cached copy of any candidate wins over a download
        found = hub.hf_cached(v.location, filename)
        if found:
            return found, f"hf:{v.location}/{filename}"
    first_error: UserError | None = None
    for filename in HF_CANDIDATES:
        try:
            return hub.hf_file(v.location, filename, name=name), f"hf:{v.location}/{filename}"
        except UserError as e:  # e.g. a repo with only pytorch_model.bin
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def _new(variant: str, input_size: int | None, readout: str = "cls") -> BLIPBackbone:
    from transformers import BlipVisionModel

    return BLIPBackbone(BlipVisionModel(vision_config(variant, input_size)), SPEC, variant, readout)


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    if readout not in (None, "cls", "proj"):
        raise UserError(f"blip has the readouts 'cls' (post_layernorm on CLS) and 'proj' (its ITC projection), "
                        f"not {readout!r}")
    if variant not in VARIANTS:
        raise UserError(f"blip has no variant {variant!r}; choose from {', '.join(VARIANTS)}")
    name = "blip" if variant == SPEC.default_variant else f"blip@{variant}"
    readout = readout or "cls"
    if readout == "proj" and variant not in ITC:
        raise UserError(f"{name} is a captioning model without BLIP's image-text contrastive projections: --readout "
                        f"proj and --head zeroshot need blip (base, model_base.pth)")
    return hub.build_with_weights(
        lambda: _new(variant, input_size, readout), lambda m, sd, source: load_blip(m, sd, name=name, source=source),
        weights, lambda: _fetch_default(variant, name),
        fixed_seed_id=f"{SPEC.name}-tiny-seed0" if variant == "tiny" else None)

def weight_files(variant: str) -> list[WeightFile]:
    v = VARIANTS[variant]
    if v.kind == "url":
        return [WeightFile("url", v.location, v.location.rsplit("/", 1)[-1])]
    if v.kind == "hf":
        return [WeightFile("hf", v.location, HF_CANDIDATES[0])]
    return []


BLIP = Adapter(SPEC, build, weight_files)
