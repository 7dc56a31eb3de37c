"""Every run option, declared once.

One :class:`Option` per knob: its name, type, default, choices, range, help text, group and
scope. Everything else is derived from this table: the argparse flags of `bench run` and
`bench sweep`, the type checks of sweep YAML values, the fields and defaults of
:class:`bench.run_config.RunConfig` and :class:`bench.run_config.RunOptions`, and the option
table of docs/cli.md (``python -m bench.options``).

Scopes:
  ``run``       changes the numbers: a RunConfig field, part of the run id. ``per_protocol``
                options are only set for the protocols that read them (``Protocol.options``)
                and are None elsewhere, so an unused knob never changes an id.
  ``exec``      where and how a run executes (folders, device, batch size of extraction): a
                RunOptions field, never in the run id.

This module imports nothing heavy: the CLI builds its parser from it at start-up.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean
from .protocol import heads
from .recipes import RECIPE_NAMES

WHAT, PROBE, TRAINED, DATA, WHERE = ("what to run", "probe heads",
                                     "fine-tuning and trained heads (mlp, deit, --unfreeze lastN|all)",
                                     "your own data (folder:, csv: and the named paper datasets)",
                                     "where and how (not part of the run id)")


@dataclass(frozen=True)
class Option:
    name: str                          # python name; the flag is --name-with-dashes
    type: type                         # int | float | str | Path | bool (a switch)
    default: Any = None
    help: str = ""
    group: str = WHAT
    scope: str = "run"                 # run | exec
    per_protocol: bool = False         # run options only some protocols read
    choices: tuple[str, ...] | None = None  # static choices; dynamic ones are checked by their owner
    low: float | None = None           # inclusive lower bound
    above: float | None = None         # exclusive lower bound
    high: float | None = None          # inclusive upper bound
    required: bool = False
    sweepable: bool = True             # may a sweep set it (force is per invocation only)
    metavar: str | None = None
    short: str | None = None           # e.g. -q
    # added after run ids were published: left out of the id while at its default (or None),
    # so every earlier run keeps its id and result file
    late: bool = False
    pattern: str | None = None         # a str value must match this regex in full (e.g. --device)
    multiple: bool = False             # several values (the flag repeated, a YAML list): a tuple

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """Validate one (already typed) value; None means "not given"."""
        if value is None:
            return None
        if self.multiple and isinstance(value, (list, tuple)):
            return tuple(dict.fromkeys(self.check(v) for v in value))  # each once, in order
        if self.choices is not None and value not in self.choices:
            raise UserError(f"unknown {self.flag[2:]} {value!r}; {did_you_mean(str(value), self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            raise UserError(f"{self.flag} {value!r}: not one of {self.metavar or self.pattern}")
        if self.type in (int, float):
            bad = not math.isfinite(value) or (self.low is not None and value < self.low) or \
                (self.above is not None and value <= self.above) or (self.high is not None and value > self.high)
            if bad:
                raise UserError(f"{self.flag} {value}: {self.range_text()}")
        return value

    def range_text(self) -> str:
        parts = []
        if self.above is not None:
            parts.append(f"greater than {self.above:g}")
        if self.low is not None:
            parts.append(f"at least {self.low:g}")
        if self.high is not None:
            parts.append(f"at most {self.high:g}")
        return "must be a finite number " + " and ".join(parts) if parts else "must be a finite number"

    def coerce(self, value: Any, where: str = "") -> Any:
        """A value from YAML or a Python call -> this option's type (YAML reads 1e-4 as a string)."""
        if value is None:
            return None
        label = where or self.name
        if self.multiple:
            return tuple(self.coerce(v, where) for v in (value if isinstance(value, (list, tuple)) else [value]))
        if self.type is bool:
            if not isinstance(value, bool):
                raise UserError(f"{label}: expected true or false, got {value!r}")
            return value
        if isinstance(value, (list, dict, tuple)) or (isinstance(value, bool) and self.type in (int, float)):
            raise UserError(f"{label}: expected a single value, got {value!r}")
        try:
            if self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value)
            if self.type is float:
                return float(value)
            if self.type is Path:
                return Path(os.path.expanduser(str(value)))
        except (TypeError, ValueError):
            raise UserError(f"{label}: {value!r} is not a valid {self.type.__name__}") from None
        return str(value)

    def help_text(self) -> str:
        extra = []
        if self.choices:
            extra.append(" | ".join(self.choices))
        if self.default is not None and self.type is not bool:
            extra.append(f"default {self.default}")
        return self.help + (f" ({'; '.join(extra)})" if extra else "")


# --subgroups: columns, each optionally with numeric bin edges (bench.datasets.attributes.parse)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+|inf)"
SUBGROUPS = rf"[^,:]+(?::{_NUM}(?:,{_NUM})*)?(?:,[^,:]+(?::{_NUM}(?:,{_NUM})*)?)*"

O = Option
OPTIONS: tuple[Option, ...] = (
    # -- what is measured -------------------------------------------------------------------------
    O("backbone", str, required=True, help="registry name, timm:NAME, or a plugin's name (bench ls backbones)"),
    O("dataset", str, required=True, help="dataset name, e.g. breastmnist (bench ls datasets)"),
    O("variant", str, "", help="backbone variant (default: the backbone's default)"),
    O("weights", str, "default", help="default | random | PATH to a checkpoint in the library's format"),
    O("readout", str, "", help="pooled vector the heads see (backbone-specific; default: its first)"),
    O("size", int, 28, help="image size of the dataset file (MedMNIST+: 28, 64, 128, 224)"),
    O("input_size", int, 0, low=16, help="size the backbone sees (default: its native size)"),
    O("recipe", str, "medfm", choices=RECIPE_NAMES, late=True,
      help="a publication's protocol as defaults (bench ls recipes); explicit options still win"),
    O("resize", str, "resize", choices=("resize", "resize-nearest", "pad", "pad-normalized", "resize-crop", "none"),
      help="fit images to the input size: resize (bilinear); resize-nearest (pixel replication, as MedMNIST "
           "v2's PIL NEAREST); pad (centred on a black canvas, then normalised); pad-normalized (normalised, "
           "then padded with 0 as MedMNIST+); resize-crop (to --crop-from, then centre crop); none"),
    O("crop_from", int, 0, low=0, late=True,
      help="--resize resize-crop: side resized to before the centre crop (default: input size x 256/224)"),
    O("normalize", str, "backbone", choices=("backbone", "dataset", "half"), late=True,
      help="mean/std: the backbone's, the dataset's train split's, or 0.5/0.5 (MedMNIST v2)"),
    O("gray", str, "repeat", choices=("repeat", "red"), help="grayscale input: repeat to RGB, or red filters only"),
    O("precision", str, "auto", choices=("auto", "fp16", "bf16", "fp32"), late=True,
      help="CUDA autocast dtype (auto: bf16 where supported, else fp16); MPS: fp16 or bf16 only when asked; "
           "CPU runs are always fp32"),
    O("linear_mode", str, "cached", choices=("cached", "online"), late=True,
      help="--head linear --unfreeze none: a head grid on cached features, or one head trained through "
           "the frozen backbone on (augmented) images like fine-tuning (the publications' linear probe)"),
    O("head", str, "linear", help="what is trained on the backbone"),
    O("unfreeze", str, "none", help="none | lastN | all: how many backbone blocks train"),
    O("adapt", str, "none", choices=("none", "lora", "bitfit"), late=True,
      help="how the blocks --unfreeze selects train: every weight (none), LoRA matrices on the layers the "
           "backbone names (lora, via peft; the stem stays frozen), or biases and norms only (bitfit)"),
    O("seed", int, 0, low=0, high=2**63 - 1),
    O("limit", int, None, low=2, help="cap images per split (smoke runs; recorded in results)"),
    O("select", str, "auc", choices=("auc", "acc", "loss", "last"),
      help="val criterion for model selection (last: no selection, the model after the last epoch is tested; "
           "trained protocols only)"),
    O("layers", str, "", late=True, metavar="all|every:K|LIST",
      help="layer-wise probe (--head linear or knn): one pass keeps the pooled readout after each chosen block "
           "(1..L; every:K also keeps L), one result row per layer"),
    O("train_fraction", float, 1.0, late=True, above=0, high=1,
      help="train on a seeded, stratified fraction of the train split (nested: a smaller fraction's images "
           "are in a larger one's); val and test untouched"),
    O("shots", int, 0, late=True, low=0,
      help="train on N images per class (seeded, stratified, nested like --train-fraction; 0: off)"),
    O("init", str, "none", late=True, choices=("none", "zeroshot"),
      help="--head linear --unfreeze none: start the head at random (none) or at the zero-shot classifier of a "
           "vision-language backbone's text tower and prompts (zeroshot; L2-normalised features, the model's "
           "logit scale)"),
    # -- probe heads on cached features -----------------------------------------------------------
    O("knn_k", int, 11, group=PROBE, per_protocol=True, low=1, help="neighbours of the kNN probe"),
    O("knn_metric", str, "cosine", group=PROBE, per_protocol=True, late=True, choices=("cosine", "euclidean"),
      help="kNN distance (euclidean: on raw features, as MedMNIST+)"),
    O("knn_vote", str, "shares", group=PROBE, per_protocol=True, late=True, choices=("shares", "majority"),
      help="kNN scores: vote shares per class, or the one-hot majority class (MedMNIST+; AUC degenerates)"),
    O("prompts", str, "", group=PROBE, per_protocol=True, late=True, metavar="FILE.yaml",
      help="--head zeroshot / --init zeroshot: class names and templates (default: the dataset's own set, "
           "bench ls prompts DATASET; own data: its class names with generic templates); the set's hash is in "
           "the run id"),
    O("head_epochs", int, 100, group=PROBE, per_protocol=True, low=1, help="epochs of the linear head grid"),
    O("head_batch_size", int, 256, group=PROBE, per_protocol=True, low=1),
    # -- fine-tuning and trained heads ------------------------------------------------------------
    O("epochs", int, 30, group=TRAINED, per_protocol=True, low=1),
    O("lr", float, 1e-4, group=TRAINED, per_protocol=True, above=0),
    O("weight_decay", float, 1e-5, group=TRAINED, per_protocol=True, low=0),
    O("batch_size", int, 64, group=TRAINED, per_protocol=True, low=1),
    O("warmup", int, 1, group=TRAINED, per_protocol=True, low=0, help="linear warm-up epochs"),
    O("schedule", str, "cosine", group=TRAINED, per_protocol=True,
      choices=("cosine", "cosine-epoch", "constant", "step"),
      help="lr after warm-up: cosine per step; cosine-epoch (one value per epoch, one epoch behind, as "
           "timm's CosineLRScheduler stepped after each epoch in MedMNIST+); constant; step (MedMNIST v2's "
           "x0.1 at 50% and 75%)"),
    O("patience", int, 10, group=TRAINED, per_protocol=True, low=0, help="early stopping patience in epochs (0: off)"),
    O("grad_clip", float, 1.0, group=TRAINED, per_protocol=True, low=0, help="gradient norm clip (0: off)"),
    O("decay_scope", str, "weights", group=TRAINED, per_protocol=True, late=True, choices=("weights", "all"),
      help="which parameters weight decay applies to: weights (not norms, biases, tokens, position "
           "embeddings) or all (AdamW(model.parameters()), as MedMNIST+)"),
    O("frozen_mode", str, "eval", group=TRAINED, per_protocol=True, late=True, choices=("eval", "train"),
      help="the frozen blocks while training: eval (BatchNorm statistics fixed, no dropout; lets the "
           "frozen prefix be cached) or train (statistics adapt, dropout on: MedMNIST+'s model.train())"),
    O("layer_decay", float, 1.0, group=TRAINED, per_protocol=True, above=0, high=1,
      help="layer-wise lr decay (1.0 = off)"),
    O("lora_rank", int, 8, group=TRAINED, per_protocol=True, late=True, low=1,
      help="--adapt lora: rank r of each low-rank update"),
    O("lora_alpha", float, 16.0, group=TRAINED, per_protocol=True, late=True, above=0,
      help="--adapt lora: scale alpha (the update is scaled by alpha / r)"),
    O("lora_dropout", float, 0.0, group=TRAINED, per_protocol=True, late=True, low=0, high=0.9,
      help="--adapt lora: dropout on the LoRA branch's input"),
    O("augment", str, "none", group=TRAINED, per_protocol=True, choices=("none", "light", "paper", "auto", "huix"),
      help="augmentation on the device (none lets the frozen prefix be cached)"),
    O("balance", str, "none", group=TRAINED, per_protocol=True, choices=("none", "weighted-loss", "sampler"),
      help="class imbalance handling"),
    O("head_arch", str, "deit_small", group=TRAINED, per_protocol=True,
      choices=("deit_tiny", "deit_small", "deit_base"), help="--head deit: the DeiT the head starts from"),
    O("head_depth", int, 2, group=TRAINED, per_protocol=True, late=True, low=1, high=12,
      help="--head deit: how many of the DeiT's blocks the head keeps (12: the full DeiT, as the paper)"),
    O("head_tokens", str, "all", group=TRAINED, per_protocol=True, late=True,
      choices=("all", "patches", "patches-prenorm"),
      help="--head deit: backbone tokens it reads: all after the final norm, patch tokens only, or patch "
           "tokens before the final norm (the paper's DINOv2 path; feature maps are the same either way)"),
    # -- your own data: read by the image sources (bench.datasets.images), handed over whole as
    # LoadOptions.data; all late, so runs on MedMNIST keep their ids ---------------------------------
    O("path_col", str, "", group=DATA, late=True,
      help="csv: column of image paths, relative to the CSV's folder (default: path, image, file or filename)"),
    O("label_col", str, "", group=DATA, late=True,
      help="csv: label column, or several comma-separated 0/1 columns for multi-label (default: label)"),
    O("split_col", str, "", group=DATA, late=True,
      help="csv: column of given splits train|val|test (default: split, if present)"),
    O("group_col", str, "", group=DATA, late=True,
      help="csv: patient/lesion column; a group never spans two splits (default: none)"),
    O("task", str, "auto", group=DATA, late=True,
      choices=("auto", "binary", "multi-class", "ordinal", "multi-label"),
      help="task of an own dataset (auto: 2 classes binary, more multi-class, several label columns multi-label)"),
    O("modality", str, "", group=DATA, late=True,
      help="what the images show, e.g. 'chest x-ray' (--augment auto's policy; default: the source's)"),
    O("uncertain", str, "ones", group=DATA, late=True, choices=("ones", "zeros", "ignore"),
      help="multi-label -1 (uncertain) labels, e.g. CheXpert's: as 1, as 0, or unknown (left out of losses and metrics)"),
    O("split_fractions", str, "0.7,0.1,0.2", group=DATA, late=True, metavar="TRAIN,VAL,TEST",
      help="fractions of the seeded, stratified, grouped split where no split is given"),
    O("split_seed", int, 0, group=DATA, late=True, low=0, help="seed of that split"),
    # -- where and how ------------------------------------------------------------------------------
    O("results_dir", Path, Path("results"), group=WHERE, scope="exec"),
    O("data_root", Path, None, group=WHERE, scope="exec",
      help="folder of dataset files (default: medmnist's ~/.medmnist or $MEDMNIST_ROOT)"),
    O("cache_dir", Path, None, group=WHERE, scope="exec",
      help="feature cache (default $BENCH_CACHE_DIR or ~/.cache/medfm-bench)"),
    O("device", str, "auto", group=WHERE, scope="exec", pattern=r"auto|cpu|cuda|cuda:\d+|mps",
      metavar="auto|cpu|cuda|cuda:N|mps",
      help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N, or mps (Apple GPU; only when asked)"),
    O("channels_last", bool, False, group=WHERE, scope="exec",
      help="model and input images in channels-last memory (faster convolutions on recent GPUs); not in "
           "the run id; in the feature-cache key when on"),
    O("compile", bool, False, group=WHERE, scope="exec",
      help="torch.compile the frozen part (probe backbone, frozen prefix); where compiling fails, one warning "
           "and eager mode; not in the run id; in the feature-cache key when on"),
    O("skip_md5", bool, False, group=WHERE, scope="exec", help="do not check dataset files against their MD5"),
    O("force", bool, False, group=WHERE, scope="exec", sweepable=False, help="rerun even if the result exists"),
    O("extract_batch_size", int, 128, group=WHERE, scope="exec", low=1, help="batch of the frozen pass"),
    O("save_model", bool, False, group=WHERE, scope="exec", help="save trained blocks and head (safetensors)"),
    O("checkpoint_every", float, 300.0, group=WHERE, scope="exec", low=0, metavar="SECONDS",
      help="fine-tuning: save the training state (resumed after a kill) at the end of the first epoch that ends "
           "this long after the last save, and when training ends; the best epoch's weights stay in memory "
           "(0: no checkpoints)"),
    O("decode_workers", int, 0, group=WHERE, scope="exec", low=0, metavar="N",
      help="threads (processes for DICOM) that decode images of your own data (folder:, csv:, DICOM) once per "
           "dataset and fingerprint them (0: the cores this run may use: all, or in a sweep with --workers W, cores / W); "
           "never more than that share"),
    O("quiet", bool, False, group=WHERE, scope="exec", short="-q", help="no progress output"),
    O("subgroups", str, "", group=WHERE, scope="exec", metavar="COL[:EDGES][,COL...]", pattern=SUBGROUPS,
      help="per-image attributes to audit by (csv: columns; DICOM PatientSex, PatientAge, Manufacturer; CheXpert "
           "Sex, Age; a numeric column's bins as COL:EDGE,EDGE,...): bench run and sweep check the columns and "
           "record them with the run, never in its id; bench report and results export join them through the "
           "saved image ids (docs/auditing.md)"),
    O("log", str, None, group=WHERE, scope="exec", multiple=True, choices=("tensorboard", "mlflow", "wandb"),
      help="also track the run in this tracker, after its result is written (repeatable; a tracker that fails "
           "is one warning, never a failed run; docs/tracking.md)"),
    O("log_group", str, None, group=WHERE, scope="exec", metavar="NAME",
      help="--log: the group of tracked runs (MLflow experiment, W&B group, TensorBoard folder; default: "
           "bench run: medfm-bench, bench sweep: the YAML's name: or file name)"),
)
del O

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
DATA_OPTIONS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.group == DATA)  # -> LoadOptions.data


def get(name: str) -> Option:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UserError(f"unknown option {name!r}; {did_you_mean(name, BY_NAME)}") from None


def choices(name: str) -> tuple[str, ...]:
    """The static choices of an option: the one place they are written."""
    c = BY_NAME[name].choices
    assert c is not None, name
    return c


@lru_cache(maxsize=None)  # OPTIONS is fixed; resolving every point of a sweep asks this
def names(scope: str | None = None, *, per_protocol: bool | None = None) -> tuple[str, ...]:
    return tuple(o.name for o in OPTIONS if (scope is None or o.scope == scope)
                 and (per_protocol is None or o.per_protocol == per_protocol))


def defaults(scope: str) -> dict[str, Any]:
    return {o.name: o.default for o in OPTIONS if o.scope == scope}


def _dynamic_help(name: str) -> str:
    """Choices that live in a registry (the heads every registered protocol serves)."""
    if name != "head":
        return ""
    return f"; {' | '.join(heads(plugins=False))}, or a plugin's (bench ls protocols)"


def add_arguments(parser: argparse.ArgumentParser, *, many: bool = False, only: tuple[str, ...] | None = None) -> None:
    """Add every option as a flag, grouped. ``many``: each run option takes one or more values and
    nothing has a default (a sweep: several values make a grid axis, unset means "the YAML's").
    ``only``: just these options (e.g. the folders and device `bench explain` needs)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in OPTIONS:
        if (many and not o.sweepable) or (only is not None and o.name not in only):
            continue
        g = groups.get(o.group) or groups.setdefault(o.group, parser.add_argument_group(o.group))
        flags = [o.flag] + ([o.short] if o.short else [])
        text = o.help_text() + _dynamic_help(o.name)
        text = text.replace("%", "%%")  # argparse formats help with %
        if o.multiple:  # repeated, in `bench run` and `bench sweep` alike
            g.add_argument(*flags, dest=o.name, action="append", type=o.type, default=None,
                           metavar=o.metavar, help=text)
        elif o.type is bool:
            if many:
                g.add_argument(*flags, dest=o.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                g.add_argument(*flags, dest=o.name, action="store_true", help=text)
        elif many and o.scope == "run":
            g.add_argument(*flags, dest=o.name, nargs="+", type=o.type, default=None,
                           metavar=o.metavar or o.name.upper(), help=text)
        else:  # no argparse default: "not given" must stay visible, so recipes and YAML can fill it
            g.add_argument(*flags, dest=o.name, type=o.type, default=None,
                           required=o.required and not many, metavar=o.metavar, help=text)
