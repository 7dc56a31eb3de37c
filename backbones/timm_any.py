"""``timm:NAME[.TAG]``: any timm model as ``stem -> blocks -> readout``.

ViTs (timm ``VisionTransformer``, incl. DeiT and hybrids) use :class:`TimmViT`; timm ``Eva`` (rotary
embeddings passed to each block) and ``VisionTransformerSAM`` (resampled position grid, conv neck)
have their own classes in :mod:`backbones.timm_special`. Other models are
split generically: the children of their stage container(s) (``stages``, ``layer1..N`` /
``s1..N``, ``blocks`` or ``layers``) are the blocks (a ``downsample + blocks`` stage is split into
its blocks, the downsample joining the first); the children ``forward_features`` calls before
them are the stem; the ones after, plus timm's ``forward_head(pre_logits=True)``, the readout.
The split is found by tracing ``forward_features`` once and checked numerically against the
model's own output at build time; a model where that fails is refused with a UserError.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from bench.errors import UserError, did_you_mean

from . import timm_common, timm_special
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Spec, count_params
from .registry import Adapter, WeightFile
from .vit_common import READOUTS, TimmMethods, TimmViT, create_model, mirror, vit_kwargs

VIT_MODULES = ("vision_transformer", "deit", "vision_transformer_hybrid")
STAGE_LIST = re.compile(r"(layer|s)[1-9]\d*$")  # ResNet layer1..4, RegNet s1..4
SPEC_MEMO_VERSION = 1  # bump when _describe records other facts


@lru_cache(maxsize=32)
def adapter_for(name: str) -> Adapter:
    """The Adapter for ``timm:name``; the name's pretrained tag (or timm's default) is the variant."""
    d = _described(name)
    model_name, vit, eva = d["model_name"], d["vit"], d["eva"]
    spec = Spec(
        name=f"timm:{name}", family="timm", variants=(d["variant"],), default_variant=d["variant"],
        input_size=d["input_size"], mean=tuple(d["mean"]), std=tuple(d["std"]),
        weights_source=d["weights_source"], license=d["license"],
        readouts=("default", *READOUTS) if vit or eva else ("default",),
        description=f"timm {model_name}",
        facts=MetaFacts(model_name),
    )

    def build(variant: str, weights: str, *, readout: str | None = None,
              input_size: int | None = None) -> Backbone:
        readout = readout or spec.readouts[0]
        if readout not in spec.readouts:
            raise UserError(f"backbone {spec.name!r} has no readout {readout!r}; "
                            f"choose from {', '.join(spec.readouts)}")
        size = input_size or spec.input_size
        # SAM ViTs stay at their native grid: its relative-position tables are what the weights fit
        kwargs = vit_kwargs(size, _patch_size(model_name)) if vit or eva else {}
        model, fingerprint = create_model(model_name, weights, name=spec.name, **kwargs)
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model, VisionTransformer):
            return TimmViT(model, spec, variant, fingerprint, readout=readout, input_size=size)
        special = timm_special.wrap(model, spec, variant, fingerprint, readout=readout, input_size=size)
        return special if special is not None else decompose(model, spec, variant, fingerprint, size)

    def files(variant: str) -> list[WeightFile]:
        loc = timm_common.hub_location(model_name) if variant != "none" else None
        return [WeightFile("hf", *loc)] if loc else []

    return Adapter(spec, build, files)


def _describe(name: str) -> dict:
    """What the Spec of ``timm:name`` is made of, from timm's registry (imports timm)."""
    import timm

    arch, _, tag = name.partition(".")
    if not arch or not timm.is_model(arch):
        raise UserError(f"timm has no model {name!r}; "
                        f"{did_you_mean(name, timm.list_models() + timm.list_pretrained())}")
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        hint = did_you_mean(tag, tags) if tags else "it has no pretrained weights (use timm:" + arch + ")"
        raise UserError(f"timm model {arch!r} has no pretrained tag {tag!r}; {hint}")
    cfg_obj = timm.models.get_pretrained_cfg(name)
    cfg = cfg_obj.to_dict() if cfg_obj is not None else {}
    variant = tag or cfg.get("tag") or "none"
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return {"variant": variant, "model_name": arch if variant == "none" else f"{arch}.{variant}",
            "vit": bool(timm.models.is_model_in_modules(arch, VIT_MODULES)),
            # token ViTs with the same readouts
            "eva": bool(timm.models.is_model_in_modules(arch, timm_special.EVA_MODULES)),
            "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
            "mean": list(mean) if len(mean) == 3 else list(IMAGENET_MEAN),
            "std": list(std) if len(std) == 3 else list(IMAGENET_STD),
            "weights_source": (f"HF hub {cfg['hf_hub_id']}" if cfg.get("hf_hub_id")
                               else cfg.get("url") or "none (random init only)"),
            "license": cfg.get("license") or "see the timm model card"}


def _memo_path() -> Path | None:
    """Where what _describe found is remembered for this timm version (its registry is code: one
    version always says the same), so planning a sweep over timm models need not import timm."""
    from importlib import metadata

    from bench.env import default_cache_dir

    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    return default_cache_dir() / "timm-specs" / f"timm-{version}-v{SPEC_MEMO_VERSION}.json"


def _described(name: str) -> dict:
    """``_describe(name)``, remembered on disk per timm version (a name timm refuses is not)."""
    path = _memo_path()
    memo: dict = {}
    if path is not None:
        try:
            memo = json.loads(path.read_text())
        except (OSError, ValueError):
            memo = {}
        if isinstance(memo, dict) and isinstance(memo.get(name), dict):
            return memo[name]
    described = _describe(name)
    if path is not None:
        try:  # a cache that cannot be written costs the next process an import of timm, nothing else
            from bench.fsio import atomic_write_text

            atomic_write_text(path, json.dumps({**(memo if isinstance(memo, dict) else {}), name: described},
                                               indent=0), "timm spec memo")
        except Exception:
            pass
    return described


class MetaFacts(dict):
    """The facts `bench ls backbones` shows (params, embed dim), read off the model built on the
    meta device when one is first looked at: planning a sweep never needs them, and building the
    graphs of medmnistplus.yaml's 9 timm models cost a second of every dry run. Other keys
    ("blocks") are never filled in, so asking for them builds nothing."""

    KEYS = ("params", "embed_dim")

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model_name, self.filled = model_name, False

    def _fill(self) -> "MetaFacts":
        if not self.filled:
            self.filled = True
            meta = _meta_model(self.model_name)
            if meta is not None:
                dict.update(self, params=_fmt(count_params(meta)), embed_dim=meta.num_features)
        return self

    def get(self, key, default=None):
        return dict.get(self._fill(), key, default) if key in self.KEYS else default

    def __getitem__(self, key):
        return dict.__getitem__(self._fill(), key)

    def __contains__(self, key) -> bool:
        return key in self.KEYS and dict.__contains__(self._fill(), key)

    def __iter__(self):
        return dict.__iter__(self._fill())

    def __len__(self) -> int:
        return dict.__len__(self._fill())

    def __eq__(self, other) -> bool:
        return dict.__eq__(self._fill(), other)

    __hash__ = None  # type: ignore[assignment]

    def keys(self):
        return dict.keys(self._fill())

    def items(self):
        return dict.items(self._fill())

    def values(self):
        return dict.values(self._fill())

    def copy(self) -> dict:
        return dict(self.items())

    def __repr__(self) -> str:
        return dict.__repr__(self._fill())

    def __reduce__(self):
        return (MetaFacts, (self.model_name,))


def _patch_size(model_name: str) -> int:
    meta = _meta_model(model_name)
    return getattr(getattr(meta, "patch_embed", None), "patch_size", (1,))[0]


@lru_cache(maxsize=32)
def _meta_model(model_name: str) -> nn.Module | None:
    """The model on the meta device: shapes and sizes for the Spec, no memory, no init cost."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False, num_classes=0)
    except Exception:  # display-only facts; some models cannot be built on meta
        return None


def _fmt(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


class TimmGeneric(TimmMethods, Backbone):
    """A non-ViT timm model split into traced stem children, blocks, and post children + head."""

    def __init__(self, model: nn.Module, spec: Spec, variant: str, weights_id: str, input_size: int,
                 stem: list[str], blocks: list[nn.Module], post: list[str], containers: list[str]) -> None:
        super().__init__()
        # what forward_head reads (head, global_pool, drop_rate, ...) under timm's names
        mirror(self, model, skip=set(stem) | set(post) | set(containers) | {"stem_layers", "post_layers"})
        self._timm_cls = type(model)  # forward_head and its helpers run on the backbone
        self._stem_order, self._post_order = list(stem), list(post)
        self.stem_layers = nn.ModuleDict({n: getattr(model, n) for n in dict.fromkeys(stem)})
        self.blocks = nn.ModuleList(blocks)
        self.post_layers = nn.ModuleDict({n: getattr(model, n) for n in dict.fromkeys(post)})
        self.spec, self.variant, self.weights_id, self.input_size = spec, variant, weights_id, input_size
        self.embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        for n in self._stem_order:
            x = self.stem_layers[n](x)
        return x

    def _post(self, h: torch.Tensor) -> torch.Tensor:
        for n in self._post_order:
            h = self.post_layers[n](h)
        return h

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self._post(h), pre_logits=True)

    def layer_readout(self, h: torch.Tensor, index: int) -> torch.Tensor:
        # the post layers and head are sized for the last stage's channels: earlier feature maps
        # are average-pooled over space as they are (tokens: averaged)
        if index == self.num_blocks - 1:
            return self.readout(h)
        if h.ndim == 4:
            return h.mean(dim=(1, 2) if getattr(self, "output_fmt", "NCHW") == "NHWC" else (2, 3))
        return h.mean(dim=1) if h.ndim == 3 else h.flatten(1)

    def feature_map(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim == 4 and getattr(self, "output_fmt", "NCHW") == "NHWC":  # Swin-style stages
            return h.permute(0, 3, 1, 2)
        return super().feature_map(h)

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        h = self._post(h)
        if h.ndim == 4:
            nhwc = getattr(self, "output_fmt", "NCHW") == "NHWC"
            return h.flatten(1, 2) if nhwc else h.flatten(2).transpose(1, 2)
        return h

    def readout_modules(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n not in ("stem_layers", "blocks")]


def decompose(model: nn.Module, spec: Spec, variant: str, weights_id: str, input_size: int) -> Backbone:
    """Split ``model`` as the module docstring says, or raise a UserError saying why not."""
    containers = _containers(model)
    if not containers:
        raise _refuse(spec, "it has no stages, layer1..N, blocks or layers to use as blocks")
    was_training = model.training
    model.eval()
    x = torch.randn(1, getattr(model, "in_chans", 3), input_size, input_size,
                    generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            order, feats = _trace(model, x)
            ref = model.forward_head(feats, pre_logits=True)
    except Exception as e:
        raise UserError(f"{spec.name!r} fails on a {input_size} px input "
                        f"({str(e).splitlines()[0][:200]}); try another --input-size") from e
    idx = [i for i, n in enumerate(order) if n in containers]
    if sorted(order[i] for i in idx) != sorted(containers) or idx != list(range(idx[0], idx[-1] + 1)):
        raise _refuse(spec, f"forward_features does not run {', '.join(containers)} once each, in one run")
    stem, post, called = order[:idx[0]], order[idx[-1] + 1:], [order[i] for i in idx]
    tried = []
    for fine in (True, False):
        blocks = [b for c in called for b in _split(getattr(model, c), fine)]
        if [id(b) for b in blocks] in tried:
            continue
        tried.append([id(b) for b in blocks])
        backbone = TimmGeneric(model, spec, variant, weights_id, input_size, stem, blocks, post, containers)
        backbone.eval()
        try:
            with torch.no_grad():
                got = backbone(x)
        except Exception:  # e.g. a reshape between stem and blocks that the trace cannot see
            continue
        if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5):
            _check_balance(backbone, spec)
            backbone.embed_dim = int(got.shape[-1])
            return backbone.train(was_training)
    raise _refuse(spec, "running its stem, blocks and head in sequence does not reproduce its output")


def _containers(model: nn.Module) -> list[str]:
    kids = {n: m for n, m in model.named_children() if len(list(m.children()))}
    if "stages" in kids:
        return ["stages"]
    listed = [n for n in kids if STAGE_LIST.match(n)]
    if listed:
        return listed
    return [n for n in ("blocks", "layers") if n in kids][:1]


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Names of the direct children forward_features calls, in call order, and its output."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=name: order.append(n))
             for name, m in model.named_children()]
    try:
        return order, model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()


def _split(container: nn.Module, fine: bool) -> list[nn.Module]:
    out: list[nn.Module] = []
    for stage in container.children():
        out.extend(_split_stage(stage) if fine else [stage])
    return out


def _split_stage(stage: nn.Module) -> list[nn.Module]:
    """A stage's blocks, for `--unfreeze lastN` steps as fine as the ViTs' (checked numerically)."""
    if isinstance(stage, nn.Sequential):
        return list(stage.children())  # EfficientNet-style stage: a plain sequence of blocks
    kids = dict(stage.named_children())
    inner = kids.get("blocks")
    if set(kids) == {"downsample", "blocks"} and isinstance(inner, nn.Sequential) and len(inner):
        first, *rest = inner.children()  # ConvNeXt / Swin-style stage: downsample, then blocks
        return [nn.Sequential(kids["downsample"], first), *rest]
    return [stage]


def _check_balance(backbone: TimmGeneric, spec: Spec) -> None:
    # a split that leaves most of the feature extractor outside the blocks (e.g. HRNet, whose
    # layer1 is followed by the real stages) would make `--unfreeze lastN` meaningless; heads
    # (MobileNetV3's conv_head) may be large and do not count
    outside = count_params([backbone.stem_layers, backbone.post_layers])
    if outside > count_params(backbone.blocks):
        raise _refuse(spec, "its stem and post-block layers would hold more parameters than its blocks")


def _refuse(spec: Spec, why: str) -> UserError:
    return UserError(f"{spec.name!r} cannot be split into stem -> blocks -> readout: {why}; "
                     f"timm ViTs (incl. EVA and SAM), ConvNeXt, ResNet-like, RegNet and EfficientNet-like models work")
