"""DINO (Caron et al. 2021): self-supervised ImageNet-1k ViTs, the paper's ViT-B/16, via timm.

The official backbone release files (dino_vitbase16_pretrain.pth, ...) use timm's key layout;
full training checkpoints (``{"teacher": {"backbone.*": ...}}``) are unwrapped on load.
"""
from __future__ import annotations

from .base import Spec
from .vit_common import READOUTS, TINY, Variant, vit_adapter

VARIANTS = {
    "vitb16": Variant("vit_base_patch16_224.dino", 16, {"blocks": 12, "embed_dim": 768, "params": "86M"}),
    "vits16": Variant("vit_small_patch16_224.dino", 16, {"blocks": 12, "embed_dim": 384, "params": "22M"}),
    "vitb8": Variant("vit_base_patch8_224.dino", 8, {"blocks": 12, "embed_dim": 768, "params": "86M"}),
    "vits8": Variant("vit_small_patch8_224.dino", 8, {"blocks": 12, "embed_dim": 384, "params": "22M"}),
    # random-only test config: the same VisionTransformer, 3 blocks of width 32
    "tiny": Variant("vit_small_patch16_224", 16, {"blocks": 3, "embed_dim": 32, "params": "70k"}, TINY),
}

SPEC = Spec(
    name="dino", family="vit", variants=tuple(VARIANTS), default_variant="vitb16", input_size=224,
    weights_source="timm (HF hub timm/vit_*_patch*_224.dino) or the official dino_vit*_pretrain.pth",
    license="apache-2.0", readouts=READOUTS,
    description="DINO self-supervised ViT, ImageNet-1k",
    training_data="ImageNet-1k, self-supervised (DINO)",
    paper_use="not in the paper",
    facts={**VARIANTS["vitb16"].facts, "variants": {k: v.facts for k, v in VARIANTS.items()}},
)

DINO = vit_adapter(SPEC, VARIANTS)
