"""DINOv2 (Oquab et al. 2023) ViT-S/B/L/g 14, with and without registers, via timm.

timm's native size is 518 px; the paper runs at 224, so that is the Spec's input size, and the
position embeddings are resampled to whatever input size the builder gets (timm's bicubic,
antialiased resampling, once at load; the official code interpolates at every forward with a
small offset, so features differ slightly from torch.hub's at the same size).

``--weights PATH`` takes the official facebookresearch/dinov2 release files
(dinov2_vitb14_pretrain.pth, dinov2_vitb14_reg4_pretrain.pth, ...): timm's checkpoint filter
drops ``mask_token``, folds the class token's position embedding into ``cls_token`` for the
register models, renames ``register_tokens`` and ViT-g's SwiGLU ``w12``/``w3``.
"""
from __future__ import annotations

from .base import Spec
from .vit_common import READOUTS, TINY, Variant, vit_adapter

_SIZES = {"vits14": ("small", 12, 384, "22M"), "vitb14": ("base", 12, 768, "86M"),
          "vitl14": ("large", 24, 1024, "304M"), "vitg14": ("giant", 40, 1536, "1.1B")}

VARIANTS = {}
for _v, (_size, _blocks, _dim, _params) in _SIZES.items():
    _facts = {"blocks": _blocks, "embed_dim": _dim, "params": _params}
    VARIANTS[_v] = Variant(f"vit_{_size}_patch14_dinov2.lvd142m", 14, _facts)
    VARIANTS[f"{_v}_reg"] = Variant(f"vit_{_size}_patch14_reg4_dinov2.lvd142m", 14, _facts)
# random-only test configs: the same classes and flags (layer scale; 4 registers), 3 blocks of width 32
_TINY_FACTS = {"blocks": 3, "embed_dim": 32, "params": "70k"}
VARIANTS["tiny"] = Variant("vit_small_patch14_dinov2", 14, _TINY_FACTS, TINY)
VARIANTS["tiny_reg"] = Variant("vit_small_patch14_reg4_dinov2", 14, _TINY_FACTS, TINY)
# default first: `bench ls` shows it as the default and the rest as other variants
VARIANTS = {"vitb14": VARIANTS.pop("vitb14"), **VARIANTS}

SPEC = Spec(
    name="dinov2", family="vit", variants=tuple(VARIANTS), default_variant="vitb14", input_size=224,
    weights_source="timm (HF hub timm/vit_*_patch14[_reg4]_dinov2.lvd142m) or the official "
                   "dinov2_vit*14[_reg4]_pretrain.pth",
    license="apache-2.0", readouts=READOUTS,
    description="DINOv2 self-supervised ViT/14 (LVD-142M), optionally with 4 registers",
    training_data="LVD-142M (142M curated web images), self-supervised",
    paper_use="DINOv2 ViT-B/14, CLS",
    facts={**VARIANTS["vitb14"].facts, "variants": {k: v.facts for k, v in VARIANTS.items()}},
)

DINOV2 = vit_adapter(SPEC, VARIANTS)
