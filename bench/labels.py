"""How runs are named to people, in one place for the report, bench explain and the CLI: a model
as ``backbone [variant] [(weights)] [(test model)]`` and a protocol as ``linear head, last 2 blocks
fine-tuned with LoRA``. A random init is always said ("(random)"), and so is a test model."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ADAPT_NAMES = {"lora": "LoRA", "bitfit": "BitFit"}
# said wherever random-weight runs are shown (docs, the report's header, depth and feature-map outputs)
RANDOM_INIT_NOTE = ("Runs marked (random) start from a random init, not pretrained weights: they measure an "
                    "architecture's random features. timm zero-initialises the last BatchNorm of each ResNet block, so "
                    "at random init a block without a downsampling shortcut passes its input through unchanged (5 of "
                    "ResNet-18's 8 blocks): layer-wise probes of such runs repeat their numbers across those blocks, "
                    "and their feature maps repeat.")


def is_random(cfg_or_weights: object, backbone: str = "", variant: str = "") -> bool:
    """Does a run start from a random init (--weights random, or a test model's fixed init)?"""
    weights = getattr(cfg_or_weights, "weights", cfg_or_weights)
    backbone = getattr(cfg_or_weights, "backbone", backbone)
    variant = getattr(cfg_or_weights, "variant", variant)
    return weights_name(weights) == "random" or is_test_model(backbone, _norm(variant))


def _norm(v: object) -> str:
    return "" if v is None or str(v) in ("", "nan", "None", "<NA>") else str(v)


def weights_name(value: object) -> str:
    """``default`` / ``random`` as they are; a local file by its name only (no machine paths)."""
    v = _norm(value) or "default"
    return v if v in ("default", "random") else Path(v).name


@lru_cache(maxsize=None)
def _spec(backbone: str):
    try:
        import backbones

        return backbones.get(backbone).spec
    except Exception:  # a plugin not installed here, an offline timm name: a longer label, never an error
        return None


def default_variant(backbone: str) -> str | None:
    """The registry's default variant, or None when the backbone cannot be looked up here."""
    spec = _spec(backbone)
    return spec.default_variant if spec is not None else None


def is_test_model(backbone: str, variant: str) -> bool:
    """A random-init model of the test suite (dummy, a real family's ``tiny``), never a real one."""
    spec = _spec(backbone)
    return spec is not None and spec.is_test_model(variant or spec.default_variant)


def model_label(backbone: str, variant: str, weights: object, *, show_variant: bool | None = None,
                recipe: str | None = None) -> tuple[str, str]:
    """(label, weights as shown): ``deit small (random)``, ``dummy (random) (test model)``,
    ``resnet50 (my-weights.pt)``. The variant shows when it is not the default (or when
    ``show_variant`` says so); a test model's "default" weights are its fixed random init."""
    variant, weights = _norm(variant), weights_name(weights)
    parts = [str(backbone)]
    if variant and (show_variant if show_variant is not None else variant != default_variant(backbone)):
        parts.append(variant)
    test_model = is_test_model(backbone, variant)
    if test_model and weights == "default":
        weights = "random"
    if weights != "default":
        parts.append(f"({weights})")
    if test_model:
        parts.append("(test model)")
    if recipe is not None:
        parts.append(f"[{recipe or 'no recipe'}]")
    return " ".join(parts), weights


def protocol_label(head: str, unfreeze: str, adapt: object = "") -> str:
    """``linear head, frozen backbone``; ``mlp head, last 2 blocks fine-tuned with LoRA``."""
    frozen = {"none": "frozen backbone", "all": "all blocks fine-tuned"}.get(unfreeze)
    if frozen is None:
        n = unfreeze[4:] if unfreeze.startswith("last") else unfreeze
        frozen = f"last {n} block{'s' if n != '1' else ''} fine-tuned"
    adapt = _norm(adapt)
    how = f" with {ADAPT_NAMES.get(adapt, adapt)}" if adapt and adapt != "none" else ""
    return f"{head} head, {frozen}{how}"


def run_label(cfg) -> str:
    """One run, as the CLI and bench explain name it: model · protocol."""
    model, _ = model_label(cfg.backbone, cfg.variant, cfg.weights)
    return f"{model} · {protocol_label(cfg.head, cfg.unfreeze, getattr(cfg, 'adapt', ''))}"
