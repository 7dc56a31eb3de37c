"""The Segment Anything image encoder (``segment_anything.modeling.ImageEncoderViT``), neck dropped.

stem    patch_embed (B,H,W,C) + absolute pos_embed
blocks  image_encoder.blocks (windowed attention, with a few global-attention blocks)
readout mean over H x W of the last block's output (as the paper's code does)

SAM is trained at 1024 px; the paper runs it at 224. Like its code, the encoder is built at the
input size and the checkpoint is adapted on load: the absolute pos_embed grid is resized (bicubic,
antialiased) and the relative-position tables of the global-attention blocks are resized to
2 * grid - 1 entries (linear, SAM's own rule in ``get_rel_pos``); windowed blocks keep theirs.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError

from . import hub
from .base import Backbone, Spec, layer_names
from .registry import Adapter, WeightFile

URL_ROOT = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINTS = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}

# segment_anything.build_sam's encoders; "tiny" is a small random one of the same class for tests
_NATIVE = dict(img_size=1024, patch_size=16, window_size=14)
VARIANTS: dict[str, dict] = {
    "vit_b": dict(_NATIVE, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(_NATIVE, embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(_NATIVE, embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(img_size=64, patch_size=8, window_size=4, embed_dim=32, depth=3, num_heads=2,
                 global_attn_indexes=(1,)),
}

SPEC = Spec(
    name="sam", family="sam", variants=tuple(VARIANTS), default_variant="vit_b", input_size=224,
    # Sam.pixel_mean / pixel_std, which are on the 0-255 scale
    mean=(123.675 / 255, 116.28 / 255, 103.53 / 255), std=(58.395 / 255, 57.12 / 255, 57.375 / 255),
    weights_source="official SAM checkpoints (dl.fbaipublicfiles.com, torch.hub cache)",
    license="apache-2.0", readouts=("mean",),
    description="Segment Anything image encoder (native 1024 px, run at 224 as in the paper), neck dropped",
    training_data="SA-1B: 11M images, 1.1B masks",
    paper_use="SAM ViT-B image encoder, mean over H x W",
    facts={"blocks": 12, "embed_dim": 768, "params": "86M"},
)


class SAMBackbone(Backbone):
    def __init__(self, encoder: nn.Module, spec: Spec, variant: str, input_size: int) -> None:
        super().__init__()
        self.spec, self.variant, self.readout_name = spec, variant, "mean"
        self.patch_embed, self.pos_embed, self.blocks = encoder.patch_embed, encoder.pos_embed, encoder.blocks
        self.embed_dim, self.input_size = encoder.pos_embed.shape[-1], input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, H, W, C)
        pos = self.pos_embed
        if tuple(x.shape[1:3]) != tuple(pos.shape[1:3]):
            # another size than built for; global blocks resize their rel-pos tables on the fly
            pos = resize_pos_grid(pos, tuple(x.shape[1:3]))
        return x + pos

    def lora_targets(self) -> tuple[str, ...]:
        return layer_names(self.blocks, "attn")  # qkv and proj

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(1, 2))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1, 2)

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 3, 1, 2)  # blocks keep (B, H, W, C)

    def attention_maps(self, x: torch.Tensor):
        raise UserError("--method rollout: SAM's blocks attend within 14x14 windows (all but a few global "
                        "ones), so there is no image-wide attention to roll out; use --method gradcam")


def make_encoder(variant: str, input_size: int) -> nn.Module:
    """segment_anything's ImageEncoderViT for ``variant``, built for ``input_size`` px images."""
    from segment_anything.modeling import ImageEncoderViT

    cfg = VARIANTS[variant]
    return ImageEncoderViT(
        img_size=input_size, patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
        num_heads=cfg["num_heads"], mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg["global_attn_indexes"],
        window_size=cfg["window_size"], out_chans=256,
    )


def resize_pos_grid(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, H, W, C) -> (1, grid_h, grid_w, C), bicubic + antialias (the paper's code)."""
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", antialias=True,
                        align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table -> (length, C), linear as segment_anything's get_rel_pos."""
    out = F.interpolate(table.float().t()[None], size=length, mode="linear", align_corners=False)
    return out[0].t().to(table.dtype)


def encoder_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full-SAM ("image_encoder.*" + prompt_encoder / mask_decoder) or encoder-only keys -> encoder keys."""
    if any(k.startswith("image_encoder.") for k in sd):
        sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    return {k: v for k, v in sd.items() if not k.startswith("neck.")}


def fit_to(backbone: SAMBackbone, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resize a native-size checkpoint's pos_embed and global rel-pos tables to the backbone's grid."""
    sd = dict(sd)
    pos = sd.get("pos_embed")
    grid = tuple(backbone.pos_embed.shape[1:3])
    if pos is not None and pos.ndim == 4 and tuple(pos.shape[1:3]) != grid:
        sd["pos_embed"] = resize_pos_grid(pos, grid)
    for i, block in enumerate(backbone.blocks):
        if block.window_size > 0 or not block.attn.use_rel_pos:
            continue  # windowed blocks see window x window tokens at any input size
        for axis in ("h", "w"):
            key, own = f"blocks.{i}.attn.rel_pos_{axis}", getattr(block.attn, f"rel_pos_{axis}")
            table = sd.get(key)
            if table is not None and table.ndim == 2 and table.shape[0] != own.shape[0]:
                sd[key] = resize_rel_pos(table, own.shape[0])
    return sd


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    if readout not in (None, "mean"):
        raise UserError(f"sam has one readout, 'mean' (mean over H x W of the last block), not {readout!r}")
    if variant not in VARIANTS:
        raise UserError(f"sam has no variant {variant!r}; choose from {', '.join(VARIANTS)}")
    input_size = input_size or VARIANTS[variant]["img_size"]
    name = "sam" if variant == SPEC.default_variant else f"sam@{variant}"
    url = URL_ROOT + CHECKPOINTS.get(variant, "")
    return hub.build_with_weights(
        lambda: SAMBackbone(make_encoder(variant, input_size), SPEC, variant, input_size),
        lambda m, sd, source: hub.load_into(m, fit_to(m, encoder_state(sd)), name=name, source=source),
        weights, lambda: (hub.url_file(url, name=name), f"url:{url}"),
        fixed_seed_id=f"{SPEC.name}-tiny-seed0" if variant == "tiny" else None)

def weight_files(variant: str) -> list[WeightFile]:
    if variant not in CHECKPOINTS:
        return []
    return [WeightFile("url", URL_ROOT + CHECKPOINTS[variant], CHECKPOINTS[variant])]


SAM = Adapter(SPEC, build, weight_files)
