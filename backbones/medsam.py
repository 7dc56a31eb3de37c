"""MedSAM (Ma et al., Nature Communications 2024): SAM ViT-B fine-tuned on 1.57M medical
image-mask pairs, as a variant of the SAM adapter (same encoder class, readout and resizing).

The release file ``medsam_vit_b.pth`` is a full SAM state dict (``image_encoder.*`` plus prompt
encoder and mask decoder, segment_anything's key layout); the encoder is kept, the neck dropped.
It is published on Google Drive only (link in github.com/bowang-lab/MedSAM's README), which no
library cache downloads: ``--weights default`` looks for it in torch.hub's checkpoint folder
and otherwise says where to put it.

Normalisation: MedSAM feeds the encoder images min-max scaled to [0, 1] with no mean/std
(``MedSAM_Inference.py``, bowang-lab/MedSAM@d71e8a1), so the Spec's mean is 0 and std 1; the
per-image min-max stretch itself is not applied (images are scaled by 1/255).
"""
from __future__ import annotations

from bench.errors import UserError

from . import hub, sam
from .base import Backbone, Spec
from .registry import Adapter, WeightFile

FILENAME = "medsam_vit_b.pth"
RELEASE = "https://github.com/bowang-lab/MedSAM (README: model checkpoint)"
VARIANTS = ("vit_b", "tiny")

SPEC = Spec(
    name="medsam", family="sam", variants=VARIANTS, default_variant="vit_b", input_size=224,
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    weights_source=f"MedSAM release {FILENAME} (Google Drive; put it in torch.hub's checkpoints folder)",
    license="apache-2.0", readouts=("mean",),
    description="MedSAM: SAM ViT-B image encoder fine-tuned on 1.57M medical image-mask pairs, neck dropped",
    training_data="1.57M medical image-mask pairs, 10 modalities (from SAM ViT-B)",
    paper_use="not in the paper",
    facts={"blocks": 12, "embed_dim": 768, "params": "86M"},
)


def _find_default(name: str) -> tuple[str, str]:
    target = hub.torch_hub_dir() / FILENAME
    if target.is_file():
        return str(target), f"file:{FILENAME}"
    raise UserError(f"weights for {name!r} not found: need {FILENAME} in {target.parent} (no library downloads it: "
                    f"MedSAM publishes it on Google Drive, linked from {RELEASE}); put it there, "
                    f"or pass --weights PATH to a local copy, or --weights random")


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    if readout not in (None, "mean"):
        raise UserError(f"medsam has one readout, 'mean' (mean over H x W of the last block), not {readout!r}")
    if variant not in VARIANTS:
        raise UserError(f"medsam has no variant {variant!r}; choose from {', '.join(VARIANTS)}")
    input_size = input_size or SPEC.input_size
    name = "medsam" if variant == SPEC.default_variant else f"medsam@{variant}"
    return hub.build_with_weights(
        lambda: sam.SAMBackbone(sam.make_encoder(variant, input_size), SPEC, variant, input_size),
        lambda m, sd, source: hub.load_into(m, sam.fit_to(m, sam.encoder_state(sd)), name=name, source=source),
        weights, lambda: _find_default(name),
        fixed_seed_id="medsam-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    # not downloadable by a library (Google Drive): `bench weights ls` shows where it must be put
    return [] if variant == "tiny" else [WeightFile("url", RELEASE, FILENAME)]


MEDSAM = Adapter(SPEC, build, weight_files)
