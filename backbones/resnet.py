"""ImageNet ResNets from timm.

Blocks are the residual (bottleneck / basic) blocks of layer1..layer4, 16 for ResNet-50 and 50
for ResNet-152, not the four stages: `--unfreeze lastN` then moves in steps small enough to
trace where adaptation starts to matter, and matches the block granularity of the ViTs.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, Spec
from .registry import Adapter, WeightFile
from . import timm_common


class TimmResNet(Backbone):
    def __init__(self, model: nn.Module, spec: Spec, variant: str, weights_id: str,
                 small_input: bool = False) -> None:
        super().__init__()
        self.spec, self.variant, self.weights_id = spec, variant, weights_id
        if small_input:
            # MedMNIST v2's "ResNet-18 (28)": 3x3 stride-1 first conv and no max-pool, so a
            # 28 px image is not shrunk to 7 px before the first residual block.
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        self.conv1, self.bn1, self.act1, self.maxpool = model.conv1, model.bn1, model.act1, model.maxpool
        self.blocks = nn.ModuleList(b for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
                                    for b in layer)
        self.embed_dim = model.num_features
        self.input_size = spec.input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(2).transpose(1, 2)


def _adapter(arch: str, tags: tuple[str, ...], blocks: int, dim: int, params: str,
             small_input: bool = False, input_size: int = 224) -> Adapter:
    name = arch + ("_28" if small_input else "")
    spec = Spec(
        name=name, family="resnet", variants=tags, default_variant=tags[0], input_size=input_size,
        weights_source="none (from scratch)" if small_input else f"timm (HF hub timm/{arch}.TAG)",
        license="bsd-3-clause (torchvision weights)" if not small_input else "n/a",
        description=("MedMNIST v2 small-input ResNet-18, trained from scratch" if small_input
                     else f"ImageNet-1k supervised {arch}"),
        training_data="none (from scratch)" if small_input else "ImageNet-1k, supervised",
        paper_use=("ResNet-50 torchvision IMAGENET1K_V1: ImageNet baseline" if arch == "resnet50" and not small_input
                   else "not in the paper"),
        facts={"blocks": blocks, "embed_dim": dim, "params": params},
    )

    def build(variant: str, weights: str, *, readout: str | None = None, **_: object) -> Backbone:
        if not small_input:
            model, fp = timm_common.create(f"{arch}.{variant}", weights, name=name)
            return TimmResNet(model, spec, variant, fp)
        # the small-input baseline has no published weights: "default" means from scratch,
        # and a local file (e.g. a saved fine-tune) loads after the stem is reshaped
        model, _ = timm_common.create(arch, "random", name=name)
        backbone = TimmResNet(model, spec, variant, "random", small_input=True)
        if weights not in ("default", "random"):
            backbone.load_weights_file(weights)
        return backbone

    def files(variant: str) -> list[WeightFile]:
        if small_input:
            return []
        repo, filename = timm_common.hub_location(f"{arch}.{variant}")
        return [WeightFile("hf", repo, filename)]

    return Adapter(spec, build, files)


RESNET18 = _adapter("resnet18", ("tv_in1k", "a1_in1k"), 8, 512, "11.2M")
RESNET50 = _adapter("resnet50", ("tv_in1k", "tv2_in1k", "a1_in1k"), 16, 2048, "23.5M")
RESNET152 = _adapter("resnet152", ("tv_in1k", "tv2_in1k", "a1h_in1k"), 50, 2048, "58.1M")
RESNET18_28 = _adapter("resnet18", ("scratch",), 8, 512, "11.2M", small_input=True, input_size=28)
