"""Backbone registry: built-ins by lazy ``"module:attr"`` strings, plugins by entry points.

An entry resolves to an :class:`Adapter` (a ``Spec`` plus a ``build`` function). Nothing heavy is
imported until a name is looked up, so `bench --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Protocol

from bench.errors import UserError, did_you_mean
from bench import registry as _common
from bench.registry import load_target

from .base import Backbone, Spec

ENTRY_POINT_GROUP = "bench.backbones"


class Builder(Protocol):
    def __call__(self, variant: str, weights: str, *, readout: str | None = None,
                 input_size: int | None = None) -> Backbone: ...
    # variant: one of spec.variants; weights: "default" | "random" | a local file path;
    # readout: one of spec.readouts (None = the spec's first); input_size: the size images
    # will have (adapters with position embeddings interpolate them to it; None = native).
    # A spec with in_chans 0 (the dataset's own channel count) is also given in_chans=1|3.


@dataclass(frozen=True)
class WeightFile:
    """A file `--weights default` needs: ("hf", "repo_id", "filename") or ("url", url, basename)."""

    kind: str
    location: str
    filename: str


@dataclass(frozen=True)
class Adapter:
    spec: Spec
    build: Builder
    # which files `--weights default` needs for a variant (for `bench weights ls`); optional
    weight_files: Callable[[str], list[WeightFile]] | None = None


# Short names -> "module:attr" of an Adapter. Imported only when asked for.
BUILTINS: dict[str, str] = {
    "dummy": "backbones.dummy:DUMMY",
    "resnet18": "backbones.resnet:RESNET18",
    "resnet18_28": "backbones.resnet:RESNET18_28",
    "resnet50": "backbones.resnet:RESNET50",
    "resnet152": "backbones.resnet:RESNET152",
    "deit": "backbones.deit:DEIT",
    "dino": "backbones.dino:DINO",
    "dinov2": "backbones.dinov2:DINOV2",
    "clip": "backbones.clip:CLIP",
    "sam": "backbones.sam:SAM",
    "blip": "backbones.blip:BLIP",
    # medical-domain models, SEEM and the primer's CNN (issue 15)
    "biomedclip": "backbones.biomedclip:BIOMEDCLIP",
    "rad-dino": "backbones.rad_dino:RAD_DINO",
    "medsam": "backbones.medsam:MEDSAM",
    "retfound": "backbones.retfound:RETFOUND",
    "uni": "backbones.uni:UNI",
    "seem": "backbones.seem:SEEM",
    "simplecnn": "backbones.simplecnn:SIMPLECNN",
}

# "prefix:rest" names resolved by a function, e.g. timm:convnext_tiny.fb_in22k
PREFIXES: dict[str, str] = {
    "timm": "backbones.timm_any:adapter_for",
}

_registered: dict[str, Adapter] = {}
_plugins: dict[str, tuple[Adapter | UserError, int]] = {}  # plugin name -> (adapter or error, generation)


def register(name: str, spec: Spec, build: Builder) -> None:
    """Register a backbone at run time (tests, notebooks). Plugins use the entry-point group."""
    _registered[name] = Adapter(spec, build)
    _common.changed()


def refresh() -> None:
    """Read the installed plugins again (shared with bench.registry: one scan for every group)."""
    _common.refresh()


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return _common.entry_points(ENTRY_POINT_GROUP)  # read once per process


def names() -> list[str]:
    return sorted(set(BUILTINS) | set(_registered) | set(_entry_points()))


def get(name: str) -> Adapter:
    """Resolve a backbone name; unknown names raise a UserError with suggestions."""
    if name in _registered:
        return _registered[name]
    if name in BUILTINS:
        return _as_adapter(load_target(BUILTINS[name]), name)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PREFIXES:
        return _as_adapter(load_target(PREFIXES[prefix])(rest), name)
    eps = _entry_points()
    if name in eps:
        known = _plugins.get(name)
        if known is not None and known[1] == _common.generation():  # imported (or failed) once
            if isinstance(known[0], UserError):
                raise known[0]
            return known[0]
        try:
            obj = eps[name].load()
        except Exception as e:  # a broken plugin should not look like a typo
            err = UserError(f"backbone plugin {name!r} ({eps[name].value}) failed to import: {e}")
            _plugins[name] = (err, _common.generation())
            raise err from e
        adapter = _as_adapter(obj, name)
        _plugins[name] = (adapter, _common.generation())
        return adapter
    raise UserError(f"unknown backbone {name!r}; {did_you_mean(name, names() + ['timm:NAME'])}")


def _as_adapter(obj: object, name: str) -> Adapter:
    if isinstance(obj, Adapter):
        return obj
    if callable(obj) and not isinstance(obj, type):
        made = obj()  # a zero-argument factory returning an Adapter
        if isinstance(made, Adapter):
            return made
    raise UserError(f"backbone entry {name!r} does not point at a backbones.registry.Adapter")


def build(name: str, variant: str | None = None, weights: str = "default", **kwargs) -> Backbone:
    adapter = get(name)
    spec = adapter.spec
    variant = variant or spec.default_variant
    if spec.variants:
        spec.check(variant, spec.readouts[0])
    if weights not in ("default", "random") and is_bench_checkpoint(weights):
        # a model saved by `bench run --save-model`: same module layout, any family
        backbone = adapter.build(variant, "random", **kwargs)
        backbone.load_weights_file(weights)
        return backbone
    return adapter.build(variant, weights, **kwargs)


BENCH_FORMAT = "medfm-bench-backbone"


def is_bench_checkpoint(path: str) -> bool:
    if not str(path).endswith(".safetensors"):
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == BENCH_FORMAT
    except Exception:
        return False


BuilderFn = Callable[..., Backbone]
