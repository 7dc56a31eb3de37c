"""``--adapt``: how the blocks ``--unfreeze`` selects train.

- ``none``: every parameter of blocks[L-N:] and the readout (and the stem with ``all``).
- ``lora``: low-rank updates (peft's LoRA) on the layers the backbone names in
  ``Backbone.lora_targets()``, inside blocks[L-N:] only; every original weight stays frozen, so
  the frozen prefix stem + blocks[:L-N] is cached as for ``lastN`` (with ``all``: the stem's output).
- ``bitfit``: of the parameters ``none`` would train, the biases and the norms' weights only.

The training loop asks this module for the backbone parameters that train and calls
:func:`finish` after the test split is scored; nothing in it knows a library. peft is imported only
when LoRA is used (it takes seconds).

A LoRA run saved with ``--save-model`` writes the merged backbone (``backbone.safetensors``,
loadable with ``--weights`` like any saved backbone) and the adapter alone
(``adapter.safetensors``: the LoRA matrices and the adapted blocks' buffers, with what rebuilds
the base model); ``--weights adapter.safetensors`` builds that base, injects and loads the
adapter and merges it (:func:`load_adapter`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .run_config import parse_unfreeze
from .errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from backbones.base import Backbone

    from .run_config import RunConfig

ADAPTER_FORMAT = "medfm-bench-adapter"
LORA_OPTIONS = ("lora_rank", "lora_alpha", "lora_dropout")


def check(adapt: str, unfreeze: str) -> None:
    """An adaptation needs blocks to adapt: ``--adapt`` qualifies ``--unfreeze``, never replaces it."""
    if adapt not in (None, "none") and unfreeze == "none":
        raise UserError(f"--adapt {adapt} adapts the blocks --unfreeze selects, and --unfreeze none selects "
                        f"none; add --unfreeze all (every block) or --unfreeze lastN")


def trains_stem(adapt: str | None) -> bool:
    """Does ``--unfreeze all`` train the stem? LoRA leaves it (patch embedding, first conv) frozen."""
    return adapt != "lora"


def backbone_parameters(cfg: "RunConfig", model: "Backbone", k: int) -> list["nn.Parameter"]:
    """The backbone parameters that train when blocks[k:] are adapted as ``cfg.adapt`` says; for
    LoRA the adapters are injected into ``model`` first (in place, seeded by ``cfg.seed``)."""
    n = model.num_blocks - k
    adapt = cfg.adapt or "none"
    if adapt == "lora":
        inject_lora(model, range(k, model.num_blocks), cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                    seed=cfg.seed)
        return lora_parameters(model)
    params = model.trainable_parameters(n)
    if adapt == "bitfit":
        return bitfit_parameters(model, params)
    return params


def finish(cfg: "RunConfig", model: "Backbone", with_files: bool) -> dict:
    """After the selected model is scored: a LoRA model is merged into plain weights (the model is a
    plain Backbone again); ``with_files``: the adapter as a ProtocolOutput file entry."""
    if (cfg.adapt or "none") != "lora":
        return {}
    files = {"adapter": adapter_file(cfg, model)} if with_files else {}
    unload(model)
    return files


def parameter_counts(cfg: "RunConfig", model: "Backbone", unfrozen: dict[str, int]) -> dict[str, int]:
    """Backbone parameters that train under ``cfg.adapt`` for each of several unfreeze choices
    (name -> number of unfrozen blocks); ``model`` is left as it is (LoRA is counted on a copy)."""
    import copy

    from backbones.base import count_params

    if (cfg.adapt or "none") != "lora":
        return {c: count_params(backbone_parameters(cfg, model, model.num_blocks - n)) if n else 0
                for c, n in unfrozen.items()}
    probe = copy.deepcopy(model)
    inject_lora(probe, range(probe.num_blocks), cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, seed=0)
    per_block = [sum(p.numel() for p in lora_parameters(b)) for b in probe.blocks]
    return {c: sum(per_block[len(per_block) - n:]) if n else 0 for c, n in unfrozen.items()}


# -- BitFit ---------------------------------------------------------------------------------------

def is_norm(module: "nn.Module") -> bool:
    """Normalisation layers of any library: torch's, and classes named like one (SAM's LayerNorm2d,
    timm's and transformers' own norms)."""
    from torch import nn

    kinds = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase) + \
        ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
    return isinstance(module, kinds) or "norm" in type(module).__name__.lower()


def bitfit_parameters(model: "nn.Module", params: list["nn.Parameter"]) -> list["nn.Parameter"]:
    """Of ``params``, the biases (``bias``, ``*_bias``: e.g. attention's in_proj_bias) and the
    parameters of norm layers."""
    norm_ids = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
    return [p for p in params if id(p) in norm_ids or names.get(id(p)) == "bias"
            or names.get(id(p), "").endswith("_bias")]


# -- LoRA -----------------------------------------------------------------------------------------

def target_pattern(names: tuple[str, ...] | list[str]) -> str:
    """peft's ``target_modules`` as one regex of exact names relative to a block (a list would also
    match any longer name ending in one of them)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def inject_lora(model: "Backbone", blocks: range, r: int, alpha: float, dropout: float, *, seed: int,
                targets: tuple[str, ...] | None = None) -> None:
    """peft LoRA layers into ``model.blocks[i]`` for i in ``blocks``, on ``targets`` (default: the
    backbone's ``lora_targets()``). Each block is injected on its own: the stem/blocks/readout
    contract keeps working, as the adapted layers are called exactly where the originals were.
    A-matrices are drawn from ``seed`` (B starts at zero: outputs are unchanged until training)."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    targets = tuple(targets if targets is not None else model.lora_targets())
    if not targets:
        raise UserError(f"backbone {model.spec.name!r} names no layer for LoRA (lora_targets() is empty); "
                        f"use --adapt bitfit or none")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern(targets),
                        bias="none")
    with torch.random.fork_rng(devices=[]):  # adapters are built on the CPU, then moved to the block's device
        torch.manual_seed(seed)
        for i in blocks:
            try:
                inject_adapter_in_model(config, model.blocks[i])
            except ValueError as e:  # peft: no target found in this block
                raise UserError(f"LoRA targets {', '.join(targets)} match no layer of block {i} of "
                                f"{model.spec.name!r} ({str(e).splitlines()[0][:160]}); the backbone's "
                                f"lora_targets() must name layers inside every block") from None
    model._lora = {"r": r, "alpha": alpha, "dropout": dropout, "targets": list(targets), "blocks": list(blocks)}


def lora_parameters(model: "nn.Module") -> list["nn.Parameter"]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def adapter_state(model: "Backbone") -> dict[str, "torch.Tensor"]:
    """The LoRA matrices of the adapted blocks and those blocks' buffers (BatchNorm statistics
    adapt in trained blocks), keyed ``blocks.<i>.<name in the block>``."""
    out = {}
    for i in model._lora["blocks"]:
        block = model.blocks[i]
        keep = {n for n, _ in block.named_parameters() if ".lora_" in n} | {n for n, _ in block.named_buffers()}
        out.update({f"blocks.{i}.{k}": v.detach().cpu().contiguous() for k, v in block.state_dict().items()
                    if k in keep})
    return out


def adapter_file(cfg: "RunConfig", model: "Backbone") -> tuple[dict, dict]:
    """(state dict, metadata) of ``adapter.safetensors``: what rebuilds the adapted model from its
    base (safetensors metadata is strings only)."""
    lora = model._lora
    meta = {"format": ADAPTER_FORMAT, "backbone": model.spec.name, "variant": model.variant,
            "base_weights": str(cfg.weights), "base_weights_id": str(model.weights_id), "seed": str(cfg.seed),
            "r": str(lora["r"]), "alpha": repr(float(lora["alpha"])), "dropout": repr(float(lora["dropout"])),
            "targets": json.dumps(lora["targets"]), "blocks": json.dumps(lora["blocks"])}
    return adapter_state(model), meta


def unload(model: "Backbone") -> None:
    """Merge every LoRA layer into its base layer and put the base layer back (peft's own merge and
    unload steps, per layer), so the model is a plain Backbone with updated weights."""
    import warnings

    from peft.tuners.tuners_utils import BaseTunerLayer

    with warnings.catch_warnings():  # an MHA's merge also merges its out_proj: peft warns "already merged"
        warnings.simplefilter("ignore")
        _unload_blocks(model, BaseTunerLayer)
    model.__dict__.pop("_lora", None)


def _unload_blocks(model: "Backbone", tuner_layer: type) -> None:
    for i in getattr(model, "_lora", {}).get("blocks", []):
        block = model.blocks[i]
        layers: list = []
        for n, m in block.named_modules():  # outermost only: an adapted MHA holds an adapted out_proj
            if isinstance(m, tuner_layer) and not any(n.startswith(o + ".") for o, _ in layers):
                layers.append((n, m))
        for name, layer in layers:
            if hasattr(layer, "unload_and_optionally_merge_module"):  # nn.MultiheadAttention
                plain = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            else:
                layer.merge()
                plain = layer.get_base_layer()
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, child, plain)
        if hasattr(block, "peft_config"):
            del block.peft_config


def is_adapter_file(path: str) -> bool:
    if not str(path).endswith(".safetensors"):
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == ADAPTER_FORMAT
    except Exception:
        return False


def load_adapter(path: str, name: str, variant: str, build: Callable[..., "Backbone"], **kwargs) -> "Backbone":
    """``--weights adapter.safetensors``: the base model the adapter was trained on (``build(variant,
    weights, **kwargs)``), the adapter injected and loaded, then merged."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from backbones import hub

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    where = f"adapter {str(path)!r}"
    if meta.get("backbone") != name or meta.get("variant") != variant:
        raise UserError(f"{where} was trained on {meta.get('backbone')}@{meta.get('variant')}, not {name}@{variant}; "
                        f"use --backbone {meta.get('backbone')} --variant {meta.get('variant')}")
    base = meta["base_weights"]
    if base == "instance":
        raise UserError(f"{where} adapts a model passed in from Python, which cannot be rebuilt by name; load it "
                        f"with bench.adapt.inject_lora on that model, or use the merged backbone.safetensors")
    if base not in ("default", "random") and not Path(base).is_file():
        raise UserError(f"{where} needs its base weights {base}, which are not there; put them back or use "
                        f"the merged backbone.safetensors beside it")
    with torch.random.fork_rng(devices=[]):  # a random base is rebuilt from the seed that drew it
        torch.manual_seed(int(meta["seed"]))
        model = build(variant, base, **kwargs)
    if str(model.weights_id) != meta["base_weights_id"]:
        raise UserError(f"{where} was trained on base weights {meta['base_weights_id']}, but {base} gives "
                        f"{model.weights_id}; use the merged backbone.safetensors beside it")
    blocks = json.loads(meta["blocks"])
    inject_lora(model, range(0) if not blocks else blocks, int(meta["r"]), float(meta["alpha"]),
                float(meta["dropout"]), seed=0, targets=tuple(json.loads(meta["targets"])))
    sd = load_file(str(path))
    for i in blocks:
        own = model.blocks[i].state_dict()
        part = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        wanted = {n for n, _ in model.blocks[i].named_parameters() if ".lora_" in n}
        missing = sorted(wanted - set(part))
        bad = sorted(k for k in part if k not in own or tuple(own[k].shape) != tuple(part[k].shape))
        if missing or bad:
            raise UserError(f"{where} does not fit {name}@{variant}: "
                            + (f"block {i} lacks {missing[0]}" if missing else f"block {i}: {bad[0]} does not fit")
                            + "; it was saved by another version of this backbone")
        model.blocks[i].load_state_dict(part, strict=False)
    unload(model)
    model.weights_id = hub.file_fingerprint(path)
    return model


__all__ = ["check", "trains_stem", "backbone_parameters", "parameter_counts", "finish", "inject_lora", "lora_parameters",
           "bitfit_parameters", "is_norm", "unload", "is_adapter_file", "load_adapter", "ADAPTER_FORMAT",
           "LORA_OPTIONS"]


def trainable_count(cfg: "RunConfig", model: "Backbone", n_outputs: int, brief: bool = False) -> dict:
    """Trainable parameters of a run (``--adapt`` counted by bench.adapt; ``model`` is not changed);
    ``brief``: backbone, head, total and adapt only (what the run's JSON records)."""
    from backbones.base import count_params

    n_unfrozen = parse_unfreeze(cfg.unfreeze, model.num_blocks)
    choices = ["none"] + [f"last{n}" for n in (1, 2, 4) if n < model.num_blocks] + ["all"]
    wanted = [cfg.unfreeze] if brief else list(dict.fromkeys(choices + [cfg.unfreeze]))
    counted = parameter_counts(cfg, model, {c: parse_unfreeze(c, model.num_blocks) for c in wanted})
    backbone_params = counted[cfg.unfreeze]
    head_params = cfg.protocol.head_parameters(cfg, model, n_outputs)
    out = {"backbone": backbone_params, "head": head_params, "total": backbone_params + head_params,
           "adapt": cfg.adapt or "none"}
    if brief:
        return out
    return {**out, "backbone_total": count_params(model), "blocks": model.num_blocks, "unfrozen_blocks": n_unfrozen,
            "backbone_by_unfreeze": {c: counted[c] for c in choices}}


def build(name: str, variant: str | None = None, weights: str = "default", **kwargs) -> "Backbone":
    """backbones.build, plus ``--weights adapter.safetensors``: a LoRA adapter saved by --save-model,
    merged onto the base model it was trained on (the adapter format is ours, so it is read here)."""
    import backbones

    if weights not in ("default", "random") and is_adapter_file(weights):
        return load_adapter(weights, name, variant or backbones.get(name).spec.default_variant,
                            lambda v, w, **kw: backbones.build(name, v, w, **kw), **kwargs)
    return backbones.build(name, variant, weights, **kwargs)
