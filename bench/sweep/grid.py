"""Sweep grids: a YAML file and/or flags -> one option dict per grid point (not validated yet).

A grid is *fixed* options (defaults every point gets) and *axes*. An axis is a list of partial
option dicts; the points are the cross product of all axes, each merged over the fixed options.
A plain axis such as ``seeds: [0, 1, 2]`` is ``[{seed: 0}, {seed: 1}, {seed: 2}]``; a list of
mappings such as ``protocols: [{head: linear}, {unfreeze: all}]`` pairs options instead of
crossing them. This module imports nothing heavy.
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import options
from ..errors import UserError, did_you_mean

# plural spellings accepted in YAML for the common axes
ALIASES = {"backbones": "backbone", "datasets": "dataset", "sizes": "size", "heads": "head",
           "seeds": "seed", "variants": "variant", "readouts": "readout", "input_sizes": "input_size"}
# RunOptions fields a sweep may set (force is left out: delete result files to redo a run)
EXEC_KEYS = tuple(o.name for o in options.OPTIONS if o.scope == "exec" and o.sweepable)
# settings of the sweep itself (YAML top level; flags win), declared like run options so a YAML
# value is typed and range-checked the same way as its flag
SWEEP_OPTIONS = {o.name: o for o in (
    options.Option("executor", str, "inline", choices=("inline", "local", "slurm"), scope="sweep"),
    options.Option("workers", int, None, low=1, scope="sweep"),
    options.Option("gpus", str, None, scope="sweep"),
    options.Option("threads", int, None, low=1, scope="sweep"),
    options.Option("retry_failed", bool, False, scope="sweep"),
    options.Option("shard", str, None, scope="sweep"),
)}
SWEEP_KEYS = tuple(SWEEP_OPTIONS) + ("slurm",)
SLURM_KEYS = ("cluster", "partition", "time", "gpus_per_task", "cpus_per_task", "mem", "array_parallelism",
              "tasks", "account", "qos", "constraint", "setup", "params", "max_requeue", "log_dir", "wait")
META_KEYS = ("name", "description")
# YAML keys holding lists of option mappings (paired options, not crossed)
PAIRED_AXES = ("protocols",)


def run_keys() -> tuple[str, ...]:
    return options.names("run")


def canonical(key: str) -> str:
    return ALIASES.get(key, key)


def coerce(key: str, value: Any) -> Any:
    """A YAML value to the type its flag would give (bench.options), range-checked."""
    opt = SWEEP_OPTIONS.get(key) or options.get(key)
    if opt.name == "gpus" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `gpus: 0` means GPU 0
    value = opt.coerce(value)
    if opt.scope != "run":  # run options are checked by resolve, with the grid point named
        opt.check(value)
    return value


@dataclass
class Axis:
    name: str
    items: list[dict]

    @property
    def keys(self) -> set[str]:
        return {k for item in self.items for k in item}


@dataclass
class Grid:
    fixed: dict = field(default_factory=dict)
    axes: list[Axis] = field(default_factory=list)
    execution: dict = field(default_factory=dict)
    sweep: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    source: str = "flags"
    # `grids:` in a file: a union of sub-grids (each with the file's options under its own), e.g.
    # models on only the datasets they claim; points are the parts' points, duplicates once
    parts: list["Grid"] = field(default_factory=list)

    def points(self) -> list[dict]:
        """Every grid point as an option dict (axes override fixed options)."""
        if self.parts:
            return _unique([p for part in self.parts for p in part.points()])
        self._check_overlap()
        out = []
        for combo in itertools.product(*(a.items for a in self.axes)):
            point = dict(self.fixed)
            for part in combo:
                point.update(part)
            out.append(point)
        return out

    def _check_overlap(self) -> None:
        seen: dict[str, str] = {}
        for axis in self.axes:
            for k in axis.keys:
                if k in seen:
                    raise UserError(f"{k} is set by two grid axes ({seen[k]} and {axis.name}); "
                                    f"list it in one of them")
                seen[k] = axis.name

    def set_option(self, key: str, values: list) -> None:
        """A flag for `key` replaces whatever the YAML said about it (fixed, axis or inside pairs)."""
        for part in self.parts:
            part.set_option(key, values)
        self.fixed.pop(key, None)
        self.axes = [a for a in self.axes if not (a.name == key)]
        for axis in self.axes:
            if key in axis.keys:
                items = [{k: v for k, v in item.items() if k != key} for item in axis.items]
                axis.items = _unique(items)
        if len(values) == 1:
            self.fixed[key] = values[0]
        else:
            self.axes.append(Axis(key, [{key: v} for v in _unique_values(values)]))


def _unique(items: list[dict]) -> list[dict]:
    out: list[dict] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _unique_values(values: list) -> list:
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _expand_special(key: str, value: Any) -> Any:
    # `datasets: all` and `sizes: all` spare typing the 12 flags / 4 sizes
    if value == "all" and key == "dataset":
        from ..datasets import all_names

        return all_names()
    if value == "all" and key == "size":
        from ..datasets.medmnist import SIZES

        return list(SIZES)
    return value


PRESENT = "present"  # `datasets: present`: every dataset known by name whose file is already here


def expand_present(points: list[dict], data_root: Path | None, skip_md5: bool = False) -> list[dict]:
    """Points with ``dataset: present`` -> one point per dataset of `datasets: all` whose file for
    the point's size is in the data root (or shipped with the package): what a sweep can run with
    no download; files added later join the next time. A point whose size none has is dropped."""
    from ..datasets import LoadOptions, all_names, source_for

    lo = LoadOptions(root=data_root, check_md5=not skip_md5, download=False)
    out: list[dict] = []
    for point in points:
        if point.get("dataset") != PRESENT:
            out.append(point)
            continue
        size = point.get("size", options.get("size").default)
        for name in all_names():
            src = source_for(name)
            if src.sizes is not None and size not in src.sizes:
                continue
            if not src.missing(name, size, lo) and src.expected_fingerprint(name, size, lo) is not None:
                out.append({**point, "dataset": name})
    return _unique(out)


def _axis(name: str, values: Any, keys: tuple[str, ...]) -> Axis:
    if not isinstance(values, list) or not values:
        raise UserError(f"{name}: expected a non-empty list, got {values!r}")
    key = canonical(name)
    items = []
    for v in values:
        if isinstance(v, dict):
            item = {}
            for k, x in v.items():
                ck = canonical(str(k))
                if ck not in keys:
                    raise UserError(f"{name}: unknown run option {k!r}; {did_you_mean(str(k), keys)}")
                item[ck] = coerce(ck, x)
            if key in keys and key not in item:
                raise UserError(f"{name}: entry {v!r} does not say which {key}")
            items.append(item)
        elif key in keys:
            items.append({key: coerce(key, v)})
        else:
            raise UserError(f"{name}: entries must be mappings of run options, e.g. {{head: linear}}; got {v!r}")
    return Axis(key, _unique(items))


def from_mapping(doc: dict, source: str = "<yaml>") -> Grid:
    """Read a sweep YAML document (already parsed)."""
    if not isinstance(doc, dict):
        raise UserError(f"{source}: a sweep file is a mapping of options (backbones:, datasets:, ...)")
    if "grids" in doc:
        return _union(doc, source)
    keys = run_keys()
    grid = Grid(source=source)

    def run_option(name: str, value: Any, where: str) -> None:
        key = canonical(name)
        value = _expand_special(key, value)
        if isinstance(value, list) or name in PAIRED_AXES:
            grid.axes.append(_axis(name, value, keys))
        elif isinstance(value, dict):
            raise UserError(f"{where}{name}: expected a value or a list, got a mapping")
        else:
            grid.fixed[key] = coerce(key, value)

    for name, value in doc.items():
        name = str(name)
        if name == "grid":
            if not isinstance(value, dict):
                raise UserError(f"{source}: grid: expected a mapping of option lists")
            for k, v in value.items():
                if canonical(str(k)) in keys or isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                    run_option(str(k), v, "grid: ")
                else:
                    raise UserError(f"grid: unknown run option {k!r}; {did_you_mean(str(k), keys)}")
        elif name == "fixed":
            if not isinstance(value, dict):
                raise UserError(f"{source}: fixed: expected a mapping of options")
            for k, v in value.items():
                k = canonical(str(k))
                if k in EXEC_KEYS:
                    grid.execution[k] = coerce(k, v)
                elif k in keys:
                    grid.fixed[k] = coerce(k, _expand_special(k, v))
                else:
                    raise UserError(f"fixed: unknown option {k!r}; {did_you_mean(k, keys + EXEC_KEYS)}")
        elif name in PAIRED_AXES or canonical(name) in keys:
            run_option(name, value, "")
        elif name in EXEC_KEYS:
            grid.execution[name] = coerce(name, value)
        elif name == "slurm":
            if not isinstance(value, dict):
                raise UserError(f"{source}: slurm: expected a mapping ({', '.join(SLURM_KEYS)})")
            for k in value:
                if k not in SLURM_KEYS:
                    raise UserError(f"slurm: unknown setting {k!r}; {did_you_mean(str(k), SLURM_KEYS)}")
            grid.slurm.update(value)
        elif name in SWEEP_OPTIONS:
            grid.sweep[name] = coerce(name, value)
        elif name in META_KEYS:
            pass
        else:
            known = keys + EXEC_KEYS + SWEEP_KEYS + META_KEYS + tuple(ALIASES) + PAIRED_AXES + ("grid", "fixed", "grids")
            raise UserError(f"{source}: unknown key {name!r}; {did_you_mean(name, known)}")
    return grid


def _union(doc: dict, source: str) -> Grid:
    """``grids: [{...}, {...}]``: one sub-grid per entry, each the file's run options with the
    entry's over them (an entry's ``fixed:`` is merged into the file's); execution, sweep and
    slurm settings stay at the top level."""
    subs = doc["grids"]
    if not isinstance(subs, list) or not subs or not all(isinstance(x, dict) for x in subs):
        raise UserError(f"{source}: grids: expected a non-empty list of mappings (backbones:, datasets:, ...)")
    base = {k: v for k, v in doc.items() if k != "grids"}
    grid = from_mapping(base, source)
    shared = {k: v for k, v in base.items() if k not in EXEC_KEYS + SWEEP_KEYS}
    for i, sub in enumerate(subs):
        for k in sub:
            if k in EXEC_KEYS + SWEEP_KEYS + ("grids",):
                raise UserError(f"{source}: grids[{i}]: {k!r} is a setting of the whole sweep; write it at the top level")
        merged = {k: v for k, v in shared.items() if canonical(str(k)) not in {canonical(str(x)) for x in sub}}
        merged.update(sub)
        if isinstance(shared.get("fixed"), dict) and isinstance(sub.get("fixed"), dict):
            merged["fixed"] = {**shared["fixed"], **sub["fixed"]}
        grid.parts.append(from_mapping(merged, f"{source} grids[{i}]"))
    return grid


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """A key written twice in one mapping is an error, not a silent last-one-wins."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load(path: Path) -> Grid:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(f"cannot read sweep file {path}: {e.strerror}") from None
    try:
        doc = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return from_mapping(doc or {}, str(path))


def from_args(args: argparse.Namespace) -> Grid:
    """The YAML file (if any) with every flag that was given applied over it."""
    grid = load(args.config) if getattr(args, "config", None) else Grid()
    for key in run_keys():
        values = getattr(args, key, None)
        if values is not None:
            if key == "dataset" and values == ["all"]:
                values = _expand_special("dataset", "all")
            grid.set_option(key, list(values))
    for key in EXEC_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            grid.execution[key] = value
    return grid


def describe(point: dict) -> str:
    """A short 'backbone=... dataset=...' for error messages."""
    return " ".join(f"{k}={v}" for k, v in point.items() if v is not None)
