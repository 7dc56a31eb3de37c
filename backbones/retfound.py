"""RETFound (Zhou et al., Nature 2023): an MAE ViT-L/16 pre-trained on retinal images.

RETFound's ``models_vit.py`` (rmaphoh/RETFound_MAE@897d71c) is a timm VisionTransformer
(patch 16, dim 1024, depth 24, 16 heads, qkv bias, LayerNorm eps 1e-6) whose default feature is
the global pool: mean of the patch tokens (class token excluded) through ``fc_norm``, a fresh
LayerNorm, the MAE ``norm`` being deleted (``main_finetune.py``: ``--global_pool`` on by
default; missing keys fc_norm.* after loading). Here that is timm's ``vit_large_patch16_224``
with ``global_pool="avg", fc_norm=True``:

readout "mean": RETFound's global pool (default; fc_norm starts as RETFound's does, weight 1 and
        bias 0, because the checkpoint has none)
        "cls": its ``--cls_token`` alternative, the class token after the pre-trained ``norm``

The released files (``RETFound_mae_natureCFP.pth`` etc., gated HF repos YukunZhou/*) hold the
MAE model under ``model``: encoder keys in timm's layout plus the decoder (``decoder_*``,
``mask_token``), which is dropped.
"""
from __future__ import annotations

import torch

from bench.errors import UserError

from . import gated, hub, timm_common
from .base import Backbone, Spec
from .registry import Adapter, WeightFile
from .vit_common import TINY, TimmViT, strip_wrappers, vit_kwargs

MODEL = "vit_large_patch16_224"
# variant -> HF repo of the released MAE checkpoint (file <repo name>.pth); tiny: tests only
VARIANTS: dict[str, str] = {
    "cfp": "YukunZhou/RETFound_mae_natureCFP",   # colour fundus photographs (the Nature paper's)
    "oct": "YukunZhou/RETFound_mae_natureOCT",   # optical coherence tomography
    "meh": "YukunZhou/RETFound_mae_meh",         # colour fundus, Moorfields (2025 release)
    "tiny": "",
}
READOUTS = ("mean", "cls")

SPEC = Spec(
    name="retfound", family="vit", variants=tuple(VARIANTS), default_variant="cfp", input_size=224,
    weights_source="RETFound release (gated HF repos YukunZhou/RETFound_mae_*, {'model': ...} .pth)",
    license="cc-by-nc-4.0 (gated)", readouts=READOUTS,
    description="RETFound MAE ViT-L/16 on 904k colour fundus photographs (cfp) or 736k OCT scans (oct)",
    training_data="904k colour fundus photographs (cfp); 736k OCT scans (oct)",
    paper_use="not in the paper",
    facts={"blocks": 24, "embed_dim": 1024, "params": "303M"},
)


def location(variant: str) -> tuple[str, str]:
    repo = VARIANTS[variant]
    return repo, repo.split("/")[1] + ".pth"


def encoder_state(sd: dict[str, torch.Tensor], readout: str) -> dict[str, torch.Tensor]:
    """The MAE checkpoint's encoder keys, as RETFound's main_finetune.py loads them."""
    sd = {k.replace("backbone.", "", 1) if k.startswith("backbone.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("decoder_", "mask_token", "head."))}
    if readout == "mean":  # models_vit.py deletes the MAE norm; fc_norm starts fresh
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    return sd


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    name, readout = SPEC.check(variant, readout)
    size = input_size or SPEC.input_size
    pool = dict(global_pool="avg", fc_norm=True) if readout == "mean" else dict(global_pool="token")
    kwargs = {**vit_kwargs(size, 16), **pool, **(TINY if variant == "tiny" else {})}

    def new() -> TimmViT:
        model, _ = timm_common.create(MODEL, "random", name=name, **kwargs)
        return TimmViT(model, SPEC, variant, "random", readout=readout, input_size=size)

    def load(backbone: TimmViT, sd: dict, source: str) -> None:
        sd = encoder_state(strip_wrappers(sd, backbone), readout)
        if not any(k.startswith("blocks.") for k in sd):
            raise UserError(f"weights {source!r} do not fit backbone {name!r}: no ViT encoder keys "
                            f"(blocks.*); pass a RETFound MAE checkpoint")
        timm_common.load_timm_state_dict(backbone, sd, name=name, source=source,
                                         allow_missing=("fc_norm.",) if readout == "mean" else ())

    def fetch() -> tuple[str, str]:
        repo, filename = location(variant)
        return gated.hf_file(repo, filename, name=name), f"hf:{repo}/{filename}"

    return hub.build_with_weights(new, load, weights, fetch,
                                  fixed_seed_id="retfound-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    return [] if variant == "tiny" else [WeightFile("hf", *location(variant))]


RETFOUND = Adapter(SPEC, build, weight_files)
