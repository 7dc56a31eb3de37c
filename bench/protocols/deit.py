"""The paper's DeiT head ("Y-model"): frozen tokens after the last block -> Linear+LayerNorm
projector -> DeiT blocks initialised from supervised ImageNet DeiT -> classifier; with
``--unfreeze lastN|all`` the backbone's last blocks train with it."""
from __future__ import annotations

from .finetune import TRAINED_OPTIONS, Finetune


class DeiTHead(Finetune):
    name = "deit"
    heads = ("deit",)
    options = TRAINED_OPTIONS + ("head_arch",)
    description = "DeiT blocks (ImageNet init) on the backbone's tokens; trained like finetune"
    head_fraction = 0.05  # two DeiT-S blocks on the tokens, relative to a ViT-B/16 forward

    def applies(self, cfg) -> bool:
        return True


DEIT = DeiTHead()
