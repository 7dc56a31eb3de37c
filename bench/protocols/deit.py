"""The paper's DeiT head ("Y-model"): frozen tokens after the last block -> Linear+LayerNorm
projector -> DeiT blocks initialised from supervised ImageNet DeiT -> classifier; with
``--unfreeze lastN|all`` the backbone's last blocks train with it."""
from __future__ import annotations

from .finetune import DEIT_OPTIONS, TRAINED_OPTIONS, Finetune

# one DeiT block relative to a ViT-B/16 forward (12 ViT-B blocks); FLOPs go with width squared
_BLOCK_COST = {"deit_tiny": 1 / 192, "deit_small": 1 / 48, "deit_base": 1 / 12}


class DeiTHead(Finetune):
    name = "deit"
    heads = ("deit",)
    options = TRAINED_OPTIONS + DEIT_OPTIONS
    description = "DeiT blocks (ImageNet init) on the backbone's tokens; trained like finetune"

    def head_fraction(self, cfg) -> float:
        # 0.04 for the default two DeiT-S blocks, 1.0 for the paper's full DeiT-B
        return _BLOCK_COST.get(cfg.head_arch, 1 / 12) * cfg.head_depth

    def applies(self, cfg) -> bool:
        return True

    def describe(self, cfg) -> dict:
        return {"head": "deit", "arch": cfg.head_arch, "blocks": cfg.head_depth, "tokens": cfg.head_tokens}


DEIT = DeiTHead()
