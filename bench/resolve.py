"""User choices -> a complete RunConfig: every option checked against its declaration
(bench.options), the dataset against its source, backbone choices against its Spec, and the
protocol's own options filled in (the others stay None, so they never change a run id)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import datasets, options, recipes
from .adapt import check as check_adapt
from .subsets import check as check_subset
from .run_config import RunConfig, parse_unfreeze
from .errors import UserError, did_you_mean


def resolve(backbone: str, dataset: str, **given: Any) -> RunConfig:
    """Validate user choices and fill every default, so the config (and its id) is complete.
    ``given`` takes any run option by name; None means "not given"."""
    run_names = options.names("run")
    unknown = set(given) - set(run_names)
    if unknown:
        bad = sorted(unknown)[0]
        raise UserError(f"unknown run option {bad!r}; {did_you_mean(bad, run_names)}")
    given = {k: options.get(k).check(v) for k, v in given.items() if v is not None}
    explicit = set(given)
    given = recipes.fill(given)  # explicit option > recipe value > option default

    size = given.get("size", options.get("size").default)
    datasets.check(dataset, size)
    unfreeze = given.get("unfreeze", "none")
    parse_unfreeze(unfreeze)
    check_adapt(given.get("adapt", "none"), unfreeze)
    common = {k: given.get(k, options.get(k).default) for k in options.names("run", per_protocol=False)
              if k not in ("backbone", "dataset")}
    cfg = RunConfig(backbone=backbone, dataset=dataset, **_backbone_choices(backbone, common, explicit))
    protocol = cfg.protocol  # unknown head / head x unfreeze that nothing runs: one line here
    own = {k: given.get(k, options.get(k).default) for k in protocol.reads(cfg)}
    cfg = protocol.complete(cfg.replace(**own), frozenset(explicit))  # e.g. zero-shot's readout and prompts
    if cfg.init != "none" and protocol.name != "zeroshot-init":
        raise UserError(f"--init {cfg.init} starts a linear probe at the zero-shot classifier: use it with --head "
                        f"linear --unfreeze none, not --head {cfg.head} --unfreeze {cfg.unfreeze}")
    if cfg.layers and protocol.name != "layers":  # --layers is the layer-wise probe's alone
        raise UserError(f"--layers probes the frozen features after each block: use it with --head linear|knn "
                        f"and --unfreeze none (and --linear-mode cached), not --head {cfg.head} --unfreeze "
                        f"{cfg.unfreeze}" + (" --linear-mode online" if cfg.linear_mode == "online" else ""))
    check_subset(cfg)
    protocol.validate(cfg)
    if cfg.select == "last" and protocol.kind == "probe" and protocol.selects_on_val(cfg):
        raise UserError(f"--select last tests the model after its last epoch, with nothing chosen on val: only "
                        f"for trained models (--unfreeze lastN|all, --head mlp|deit); --head {cfg.head} "
                        f"--unfreeze {cfg.unfreeze} chooses its head on val: use --select auc|acc|loss")
    return cfg.replace(definitions=definitions(cfg))


def definition_versions(cfg: RunConfig) -> dict[str, str]:
    """Every definition a run computes with, and its version (recorded in the run's JSON):
    the backbone variant, the protocol, the recipe and the dataset source."""
    import backbones

    source = datasets.source_for(cfg.dataset)
    return {"backbone": f"{cfg.backbone}@{cfg.variant}:{backbones.get(cfg.backbone).spec.version(cfg.variant)}",
            "protocol": f"{cfg.protocol.name}:{cfg.protocol.version}",
            "recipe": f"{cfg.recipe}:{recipes.get(cfg.recipe).version}",
            "dataset": f"{source.name}:{source.version}"}


def definitions(cfg: RunConfig) -> str:
    """The definitions above version 1, as the run id carries them (e.g. "backbone:simplecnn@default=2";
    "" while all are at 1, so
    ids of unchanged definitions stay as they were; a bumped one never reuses an old result)."""
    out = []
    for kind, value in definition_versions(cfg).items():
        name, _, version = value.rpartition(":")
        if int(version) > 1:
            out.append(f"{kind}:{name}={version}")
    return ",".join(out)


def unread(cfg: RunConfig, given: dict[str, Any]) -> list[str]:
    """Per-protocol options in ``given`` (what the user typed; a recipe's values are not given)
    that the config's protocol does not read: they are left out of the config and change nothing."""
    own = set(options.names("run", per_protocol=True))
    reads = set(cfg.protocol.reads(cfg))
    return [k for k, v in given.items() if v is not None and k in own and k not in reads]


def unread_warning(cfg: RunConfig, names: list[str], given: dict[str, Any] | None = None) -> str:
    """The one line that says which typed options a run ignores (with their values from ``given``)."""
    flags = ", ".join(options.get(k).flag + (f" {given[k]}" if given and k in given else "") for k in names)
    what = f"--head {cfg.head}" + (f" --unfreeze {cfg.unfreeze}" if cfg.unfreeze != "none" else "")
    return (f"{flags} {'is' if len(names) == 1 else 'are'} not read by {what} (protocol {cfg.protocol.name}): "
            f"ignored, and not part of the run id")


def bind_data(cfg: RunConfig, opts) -> RunConfig:
    """The config with the identity of the data it will read (``data_fingerprint``): empty for a
    dataset's published version, the file's fingerprint otherwise (e.g. --skip-md5 on a file of
    your own), so results on different data never share a run id."""
    return cfg.replace(data_fingerprint=datasets.identity(cfg.dataset, cfg.size,
                                                         datasets.load_options(cfg, opts, download=False)))


def _backbone_choices(backbone: str, c: dict, explicit: set[str] = frozenset()) -> dict:
    """Variant, readout and input size resolved against the backbone's Spec; weights file fingerprinted.
    ``explicit``: options the user gave (a recipe's values give way where they do not apply)."""
    import backbones

    c = dict(c)
    if c["resize"] == "none" and "input_size" not in explicit:
        c["input_size"] = 0  # a recipe's input size gives way to an explicit --resize none
    if c["input_size"] and c["resize"] == "none" and c["input_size"] != c["size"]:
        raise UserError(f"--resize none keeps {c['size']} px images, so --input-size {c['input_size']} cannot "
                        f"apply; use --resize resize|pad or drop --input-size")
    spec = backbones.get(backbone).spec
    c = dict(c)
    c["variant"] = c["variant"] or spec.default_variant
    if spec.variants:  # a variant it lacks, or a real family's test model: one line
        spec.check(c["variant"], spec.readouts[0])
    c["readout"] = c["readout"] or spec.readouts[0]
    if c["readout"] not in spec.readouts:
        raise UserError(f"unknown readout {c['readout']!r}; {did_you_mean(c['readout'], spec.readouts)}")
    if c["resize"] == "none":
        c["input_size"] = c["input_size"] or c["size"]
    c["input_size"] = c["input_size"] or spec.input_size
    if c["resize"] in ("pad", "pad-normalized") and c["size"] > c["input_size"]:
        raise UserError(f"--resize {c['resize']} cannot fit {c['size']} px images into {c['input_size']} px; "
                        f"use --resize resize or a larger --input-size")
    if c["resize"] == "resize-crop":
        c["crop_from"] = c["crop_from"] or round(c["input_size"] * 256 / 224)
        if c["crop_from"] < c["input_size"]:
            raise UserError(f"--crop-from {c['crop_from']} is smaller than the input size {c['input_size']}; "
                            f"the centre crop needs at least that")
    elif c["crop_from"]:
        if "crop_from" in explicit:
            raise UserError(f"--crop-from applies to --resize resize-crop only, not --resize {c['resize']}")
        c["crop_from"] = 0  # a recipe's crop size, under a resize policy the user chose instead
    weights = c["weights"]
    c["weights_fingerprint"] = ""
    if weights not in ("default", "random"):
        if not Path(weights).is_file():
            raise UserError(f"--weights {weights!r}: no such file; use default, random or a path to a checkpoint")
        from backbones.hub import file_fingerprint

        c["weights"] = str(Path(weights).resolve())
        c["weights_fingerprint"] = file_fingerprint(c["weights"])
    return c
