"""The feature cache: frozen outputs on disk, keyed by everything that changes them, each entry
checked when read.

An entry is ``features/<key>.npy`` plus ``<key>.json`` (the key's parts and what the array must
be: shape, dtype and a sha256 of its bytes; above 256 MiB a sha256 of 64 evenly spaced 1 MiB
blocks, so a multi-GB frozen prefix is not read whole on every hit). An entry that is truncated,
empty, of another shape or dtype, or fails its checksum is reported in one line and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock

from .fsio import disk_error, remove_stale, tmp_name

# bump when extraction code changes what it produces
CACHE_VERSION = 1
FULL_CHECKSUM_BYTES = 256 << 20
SAMPLE_BLOCKS, BLOCK = 64, 1 << 20


def checksum(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_CHECKSUM_BYTES:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
            return "sha256:" + h.hexdigest()
        for i in range(SAMPLE_BLOCKS):
            f.seek(i * (size - BLOCK) // (SAMPLE_BLOCKS - 1))
            h.update(f.read(BLOCK))
    return f"sha256-sampled{SAMPLE_BLOCKS}:" + h.hexdigest()


class CorruptEntry(ValueError):
    pass


def stage_checked(path: Path, arr: np.ndarray) -> tuple[Path, dict]:
    """Write ``arr`` as .npy under ``path``'s temporary name (fsynced) and return (that name, what
    a later read must find: shape, dtype, checksum). The caller records the second and renames."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        return tmp, {"shape": list(arr.shape), "dtype": str(arr.dtype), "checksum": checksum(tmp)}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checked(path: Path, arr: np.ndarray) -> dict:
    """``stage_checked`` and the rename into place; returns what to pass to ``load_checked``."""
    tmp, meta = stage_checked(path, arr)
    os.replace(tmp, path)
    return meta


def load_checked(path: Path, want: dict | None) -> np.ndarray:
    """Memory-map an .npy written by ``save_checked``; CorruptEntry when it is unreadable or not
    what ``want`` (its recorded shape, dtype, checksum) says."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise CorruptEntry(f"unreadable: {str(e).splitlines()[0][:80]}") from None
    if want is not None:
        if list(arr.shape) != want.get("shape") or str(arr.dtype) != want.get("dtype"):
            raise CorruptEntry(f"{arr.dtype} {list(arr.shape)}, written as {want.get('dtype')} {want.get('shape')}")
        if want.get("checksum") and checksum(path) != want["checksum"]:
            raise CorruptEntry("checksum mismatch")
    return arr


@dataclass
class FeatureCache:
    root: Path

    def key(self, parts: dict) -> str:
        blob = json.dumps({**parts, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.npy"

    def exists(self, parts: dict) -> bool:
        return self.path(self.key(parts)).exists()

    def get_or_compute(self, parts: dict, compute: Callable[[], np.ndarray], memory_budget: int | None = None,
                       rows: int | None = None) -> tuple[np.ndarray, bool]:
        """(features, hit). Concurrent workers asking for the same key compute it once. ``rows``:
        how many the entry must have (the split's images). Arrays larger than ``memory_budget``
        bytes come back memory-mapped from the cache file."""
        path = self.path(self.key(parts))
        if path.exists():
            try:
                return self._fit(self._read(path, rows), path, memory_budget), True
            except CorruptEntry as e:
                print(f"bench: cache entry {path.name} is unusable ({e}); rebuilding it", file=sys.stderr, flush=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            lock.acquire()
        except OSError as e:
            raise disk_error(e, "feature cache", self.root) from None
        try:
            if path.exists():  # another worker finished it while we waited (or it is the bad one)
                try:
                    return self._fit(self._read(path, rows), path, memory_budget), True
                except CorruptEntry:
                    path.unlink(missing_ok=True)
            remove_stale(path.parent, path.stem)  # we hold its lock: temporaries are a dead writer's
            feats = compute()
            self._write(path, parts, feats)
            return self._fit(feats, path, memory_budget), False
        finally:
            lock.release()

    def read(self, parts: dict, rows: int | None = None, memory_budget: int | None = None) -> np.ndarray | None:
        """The entry (memory-mapped above ``memory_budget`` bytes), or None when it is missing or
        unusable (reported in one line)."""
        path = self.path(self.key(parts))
        arr = self._checked(path, rows)
        return None if arr is None else self._fit(arr, path, memory_budget)

    def _checked(self, path: Path, rows: int | None) -> np.ndarray | None:
        """The entry memory-mapped and checked, or None when it is missing or unusable (said in one line)."""
        if not path.exists():
            return None
        try:
            return self._read(path, rows)
        except CorruptEntry as e:
            print(f"bench: cache entry {path.name} is unusable ({e}); rebuilding it", file=sys.stderr, flush=True)
            return None

    def compute_many(self, parts_list: list[dict], compute: Callable[[list[int], Callable[[int, tuple], np.ndarray]],
                                                                   None], rows: int | None = None) -> list[bool]:
        """Entries one pass computes together (the features after each block of a layer-wise probe).
        ``compute(missing, allocate)`` fills, for each position in ``missing``, the array it gets from
        ``allocate(position, shape)``: a memory map on that entry's temporary file, so the pass never
        holds the entries in RAM. Returns, per entry, whether it was there already (read them with
        ``read``). Concurrent workers asking for the same entries compute them once."""
        paths = [self.path(self.key(p)) for p in parts_list]

        def usable(i: int) -> bool:  # checked where it lies (memory-mapped), not copied into RAM
            return self._checked(paths[i], rows) is not None

        if all(usable(i) for i in range(len(paths))):
            return [True] * len(paths)
        locks: list[FileLock] = []
        staged: dict[int, np.ndarray] = {}
        try:
            try:
                paths[0].parent.mkdir(parents=True, exist_ok=True)
                for p in sorted(set(paths)):  # one order for every worker: no deadlock
                    locks.append(FileLock(str(p) + ".lock"))
                    locks[-1].acquire()
            except OSError as e:
                raise disk_error(e, "feature cache", self.root) from None
            missing = [i for i in range(len(paths)) if not usable(i)]  # again: another worker may have written some
            for i in missing:
                paths[i].unlink(missing_ok=True)
                remove_stale(paths[i].parent, paths[i].stem)

            def allocate(i: int, shape: tuple) -> np.ndarray:
                staged[i] = np.lib.format.open_memmap(tmp_name(paths[i]), mode="w+", dtype=np.float32, shape=shape)
                return staged[i]

            try:
                compute(missing, allocate)
                for i in missing:
                    arr = staged.pop(i)
                    arr.flush()
                    tmp = Path(arr.filename)
                    del arr
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    self._publish(paths[i], parts_list[i], tmp, {"shape": list(np.load(tmp, mmap_mode="r").shape),
                                                                  "dtype": "float32", "checksum": checksum(tmp)})
            except BaseException as e:
                for arr in staged.values():
                    Path(arr.filename).unlink(missing_ok=True)
                if isinstance(e, OSError):
                    raise disk_error(e, "feature cache", self.root) from None
                raise
            return [i not in missing for i in range(len(paths))]
        finally:
            for lock in reversed(locks):
                lock.release()

    def _publish(self, path: Path, parts: dict, tmp: Path, checked: dict) -> None:
        """The sidecar, then the staged .npy renamed into place: its presence means complete."""
        from .fsio import atomic_write_text

        atomic_write_text(path.with_suffix(".json"), json.dumps({"parts": parts, **checked}, indent=1,
                                                                default=str), "feature cache")
        os.replace(tmp, path)

    def _write(self, path: Path, parts: dict, feats: np.ndarray) -> None:
        tmp = tmp_name(path)
        try:
            tmp, checked = stage_checked(path, feats)
            self._publish(path, parts, tmp, checked)
        except BaseException as e:  # disk full while staging or writing the sidecar: nothing left behind
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise disk_error(e, "feature cache", self.root) from None
            raise

    @staticmethod
    def _read(path: Path, rows: int | None) -> np.ndarray:
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {}
        # entries written before they recorded shape/dtype/checksum are checked by shape alone
        want = meta if isinstance(meta, dict) and "shape" in meta else None
        arr = load_checked(path, want)
        if arr.dtype.kind not in "fiu" or arr.size == 0 or arr.ndim < 2:
            raise CorruptEntry(f"{arr.dtype} {arr.shape} is not a feature array")
        if rows is not None and arr.shape[0] != rows:
            raise CorruptEntry(f"{arr.shape[0]} rows, the split has {rows}")
        return arr

    @staticmethod
    def _fit(arr: np.ndarray, path: Path, memory_budget: int | None) -> np.ndarray:
        if memory_budget is not None and arr.nbytes > memory_budget:
            return arr if isinstance(arr, np.memmap) else np.load(path, mmap_mode="r")
        return np.array(arr) if isinstance(arr, np.memmap) else arr

    def clean_stale(self) -> int:
        """Remove temporaries of writers that died (their key's lock is free)."""
        from filelock import Timeout

        folder = self.root / "features"
        removed = 0
        if not folder.is_dir():
            return 0
        for stem in sorted({p.name[1:].split(".")[0] for p in folder.glob(".*.tmp*")}):
            lock = FileLock(str(folder / f"{stem}.npy.lock"), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except (Timeout, OSError):
                continue  # someone is writing it right now (or the folder is read-only)
            try:
                removed += remove_stale(folder, stem)
            finally:
                lock.release()
        return removed
