"""BiomedCLIP (Zhang et al. 2023): a CLIP trained on PMC-15M figure-caption pairs.

open_clip loads it as ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; its
image tower is open_clip's ``TimmModel``: a timm ``vit_base_patch16_224`` trunk (created with
pretrained=False, classifier reset, timm's default token pool: final norm, CLS) followed by
``head.proj``, a bias-free Linear 768 -> 512 (open_clip_config.json: timm_pool "", timm_proj
"linear"). The trunk is run here as a :class:`~backbones.vit_common.TimmViT`, so the readouts
and position-embedding resampling are the ones every timm ViT gets.

readout "cls": the trunk's pooled token (before the projection; default)
        "proj": the same @ head.proj, the CLIP image embedding

``--weights PATH`` takes the release file ``open_clip_pytorch_model.bin`` (full CLIP:
``visual.trunk.*``, ``visual.head.proj.weight``, text tower dropped) or the tower alone.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.errors import UserError

from . import hub, timm_common
from .base import Backbone, Spec
from .clip import OPENAI_MEAN, OPENAI_STD
from .registry import Adapter, WeightFile
from .vit_common import TINY, TimmViT, vit_kwargs

REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
FILENAME = "open_clip_pytorch_model.bin"
TRUNK = "vit_base_patch16_224"
# variant -> (timm kwargs overrides, projection dim); "tiny" is random-only, for tests
VARIANTS: dict[str, tuple[dict, int]] = {"vitb16": ({}, 512), "tiny": (dict(TINY), 16)}

SPEC = Spec(
    name="biomedclip", family="clip", variants=tuple(VARIANTS), default_variant="vitb16", input_size=224,
    mean=OPENAI_MEAN, std=OPENAI_STD,  # open_clip_config.json preprocess_cfg
    weights_source=f"open_clip hf-hub:{REPO} ({FILENAME}, HF cache)",
    license="mit", readouts=("cls", "proj"),
    description="BiomedCLIP ViT-B/16 image tower (PMC-15M figure-caption pairs), text tower dropped",
    training_data="PMC-15M: 15M figure-caption pairs from PubMed Central articles",
    paper_use="not in the paper",
    facts={"blocks": 12, "embed_dim": "768 (proj: 512)", "params": "86M"},
)


class _Projection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in))  # nn.Linear layout, no bias
        nn.init.trunc_normal_(self.weight, std=dim_in ** -0.5)


class BiomedCLIPBackbone(TimmViT):
    def __init__(self, trunk: nn.Module, proj_dim: int, variant: str, readout: str, input_size: int) -> None:
        super().__init__(trunk, SPEC, variant, "random", readout="cls", input_size=input_size)
        self.readout_name = readout
        self.proj = _Projection(trunk.num_features, proj_dim)
        if readout == "proj":
            self.embed_dim = proj_dim

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_head(self.norm(h), pre_logits=True)  # the trunk's own token pool
        return pooled @ self.proj.weight.t() if self.readout_name == "proj" else pooled

    def readout_modules(self) -> list[nn.Module]:
        return [*super().readout_modules(), *([self.proj] if self.readout_name == "proj" else [])]


def tower_state(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A BiomedCLIP state dict (full CLIP or image tower) -> (timm trunk keys, projection keys)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    trunk = {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")}
    proj = {"proj.weight": v for k, v in sd.items() if k == "head.proj.weight"}
    return trunk, proj


def _load(backbone: BiomedCLIPBackbone, sd: dict[str, torch.Tensor], *, name: str, source: str) -> None:
    trunk, proj = tower_state(sd)
    if not trunk or not proj:
        raise UserError(f"weights {source!r} do not fit backbone {name!r}: no open_clip TimmModel image tower "
                        f"(visual.trunk.* and visual.head.proj.weight); pass BiomedCLIP's {FILENAME}")
    # through timm's ViT checkpoint filter, which resamples pos_embed to the input size
    timm_common.load_timm_state_dict(backbone, {**trunk, **proj}, name=name, source=source)


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    name, readout = SPEC.check(variant, readout)
    overrides, proj_dim = VARIANTS[variant]
    size = input_size or SPEC.input_size

    def new() -> BiomedCLIPBackbone:
        trunk, _ = timm_common.create(TRUNK, "random", name=name, **vit_kwargs(size, 16), **overrides)
        return BiomedCLIPBackbone(trunk, proj_dim, variant, readout, size)

    return hub.build_with_weights(
        new, lambda m, sd, source: _load(m, sd, name=name, source=source), weights,
        lambda: (hub.hf_file(REPO, FILENAME, name=name), f"hf:{REPO}/{FILENAME}"),
        fixed_seed_id="biomedclip-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    return [] if variant == "tiny" else [WeightFile("hf", REPO, FILENAME)]


BIOMEDCLIP = Adapter(SPEC, build, weight_files)
