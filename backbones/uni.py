"""UNI (Chen et al. 2024): a DINOv2-trained ViT-L/16 for histopathology (Mass-100K slides).

MahmoodLab's instructions build it with ``timm.create_model("hf-hub:MahmoodLab/uni",
pretrained=True, init_values=1e-5, dynamic_img_size=True)``: timm's ``vit_large_patch16_224``
with layer scale, CLS token after the final norm as the feature, ImageNet mean/std at 224 px.
The same timm model is built here and the repo's ``pytorch_model.bin`` (timm keys) is loaded
into it, so `bench` never needs timm's hub config. The repo is gated: request access on its
page, then log in; offline, or without access, the error says so.
"""
from __future__ import annotations


from . import gated, hub, timm_common
from .base import Backbone, Spec
from .registry import Adapter, WeightFile
from .vit_common import READOUTS, TINY, TimmViT, vit_kwargs

REPO, FILENAME = "MahmoodLab/UNI", "pytorch_model.bin"
CARD_REPO = "MahmoodLab/uni"  # the model card's timm call spells it so; its download is cached under that name
# variant -> (timm model, timm kwargs); layer scale as in MahmoodLab's create_model call
VARIANTS: dict[str, tuple[str, dict]] = {
    "vitl16": ("vit_large_patch16_224", {"init_values": 1e-5}),
    "tiny": ("vit_large_patch16_224", {"init_values": 1e-5, **TINY}),
}

SPEC = Spec(
    name="uni", family="vit", variants=tuple(VARIANTS), default_variant="vitl16", input_size=224,
    weights_source=f"timm hf-hub:{REPO} ({FILENAME}; gated: request access, then log in)",
    license="cc-by-nc-nd-4.0 (gated; academic research only)", readouts=READOUTS,
    description="UNI ViT-L/16, DINOv2 self-supervised on 100M histopathology tiles (Mass-100K)",
    training_data="Mass-100K: 100M tiles from 100k H&E whole-slide images",
    paper_use="not in the paper",
    facts={"blocks": 24, "embed_dim": 1024, "params": "303M"},
)


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    name, readout = SPEC.check(variant, readout)
    model_name, overrides = VARIANTS[variant]
    size = input_size or SPEC.input_size

    def new() -> TimmViT:
        model, _ = timm_common.create(model_name, "random", name=name, **vit_kwargs(size, 16), **overrides)
        return TimmViT(model, SPEC, variant, "random", readout=readout, input_size=size)

    return hub.build_with_weights(
        new, lambda m, sd, source: timm_common.load_timm_state_dict(m, sd, name=name, source=source), weights,
        lambda: (hub.hf_cached(CARD_REPO, FILENAME) or gated.hf_file(REPO, FILENAME, name=name),
                 f"hf:{REPO}/{FILENAME}"),  # located before building 300M parameters
        fixed_seed_id="uni-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    if variant == "tiny":
        return []
    # the file build reads: the model card's cached download where there is one
    return [WeightFile("hf", CARD_REPO if hub.hf_cached(CARD_REPO, FILENAME) else REPO, FILENAME)]


UNI = Adapter(SPEC, build, weight_files)
