"""What a run's test split is shifted by, cell by cell, and the shifted images of each cell.

``medmnistc`` (the 12 MedMNIST+ 2D datasets): every corruption of the dataset at severities 1-5,
computed by the port in bench.shift.medmnistc on the dataset's 224-px test split (as the package
does), then resized to the run's size with ``resize_images`` (Pillow bicubic, anti-aliased).
``generic`` (own data): the corruption set of the images' modality (bench.shift.generic), on the
test images taken to 224 px and back. Runs below 224 px get a ``resize-only`` cell too: the clean
images through the same resizes, so the corruption's effect can be told from the resizes'.
``dataset`` (``--test-dataset``): another dataset's test split at the run's size, when its label
space is the run's.

Shifted images are cached (``<cache>/shift/features/<key>.npy``, checked like feature entries) and
keyed by the source images, the corruption code, the cell and the run's size and limit: every run
on a dataset (models, protocols, seeds) corrupts it once.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import UserError, did_you_mean
from .files import RESIZE_ONLY, Cell
from .scorer import Scorer

Produce = Callable[[list[Cell]], Iterator[tuple[Cell, np.ndarray, str]]]


@dataclass
class Shift:
    """The cells one kind of shift makes of a run's test split, and how to get their images."""

    kind: str                     # medmnistc | generic | dataset
    cells: list[Cell]
    y_true: np.ndarray            # test labels of every cell (N,) or (N, L)
    record: dict                  # provenance: what shifted the images
    # missing cells -> (cell, uint8 images at the run's size, their identity), in cell order
    produce: Produce = field(repr=False, default=None)
    timings: dict = field(default_factory=dict)


def code_digest() -> str:
    """A digest of the corruption code (bench/shift/*.py): cached corrupted images and finished cells
    made by other code are not reused."""
    h = hashlib.sha256()
    folder = Path(__file__).resolve().parents[1] / "shift"
    for p in sorted(folder.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# -- which cells (from the config alone: nothing is read) -------------------------------------------------

def corruption_kind(cfg) -> str:
    from ..shift import medmnistc as C

    return "medmnistc" if cfg.dataset in C.datasets() else "generic"


def modality_of(cfg, meta: dict, given: str | None) -> str:
    """The modality that picks own data's generic set: --modality of bench robust, else the run's."""
    got = given or getattr(cfg, "modality", "") or ((meta.get("dataset") or {}).get("modality") or "")
    if not got:
        from ..shift.generic import GENERIC

        raise UserError(f"run {cfg.run_id}: {cfg.dataset} records no modality, which picks its generic corruption set; "
                        f"pass --modality (one of {', '.join(GENERIC)})")
    return got


def corruption_cells(cfg, meta: dict, corruptions: list[str] | None = None, modality: str | None = None
                     ) -> list[Cell]:
    """Every corruption of the run's dataset (MedMNIST-C's set, or own data's generic one) at severities
    1-5 (``corruptions``: only these, in the set's order), and below 224 px the resize-only cell first."""
    from ..shift import medmnistc as C
    from ..shift.generic import generic_corruptions

    kind = corruption_kind(cfg)
    names = C.corruptions(cfg.dataset) if kind == "medmnistc" else generic_corruptions(modality_of(cfg, meta, modality))
    if corruptions:
        unknown = [c for c in corruptions if c not in names]
        if unknown:
            raise UserError(f"--corruptions: {cfg.dataset} has no {kind} corruption {unknown[0]!r}; "
                            f"{did_you_mean(unknown[0], names)}")
        names = [c for c in names if c in corruptions]  # the set's order, whatever order was given
    cells = [Cell(kind, c, s) for c in names for s in C.SEVERITIES]
    return ([Cell(kind, RESIZE_ONLY, 0)] if cfg.size != C.SIZE else []) + cells


def dataset_cells(cfg, other: str, run_id: str = "") -> list[Cell]:
    if other == cfg.dataset:
        raise UserError(f"--test-dataset {other} is the dataset run {run_id or cfg.run_id} was tested on; name another")
    return [Cell("dataset", other, 0)]


# -- the images of the cells --------------------------------------------------------------------------------

def corruption_shift(scorer: Scorer, cells: list[Cell], modality: str | None = None) -> Shift:
    """MedMNIST-C's corruptions (or own data's generic set) of the run's test split, for ``cells``."""
    from ..shift import medmnistc as C
    from ..shift import generic as G

    cfg, ctx = scorer.cfg, scorer.ctx
    kind = cells[0].shift
    names = list(dict.fromkeys(c.corruption for c in cells if c.corruption != RESIZE_ONLY))
    y_true = scorer.dataset.targets("test")
    digest = code_digest()
    if kind == "medmnistc":
        source = _source_224(scorer)
        src = np.asarray(source.splits["test"].images)
        record = {"kind": kind, "package": C.PACKAGE, "seed": C.SEED, "code": digest, "corruptions": names,
                  "all_corruptions": names == C.corruptions(cfg.dataset), "source_size": C.SIZE,
                  "source_fingerprint": source.fingerprint, "size": cfg.size, "limit": cfg.limit,
                  "resize": "none" if cfg.size == C.SIZE else f"{C.SIZE} px -> {cfg.size} px, Pillow BICUBIC",
                  # the package draws its random numbers over the whole split: a --limit run's are others
                  "exact": cfg.limit is None}

        def stream(todo):
            for name, s, out in C.iter_corrupted(src, cfg.dataset, todo):
                yield name, s, C.resize_images(out, cfg.size) if cfg.size != C.SIZE else out

        def resize_only() -> np.ndarray:
            return C.resize_images(src, cfg.size)
    else:
        modality = modality_of(cfg, scorer.meta, modality)
        src = np.asarray(scorer.dataset.splits["test"].images)
        record = {"kind": kind, "modality": modality, "borrowed_from": G.generic_reference(modality),
                  "code": digest, "seed": C.SEED, "corruptions": names,
                  "all_corruptions": names == G.generic_corruptions(modality), "source_fingerprint":
                  scorer.dataset.fingerprint, "size": cfg.size, "limit": cfg.limit,
                  "resize": "none" if cfg.size == C.SIZE else f"{cfg.size} px -> {C.SIZE} px -> {cfg.size} px, "
                                                              f"Pillow BICUBIC"}

        def stream(todo):
            return G.iter_generic(src, modality, todo)

        def resize_only() -> np.ndarray:
            return G.roundtrip(src)
    shift = Shift(kind, cells, y_true, record)
    cache = _image_cache(ctx)
    base = {"what": "shifted-test-images", **{k: v for k, v in record.items() if k not in ("corruptions",
                                                                                          "all_corruptions")}}

    def produce(missing: list[Cell]) -> Iterator[tuple[Cell, np.ndarray, str]]:
        parts = {c: {**base, "corruption": c.corruption, "severity": c.severity} for c in missing}
        cached = {c: cache.read(parts[c], rows=len(y_true)) for c in missing}
        todo = [(c.corruption, c.severity) for c in missing if cached[c] is None and c.corruption != RESIZE_ONLY]
        corrupted = stream(todo) if todo else iter(())
        for cell in missing:
            imgs = cached[cell]
            if imgs is None:
                t0 = time.perf_counter()
                if cell.corruption == RESIZE_ONLY:
                    imgs = resize_only()
                else:
                    name, severity, imgs = next(corrupted)
                    assert (name, severity) == (cell.corruption, cell.severity), (name, severity, cell)
                shift.timings["corrupt_s"] = shift.timings.get("corrupt_s", 0.0) + time.perf_counter() - t0
                imgs, _ = cache.get_or_compute(parts[cell], lambda imgs=imgs: imgs, rows=len(y_true))
            yield cell, np.asarray(imgs), f"shift:{cache.key(parts[cell])}"

    shift.produce = produce
    return shift


def _source_224(scorer: Scorer):
    """The run's dataset at 224 px (its own data when the run is at 224), with the run's test labels."""
    from ..datasets import load, load_options
    from ..shift import medmnistc as C

    cfg, mine = scorer.cfg, scorer.dataset
    if cfg.size == C.SIZE:
        return mine
    try:
        source = load(cfg.dataset, C.SIZE, load_options(cfg, scorer.ctx.opts)).validate()
    except UserError as e:
        raise UserError(f"MedMNIST-C corrupts the {C.SIZE}-px images, so run {scorer.run_id} ({cfg.size} px) needs "
                        f"{cfg.dataset} at {C.SIZE} px: {e}") from None
    y = mine.targets("test")
    if len(source.splits["test"]) != len(y) or not np.array_equal(source.targets("test"), y):
        raise UserError(f"{cfg.dataset}: the {C.SIZE}-px test split ({len(source.splits['test'])} images) does not "
                        f"have the labels of the {cfg.size}-px one the run was tested on ({len(y)} images); use the "
                        f"published files")
    return source


def dataset_shift(scorer: Scorer, other: str) -> Shift:
    """Another dataset's test split with the run's label space (``--test-dataset``)."""
    from ..datasets import load, load_options

    cfg, ctx = scorer.cfg, scorer.ctx
    mine = scorer.dataset
    ds = load(other, cfg.size, load_options(cfg.replace(dataset=other), ctx.opts)).validate()
    if ds.task != mine.task or _names(ds) != _names(mine):
        raise UserError(f"--test-dataset {other}: its label space ({_space(ds)}) is not that of run "
                        f"{scorer.run_id}'s dataset {cfg.dataset} ({_space(mine)}); a cross-dataset test needs the "
                        f"same task and classes")
    if getattr(ctx.model, "in_chans", 3) == 1 and ds.n_channels != 1:
        raise UserError(f"--test-dataset {other}: RGB images, but run {scorer.run_id}'s backbone takes the gray "
                        f"channel of {cfg.dataset} alone")
    cell = Cell("dataset", other, 0)
    record = {"kind": "dataset", "dataset": other, "fingerprint": ds.fingerprint, "size": cfg.size,
              "limit": cfg.limit, "n_test": len(ds.splits["test"]), "source": ds.source,
              "path": str(ds.path) if ds.path else None}
    shift = Shift("dataset", [cell], ds.targets("test"), record)

    def produce(missing: list[Cell]) -> Iterator[tuple[Cell, np.ndarray, str]]:
        for c in missing:
            yield c, np.asarray(ds.splits["test"].images), f"dataset:{ds.fingerprint}"

    shift.produce = produce
    return shift


def _names(ds) -> list[str]:
    return [str(ds.label_names.get(str(i), i)).strip().lower() for i in range(ds.n_outputs)]


def _space(ds) -> str:
    shown = ", ".join(_names(ds)[:6]) + (", ..." if ds.n_outputs > 6 else "")
    return f"{ds.task}, {ds.n_outputs} classes: {shown}"


def _image_cache(ctx):
    from ..cache import FeatureCache

    return FeatureCache(Path(ctx.cache.root) / "shift")
