"""MedMNIST+ 2D: files, checks and uint8 arrays, all driven by ``medmnist.INFO``.

Images stay uint8 in host memory. Files whose arrays are too big to hold (the 224 px releases run
to tens of GB) are extracted once from the .npz into plain .npy files and memory-mapped.
"""
from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..env import setting
from ..errors import UserError, did_you_mean
from .base import SPLITS, Dataset, DatasetSource, LoadOptions, Split

SIZES = (28, 64, 128, 224)
# arrays larger than this (bytes) are memory-mapped instead of read into memory
MMAP_THRESHOLD = setting("BENCH_MMAP_THRESHOLD")

# what each image shows: --augment auto picks its policy from this (bench.augment.MODALITY_POLICY)
MODALITY = {
    "pathmnist": "pathology", "dermamnist": "dermatoscopy", "bloodmnist": "blood smear microscopy",
    "tissuemnist": "kidney cortex microscopy", "chestmnist": "chest x-ray", "pneumoniamnist": "chest x-ray",
    "organamnist": "abdominal ct", "organcmnist": "abdominal ct", "organsmnist": "abdominal ct",
    "retinamnist": "fundus photography", "octmnist": "retinal oct", "breastmnist": "breast ultrasound",
}


def _info() -> dict:
    from medmnist import INFO

    return INFO


def flags() -> list[str]:
    """The 2D MedMNIST flags, in medmnist's order (3D volumes are out of scope)."""
    return [f for f, i in _info().items() if not f.endswith("3d")]


def info(flag: str) -> dict:
    if flag not in flags():
        raise UserError(f"unknown dataset {flag!r}; {did_you_mean(flag, flags())}")
    return _info()[flag]


def check_size(size: int) -> int:
    if size not in SIZES:
        raise UserError(f"unknown size {size}; MedMNIST+ sizes are {', '.join(map(str, SIZES))}")
    return size


def size_suffix(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def file_name(flag: str, size: int) -> str:
    return f"{flag}{size_suffix(size)}.npz"


def expected_md5(flag: str, size: int) -> str:
    return info(flag)[f"MD5{size_suffix(size)}"]


def default_root() -> Path:
    return Path(os.environ.get("MEDMNIST_ROOT") or Path.home() / ".medmnist")


def md5sum(path: Path) -> str:
    from backbones.hub import file_digest

    return file_digest(path, "md5")


# the small real file shipped as package data (bench/samples/medmnist/README.md): a fresh machine runs
SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "medmnist"
_SHIPPED: dict[str, Path | None] = {}
_TOLD: set[Path] = set()


def _joined(name: str, md5: str) -> Path | None:
    """A file shipped in parts (the repository keeps every tracked file under 2 MB), joined into the
    cache folder (package data may be read-only), rejoined when the cached copy's MD5 is wrong."""
    from bench.env import default_cache_dir
    from bench.fsio import atomic_write_bytes

    parts = sorted(SAMPLES.glob(name + ".part*of*"))
    if not parts:
        return None
    out = default_cache_dir() / "samples" / name
    if not (out.is_file() and md5sum(out) == md5):
        atomic_write_bytes(out, b"".join(p.read_bytes() for p in parts), "shipped sample file")
    return out


def ships(flag: str, size: int) -> bool:
    """Is a copy of the file shipped with the package (whole or in parts)? Not checked: see shipped."""
    name = file_name(flag, size)
    return (SAMPLES / name).is_file() or any(SAMPLES.glob(name + ".part*of*"))


def shipped(flag: str, size: int) -> Path | None:
    """The shipped copy of a file, when there is one and its MD5 is the published one."""
    name, md5 = file_name(flag, size), expected_md5(flag, size)
    if name not in _SHIPPED:
        path = SAMPLES / name
        if not path.is_file():
            path = _joined(name, md5)
        _SHIPPED[name] = path if path is not None and path.is_file() and md5sum(path) == md5 else None
    return _SHIPPED[name]


def shipped_serves(root: Path | None) -> bool:
    """Does the shipped copy stand in for a missing file? Only for the default data root (a data
    root the user named must hold the file: a typo there is an error, not a silent substitute) and
    for the samples folder itself (where the copy is the file the user named)."""
    return root is None or Path(root).resolve() == SAMPLES.resolve()


def locate(flag: str, size: int, root: Path, download: bool = True, *, explicit: bool = False,
           quiet: bool = False) -> Path:
    """Path of the dataset file: in the data root; else, for the default root, the copy shipped in
    bench/samples/medmnist (its MD5 checked); else downloaded the way medmnist does. ``explicit``:
    the user named ``root`` (--data-root)."""
    path = Path(root) / file_name(flag, size)
    if path.exists():
        return path
    fallback = shipped(flag, size) if shipped_serves(root if explicit else None) else None
    if explicit and fallback is None and ships(flag, size) and not path.exists():
        raise UserError(f"dataset file {path.name} is not in {root} (the --data-root given); put it there, "
                        f"or leave --data-root out to use the default folder, where the copy shipped with "
                        f"medfm-bench stands in")
    if fallback is not None:
        if fallback not in _TOLD and not quiet and not explicit:  # once per process; --quiet: never
            _TOLD.add(fallback)
            print(f"bench: {path.name} is not in {root}; using the copy shipped with medfm-bench "
                  f"({fallback}, md5 checked)", file=sys.stderr, flush=True)
        return fallback
    url = info(flag)[f"url{size_suffix(size)}"]
    howto = (f"dataset file {path.name} (md5 {expected_md5(flag, size)}) is not in {root}; "
             f"download it from {url} into that folder, or pass --data-root")
    if not download:
        raise UserError(howto)
    from backbones.hub import host_reachable

    if not host_reachable(urlparse(url).hostname or ""):
        raise UserError(howto + f" ({urlparse(url).hostname} is unreachable)")
    try:
        from torchvision.datasets.utils import download_url  # what medmnist itself calls

        Path(root).mkdir(parents=True, exist_ok=True)
        download_url(url=url, root=str(root), filename=path.name, md5=expected_md5(flag, size))
    except Exception as e:
        raise UserError(howto + f" (download failed: {str(e).splitlines()[0][:160]})") from e
    return path


def load(flag: str, size: int, root: Path, *, check_md5: bool = True, limit: int | None = None,
         download: bool = True, cache_dir: Path | None = None, explicit: bool = False, quiet: bool = False) -> Dataset:
    meta = info(flag)
    check_size(size)
    path = locate(flag, size, root, download, explicit=explicit, quiet=quiet)
    md5 = md5sum(path)
    if check_md5 and md5 != expected_md5(flag, size):
        raise UserError(f"{path} has md5 {md5}, expected {expected_md5(flag, size)} (medmnist INFO); "
                        f"re-download it, or pass --skip-md5 for a file you made yourself")
    splits = {}
    for split in SPLITS:
        images = _read(path, f"{split}_images", md5, cache_dir)
        labels = np.asarray(_read(path, f"{split}_labels", md5, cache_dir))
        _validate(path, split, images, labels, size, meta)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        splits[split] = Split(images, labels.astype(np.int64))
    return Dataset(flag, size, meta["task"], meta["label"], meta["n_channels"], splits, md5,
                   modality=MODALITY.get(flag, ""), source="medmnist", path=path)


def _validate(path: Path, split: str, images: np.ndarray, labels: np.ndarray, size: int, meta: dict) -> None:
    shape_ok = images.ndim in (3, 4) and images.shape[1:3] == (size, size) and \
        (images.ndim == 3 or images.shape[3] in (1, 3))
    if images.dtype != np.uint8 or not shape_ok:
        raise UserError(f"{path}: {split}_images is {images.dtype} {images.shape}, expected uint8 "
                        f"(N, {size}, {size}) or (N, {size}, {size}, 3)")
    channels = 1 if images.ndim == 3 else images.shape[3]
    if channels != meta["n_channels"]:  # an RGB array for a gray dataset (or the reverse) is another dataset
        want = f"gray (N, {size}, {size})" if meta["n_channels"] == 1 else f"RGB (N, {size}, {size}, 3)"
        raise UserError(f"{path}: {split}_images is {'gray' if channels == 1 else 'RGB'} {images.shape}, but "
                        f"{meta.get('python_class', path.stem)} is {want} (medmnist INFO n_channels "
                        f"{meta['n_channels']}); give this dataset's file")
    if labels.ndim != 2 or len(labels) != len(images):
        raise UserError(f"{path}: {split}_labels has shape {labels.shape}, expected ({len(images)}, L)")
    if len(images) == 0:
        raise UserError(f"{path}: the {split} split is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):  # never floor 0.5 to 0 silently
            raise UserError(f"{path}: {split}_labels are fractional ({labels.dtype}); expected integer class indices")
    n_out = len(meta["label"])
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    multilabel = meta["task"].startswith("multi-label")
    if lo < 0 or (multilabel and (labels.shape[1] != n_out or hi > 1)) or (not multilabel and
                                                                            (labels.shape[1] != 1 or hi >= n_out)):
        raise UserError(f"{path}: {split}_labels do not match the task ({meta['task']}, {n_out} labels; "
                        f"shape {labels.shape}, values {lo}..{hi})")


def _read(path: Path, key: str, md5: str, cache_dir: Path | None) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as zf:
            member = zf.getinfo(f"{key}.npy")
            if member.file_size <= MMAP_THRESHOLD or cache_dir is None:
                with zf.open(member) as f:
                    return np.lib.format.read_array(f)
        return _extract_memmap(path, key, md5, Path(cache_dir))
    except KeyError:
        raise UserError(f"{path} has no array {key!r}; a MedMNIST .npz holds "
                        f"train/val/test _images and _labels") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable MedMNIST .npz ({e})") from None


def _extract_memmap(path: Path, key: str, md5: str, cache_dir: Path) -> np.ndarray:
    """Stream one array out of the zip into an .npy once, then memory-map it read-only."""
    target = cache_dir / "npy" / md5 / f"{key}.npy"
    if target.exists():
        try:
            return np.load(target, mmap_mode="r")
        except (ValueError, OSError, EOFError):  # cut short (a killed copy, a full disk): extract again
            target.unlink(missing_ok=True)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape, fortran_order=fortran)
            flat = out.reshape(-1, order="F" if fortran else "C")
            assert np.shares_memory(flat, out)  # writes must land in the file, not in a copy
            step = 1 << 26
            for start in range(0, flat.size, step):
                n = min(step, flat.size - start)
                flat[start:start + n] = np.frombuffer(f.read(n * dtype.itemsize), dtype=dtype, count=n)
            out.flush()
            del out, flat
        os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


class MedMNISTSource(DatasetSource):
    """The 12 MedMNIST+ 2D datasets by flag (``--dataset breastmnist``), sizes 28/64/128/224."""

    name = "medmnist"
    description = "MedMNIST+ 2D (Yang et al. 2023; Doerrich et al. 2025): {flag}.npz / {flag}_{size}.npz"
    sizes = SIZES

    def names(self) -> list[str]:
        return flags()

    def owns(self, dataset: str) -> bool:
        return dataset in flags() or dataset.startswith("medmnist:")

    @staticmethod
    def _flag(dataset: str) -> str:
        return dataset.removeprefix("medmnist:")

    def check(self, dataset: str, size: int) -> None:
        info(self._flag(dataset))
        check_size(size)

    def load(self, dataset: str, size: int, opts: LoadOptions) -> Dataset:
        return load(self._flag(dataset), size, Path(opts.root or default_root()), check_md5=opts.check_md5,
                    limit=opts.limit, download=opts.download, cache_dir=opts.cache_dir,
                    explicit=opts.root is not None, quiet=opts.quiet)

    def n_classes(self, dataset: str) -> int:
        return len(info(self._flag(dataset))["label"])

    def n_channels(self, dataset: str) -> int:
        return int(info(self._flag(dataset))["n_channels"])

    def n_samples(self, dataset: str, size: int) -> dict[str, int]:
        return dict(info(self._flag(dataset))["n_samples"])

    def _path(self, dataset: str, size: int, opts: LoadOptions) -> Path:
        path = Path(opts.root or default_root()) / file_name(self._flag(dataset), size)
        if path.exists() or not shipped_serves(opts.root):
            return path
        return shipped(self._flag(dataset), size) or path

    def expected_fingerprint(self, dataset: str, size: int, opts: LoadOptions) -> str | None:
        path = self._path(dataset, size, opts)
        if not path.exists():
            return None
        # with the check on, a run refuses any other file, so the published MD5 is the answer
        return expected_md5(self._flag(dataset), size) if opts.check_md5 else md5sum(path)

    def identity(self, dataset: str, size: int, opts: LoadOptions) -> str:
        # the published file (MD5 checked at load, or equal to it) needs no fingerprint in the id
        got = self.expected_fingerprint(dataset, size, opts)
        return "" if got in (None, expected_md5(self._flag(dataset), size)) else got

    def missing(self, dataset: str, size: int, opts: LoadOptions) -> list[str]:
        path = self._path(dataset, size, opts)
        return [] if path.exists() else [path.name]

    def prefetch(self, dataset: str, size: int, opts: LoadOptions) -> None:
        from filelock import FileLock

        path = self._path(dataset, size, opts)
        if path.exists():
            return
        root = path.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(root / f".{path.name}.lock"))
            lock.acquire()
        except OSError:  # read-only data root: locate explains what to download where
            locate(self._flag(dataset), size, root, download=True)
            return
        try:
            locate(self._flag(dataset), size, root, download=True)
        finally:
            lock.release()

    def modality(self, dataset: str) -> str:
        return MODALITY.get(self._flag(dataset), "")

    def list_rows(self, root: Path | None) -> list[list[str]]:
        serves = shipped_serves(root)  # a --data-root the user names gets no stand-in
        root = Path(root or default_root())
        rows = []
        for flag in flags():
            i = info(flag)
            n = i["n_samples"]
            local = [str(s) for s in SIZES if (root / file_name(flag, s)).exists()]
            local += [f"{s} (shipped)" for s in SIZES if serves and str(s) not in local and ships(flag, s)]
            rows.append([flag, i["task"], str(len(i["label"])), str(i["n_channels"]), str(n["train"]),
                         str(n["val"]), str(n["test"]), ",".join(local) or "-", f"medmnist ({root})"])
        return rows


SOURCE = MedMNISTSource()
