"""timm ViT families whose ``forward_features`` is not a plain ``stem -> blocks -> norm``:

- :class:`TimmEva` (timm ``Eva``: EVA, EVA-02, EVA-CLIP, the rope ViTs, PE, DINOv3): timm passes a
  rotary position embedding to every block (``blk(x, rope=...)``). The stem runs timm's own
  ``_pos_embed`` and leaves the rope it returns in a holder shared by the blocks; each block is
  wrapped in a :class:`RopeBlock` that takes it from there, so ``block(h) -> h`` holds. The wrapper
  mirrors the block's children and parameters under their own names (no extra level), so the
  backbone's state dict keeps timm's keys and timm checkpoints and ``--save-model`` files load alike.
- :class:`TimmSamViT` (timm ``VisionTransformerSAM``, ``samvit_*``): the absolute position grid is
  resampled to the input grid in ``forward_features`` (a parameter, not a child, so the generic
  split cannot see it) and the blocks' NHWC output goes through the conv neck (256 channels) before
  timm's average-pool head: the readout is that pooled neck output, as MedMNIST+ uses the model.
  It is built at its native 1024 px (only that grid fits the pretrained global-attention
  relative-position tables) and runs at any input size, as timm itself does: the position grid is
  resampled per batch and the global blocks interpolate their tables (``get_rel_pos``). Sizes off
  the patch grid are zero-padded to it, as for the other ViTs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.errors import UserError

from .base import Backbone, Spec, layer_names
from .vit_common import TimmMethods, TimmViT, mirror

EVA_MODULES = ("eva",)
SAM_MODULES = ("vision_transformer_sam",)


def wrap(model: nn.Module, spec: Spec, variant: str, weights_id: str, *, readout: str,
         input_size: int) -> Backbone | None:
    """The dedicated backbone for ``model``'s class, or None (the generic split applies)."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    if isinstance(model, Eva):
        return TimmEva(model, spec, variant, weights_id, readout=readout, input_size=input_size)
    if isinstance(model, VisionTransformerSAM):
        return TimmSamViT(model, spec, variant, weights_id, input_size=input_size)
    return None


class RopeSource:
    """The rotary embedding of the latest stem call, for the blocks that follow it.

    A plain object (not a module), so it adds no state-dict keys. Blocks may also run on a prefix
    that an earlier stem call computed (``--unfreeze lastN`` caches it, under inference mode):
    then the embedding is rebuilt for their grid (the stem's, or a square one for another token
    count) rather than reused.
    """

    def __init__(self, rope: nn.Module | None, num_prefix_tokens: int, mixed: bool) -> None:
        self.rope, self.num_prefix_tokens, self.mixed = rope, num_prefix_tokens, mixed
        self.n_tokens: int | None = None
        self.grid: list[int] | None = None
        self.embed: torch.Tensor | None = None

    def set(self, n_tokens: int, grid: list[int], embed: torch.Tensor | None) -> None:
        self.n_tokens, self.grid, self.embed = n_tokens, grid, embed

    def get(self, h: torch.Tensor, index: int) -> torch.Tensor | None:
        if self.rope is None:
            return None
        same = h.shape[1] == self.n_tokens
        embed = self.embed if same else None
        if embed is None or (embed.is_inference() and not torch.is_inference_mode_enabled()):
            embed = self.rope.get_embed(shape=self.grid if same else self._square_grid(h.shape[1]))
        embed = embed.to(h.device)
        return embed[index] if self.mixed else embed

    def _square_grid(self, n_tokens: int) -> list[int]:
        n = n_tokens - self.num_prefix_tokens
        side = math.isqrt(max(n, 0))
        if side * side != n:
            raise UserError(f"the rotary embedding of {n} patch tokens needs their grid: run the stem on the same "
                            f"images first (they are not a square grid)")
        return [side, side]


class RopeBlock(TimmMethods, nn.Module):
    """A timm Eva block as ``block(h) -> h``: the rope comes from the shared :class:`RopeSource`.

    Takes over the block's children, parameters and attributes under the same names (as the
    backbones do with timm models) and runs timm's own block ``forward`` on itself."""

    def __init__(self, block: nn.Module, source: RopeSource, index: int) -> None:
        super().__init__()
        mirror(self, block)
        self._timm_cls = type(block)
        self._source, self._index = source, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._timm_cls.forward(self, x, rope=self._source.get(x, self._index))


class TimmEva(TimmViT):
    """A timm ``Eva`` with TimmViT's readouts (``default`` is timm's ``forward_head``, e.g. the
    class token for EVA-02 CLIP) and its tokens, Grad-CAM layers, rollout and LoRA targets."""

    def __init__(self, model: nn.Module, spec: Spec, variant: str, weights_id: str,
                 readout: str = "default", input_size: int | None = None) -> None:
        Backbone.__init__(self)  # TimmViT.__init__ takes VisionTransformers only
        if getattr(model, "patch_drop", None) is not None:
            # timm drops tokens and their rope rows together inside _pos_embed: not one rope per grid
            raise UserError(f"{spec.name!r} with patch dropout cannot be split into stem -> blocks -> readout")
        mirror(self, model, skip=("blocks",))
        self._timm_cls = type(model)  # _pos_embed, forward_head and pool run on the backbone
        self.num_prefix_tokens = model.num_prefix_tokens
        self.num_cls_tokens = 1 if model.cls_token is not None else 0  # the class token comes first
        self._rope = RopeSource(model.rope, model.num_prefix_tokens, bool(getattr(model, "rope_mixed", False)))
        self.blocks = nn.ModuleList(RopeBlock(b, self._rope, i) for i, b in enumerate(model.blocks))
        self._identify(model, spec, variant, weights_id, readout, input_size)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, H, W, C): built with dynamic_img_size (timm_any)
        grid = list(x.shape[1:3]) if x.ndim == 4 else list(self.patch_embed.grid_size)
        x, rope = self._pos_embed(x)  # timm's: class/register tokens, pos_embed (resampled), rope
        self._rope.set(x.shape[1], grid, rope)
        return self.norm_pre(x)


class TimmSamViT(TimmMethods, Backbone):
    """timm ``VisionTransformerSAM``: patch grid + resampled pos_embed -> blocks (NHWC) -> neck ->
    timm's head (average pool), so features are the neck's width (256 for the SAM checkpoints)."""

    def __init__(self, model: nn.Module, spec: Spec, variant: str, weights_id: str,
                 input_size: int | None = None) -> None:
        super().__init__()
        mirror(self, model, skip=("blocks",))
        self._timm_cls = type(model)  # forward_head runs on the backbone
        self.blocks = nn.ModuleList(model.blocks)  # same keys as timm's Sequential (blocks.<i>.)
        # sizes off the patch grid (28 px) are zero-padded at the bottom/right, not cropped, as the
        # other ViT adapters do (vit_common.vit_kwargs); sizes on it run exactly as timm
        self.patch_embed.dynamic_img_pad = True
        self.embed_dim = int(model.head_hidden_size)
        self.spec, self.variant, self.weights_id = spec, variant, weights_id
        self.input_size = input_size or spec.input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed_nhwc

        x = self.patch_embed(x)  # (B, H, W, C)
        if self.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(self.pos_embed, x.shape[1:3])  # as timm, every batch
        x = self.pos_drop(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def _neck(self, h: torch.Tensor) -> torch.Tensor:
        return self.neck(h.permute(0, 3, 1, 2))  # (B, neck channels, H, W)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self._neck(h), pre_logits=True)

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        """Neck output per patch (the neck is this model's final norm), row-major, no prefix tokens."""
        return self._neck(h).flatten(2).transpose(1, 2)

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 3, 1, 2) if h.ndim == 4 else super().feature_map(h)  # blocks keep NHWC

    def attention_maps(self, x: torch.Tensor):
        raise UserError(f"--method rollout: {self.spec.name}'s blocks attend within windows (all but a few "
                        f"global ones), so there is no image-wide attention to roll out; use --method gradcam")

    def lora_targets(self) -> tuple[str, ...]:
        return layer_names(self.blocks, "attn")  # qkv and proj

    def readout_modules(self) -> list[nn.Module]:
        return [m for m in (self.neck, self.head) if any(True for _ in m.parameters())]
