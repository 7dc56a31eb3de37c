"""DeiT (Touvron et al. 2021): supervised ImageNet-1k ViTs, the paper's DeiT-B, via timm.

The official release files (deit_*_patch16_224-*.pth, ``{"model": ...}``) use timm's key layout,
so ``--weights PATH`` takes them as they are. Distilled variants carry a second prefix token;
their ``cls`` readout is the mean of class and distillation tokens, as DeiT predicts.
"""
from __future__ import annotations

from .base import Spec
from .vit_common import READOUTS, TINY, Variant, vit_adapter

VARIANTS = {
    "base": Variant("deit_base_patch16_224.fb_in1k", 16, {"blocks": 12, "embed_dim": 768, "params": "86M"}),
    "small": Variant("deit_small_patch16_224.fb_in1k", 16, {"blocks": 12, "embed_dim": 384, "params": "22M"}),
    "base_distilled": Variant("deit_base_distilled_patch16_224.fb_in1k", 16,
                              {"blocks": 12, "embed_dim": 768, "params": "86M"}),
    "small_distilled": Variant("deit_small_distilled_patch16_224.fb_in1k", 16,
                               {"blocks": 12, "embed_dim": 384, "params": "22M"}),
    # random-only test configs (not DeiT-Ti): same classes, 3 blocks of width 32
    "tiny": Variant("deit_tiny_patch16_224", 16, {"blocks": 3, "embed_dim": 32, "params": "70k"}, TINY),
    "tiny_distilled": Variant("deit_tiny_distilled_patch16_224", 16,
                              {"blocks": 3, "embed_dim": 32, "params": "70k"}, TINY),
}

SPEC = Spec(
    name="deit", family="vit", variants=tuple(VARIANTS), default_variant="base", input_size=224,
    weights_source="timm (HF hub timm/deit_*_patch16_224.fb_in1k) or the official DeiT .pth",
    license="apache-2.0", readouts=READOUTS,
    description="DeiT ViT/16, supervised ImageNet-1k (distilled variants: class+distillation token)",
    training_data="ImageNet-1k, supervised",
    paper_use="DeiT-B: ImageNet baseline, and the DeiT head's initialisation",
    facts={**VARIANTS["base"].facts, "variants": {k: v.facts for k, v in VARIANTS.items()}},
)

DEIT = vit_adapter(SPEC, VARIANTS)
