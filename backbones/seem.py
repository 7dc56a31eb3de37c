"""SEEM's image backbone (Zou et al. 2023): the FocalNet-T of ``seem_focalt_v0.pt``, the paper's fifth model.

SEEM builds it as ``focal_dw`` (``modeling/vision/backbone/focal_dw.py`` and
``configs/seem/focalt_unicl_lang_v0.yaml``, UX-Decoder/Segment-Everything-Everywhere-All-At-Once
@7b2e76d; the paper's code copies both, joanaapa/Foundation-Medical@a7aa194
``utils/transformers/focal_dw.py:626-663``): embed dim 96, depths 2/2/6/2, focal levels 3 and
windows 3 at every stage, overlapped conv patch embedding (7x7 stride 4 stem, 3x3 stride 2
downsampling, each followed by a LayerNorm), scaled modulator, layer scale (1e-4), post-LN, and,
unlike FocalNet proper, a depthwise 3x3 conv added before the modulation and before the MLP
(``dw1`` / ``dw2``). timm's ``focalnet_tiny_lrf`` has neither the depthwise convs, nor SEEM's
post-LN placement (after the residual sum; timm normalises the branch), nor its stem padding
(3; timm's overlapped stem pads 2), so it cannot hold these weights. The block is written here
to SEEM's forward; its focal modulation is timm's ``FocalModulation`` (the same operation, with
the two Linear layers as 1x1 convolutions, converted on load).

stem    patch_embed (pad to a multiple of 4, conv 7x7/4, LayerNorm) -> (B, H/4, W/4, 96)
blocks  the 12 focal modulation blocks; the first block of stages 2-4 starts with that stage's
        downsampling (SEEM runs it at the end of the previous stage: same sequence)
readout SEEM's ``norm3`` on the last stage (its ``res5`` output), mean over H x W: what the
        paper's code feeds its classifier (defaults/models.py:232-236)

The paper treated each of the 4 stages as one "block" (``--unfreeze last2`` there = the last two
stages); here blocks are the 12 modulation blocks, as every other adapter's blocks. Stochastic
depth is off, as in every adapter here (SEEM trains with 0.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError

from . import hub
from .base import Backbone, Spec
from .registry import Adapter, WeightFile

REPO = "xdecoder/SEEM"


@dataclass(frozen=True)
class Config:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_level: int = 3
    focal_window: int = 3
    mlp_ratio: float = 4.0
    layerscale_value: float = 1e-4
    filename: str = ""  # in the xdecoder/SEEM HF repo


VARIANTS: dict[str, Config] = {
    "focalt_v0": Config(filename="seem_focalt_v0.pt"),  # the paper's (transformers_utils.py:71)
    "focalt_v1": Config(filename="seem_focalt_v1.pt"),  # same backbone config (focalt_unicl_lang_v1.yaml)
    "tiny": Config(embed_dim=16, depths=(1, 1, 2, 1)),  # random-only, for tests
}

SPEC = Spec(
    name="seem", family="focalnet", variants=tuple(VARIANTS), default_variant="focalt_v0", input_size=224,
    # SEEM's INPUT.PIXEL_MEAN / PIXEL_STD (0-255 scale in its configs)
    mean=(123.675 / 255, 116.28 / 255, 103.53 / 255), std=(58.395 / 255, 57.12 / 255, 57.375 / 255),
    weights_source=f"SEEM release (HF hub {REPO}: seem_focalt_v0.pt / _v1.pt), backbone.* keys",
    license="apache-2.0", readouts=("mean",),
    description="SEEM Focal-T image backbone (FocalNet with depthwise convs, COCO + referring data), heads dropped",
    training_data="COCO panoptic and referring segmentation (SEEM v0)",
    paper_use="SEEM Focal-T (seem_focalt_v0.pt), res5 mean",
    facts={"blocks": 12, "embed_dim": 768, "params": "29.9M"},
)


class PatchEmbed(nn.Module):
    """SEEM's overlapped conv embedding: right/bottom zero-pad to a multiple of the stride, conv, LayerNorm."""

    def __init__(self, c_in: int, c_out: int, stem: bool) -> None:
        super().__init__()
        self.stride = 4 if stem else 2
        k, pad = (7, 3) if stem else (3, 1)
        self.proj = nn.Conv2d(c_in, c_out, kernel_size=k, stride=self.stride, padding=pad)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, H', W', C')
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalBlock(nn.Module):
    """SEEM's ``FocalModulationBlock`` with use_postln=True and layer scale, on (B, H, W, C)."""

    def __init__(self, dim: int, cfg: Config, downsample: PatchEmbed | None = None) -> None:
        super().__init__()
        from timm.models.focalnet import FocalModulation

        self.downsample = downsample
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, focal_window=cfg.focal_window, focal_level=cfg.focal_level,
                                          normalize_modulator=True)
        self.dw2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), cfg.layerscale_value))
        self.gamma_2 = nn.Parameter(torch.full((dim,), cfg.layerscale_value))

    @staticmethod
    def _dw(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return x + conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        x = self._dw(self.dw1, x)
        mod = self.modulation(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.norm1(x + self.gamma_1 * mod)  # post-LN: after the residual sum
        x = self._dw(self.dw2, x)
        return self.norm2(x + self.gamma_2 * self.mlp(x))


class SEEMBackbone(Backbone):
    def __init__(self, cfg: Config, variant: str, input_size: int) -> None:
        super().__init__()
        self.spec, self.variant, self.readout_name = SPEC, variant, "mean"
        dims = [cfg.embed_dim * 2 ** i for i in range(len(cfg.depths))]
        self.patch_embed = PatchEmbed(3, dims[0], stem=True)
        blocks = []
        for s, depth in enumerate(cfg.depths):
            for b in range(depth):
                down = PatchEmbed(dims[s - 1], dims[s], stem=False) if s and not b else None
                blocks.append(FocalBlock(dims[s], cfg, down))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dims[-1])  # SEEM's norm3
        self.embed_dim, self.input_size = dims[-1], input_size
        self.apply(_init_weights)
        for block in self.blocks:  # SEEM's f / proj are Linear layers: the same init as 1x1 convs
            for conv in (block.modulation.f, block.modulation.proj):
                nn.init.trunc_normal_(conv.weight, std=0.02)
                nn.init.zeros_(conv.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h).mean(dim=(1, 2))

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        # after the last block: the res5 feature map; earlier blocks (narrower): as they are
        return (self.norm(h) if h.shape[-1] == self.embed_dim else h).flatten(1, 2)

    def layer_readout(self, h: torch.Tensor, index: int) -> torch.Tensor:
        # norm3 fits the last stage only; earlier stages are pooled as they are
        return self.readout(h) if h.shape[-1] == self.embed_dim else h.mean(dim=(1, 2))

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 3, 1, 2)  # blocks keep (B, H, W, C)

    def readout_modules(self) -> list[nn.Module]:
        return [self.norm]


def _init_weights(m: nn.Module) -> None:
    # SEEM's FocalNet.init_weights: trunc-normal(0.02) Linear layers, unit LayerNorms
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def seem_to_backbone(sd: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """SEEM's checkpoint keys (``backbone.*`` of the full model, or the backbone alone) -> ours.

    layers.S.blocks.B.* -> blocks.J.* (J counts blocks over stages); layers.S.downsample.* ->
    blocks.(first of stage S+1).downsample.*; norm3 -> norm (norm0-2 feed SEEM's pixel decoder
    only); modulation.f / proj Linear weights (O, I) -> 1x1 conv weights (O, I, 1, 1).
    """
    for prefix in ("model.backbone.", "module.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    first = [sum(cfg.depths[:s]) for s in range(len(cfg.depths))]  # index of each stage's first block
    last = len(cfg.depths) - 1
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        parts = k.split(".")
        # a layers.* key outside SEEM's stages (or not numbered) is kept as is: load_into reports it
        staged = len(parts) > 3 and parts[0] == "layers" and parts[1].isdigit() and int(parts[1]) < len(first)
        if staged and parts[2] == "blocks" and parts[3].isdigit():
            s, b = int(parts[1]), int(parts[3])
            rest = ".".join(parts[4:])
            if rest in ("modulation.f.weight", "modulation.proj.weight") and v.ndim == 2:
                v = v[:, :, None, None]
            out[f"blocks.{first[s] + b}.{rest}"] = v
        elif staged and parts[2] == "downsample" and int(parts[1]) + 1 < len(first):
            out[f"blocks.{first[int(parts[1]) + 1]}.downsample." + ".".join(parts[3:])] = v
        elif parts[0] == f"norm{last}":
            out["norm." + ".".join(parts[1:])] = v
        elif parts[0].startswith("norm") and parts[0][4:].isdigit():
            continue
        else:
            out[k] = v
    return out


def _fetch(variant: str, name: str) -> tuple[str, str]:
    filename = VARIANTS[variant].filename
    return hub.hf_file(REPO, filename, name=name), f"hf:{REPO}/{filename}"


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    if readout not in (None, "mean"):
        raise UserError(f"seem has one readout, 'mean' (norm3 on the last stage, mean over H x W), not {readout!r}")
    if variant not in VARIANTS:
        raise UserError(f"seem has no variant {variant!r}; choose from {', '.join(VARIANTS)}")
    cfg, size = VARIANTS[variant], input_size or SPEC.input_size
    name = "seem" if variant == SPEC.default_variant else f"seem@{variant}"
    # SEEM checkpoints hold the whole model (text encoder, pixel decoder, heads): only
    # backbone.* is read, the rest is ignored rather than reported as unexpected
    return hub.build_with_weights(
        lambda: SEEMBackbone(cfg, variant, size),
        lambda m, sd, source: hub.load_into(m, seem_to_backbone(sd, cfg), name=name, source=source),
        weights, lambda: _fetch(variant, name),
        fixed_seed_id="seem-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    filename = VARIANTS[variant].filename
    return [WeightFile("hf", REPO, filename)] if filename else []


SEEM = Adapter(SPEC, build, weight_files)
