"""RAD-DINO (Perez-Garcia et al. 2024): a DINOv2 ViT-B/14 trained on chest X-rays.

Released as a transformers ``Dinov2Model`` (``microsoft/rad-dino``, model.safetensors). The
architecture is DINOv2's ViT-B/14 without registers, so it runs through the same timm
VisionTransformer as ``dinov2`` (readouts, position-embedding resampling and LoRA targets
shared): the transformers keys are renamed onto timm's on load, query/key/value concatenated
into ``qkv``. Both transformers layouts are read: the release's ``attention.attention.query``
/ ``attention.output.dense`` and transformers 5's ``attention.q_proj`` / ``o_proj``.

The model card's processor resizes to 518 px (37 x 37 patches); that is the Spec's input size.
``--input-size 224`` runs it at the paper's size (position grid resampled once at load, as
timm does for DINOv2; transformers interpolates at every forward, so features at a size other
than 518 differ slightly from ``Dinov2Model``'s).
"""
from __future__ import annotations

import re

import torch


from . import hub, timm_common
from .base import Backbone, Spec
from .registry import Adapter, WeightFile
from .vit_common import READOUTS, TINY, TimmViT, vit_kwargs

REPO, FILENAME = "microsoft/rad-dino", "model.safetensors"
# variant -> (timm model, timm kwargs overrides); "tiny" is random-only, for tests
VARIANTS: dict[str, tuple[str, dict]] = {
    "vitb14": ("vit_base_patch14_dinov2", {}),
    "tiny": ("vit_small_patch14_dinov2", dict(TINY)),
}

SPEC = Spec(
    name="rad-dino", family="vit", variants=tuple(VARIANTS), default_variant="vitb14", input_size=518,
    # the model card's AutoImageProcessor (preprocessor_config.json image_mean / image_std)
    mean=(0.5307, 0.5307, 0.5307), std=(0.2583, 0.2583, 0.2583),
    weights_source=f"transformers {REPO} ({FILENAME}, HF cache)",
    license="mit (research use only, per the model card)", readouts=READOUTS,
    description="RAD-DINO: DINOv2 ViT-B/14 continued on chest X-rays (MIMIC-CXR, CheXpert, NIH, PadChest, BRAX)",
    training_data="chest X-rays: MIMIC-CXR, CheXpert, NIH-CXR, PadChest, BRAX (from DINOv2 ViT-B/14)",
    paper_use="not in the paper",
    facts={"blocks": 12, "embed_dim": 768, "params": "86M"},
)

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_RENAMES = {  # per-layer transformers suffix -> timm suffix (query/key/value handled apart)
    "attention.output.dense.": "attn.proj.", "attention.o_proj.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "norm1.": "norm1.", "norm2.": "norm2.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.",
}
_QKV = {"attention.attention.query.": 0, "attention.attention.key.": 1, "attention.attention.value.": 2,
        "attention.q_proj.": 0, "attention.k_proj.": 1, "attention.v_proj.": 2}


def timm_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Dinov2 state dict -> timm VisionTransformer keys. Keys already in timm's
    layout (no ``embeddings.`` / ``encoder.``) pass through, so a converted file loads too."""
    if any(k.startswith("dinov2.") for k in sd):  # Dinov2ForImageClassification
        sd = {k[len("dinov2."):]: v for k, v in sd.items() if k.startswith("dinov2.")}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "embeddings.register_tokens": "reg_token",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for k, v in sd.items():
        if k == "embeddings.mask_token":
            continue  # used by DINOv2's masked training only
        if k in simple:
            out[simple[k]] = v
            continue
        m = _LAYER.fullmatch(k)
        if not m:
            out[k] = v
            continue
        i, rest = int(m.group(1)), m.group(2)
        for prefix, slot in _QKV.items():
            if rest.startswith(prefix):
                qkv.setdefault((i, rest[len(prefix):]), {})[slot] = v
                break
        else:
            for prefix, new in _RENAMES.items():
                if rest.startswith(prefix):
                    out[f"blocks.{i}.{new}{rest[len(prefix):]}"] = v
                    break
            else:
                out[k] = v  # unknown: load_into names it
    for (i, kind), parts in qkv.items():
        if len(parts) == 3:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    name, readout = SPEC.check(variant, readout)
    model_name, overrides = VARIANTS[variant]
    size = input_size or SPEC.input_size

    def new() -> TimmViT:
        model, _ = timm_common.create(model_name, "random", name=name, **vit_kwargs(size, 14), **overrides)
        return TimmViT(model, SPEC, variant, "random", readout=readout, input_size=size)

    def load(backbone: TimmViT, sd: dict, source: str) -> None:
        # timm's DINOv2 filter then resamples pos_embed to the grid of the input size
        timm_common.load_timm_state_dict(backbone, timm_state(sd), name=name, source=source)

    return hub.build_with_weights(
        new, load, weights, lambda: (hub.hf_file(REPO, FILENAME, name=name), f"hf:{REPO}/{FILENAME}"),
        fixed_seed_id="rad-dino-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    return [] if variant == "tiny" else [WeightFile("hf", REPO, FILENAME)]


RAD_DINO = Adapter(SPEC, build, weight_files)
