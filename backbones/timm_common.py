"""Creating timm models and loading their weights the way timm's pretrained configs describe."""
from __future__ import annotations

import sys

import torch

from bench.errors import UserError

from . import hub


def pretrained_cfg(model_name: str) -> dict:
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise UserError(f"timm has no pretrained config {model_name!r}; see `timm.list_pretrained()`")
    return cfg.to_dict()


def hub_location(model_name: str) -> tuple[str, str] | None:
    """(repo_id, filename) of the model's weights on the HF hub, as timm would download them."""
    cfg = pretrained_cfg(model_name)
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    repo, _, _rev = repo.partition("@")
    return repo, cfg.get("hf_hub_filename") or "model.safetensors"


def create(model_name: str, weights: str, *, name: str, **kwargs) -> tuple[torch.nn.Module, str]:
    """Build a headless timm model and load weights; returns (model, weights fingerprint).

    weights: "default" (timm's pretrained tag, via the HF cache), "random", or a local file.
    """
    import timm

    # locate the weights before building: offline, a big model fails in seconds, not after init
    if weights == "default":
        loc = hub_location(model_name)
        if loc is None:
            raise UserError(f"timm model {model_name!r} has no Hugging Face weights; pass --weights PATH")
        path = hub.hf_file(*loc, name=name)
        fingerprint = f"hf:{loc[0]}/{loc[1]}"
    elif weights != "random":
        path, fingerprint = weights, hub.file_fingerprint(weights)
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise UserError(f"timm cannot create {model_name!r}: {e}") from e
    if weights == "random":
        return model, "random"
    load_timm_state_dict(model, hub.load_state_dict(path), name=name, source=str(path))
    return model, fingerprint


def load_timm_state_dict(model: torch.nn.Module, sd: dict, *, name: str, source: str,
                         allow_missing: tuple[str, ...] = ()) -> None:
    # timm ships per-architecture filters that map original release keys (e.g. the DINOv2 or
    # torchvision layouts) onto its own; apply the model's filter the way timm's loader does.
    # A backbone wrapping a timm model (vit_common.TimmViT) names the timm class it mirrors.
    timm_cls = getattr(model, "_timm_cls", None) or type(model)
    filter_fn = getattr(sys.modules.get(timm_cls.__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except Exception as e:  # a filter crashing on a foreign layout means wrong architecture
            raise UserError(f"weights {source!r} do not fit backbone {name!r}: {e}") from e
    head_keys = ("fc.", "head.", "head_dist.", "classifier.", "last_linear.")
    hub.load_into(model, sd, name=name, source=source, ignore_unexpected=head_keys, allow_missing=allow_missing)
