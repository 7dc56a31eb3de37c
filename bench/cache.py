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

from .fsio import disk_error, remove_stale

# bump when extraction code changes what it produces
CACHE_VERSION = 1
FULL_CHECKSUM_BYTES = 256 << 20
SAMPLE_BLOCKS, BLOCK = 64, 1 << 20


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "medfm-bench")


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


class CorruptEntry(Exception):
    pass


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

    def _write(self, path: Path, parts: dict, feats: np.ndarray) -> None:
        tmp = path.with_name(f".{path.stem}.npy.tmp{os.getpid()}")
        tmp_meta = path.with_name(f".{path.stem}.json.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.save(f, feats)
                f.flush()
                os.fsync(f.fileno())
            meta = {"parts": parts, "shape": list(feats.shape), "dtype": str(feats.dtype), "checksum": checksum(tmp)}
            tmp_meta.write_text(json.dumps(meta, indent=1, default=str))
            os.replace(tmp_meta, path.with_suffix(".json"))
            os.replace(tmp, path)  # the .npy appears last: its presence means complete
        except OSError as e:
            tmp.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
            raise disk_error(e, "feature cache", self.root) from None

    @staticmethod
    def _read(path: Path, rows: int | None) -> np.ndarray:
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise CorruptEntry(f"unreadable: {str(e).splitlines()[0][:80]}") from None
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            meta = {}
        want = meta.get("shape") if isinstance(meta, dict) else None
        if arr.dtype.kind not in "fiu" or arr.size == 0 or arr.ndim < 2:
            raise CorruptEntry(f"{arr.dtype} {arr.shape} is not a feature array")
        if rows is not None and arr.shape[0] != rows:
            raise CorruptEntry(f"{arr.shape[0]} rows, the split has {rows}")
        if want is not None:
            if list(arr.shape) != want or str(arr.dtype) != meta.get("dtype"):
                raise CorruptEntry(f"{arr.dtype} {list(arr.shape)}, written as {meta.get('dtype')} {want}")
            if meta.get("checksum") and checksum(path) != meta["checksum"]:
                raise CorruptEntry("checksum mismatch")
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
