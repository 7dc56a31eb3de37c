"""Heads trained by gradient descent with (part of) the backbone: linear, MLP, and the paper's
DeiT head ("Y-model") on frozen tokens."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from backbones.base import Backbone
from bench.errors import UserError
from bench import options
from bench.options import choices

# --head-arch NAME starts from timm's supervised ImageNet-1k DeiT of that name
DEIT_ARCHS = {name: f"{name}_patch16_224.fb_in1k" for name in choices("head_arch")}
DEIT_HEAD_DEPTH = options.get("head_depth").default  # the first blocks of the pretrained DeiT
HEAD_TOKENS = choices("head_tokens")


class LinearHead(nn.Module):
    wants_tokens = False

    def __init__(self, dim: int, n_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, n_out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


class MLPHead(nn.Module):
    wants_tokens = False

    def __init__(self, dim: int, n_out: int, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def take_tokens(backbone: Backbone, h: torch.Tensor, which: str = "all") -> torch.Tensor:
    """The backbone's tokens for a token head (--head-tokens): ``all`` after the final norm
    (class/register tokens first), ``patches`` the same without them, ``patches-prenorm`` the
    patch tokens of the last block before the final norm (the paper reads DINOv2's x_prenorm[:, 1:]).
    Feature maps (CNNs, SAM) have no prefix and no final norm in the way: all three agree there
    except where the adapter's tokens() normalises."""
    if which == "patches-prenorm" and h.ndim == 3:
        return h[:, backbone.num_prefix_tokens:]
    t = backbone.tokens(h)
    return t if which == "all" else t[:, backbone.num_prefix_tokens:]


class DeiTHead(nn.Module):
    """Tokens (B, N, C) -> Linear+LayerNorm projector -> own CLS + position embeddings ->
    DeiT blocks -> norm -> classifier on CLS. CNN feature maps arrive as flattened tokens."""

    wants_tokens = True

    def __init__(self, in_dim: int, n_tokens: int, n_out: int, arch: str = "deit_small",
                 pretrained: bool = True, depth: int = DEIT_HEAD_DEPTH, n_prefix: int = 0,
                 tokens: str = "all") -> None:
        super().__init__()
        self.token_choice = tokens
        from backbones import timm_common

        name = DEIT_ARCHS[arch]
        try:
            deit, self.weights_id = timm_common.create(name, "default" if pretrained else "random",
                                                       name=f"timm:{name}")
        except UserError as e:
            raise UserError(f"--head deit starts from ImageNet DeiT ({arch}): {e}") from None
        if depth > len(deit.blocks):
            raise UserError(f"--head-depth {depth}: {arch} has {len(deit.blocks)} blocks")
        dim = deit.embed_dim
        self.proj = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.cls_token = nn.Parameter(deit.cls_token.detach().clone())
        self.pos_embed = nn.Parameter(_resize_pos_embed(deit.pos_embed.detach(), n_tokens - n_prefix, n_prefix))
        self.blocks = nn.Sequential(*list(deit.blocks)[:depth])
        self.norm = deit.norm
        self.fc = nn.Linear(dim, n_out)

    def take_tokens(self, backbone: Backbone, h: torch.Tensor) -> torch.Tensor:
        return take_tokens(backbone, h, self.token_choice)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.fc(self.norm(self.blocks(x))[:, 0])


def _resize_pos_embed(pos: torch.Tensor, n_patches: int, n_prefix: int = 0) -> torch.Tensor:
    """DeiT's (1, 1+G*G, C) position embeddings -> (1, 1+n_prefix+n_patches, C) for the head's
    CLS, the backbone's prefix tokens (class/registers: they get DeiT's CLS position) and its
    patch grid (2D bicubic; 1D linear over the flattened grid if the count is not a square)."""
    cls, grid = pos[:, :1], pos[:, 1:]
    g = int(math.isqrt(grid.shape[1]))
    side = math.isqrt(n_patches)
    if side * side == n_patches:
        img = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(img, size=(side, side), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, n_patches, -1)
    else:
        grid = F.interpolate(grid.transpose(1, 2), size=n_patches, mode="linear", align_corners=False).transpose(1, 2)
    return torch.cat([cls, cls.expand(-1, n_prefix, -1), grid], dim=1)


def build_head(head: str, backbone: Backbone, n_out: int, input_size: int, *, arch: str | None = None,
               pretrained: bool = True, depth: int | None = None, tokens: str | None = None) -> nn.Module:
    if head == "linear":
        return LinearHead(backbone.embed_dim, n_out)
    if head == "mlp":
        return MLPHead(backbone.embed_dim, n_out)
    if head != "deit":
        raise ValueError(f"no trained head {head!r}")
    # the DeiT head needs the token count and width of this backbone at this input size
    with torch.no_grad():
        was_training = backbone.training
        backbone.eval()
        x = torch.zeros(1, 3, input_size, input_size,
                        device=next(backbone.parameters()).device)
        tokens = tokens or "all"
        t = take_tokens(backbone, backbone.run_blocks(backbone.stem(x)), tokens)
        backbone.train(was_training)
    n_prefix = backbone.num_prefix_tokens if tokens == "all" else 0
    return DeiTHead(t.shape[-1], t.shape[1], n_out, arch or "deit_small", pretrained, depth or DEIT_HEAD_DEPTH,
                    n_prefix=n_prefix, tokens=tokens)
