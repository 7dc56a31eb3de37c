"""timm VisionTransformers (DeiT, DINO, DINOv2, timm:vit_*) as ``stem -> blocks -> readout``.

The adapter takes over the timm model's submodules, parameters and plain attributes under the
same names, so timm's own ``_pos_embed`` and ``forward_head`` run with the backbone as ``self``
(no re-implementation to drift from timm), and the backbone's state dict keeps timm's key names.

Position embeddings: the model is built for the input size (timm's checkpoint filter resamples
the pretrained grid once, at load, straight to that grid) with ``dynamic_img_size`` (any other
image size still runs, resampled per batch) and ``dynamic_img_pad`` (sizes that are not a multiple
of the patch, e.g. 28 px with patch 16, are zero-padded at the bottom/right instead of cropped).
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from bench.errors import UserError

from . import hub, timm_common
from .base import AttentionMaps, Backbone, Spec, layer_names
from .registry import Adapter, WeightFile

READOUTS = ("cls", "mean", "cls+mean")
# prefixes of original releases' wrappers: DDP ("module.") and DINO's teacher ("backbone.")
WRAPPER_PREFIXES = ("module.", "backbone.")


def mirror(backbone: nn.Module, model: nn.Module, skip: Iterable[str] = ()) -> None:
    """Give ``backbone`` the plain attributes, parameters, buffers and children of ``model``.

    Names the backbone class already defines (``stem``, ``blocks``, ...) or listed in ``skip``
    are left out, so timm methods can run on the backbone without clobbering the contract.
    """
    skip = set(skip)

    def free(name: str) -> bool:
        return name not in skip and not name.startswith("_") and not hasattr(type(backbone), name)

    for k, v in vars(model).items():
        if free(k) and k != "training":
            setattr(backbone, k, v)
    for k, p in model._parameters.items():
        if free(k):
            backbone.register_parameter(k, p)
    for k, b in model._buffers.items():
        if free(k):
            backbone.register_buffer(k, b, persistent=k not in model._non_persistent_buffers_set)
    for k, m in model.named_children():
        if free(k):
            backbone.add_module(k, m)


class TimmMethods(nn.Module):
    """Methods the backbone lacks resolve on the timm model's class, bound to the backbone.

    With :func:`mirror`, timm's own methods (``_pos_embed``, ``forward_head`` and whatever they
    call, e.g. ``pool``) then run with the backbone as ``self``.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules
        except AttributeError:
            fn = None if name.startswith("__") else getattr(self.__dict__.get("_timm_cls"), name, None)
            if inspect.isfunction(fn):
                return types.MethodType(fn, self)
            raise


def strip_wrappers(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap "module." / "backbone." key prefixes (DDP saves, DINO full checkpoints)."""
    own = model.state_dict()
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in own):
            continue  # the model really has such a child
        inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if inner and len(inner) > len(sd) // 2:
            sd = inner
    return sd


def create_model(model_name: str, weights: str, *, name: str, **kwargs) -> tuple[nn.Module, str]:
    """``timm_common.create`` with one addition.

    - a local file: wrapper prefixes are stripped before timm's checkpoint filter (which converts
      original release layouts, e.g. DINOv2's ``register_tokens`` / ``mask_token`` / ``w12``).
    """
    if weights in ("default", "random"):
        return timm_common.create(model_name, weights, name=name, **kwargs)
    sd = hub.load_state_dict(weights)
    model, _ = timm_common.create(model_name, "random", name=name, **kwargs)
    timm_common.load_timm_state_dict(model, strip_wrappers(sd, model), name=name, source=str(weights))
    return model, hub.file_fingerprint(weights)


class TimmViT(TimmMethods, Backbone):
    """A timm ``VisionTransformer`` (or subclass such as DeiT's distilled one).

    Readouts (all after the final norm):
      - ``cls``: the class token; for distilled DeiT the mean of class and distillation tokens,
        as DeiT itself predicts (and timm's pre-logits);
      - ``mean``: mean of patch tokens (class, distillation and register tokens excluded);
      - ``cls+mean``: both concatenated (embed_dim doubles), the DINOv2 linear-probe feature;
      - ``default``: whatever timm's ``forward_head(pre_logits=True)`` returns for the model
        (its own pooling, fc_norm, attention pool) - used by ``timm:NAME``.
    """

    def __init__(self, model: nn.Module, spec: Spec, variant: str, weights_id: str,
                 readout: str = "cls", input_size: int | None = None) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise TypeError(f"TimmViT needs a timm VisionTransformer, got {type(model).__name__}")
        mirror(self, model, skip=("blocks",))
        self._timm_cls = type(model)  # timm's methods run on the backbone (same attributes)
        self.blocks = nn.ModuleList(model.blocks)
        self.num_prefix_tokens = model.num_prefix_tokens  # the contract declares it, so mirror skips it
        # leading class-like tokens: class (+ distillation); register tokens follow them
        self.num_cls_tokens = model.num_prefix_tokens - model.num_reg_tokens if model.has_class_token else 0
        self._identify(model, spec, variant, weights_id, readout, input_size)

    def _identify(self, model: nn.Module, spec: Spec, variant: str, weights_id: str, readout: str,
                  input_size: int | None) -> None:
        """Readout (checked against the tokens the model has), width and identity; shared with
        the other timm token models (backbones.timm_special)."""
        if readout not in READOUTS + ("default",):
            raise UserError(f"unknown readout {readout!r} for {spec.name!r}; choose from {', '.join(spec.readouts)}")
        if "cls" in readout.split("+") and not self.num_cls_tokens:
            raise UserError(f"{spec.name!r} has no class token; use --readout mean or default")
        self.readout_name = readout
        dim = model.num_features
        self.embed_dim = 2 * dim if readout == "cls+mean" else dim
        self.spec, self.variant, self.weights_id = spec, variant, weights_id
        self.input_size = input_size or spec.input_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        if self.readout_name == "default":
            return self.forward_head(h, pre_logits=True)
        parts = []
        for kind in self.readout_name.split("+"):
            pooled = (h[:, :self.num_cls_tokens] if kind == "cls" else h[:, self.num_prefix_tokens:]).mean(1)
            parts.append(self.fc_norm(pooled))  # fc_norm is Identity unless the model pools first
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm; the first ``num_prefix_tokens`` are class/dist/register."""
        return self.fc_norm(self.norm(h))

    def reads_class_token(self) -> bool:
        """Does the readout pool the class token(s)? (default/proj readouts pool as the model's
        global_pool says)"""
        pooled = self.readout_name.split("+")
        return bool(self.num_cls_tokens) and (
            "cls" in pooled or ("mean" not in pooled and getattr(self, "global_pool", "") == "token"))

    def cam_layers(self) -> list[nn.Module]:
        # a readout of the class token sees the last block's patch tokens only through that block's
        # attention: its input norm is where they still carry gradient (pytorch-grad-cam's ViT
        # recipe). A mean readout pools those patch tokens themselves: the block's output, as a
        # CNN's last map (its input norm would see only the attention branch, not the residual and
        # MLP). cls+mean: both (pytorch-grad-cam averages the two maps)
        last = self.blocks[-1]
        if not (self.reads_class_token() and hasattr(last, "norm1")):
            return [last]
        return [last.norm1, last] if "mean" in self.readout_name.split("+") else [last.norm1]

    def attention_maps(self, x: torch.Tensor) -> AttentionMaps:
        maps = timm_attention_weights(self.blocks, lambda: self(x), what=f"the blocks of {self.spec.name}")
        return AttentionMaps(maps, slice(0, self.num_cls_tokens) if self.reads_class_token() else None)

    def lora_targets(self) -> tuple[str, ...]:
        return layer_names(self.blocks, "attn")  # qkv and proj: LoRA's attention projections

    def readout_modules(self) -> list[nn.Module]:
        mods = [self.norm, self.fc_norm, getattr(self, "attn_pool", None)]
        return [m for m in mods if m is not None and any(True for _ in m.parameters())]


def timm_attention_weights(blocks, forward: Callable[[], object], what: str) -> list[torch.Tensor]:
    """Each timm Attention block's softmax(q k^T), from one unfused ``forward()``: timm computes it
    before ``attn_drop`` only when not fused, so that module's input (identity in eval) is taken."""
    attns = [getattr(b, "attn", None) for b in blocks]
    if not all(a is not None and hasattr(a, "fused_attn") and hasattr(a, "attn_drop") for a in attns):
        raise UserError(f"--method rollout: {what} are not timm Attention blocks; use --method gradcam")
    maps: list[torch.Tensor] = []
    fused = [a.fused_attn for a in attns]
    hooks = [a.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out.detach())) for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        with torch.no_grad():
            forward()
    finally:
        for a, f, h in zip(attns, fused, hooks):
            a.fused_attn = f
            h.remove()
    return maps


@dataclass(frozen=True)
class Variant:
    """One variant of a ViT adapter: the timm model and, for test configs, size overrides."""

    model: str  # timm name, with pretrained tag for real variants
    patch: int
    facts: dict = field(default_factory=dict)
    tiny: dict | None = None  # timm kwargs of a random-only test config (same class, small)


def vit_kwargs(input_size: int, patch: int) -> dict:
    """timm kwargs for a ViT that runs at ``input_size`` (padded up to a whole number of patches)."""
    grid = -(-input_size // patch)
    return {"img_size": grid * patch, "dynamic_img_size": True, "dynamic_img_pad": True}


# the shared test config: same class and flags as the real model, milliseconds per batch
TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2}


def vit_adapter(spec: Spec, variants: dict[str, Variant]) -> Adapter:
    """An Adapter whose build makes a TimmViT for one of ``variants``."""

    def build(variant: str, weights: str, *, readout: str | None = None,
              input_size: int | None = None) -> Backbone:
        name, readout = spec.check(variant, readout)  # name: what errors and `bench weights fetch` use
        v = variants[variant]
        size = input_size or spec.input_size
        kwargs = {**vit_kwargs(size, v.patch), **(v.tiny or {})}
        if v.tiny is not None and weights == "default":
            # no published weights: "default" is a fixed-seed init so features (and caches) are stable
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model, _ = create_model(v.model, "random", name=name, **kwargs)
            fingerprint = f"{spec.name}-{variant}-seed0"
        else:
            model, fingerprint = create_model(v.model, weights, name=name, **kwargs)
        return TimmViT(model, spec, variant, fingerprint, readout=readout, input_size=size)

    def files(variant: str) -> list[WeightFile]:
        v = variants[variant]
        loc = None if v.tiny is not None else timm_common.hub_location(v.model)
        return [WeightFile("hf", *loc)] if loc else []

    return Adapter(spec, build, files)
