"""torchvision's MobileNetV3-Small as a medfm-bench backbone, registered by entry point.

Copy this package to add your own backbone: build the library model, split it into
stem -> blocks -> readout, describe it in a Spec, and name the Adapter in pyproject.toml.
"""
from __future__ import annotations

import torch
from torch import nn

from backbones import hub
from backbones.base import Backbone, Spec
from backbones.registry import Adapter, WeightFile

URL = "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth"

SPEC = Spec(
    name="mobilenetv3", family="mobilenet (plugin)", variants=("small",), default_variant="small",
    input_size=224, weights_source="torchvision IMAGENET1K_V1 (torch.hub cache)", license="bsd-3-clause",
    description="torchvision MobileNetV3-Small, ImageNet-1k", facts={"blocks": 11, "embed_dim": 576, "params": "0.9M"},
)


class MobileNetV3(Backbone):
    def __init__(self, model: nn.Module, weights_id: str) -> None:
        super().__init__()
        self.spec, self.variant, self.weights_id = SPEC, "small", weights_id
        feats = model.features
        self.first = feats[0]                                 # stem: the first conv
        self.blocks = nn.ModuleList(feats[1:-1])              # the inverted-residual blocks
        self.last = feats[-1]                                 # 1x1 conv to 576 channels
        self.embed_dim, self.input_size = 576, SPEC.input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.last(h).mean(dim=(2, 3))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return self.last(h).flatten(2).transpose(1, 2)

    def readout_modules(self) -> list[nn.Module]:
        return [self.last]


def build(variant: str, weights: str, *, readout: str | None = None, input_size: int | None = None) -> Backbone:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small()
    if weights == "random":
        return MobileNetV3(model, "random")
    # default: torchvision's URL through torch.hub's cache (one-line error offline); else a local file
    path = hub.url_file(URL, name="mobilenetv3") if weights == "default" else weights
    hub.load_into(model, hub.load_state_dict(path), name="mobilenetv3", source=str(path))
    return MobileNetV3(model, f"url:{URL}" if weights == "default" else hub.file_fingerprint(path))


MOBILENETV3 = Adapter(SPEC, build, lambda variant: [WeightFile("url", URL, URL.rsplit("/", 1)[1])])
