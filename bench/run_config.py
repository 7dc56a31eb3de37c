"""The two records of a run, both derived from the option table (bench.options).

``RunConfig``: frozen, every field resolved (no "auto" left, defaults written out); its canonical
JSON hashes to the run id, so the same experiment always lands in the same result file.
``RunOptions``: how a run executes; none of it changes the numbers, so none of it is in the id.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import field, fields, make_dataclass, replace
from functools import cached_property
from pathlib import PurePath
from typing import Any

from . import options
from .errors import UserError
from .protocol import protocol_for


class _RunConfigMethods:
    def to_dict(self) -> dict:
        # every field is a str, number, Path or None: a shallow copy is what asdict's deep one gives
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getstate__(self) -> dict:
        return self.to_dict()  # pickled without the memos below (run id, protocol)

    def id_dict(self) -> dict:
        """What the run id hashes: every field, except options added later while at their default
        or unused (None), so runs from before they existed keep their ids; a weights file counts by
        its content (the fingerprint), not by where it lies."""
        d = {k: v for k, v in self.to_dict().items() if not (k in _LATE and (v is None or v == _LATE[k]))}
        if self.weights_fingerprint and self.weights != "instance":
            d["weights"] = "file"
        if self.path_free_dataset:
            d["dataset"] = self.dataset_name
        return d

    @property
    def path_free_dataset(self) -> bool:
        """A SOURCE:PATH dataset whose source is at version 2 or later: the run id names it by its
        last path part (its content is in data_fingerprint), so moving the data keeps the id."""
        return ":" in self.dataset and f"dataset:{self.dataset.partition(':')[0]}=" in self.definitions

    @property
    def dataset_name(self) -> str:
        """The dataset as run ids and labels name it: SOURCE:NAME for path-free own data."""
        if not self.path_free_dataset:
            return self.dataset
        source, _, arg = self.dataset.partition(":")
        return f"{source}:{PurePath(arg.rstrip('/')).name or arg}"

    @cached_property  # a frozen config's id never changes; planning asks for it many times
    def run_id(self) -> str:
        canon = json.dumps(self.id_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canon.encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9.]+", "_", self.backbone).strip("_")
        data = re.sub(r"[^A-Za-z0-9.]+", "_", self.dataset_name).strip("_")
        adapt = f"-{self.adapt}" if self.adapt not in (None, "none") else ""  # e.g. "all-lora"
        return f"{name}-{data}_{self.size}-{self.head}-{self.unfreeze}{adapt}-s{self.seed}-{digest}"

    @property
    def protocol(self):
        """The protocol that runs this config (bench.protocol's registry); remembered per config
        until a registry changes (a protocol registered or removed, plugins read again)."""
        from .registry import generation

        memo = self.__dict__.get("_protocol")
        if memo is None or memo[0] != generation():
            memo = (generation(), protocol_for(self))
            self.__dict__["_protocol"] = memo  # a frozen dataclass: its __dict__ takes memos
        return memo[1]

    @property
    def is_probe(self) -> bool:
        """Heads on cached features of a fully frozen backbone (linear probe, kNN)."""
        return self.protocol.kind == "probe"

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown run option(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes: Any) -> "RunConfig":
        return replace(self, **changes)


# derived fields added after run ids were published: out of the id while empty
_LATE = {o.name: o.default for o in options.OPTIONS if o.late} | {"data_fingerprint": "", "definitions": ""}


def _run_fields() -> list[tuple]:
    out = []
    for o in options.OPTIONS:
        if o.scope != "run":
            continue
        typ = o.type if not o.per_protocol and o.default is not None else (o.type | None)
        if o.required:
            out.append((o.name, typ))
        else:
            out.append((o.name, typ, field(default=None if o.per_protocol else o.default)))
        if o.name == "weights":  # sha256 of a weights file, so a changed file is a new run
            out.append(("weights_fingerprint", str, field(default="")))
        if o.name == "dataset":  # "" for the published data; else its fingerprint (bench.resolve.bind_data)
            out.append(("data_fingerprint", str, field(default="")))
            # the definitions above version 1 this run computes with, e.g. "backbone:simplecnn@default=2"
            # (bench.resolve.definitions): "" while every one is at 1, so old ids stay as they were
            out.append(("definitions", str, field(default="")))
    # dataclasses want the required fields first
    return sorted(out, key=lambda f: len(f) == 3)


RunConfig = make_dataclass("RunConfig", _run_fields(), bases=(_RunConfigMethods,), frozen=True)
RunConfig.__doc__ = "Everything that changes a run's numbers; fields and defaults from bench.options."

RunOptions = make_dataclass(
    "RunOptions", [(o.name, o.type if o.default is not None else (o.type | None), field(default=o.default))
                   for o in options.OPTIONS if o.scope == "exec"], frozen=True)
RunOptions.__doc__ = "How a run executes; fields and defaults from bench.options (scope exec)."
RunConfig.__module__ = RunOptions.__module__ = __name__  # picklable by reference (sweep workers)


def make_run_options(**execution: Any) -> "RunOptions":
    """RunOptions from keyword options, each checked against its declaration (None: the default)."""
    kw = {k: options.get(k).check(v) for k, v in execution.items() if v is not None}
    return RunOptions(**kw)


def parse_unfreeze(value: str, num_blocks: int | None = None) -> int | None:
    """'none' -> 0, 'lastN' -> N, 'all' -> num_blocks (None when the count is not known yet)."""
    if value == "none":
        return 0
    if value == "all":
        return num_blocks
    m = re.fullmatch(r"last(\d+)", value)
    if not m or int(m.group(1)) < 1:
        raise UserError(f"malformed --unfreeze {value!r}; use none, lastN (N >= 1, e.g. last2) or all")
    n = int(m.group(1))
    if num_blocks is not None and n > num_blocks:
        raise UserError(f"--unfreeze {value}: the backbone has only {num_blocks} blocks; "
                        f"use last1..last{num_blocks} or all")
    return n


__all__ = ["RunConfig", "RunOptions", "make_run_options", "parse_unfreeze"]
