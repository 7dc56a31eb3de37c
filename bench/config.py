"""One frozen dataclass per run. Every field is resolved (no "auto" left), and its canonical JSON
hashes to the run id, so the same experiment always lands in the same result file."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import UserError

HEADS = ("linear", "knn", "mlp", "deit")
PROBE_HEADS = ("linear", "knn")


@dataclass(frozen=True)
class RunConfig:
    # what is measured
    backbone: str
    dataset: str
    variant: str = ""
    weights: str = "default"          # default | random | path to a file
    weights_fingerprint: str = ""     # sha256 of a weights file, so a changed file is a new run
    readout: str = ""
    size: int = 28
    input_size: int = 0
    resize: str = "resize"
    gray: str = "repeat"
    head: str = "linear"
    unfreeze: str = "none"
    seed: int = 0
    limit: int | None = None
    select: str = "auc"
    # probe heads (None when the protocol does not use them)
    knn_k: int | None = None
    head_epochs: int | None = None
    head_batch_size: int | None = None
    # fine-tuning and trainable heads (None for probes on cached features)
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    warmup: int | None = None
    schedule: str | None = None
    patience: int | None = None
    grad_clip: float | None = None
    layer_decay: float | None = None
    augment: str | None = None
    balance: str | None = None
    head_arch: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def run_id(self) -> str:
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canon.encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9.]+", "_", self.backbone).strip("_")
        return f"{name}-{self.dataset}_{self.size}-{self.head}-{self.unfreeze}-s{self.seed}-{digest}"

    @property
    def is_probe(self) -> bool:
        """Linear/kNN on features of a fully frozen backbone: extraction cached, heads on top."""
        return self.head in PROBE_HEADS and self.unfreeze == "none"

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown run option(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **changes) -> "RunConfig":
        return replace(self, **changes)


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


@dataclass(frozen=True)
class RunOptions:
    """How a run executes; none of this changes its numbers, so none of it is in the run id."""

    results_dir: Path = Path("results")
    data_root: Path | None = None
    cache_dir: Path | None = None
    device: str = "auto"
    skip_md5: bool = False
    force: bool = False
    extract_batch_size: int = 128
    quiet: bool = False
    save_model: bool = False
