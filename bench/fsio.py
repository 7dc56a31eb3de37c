"""Writing files so that nothing is lost: temporary name + fsync + rename, several files staged
completely before any is swapped in, and one-line errors for full or read-only disks.

Temporaries are named ``.<name>.tmp<pid>`` beside their target, so whoever later holds the lock
of that target can tell them from live files and remove them (``remove_stale``).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UserError

# errors of the machine, not of the run: a sweep retries these next time without --retry-failed
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                      errno.ENOENT, errno.EMFILE}


class EnvironmentFault(UserError):
    """The disk or the permissions failed (full, read-only, unwritable): not the run's fault."""


def is_environment_error(e: BaseException) -> bool:
    """Disk full, read-only, no permission...: failures a later attempt on a healthy machine
    would not repeat."""
    if isinstance(e, EnvironmentFault):
        return True
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS - {errno.ENOENT}:
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in ("No space left", "Read-only file system"))


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def disk_error(e: OSError, what: str, path: Path) -> EnvironmentFault:
    reason = e.strerror or type(e).__name__
    hint = {errno.ENOSPC: "free some space or point it elsewhere", errno.EDQUOT: "free some quota",
            errno.EROFS: "the file system is read-only; use a writable folder",
            errno.EACCES: "no permission; use a writable folder"}.get(e.errno, "check the folder")
    return EnvironmentFault(f"cannot write {what} {path}: {reason} ({hint})")


def _write_tmp(path: Path, data: bytes) -> Path:
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """``path`` holds either its old content or all of ``data``; nothing else is left behind."""
    try:
        tmp = _write_tmp(path, data)
        os.replace(tmp, path)
    except OSError as e:
        raise disk_error(e, what, path) from None


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode(), what)


def write_all_then_swap(files: list[tuple[Path, bytes]], what: str = "results") -> None:
    """Stage every file completely under its temporary name first; only when all are on disk,
    rename them into place in the given order (the completion marker last). A failure while
    staging (disk full) removes the temporaries and leaves every old file as it was."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            staged.append((_write_tmp(path, data), path))
    except OSError as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise disk_error(e, what, path) from None
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:  # renames need no space: only a kill between them can interleave
        os.replace(tmp, path)


def remove_stale(folder: Path, stem: str) -> int:
    """Remove temporaries of ``stem`` left by killed processes (call while holding its lock)."""
    removed = 0
    if folder.is_dir():
        for p in folder.glob(f".{stem}*.tmp*"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def check_creatable(folder: Path, what: str, flag: str) -> None:
    """Can ``folder`` be created and written? Tested without creating it: an early bad input
    must not leave empty folders behind."""
    p = Path(folder).absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {folder}: {p} is a file, not a folder; pass {flag} to a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise EnvironmentFault(f"{what} {folder} is not writable ({p}: permission denied or read-only); "
                               f"pass {flag} to a writable folder")
