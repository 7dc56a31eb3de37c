"""Image files -> a :class:`Dataset`: what the folder, CSV and named paper sources share.

A source turns its layout into a :class:`Manifest` (one entry per image: file, label, given
split, group); everything else happens here, once per content:

* Fingerprint: sha256 of the sorted (relative path, byte size, sha256 of the bytes) of every image,
  the manifest files' bytes, the labels, splits and groups, the size, the decode policy version and
  the data options. File times play no part (a copy of the same files is the same dataset); the
  per-file hashes are memoized by (path, size, mtime) within a process only.
* Decode once: every image is decoded with PIL (png, jpg, bmp, tif) or pydicom (.dcm, see
  bench.datasets.dicom), converted to L or RGB (the dataset is gray when every image is), 16-bit
  and float images min-max scaled to uint8 per image, then resized ONCE to ``--size``: the short
  side to ``size`` (PIL bilinear, antialiased when shrinking), then a centre crop to a square; an
  image already ``size`` x ``size`` is left untouched. The uint8 result lands in
  ``cache_dir/decoded/<fingerprint>/{train,val,test}_{images,labels}.npy`` (memory-mapped on
  read) plus ``meta.json`` written last, so a later run costs what a MedMNIST run costs. Each
  array is checked against the shape, dtype and checksum recorded in meta.json when read.
* Unreadable images are listed with their path: at most 1% are skipped with one warning line,
  more is a one-line error.
* Splits: given splits are used as they are; a split that is not given is carved out of train
  (e.g. val from a folder with train/ and test/ only); with none given, a seeded split by
  ``--split-fractions`` (default 0.7/0.1/0.2), stratified by label and grouped by the group
  (patient, lesion): a group never lands in two splits. The split is written to
  ``results/splits/<fingerprint>.csv`` (path,split) and recorded in the run's meta.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import load_checked, save_checked
from ..errors import UserError
from .base import SPLITS, Dataset, DatasetSource, LoadOptions, Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
DECODE_VERSION = 1        # bump when decoding or resizing changes what it produces
MAX_UNREADABLE = 0.01     # fraction of images that may be skipped (with a warning)
TASKS = {"binary": "binary-class", "multi-class": "multi-class", "ordinal": "ordinal-regression",
         "multi-label": "multi-label, binary-class"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}


@dataclass
class Entry:
    path: Path                    # the file (absolute)
    rel: str                      # as named in the fingerprint and the split file
    label: tuple[int, ...]        # (class,) or one 0/1 per label
    split: str | None = None      # given split
    group: str | None = None      # patient / lesion


@dataclass
class Manifest:
    name: str                     # the --dataset value
    source: str
    path: Path                    # the folder or file the user named
    entries: list[Entry]
    label_names: dict[str, str]
    task: str
    modality: str = ""
    files: list[Path] = field(default_factory=list)   # manifests whose bytes belong to the fingerprint
    extra: dict = field(default_factory=dict)


def sorted_values(values) -> list[str]:
    """Class values in a stable order: numerically when all are integers, else by name."""
    vals = sorted(set(values))
    try:
        return sorted(vals, key=lambda v: int(v))
    except ValueError:
        return vals


def infer_task(n_classes: int, multilabel: bool, stated: str, where: str) -> str:
    if stated == "auto":
        return TASKS["multi-label"] if multilabel else TASKS["binary" if n_classes == 2 else "multi-class"]
    if (stated == "multi-label") != multilabel:
        raise UserError(f"{where}: --task {stated} needs "
                        + ("several 0/1 label columns (--label-col A,B,...)" if stated == "multi-label"
                           else "a single label column; several label columns are multi-label"))
    if stated == "binary" and n_classes != 2:
        raise UserError(f"{where}: --task binary, but the labels have {n_classes} classes")
    return TASKS[stated]


def split_name(value: str, where: str) -> str:
    try:
        return SPLIT_NAMES[str(value).strip().lower()]
    except KeyError:
        raise UserError(f"{where}: split {value!r} is not train, val or test") from None


def fractions(opts: LoadOptions) -> tuple[float, float, float]:
    text = opts.get("split_fractions")
    try:
        f = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        f = ()
    if len(f) != 3 or min(f) < 0 or not f[0] > 0 or abs(sum(f) - 1) > 1e-6:
        raise UserError(f"--split-fractions {text!r}: three fractions train,val,test that add up to 1, "
                        f"e.g. 0.7,0.1,0.2")
    return f  # type: ignore[return-value]


# -- fingerprint ----------------------------------------------------------------------------------

PARALLEL_MIN = 64       # fewer files than this are read in this process (starting workers costs more)
CHUNK = 64              # files per task handed to a decode worker


def file_sha(path: Path) -> str:
    """size and sha256 of a file's bytes (memoised by path, size and mtime: backbones.hub.file_digest)."""
    from backbones.hub import file_digest

    try:
        return f"{path.stat().st_size}:{file_digest(path, 'sha256')}"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"


def _stat_key(path: Path) -> tuple[str, int, int] | str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    return (str(path), st.st_size, st.st_mtime_ns)


def _sha_of(path: str) -> str:
    """size and sha256 of an image file's bytes, read here (no per-file memo: see image_shas)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            n = 0
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                n += len(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    return f"{n}:{h.hexdigest()}"


def _sha_chunk(task: tuple[int, list[str]]) -> tuple[int, list[str]]:
    start, paths = task
    return start, [_sha_of(p) for p in paths]


_SHAS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> "size:sha256", in this process
_SHAS_MAX = 1 << 20


def image_shas(paths: list[Path], opts: LoadOptions, what: str = "") -> list[str]:
    """``file_sha`` of many image files: read and hashed on threads, as many as the run's share of
    the cores (``--decode-workers``; reading and sha256 release the GIL), remembered in this process and in one index per dataset on disk (``digests/images-*.json`` in the
    cache folder: a file whose path, size and mtime are unchanged is not read again), rather than one
    memo file per image."""
    from ..parallel import decode_workers, run_tasks
    from ..progress import Progress

    keys = [_stat_key(p) for p in paths]
    index_path = _index_path(paths, opts)
    known = _read_index(index_path) if any(isinstance(k, tuple) and k not in _SHAS for k in keys) else {}
    out: list[str] = [""] * len(paths)
    todo: list[int] = []
    for i, k in enumerate(keys):
        if isinstance(k, str):
            out[i] = k
        elif k in _SHAS:
            out[i] = _SHAS[k]
        elif (got := known.get(k[0])) is not None and (got[0], got[1]) == (k[1], k[2]):
            out[i] = _SHAS[k] = got[2]
        else:
            todo.append(i)
    if todo:
        if len(_SHAS) + len(todo) > _SHAS_MAX:
            _SHAS.clear()
        workers = decode_workers(opts.workers) if len(todo) >= PARALLEL_MIN else 1
        tasks = [(j, [str(paths[i]) for i in todo[j:j + CHUNK]]) for j in range(0, len(todo), CHUNK)]
        bar = Progress(len(todo), f"fingerprint {what or 'images'} ({workers} threads)", "file",
                       opts.quiet or len(todo) < PARALLEL_MIN)
        try:
            for start, shas in run_tasks(_sha_chunk, tasks, workers, threads=True):
                for i, sha in zip(todo[start:start + CHUNK], shas):
                    out[i] = sha
                    if ":" in sha and isinstance(keys[i], tuple):
                        _SHAS[keys[i]] = sha  # type: ignore[index]
                bar.update(len(shas))
        finally:
            bar.close()
        _write_index(index_path, {k[0]: [k[1], k[2], out[i]] for i, k in enumerate(keys)
                                  if isinstance(k, tuple) and ":" in out[i]})
    return out


def _index_path(paths: list[Path], opts: LoadOptions) -> Path | None:
    if not paths:
        return None
    from ..env import default_cache_dir

    names = [str(p.parent) for p in paths]
    try:  # the folder every image lies under: one index per dataset
        common = os.path.commonpath([min(names), max(names)])
    except ValueError:  # different drives
        common = min(names)
    name = hashlib.sha1(common.encode()).hexdigest()[:16]
    return Path(opts.cache_dir or default_cache_dir()) / "digests" / f"images-{name}.json"


def _read_index(path: Path | None) -> dict[str, list]:
    try:
        got = json.loads(path.read_text()) if path is not None else {}
        return got if isinstance(got, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(path: Path | None, entries: dict[str, list]) -> None:
    """One file per dataset folder; a cache that cannot be written only costs the next run a re-read."""
    if path is None:
        return
    try:
        from ..fsio import atomic_write_text

        merged = {**_read_index(path), **entries}
        atomic_write_text(path, json.dumps(merged, separators=(",", ":")), "digest index")
    except Exception:
        pass


def fingerprint(m: Manifest, size: int, opts: LoadOptions) -> str:
    h = hashlib.sha256()
    entries = sorted(m.entries, key=lambda e: e.rel)
    shas = image_shas([e.path for e in entries], opts, m.name)
    for e, sha in zip(entries, shas):
        h.update(json.dumps([e.rel, sha, e.label, e.split, e.group]).encode())
    for f in m.files:
        h.update(file_sha(f).encode())
    h.update(json.dumps({"size": size, "decode": DECODE_VERSION, "task": m.task, "labels": m.label_names,
                         "data": [list(kv) for kv in opts.data if kv[0] != "modality"]},
                        sort_keys=True, default=str).encode())
    return "img-" + h.hexdigest()[:32]


# -- decoding -------------------------------------------------------------------------------------

def to_uint8(a: np.ndarray) -> np.ndarray:
    """Min-max per image for 16-bit and float pixels (8-bit data is kept as it is)."""
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _load(path: Path):
    """8-bit files as a loaded PIL image in mode L or RGB; 16-bit and float images (min-max scaled)
    and DICOM as a uint8 array. Kept as a PIL image through the resize: each trip between PIL and
    numpy is a copy made holding the GIL, which decode threads share."""
    if path.suffix.lower() == ".dcm":
        from .dicom import read_dicom

        return read_dicom(path)
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # the pixels stay with the image when the file closes
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            return to_uint8(np.asarray(im))
        if im.mode in ("L", "RGB"):
            return im
        # palette, RGBA, CMYK...: a gray result is found by content
        return im.convert("L" if im.mode in ("1", "LA") else "RGB")


def read_pixels(path: Path) -> np.ndarray:
    """The image as uint8 (H, W) or (H, W, 3), before resizing."""
    got = _load(path)
    return got if isinstance(got, np.ndarray) else np.asarray(got)


def fit(a: np.ndarray, size: int) -> np.ndarray:
    """Short side to ``size`` (bilinear), then the centre ``size`` x ``size`` square."""
    if a.shape[:2] == (size, size):
        return a
    from PIL import Image

    return _fit_image(Image.fromarray(a), size)


def _fit_image(im, size: int) -> np.ndarray:
    """:func:`fit` of a PIL image (L or RGB), as uint8 (size, size[, 3])."""
    from PIL import Image

    w, h = im.size
    if (h, w) == (size, size):
        return np.asarray(im)
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def decode(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """(uint8 (size, size, 3), is_gray)."""
    got = _load(path)
    a = fit(got, size) if isinstance(got, np.ndarray) else _fit_image(got, size)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2), True
    return a, bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


# -- splits ---------------------------------------------------------------------------------------

def draw_splits(entries: list[Entry], fracs: tuple[float, ...], names: tuple[str, ...], seed: int) -> list[str]:
    """Seeded, stratified, grouped assignment of ``entries`` to ``names`` by ``fracs``.

    Groups (an entry without one is its own) are stratified by the label of their first image
    (multi-label: its rarest positive label); within a stratum they are shuffled and each goes to
    the split its midpoint in the cumulative image count falls into, so a group is never split."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.group if e.group not in (None, "") else f"\0{i}", []).append(i)
    multilabel = len(entries[0].label) > 1 if entries else False
    freq = np.sum([e.label for e in entries], axis=0) if multilabel else None

    def stratum(i: int) -> int:
        lab = entries[i].label
        if not multilabel:
            return lab[0]
        pos = [k for k, v in enumerate(lab) if v]
        return min(pos, key=lambda k: freq[k]) if pos else -1

    strata: dict[int, list[str]] = {}
    for g, members in sorted(groups.items()):
        strata.setdefault(stratum(members[0]), []).append(g)
    bounds = np.cumsum(fracs) / np.sum(fracs)
    out = [""] * len(entries)
    for s in sorted(strata):
        order = strata[s]
        rng.shuffle(order)
        total = sum(len(groups[g]) for g in order)
        done = 0
        for g in order:
            mid = (done + len(groups[g]) / 2) / total
            k = int(np.searchsorted(bounds, mid, side="right"))
            for i in groups[g]:
                out[i] = names[min(k, len(names) - 1)]
            done += len(groups[g])
    return out


def assign_splits(entries: list[Entry], opts: LoadOptions, where: str) -> tuple[list[str], str]:
    """Each entry's split, and how it was chosen (recorded in the run's meta)."""
    given = [e.split for e in entries]
    fr = dict(zip(SPLITS, fractions(opts)))
    seed = int(opts.get("split_seed"))
    if all(s is None for s in given):
        return draw_splits(entries, tuple(fr.values()), SPLITS, seed), \
            f"seeded (seed {seed}), stratified, grouped: {opts.get('split_fractions')}"
    if any(s is None for s in given):
        raise UserError(f"{where}: {sum(s is None for s in given)} images have no split and others do; "
                        f"give every image a split, or none")
    present = set(given)
    if "train" not in present:
        raise UserError(f"{where}: the given splits have no train images")
    missing = [s for s in SPLITS if s not in present]
    out = list(given)
    if missing:  # carve what is not given out of train, by the stated fractions
        names = ("train", *missing)
        idx = [i for i, s in enumerate(given) if s == "train"]
        drawn = draw_splits([entries[i] for i in idx], tuple(fr[n] or 1e-9 for n in names), names, seed)
        for i, s in zip(idx, drawn):
            out[i] = s
    how = "given" + (f"; {', '.join(missing)} carved out of train (seed {seed}, fractions "
                     f"{opts.get('split_fractions')})" if missing else "")
    shared = groups_in_several_splits(entries, out)
    if shared:  # given splits are used as they are, but a leak between them must not pass unseen
        how += f"; {len(shared)} group(s) in more than one split"
        _warn(f"{where}: the given splits put {len(shared)} group(s) (patient/lesion) in more than one "
              f"split, e.g. {', '.join(shared[:3])}; scores may be optimistic. Leave the split column "
              f"out to draw a grouped split", opts.quiet)
    return out, how


def groups_in_several_splits(entries: list[Entry], splits: list[str]) -> list[str]:
    """The groups whose images lie in more than one split, sorted."""
    seen: dict[str, set[str]] = {}
    for e, s in zip(entries, splits):
        if e.group not in (None, ""):
            seen.setdefault(e.group, set()).add(s)
    return sorted(g for g, ss in seen.items() if len(ss) > 1)


# -- the decode cache -----------------------------------------------------------------------------

def _warn(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"bench: {msg}", file=sys.stderr, flush=True)


def _list_bad(bad: list[tuple[str, str]], n: int = 3) -> str:
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:n])
    return shown + (f"; and {len(bad) - n} more" if len(bad) > n else "")


def _read_cached(folder: Path) -> tuple[dict, dict[str, Split]] | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {}
        for s in SPLITS:
            arrs = []
            for kind in ("images", "labels"):
                p = folder / f"{s}_{kind}.npy"
                arrs.append(load_checked(p, meta["arrays"][p.name]))
            splits[s] = Split(arrs[0], np.asarray(arrs[1]))
        return meta, splits
    except (OSError, ValueError, KeyError, EOFError) as e:
        print(f"bench: decoded images in {folder} are unusable ({str(e)[:80]}); decoding again",
              file=sys.stderr, flush=True)
        return None


Targets = tuple  # ((file, header offset), ...): the staged .npy files decoded rows are written into


def _decode_chunk(task: tuple[Targets, int, list[tuple[int, int, int, str]]]
                  ) -> tuple[list[int], bool, list[tuple[int, str]]]:
    """Decode ``(entry, target, row, path)`` items into row ``row`` of target file ``target``
    (written in place with pwrite: no image travels back, nothing stays mapped). Returns (entries
    decoded, all of them gray, (entry, why) of the unreadable ones). The serial path runs exactly
    this, in the run's process."""
    targets, size, items = task
    rowbytes = size * size * 3
    done, gray, bad = [], True, []
    fds: dict[int, int] = {}
    try:
        for i, t, row, path in items:
            try:
                a, g = decode(Path(path), size)
            except UserError:
                raise  # e.g. DICOM without pydicom: the run's error, not an unreadable image
            except Exception as ex:  # whatever PIL or pydicom says: the image is listed, not a traceback
                bad.append((i, (str(ex).splitlines() or [type(ex).__name__])[0][:80]))
                continue
            if t not in fds:
                fds[t] = os.open(targets[t][0], os.O_WRONLY)
            # written at once: holding a task's rows costs fresh pages for each (slower than the write)
            _write_at(fds[t], [np.ascontiguousarray(a, np.uint8).data.cast("B")], targets[t][1] + row * rowbytes)
            done.append(i)
            gray &= g
    finally:
        for fd in fds.values():
            os.close(fd)
    return done, gray, bad


def _write_at(fd: int, views: list[memoryview], offset: int) -> None:
    """``views`` one after another at ``offset`` of ``fd`` (gathered: no copy into one buffer)."""
    for k in range(0, len(views), 512):  # within IOV_MAX
        part = views[k:k + 512]
        want = sum(v.nbytes for v in part)
        if hasattr(os, "pwritev"):
            wrote = os.pwritev(fd, part, offset)
        elif hasattr(os, "pwrite"):
            wrote = sum(os.pwrite(fd, v, offset + sum(u.nbytes for u in part[:j])) for j, v in enumerate(part))
        else:  # Windows: no positional writes
            os.lseek(fd, offset, os.SEEK_SET)
            wrote = sum(os.write(fd, v) for v in part)
        if wrote != want:
            raise OSError(f"short write of decoded images ({wrote} of {want} bytes)")
        offset += want


def _read_rows(sources: list[tuple[int, int]], rowbytes: int, picks: list[tuple[int, int]]) -> bytes:
    """The bytes of rows ``picks`` ((file, row) pairs) of row-major files ``sources`` ((fd, header
    offset) each), one read per run of consecutive rows of one file."""
    out = bytearray()
    i = 0
    while i < len(picks):
        f, start = picks[i]
        j = i + 1
        while j < len(picks) and picks[j] == (f, picks[j - 1][1] + 1):
            j += 1
        want = (j - i) * rowbytes
        fd, offset = sources[f]
        got = os.pread(fd, want, offset + start * rowbytes)
        if len(got) != want:
            raise OSError(f"short read of a staged decode file ({len(got)} of {want} bytes)")
        out += got
        i = j
    return bytes(out)


def _write_split_images(path: Path, sources: list[tuple[int, int]], size: int, picks: list[tuple[int, int]],
                        gray: bool) -> dict:
    """``path`` as np.save would write the decoded rows ``picks`` (the first channel where every
    image is gray), staged and checked like save_checked, a block of rows at a time: never the
    whole split in memory."""
    from ..cache import checksum
    from ..fsio import tmp_name

    shape = (len(picks), size, size) if gray else (len(picks), size, size, 3)
    rowbytes = size * size * 3
    block = max(1, (64 << 20) // rowbytes)  # ~64 MB of images at a time
    tmp = tmp_name(path).with_name(tmp_name(path).name + "w")  # not a staged source's name
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for i in range(0, len(picks), block):
                chunk = np.frombuffer(_read_rows(sources, rowbytes, picks[i:i + block]), np.uint8)
                chunk = chunk.reshape(-1, size, size, 3)
                f.write(np.ascontiguousarray(chunk[..., 0]).tobytes() if gray else chunk.tobytes())
            f.flush()
            os.fsync(f.fileno())
        checked = {"shape": list(shape), "dtype": "uint8", "checksum": checksum(tmp)}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return checked


def _publish_staged(tmp: Path, path: Path, n: int, size: int) -> dict:
    """A staged RGB split file that already is what np.save would write: synced, checked, renamed."""
    from ..cache import checksum

    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    checked = {"shape": [n, size, size, 3], "dtype": "uint8", "checksum": checksum(tmp)}
    os.replace(tmp, path)
    return checked


def _decode_all(m: Manifest, size: int, folder: Path, fp: str, opts: LoadOptions) -> dict:
    """Decode every image once (on ``--decode-workers`` threads, or processes for DICOM; same bytes as one) and write the
    splits, with memory bounded whatever the number of images: workers write decoded rows straight
    into files. The splits are drawn first, so each image lands in its split's file: when every
    image reads and the data are in colour, those files are the result as they are; otherwise
    (unreadable images change the split, gray images keep one channel) the splits are copied out
    of them a block at a time."""
    import dataclasses

    from ..fsio import tmp_name
    from ..parallel import decode_workers, run_tasks
    from ..progress import Progress

    n = len(m.entries)
    if n == 0:
        raise UserError(f"{m.name}: no images found in {m.path} ({', '.join(IMAGE_SUFFIXES)})")
    try:
        planned, how = assign_splits(m.entries, opts, m.name)
    except UserError:  # e.g. only an unreadable image lacks a split: decided once the images are read
        planned, how = None, ""
    staged: list[Path] = []
    where: list[tuple[int, int]] = [(0, 0)] * n  # entry -> (staged file, row)
    counts = []
    for t, s in enumerate(SPLITS if planned is not None else ("all",)):
        members = [i for i in range(n) if planned is None or planned[i] == s]
        for row, i in enumerate(members):
            where[i] = (t, row)
        staged.append(tmp_name(folder / f"{s}_images.npy"))
        counts.append(len(members))
    try:
        targets = []
        for path, count in zip(staged, counts):
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
            targets.append((str(path), int(arr.offset)))
            del arr  # sized and headed; written with pwrite, read with pread
        ok = np.zeros(n, bool)
        all_gray = True
        bad_rows: list[tuple[int, str]] = []
        workers = decode_workers(opts.workers) if n >= PARALLEL_MIN else 1
        # Pillow releases the GIL while it decodes and resizes, so threads need no process start-up
        # (measured: 2 threads beat 2 spawned processes); pydicom parses in Python: processes
        threads = not any(e.path.suffix.lower() == ".dcm" for e in m.entries)
        tasks = ((tuple(targets), size, [(i, *where[i], str(m.entries[i].path)) for i in range(j, min(n, j + CHUNK))])
                 for j in range(0, n, CHUNK))
        how_many = f", {workers} {'threads' if threads else 'processes'}" if workers > 1 else ""
        bar = Progress(n, f"decode {m.name} ({size} px, once{how_many})", "img", opts.quiet)
        try:
            for done, gray, bad in run_tasks(_decode_chunk, tasks, workers, threads=threads):
                ok[done] = True
                all_gray &= gray
                bad_rows += bad
                bar.update(len(done) + len(bad))
        finally:
            bar.close()
        bad = [(m.entries[r].rel, why) for r, why in sorted(bad_rows)]  # in file order, as one process lists them
        if len(bad) > MAX_UNREADABLE * n:
            raise UserError(f"{m.name}: {len(bad)} of {n} images are unreadable (more than "
                            f"{MAX_UNREADABLE:.0%}): {_list_bad(bad)}")
        if bad:
            _warn(f"{m.name}: skipping {len(bad)} unreadable image(s) of {n}: {_list_bad(bad, 10)}", opts.quiet)
        rows = np.flatnonzero(ok)
        if bad or planned is None:  # drawn again without the unreadable ones (said once already)
            keep = [m.entries[r] for r in rows]
            assigned, how = assign_splits(keep, dataclasses.replace(opts, quiet=True) if planned else opts, m.name)
        else:
            assigned = planned
        arrays, rels = {}, {}
        fds = [(os.open(path, os.O_RDONLY), offset) for path, offset in targets]
        direct = planned is not None and not bad and not all_gray  # the staged files are the result
        published = {}
        if direct:  # synced and checksummed side by side (both release the GIL)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(SPLITS)) as pool:
                futures = {s: pool.submit(_publish_staged, staged[t], folder / f"{s}_images.npy", counts[t], size)
                           for t, s in enumerate(SPLITS)}
                published = {s: f.result() for s, f in futures.items()}
        try:
            for t, s in enumerate(SPLITS):
                idx = [r for r, a in zip(rows, assigned) if a == s]
                target = folder / f"{s}_images.npy"
                if direct:
                    arrays[target.name] = published[s]
                else:
                    arrays[target.name] = _write_split_images(target, fds, size, [where[r] for r in idx], all_gray)
                labels = np.array([m.entries[r].label for r in idx], np.int64).reshape(len(idx), -1)
                arrays[f"{s}_labels.npy"] = save_checked(folder / f"{s}_labels.npy", labels)
                rels[s] = [m.entries[r].rel for r in idx]
        finally:
            for fd, _ in fds:
                os.close(fd)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    meta = {"fingerprint": fp, "dataset": m.name, "size": size, "n_channels": 1 if all_gray else 3,
            "arrays": arrays, "split_rule": how, "skipped": bad, "paths": rels}
    tmp = folder / f".meta.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / "meta.json")  # last: its presence means the entry is complete
    return meta


def build(m: Manifest, size: int, opts: LoadOptions) -> Dataset:
    """The dataset of a manifest at ``size``: decoded once into the cache, then memory-mapped."""
    from filelock import FileLock

    from ..env import default_cache_dir
    from ..fsio import disk_error, remove_stale

    fp = fingerprint(m, size, opts)
    folder = Path(opts.cache_dir or default_cache_dir()) / "decoded" / fp
    got = _read_cached(folder)
    if got is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(folder) + ".lock")
            lock.acquire()
        except OSError as e:
            raise disk_error(e, "decoded-image cache", folder) from None
        try:
            got = _read_cached(folder)
            if got is None:
                remove_stale(folder, "")  # we hold the lock: temporaries are a dead writer's
                try:
                    _decode_all(m, size, folder, fp, opts)
                except OSError as e:
                    raise disk_error(e, "decoded-image cache", folder) from None
                got = _read_cached(folder)
                assert got is not None
        finally:
            lock.release()
    meta, splits = got
    if opts.limit is not None:
        splits = {s: Split(v.images[:opts.limit], v.labels[:opts.limit]) for s, v in splits.items()}
    splits = {s: Split(v.images, np.array(v.labels, np.int64)) for s, v in splits.items()}  # labels: small, in RAM
    split = {"rule": meta["split_rule"], "file": None}
    extra = {**m.extra, "split": split, "skipped_unreadable": [p for p, _ in meta["skipped"]], "decode": {
        "cache": str(folder), "policy": "short side to size (bilinear), centre crop; 16-bit min-max"}}
    ids = {s: list(meta["paths"][s][:len(splits[s])]) for s in SPLITS}  # the paths, as the manifest names them
    ds = Dataset(m.name, size, m.task, m.label_names, meta["n_channels"], splits, fp,
                 modality=opts.get("modality") or m.modality, source=m.source, path=m.path, extra=extra,
                 ids=ids).validate()
    split_file = save_split(meta, opts)  # into the results folder: only for data a run can use
    split["file"] = str(split_file) if split_file else None
    return ds


def save_split(meta: dict, opts: LoadOptions) -> Path | None:
    """results/splits/<fingerprint>.csv: path,split (reuse it as a CSV split column, cite it)."""
    if opts.splits_dir is None:
        return None
    from ..fsio import atomic_write_text

    path = Path(opts.splits_dir) / f"{meta['fingerprint']}.csv"
    if not path.exists():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "split"])
        for s in SPLITS:
            for rel in meta["paths"][s]:
                w.writerow([rel, s])
        atomic_write_text(path, buf.getvalue(), "split file")
    return path


class ImageSource(DatasetSource):
    """Base of the sources of image files: subclasses build a :class:`Manifest`."""

    in_all = False  # own data is never part of `datasets: all`

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        raise NotImplementedError

    def load(self, dataset: str, size: int, opts: LoadOptions) -> Dataset:
        return build(self.manifest(dataset, opts), size, opts)

    def expected_fingerprint(self, dataset: str, size: int, opts: LoadOptions) -> str | None:
        try:
            return fingerprint(self.manifest(dataset, opts), size, opts)
        except UserError:
            return None

    def identity(self, dataset: str, size: int, opts: LoadOptions) -> str:
        return fingerprint(self.manifest(dataset, opts), size, opts)

    def modality(self, dataset: str) -> str:
        return ""

    def attributes(self, dataset: str, opts: LoadOptions, ids: "set[str] | None" = None):
        """DICOM tags of the images that are DICOM files (PatientSex, PatientAge, Manufacturer);
        sources with a table of their own (csv:, CheXpert, ISIC) add its columns."""
        from .attributes import with_dicom

        entries = [e for e in self.manifest(dataset, opts).entries if ids is None or e.rel in ids]
        return with_dicom(None, [e.rel for e in entries], [e.path for e in entries])


def under(base: Path, rel: str) -> Path:
    return (base / rel).resolve() if not os.path.isabs(rel) else Path(rel)
