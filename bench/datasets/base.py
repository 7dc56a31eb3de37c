"""The dataset interface every source returns, and the source interface the registry holds.

A run reads only a :class:`Dataset`: uint8 images and integer labels per split, the task type,
label names, channels, modality and a fingerprint of the data (it keys the feature cache and is
recorded with every result). Where the images came from is the source's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3); may be a read-only memmap
    labels: np.ndarray  # int64 (N, L): L = 1 (class index) or the number of labels (multi-label)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Dataset:
    name: str                    # as given to --dataset
    size: int                    # image size of the stored files
    task: str                    # medmnist's task names: binary-class, multi-class, ordinal-regression,
    label_names: dict[str, str]  # multi-label, binary-class (the label index -> its name)
    n_channels: int
    splits: dict[str, Split]
    fingerprint: str             # digest of the data read (keys caches and provenance)
    modality: str = ""           # e.g. "chest x-ray": what --augment auto adapts to
    source: str = ""             # registry name of the source
    path: Path | None = None     # the file or folder read
    extra: dict = field(default_factory=dict)  # source-specific provenance
    # each image's id per split (own data: its path relative to the dataset root, as the manifest
    # names it); None or a split left out: "<split>/<index>", its position in the split (MedMNIST)
    ids: dict[str, list[str]] | None = None

    @property
    def n_outputs(self) -> int:
        """Width of the classifier: one logit per class (binary included) or per label."""
        return len(self.label_names)

    @property
    def multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    def validate(self) -> "Dataset":
        """Check what every protocol relies on, whatever the source: non-empty splits, uint8
        images, integer labels of the right shape and range (one line naming what is wrong)."""
        from ..errors import UserError
        from ..metrics import UNKNOWN

        where = f"dataset {self.name}" + (f" ({self.path})" if self.path else "")
        n_out = self.n_outputs
        if n_out < 2 and not self.multilabel:
            raise UserError(f"{where}: {n_out} class; classification needs at least 2")
        for split in SPLITS:
            if split not in self.splits:
                raise UserError(f"{where}: no {split} split; every dataset needs train, val and test")
            s = self.splits[split]
            if len(s) == 0:
                raise UserError(f"{where}: the {split} split is empty")
            if s.images.dtype != np.uint8:
                raise UserError(f"{where}: {split} images are {s.images.dtype}, expected uint8")
            channels = 1 if s.images.ndim == 3 else s.images.shape[-1] if s.images.ndim == 4 else 0
            if channels != self.n_channels:  # e.g. RGB arrays under a gray dataset's name
                want = "(N, H, W) or (N, H, W, 1)" if self.n_channels == 1 else f"(N, H, W, {self.n_channels})"
                raise UserError(f"{where}: {split} images have shape {tuple(s.images.shape)}, but the dataset has "
                                f"{self.n_channels} channel(s): expected {want}")
            y = s.labels
            want = n_out if self.multilabel else 1
            if y.ndim != 2 or y.shape != (len(s), want):
                raise UserError(f"{where}: {split} labels have shape {y.shape}, expected ({len(s)}, {want})")
            if not np.issubdtype(y.dtype, np.integer):
                raise UserError(f"{where}: {split} labels are {y.dtype}; expected integer class indices")
            lo, hi = int(y.min()), int(y.max())
            top = 1 if self.multilabel else n_out - 1
            bottom = UNKNOWN if self.multilabel else 0  # -1: an unknown label (--uncertain ignore)
            if lo < bottom or hi > top:
                raise UserError(f"{where}: {split} labels run from {lo} to {hi}; expected {bottom}..{top}"
                                + (" (0/1 per label, -1 unknown)" if self.multilabel else f" for {n_out} classes"))
        if len(np.unique(self.targets("train"), axis=0)) < 2:
            raise UserError(f"{where}: the train split has a single label value; nothing to learn")
        return self

    def image_ids(self, split: str) -> np.ndarray:
        """Each image's id in ``split``, in the split's order (what saved scores and exports name
        images by; bench.results)."""
        n = len(self.splits[split])
        given = (self.ids or {}).get(split)
        if given is not None and len(given) == n:
            return np.asarray(given, dtype=str)
        return np.array([f"{split}/{i}" for i in range(n)], dtype=str)

    def targets(self, split: str) -> np.ndarray:
        """Labels as the metrics want them: (N,) class indices, or (N, L) for multi-label."""
        labels = self.splits[split].labels
        return labels if self.multilabel else labels[:, 0]


@dataclass(frozen=True)
class LoadOptions:
    """What a source needs to find and check its files (from RunOptions)."""

    root: Path | None = None         # --data-root (None: the source's default)
    check_md5: bool = True
    limit: int | None = None
    cache_dir: Path | None = None    # for arrays too big to hold (memory-mapped copies)
    download: bool = True
    # the "your own data" options (bench.options.DATA_OPTIONS) as (name, value) pairs: hashable,
    # so planners can memoize on a LoadOptions
    data: tuple[tuple[str, object], ...] = ()
    splits_dir: Path | None = None   # where image sources save the split they drew (results/splits)
    quiet: bool = False              # no progress bar for a first decode
    workers: int = 0                 # --decode-workers: processes that decode and fingerprint images
                                     # (0: the run's share of the cores; bench.parallel)

    def get(self, name: str):
        """A data option's value (its declared default when not handed over)."""
        from ..options import get

        return dict(self.data).get(name, get(name).default)


class DatasetSource:
    """A family of datasets: MedMNIST's flags, an image folder, a CSV manifest...

    Subclasses set ``name`` and implement ``load``; the rest has defaults. A source may answer for
    fixed names (``names()``, e.g. the 12 MedMNIST 2D flags) and/or for ``NAME:ARG`` datasets (its
    own name as prefix, e.g. ``folder:/data/xray``)."""

    name: str = ""
    description: str = ""
    sizes: tuple[int, ...] | None = None   # allowed --size values (None: any)
    in_all: bool = True                    # are its names part of a sweep's `datasets: all`?
    # bumped when what its datasets' runs compute or how they are named changes: above 1 the
    # version enters the run id; from 2 on, a SOURCE:PATH dataset is named in the id by its last
    # path part and its content fingerprint, not by where it lies
    version: int = 1

    def names(self) -> list[str]:
        """Datasets this source provides by bare name (the `datasets: all` of a sweep)."""
        return []

    def owns(self, dataset: str) -> bool:
        return dataset in self.names() or dataset.startswith(f"{self.name}:")

    def check(self, dataset: str, size: int) -> None:
        """Validate a choice without reading data (bench run --dry-run, sweep planning)."""
        if self.sizes is not None and size not in self.sizes:
            raise _size_error(dataset, size, self.sizes)

    def load(self, dataset: str, size: int, opts: LoadOptions) -> Dataset:
        raise NotImplementedError

    def n_classes(self, dataset: str) -> int | None:
        """Classifier width without loading (dry runs count head parameters with it)."""
        return None

    def n_channels(self, dataset: str) -> int | None:
        """Image channels (1 gray, 3 RGB) without loading, where known (a backbone that takes the
        dataset's own channel count is built with it; None: the data is read to find out)."""
        return None

    def n_samples(self, dataset: str, size: int) -> dict[str, int] | None:
        """Images per split without loading (cost estimates), where known."""
        return None

    def expected_fingerprint(self, dataset: str, size: int, opts: LoadOptions) -> str | None:
        """The fingerprint a load would give, without loading (None: not known yet)."""
        return None

    def identity(self, dataset: str, size: int, opts: LoadOptions) -> str:
        """What tells this data apart in a run id: "" for a dataset's one published version (the
        name says it all), else the data's fingerprint, so a different file under the same name
        is a different run. Sources of the user's own data return their content fingerprint."""
        return self.expected_fingerprint(dataset, size, opts) or ""

    def attributes(self, dataset: str, opts: LoadOptions, ids: "set[str] | None" = None):
        """Per-image attributes for subgroup audits (bench.datasets.attributes.Attributes: values
        per column, images named by the ids of Dataset.image_ids), only of ``ids`` when given;
        None where the source has none (MedMNIST)."""
        return None

    def missing(self, dataset: str, size: int, opts: LoadOptions) -> list[str]:
        """Names of files a run would need that are not there yet (dry runs list them)."""
        return []

    def prefetch(self, dataset: str, size: int, opts: LoadOptions) -> None:
        """Download what is missing, once, before sweep workers race for it."""

    def modality(self, dataset: str) -> str:
        return ""

    def list_rows(self, root: Path | None) -> list[list[str]]:
        """Rows for `bench ls datasets`: name, task, classes, channels, train, val, test, local."""
        return []


def _size_error(dataset: str, size: int, sizes: tuple[int, ...]):
    from ..errors import UserError

    return UserError(f"unknown size {size} for {dataset}; its sizes are {', '.join(map(str, sizes))}")
