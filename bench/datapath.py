"""Host -> device batches, read ahead: the one way arrays (images, cached prefixes) reach the device.

A background thread gathers the next batches from the (possibly memory-mapped) array while the
model runs on the current one. On CUDA it gathers into two reused pinned host buffers and starts
each copy on a side stream (non-blocking); the consumer's stream waits on that copy's event only,
so copy i+1 overlaps compute i. Elsewhere (CPU, MPS) nothing is pinned and the same bytes arrive
as today; the thread only does the reading (page-in of a memory-mapped file, the gather of random
indices). Only bytes move here: float conversion, resize and normalisation stay on the device
(bench.preprocess), so the numbers are those of a plain loop.
"""
from __future__ import annotations

import mmap
import queue
import threading
import warnings
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import torch

Index = Union[slice, np.ndarray]
DEPTH = 2  # batches read ahead (device memory held: DEPTH + 2 batches at most)


def sequential(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over ``n`` rows."""
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def rows(index: Index, n: int) -> int:
    return len(range(*index.indices(n))) if isinstance(index, slice) else len(index)


def gather(source: np.ndarray, index: Index, out: np.ndarray | None = None) -> np.ndarray:
    """``source[index]`` as an array of its own (into ``out`` when given): the read happens here,
    not later on the first touch of a memory-mapped view. The pages of a consecutive batch read
    from a read-only memory map leave this process's resident set once copied (``release``)."""
    if out is not None:
        if isinstance(index, slice):
            np.copyto(out, source[index])
            release(source, index)
        else:
            np.take(source, index, axis=0, out=out)
        return out
    got = source[index]  # a gather of indices is a copy already; a slice of a memory map is not
    if (isinstance(index, slice) and isinstance(got, np.memmap)) or not got.flags.c_contiguous \
            or not got.flags.writeable:
        got = np.array(got, copy=True, order="C")  # a plain, writable array (no file behind it)
        if isinstance(index, slice):
            release(source, index)
    return np.asarray(got)


def release(source: np.ndarray, index: slice) -> None:
    """Drop the pages of rows ``index`` of a read-only memory map from this process's resident set
    (madvise DONTNEED: they stay in the page cache, and a later read maps them again), so a pass
    over a split larger than RAM holds about a batch of it, not the whole file. Anything else (an
    array in memory, a writable map, no madvise on this system) is left alone."""
    mm = getattr(source, "_mmap", None)
    if mm is None or getattr(source, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED") \
            or source.ndim == 0 or not source.flags.c_contiguous:
        return
    start, stop, step = index.indices(len(source))
    if step != 1 or stop <= start:
        return
    try:
        base = np.frombuffer(mm, np.uint8).ctypes.data  # where the mapping starts
        lo = source.ctypes.data - base + start * source.strides[0]
        hi = lo + (stop - start) * source.strides[0]
        page = mmap.PAGESIZE
        lo, hi = lo // page * page, hi // page * page  # whole pages (the partial last one stays)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, BufferError):  # a closed map, an unusual layout: nothing to drop
        pass


def host_to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """One array to ``device`` without read-ahead (a single batch; loops use ``device_batches``)."""
    with warnings.catch_warnings():
        # a read-only memory-mapped array: nothing writes to the tensor (the device copy is new)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(np.ascontiguousarray(batch))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class _PinnedRing:
    """Two pinned host buffers used in turn; a buffer is refilled only after the copy out of it
    has finished (its event), so a copy in flight never reads bytes of the next batch."""

    def __init__(self, size: int = 2) -> None:
        self.buffers: list[torch.Tensor | None] = [None] * size
        self.events: list[torch.cuda.Event | None] = [None] * size
        self.turn = 0
        self.allocated = 0  # buffers pinned so far (reuse is checked by the tests)

    def take(self, n: int, tail: tuple[int, ...], dtype: torch.dtype) -> tuple[int, torch.Tensor]:
        i = self.turn
        self.turn = (i + 1) % len(self.buffers)
        if self.events[i] is not None:
            self.events[i].synchronize()
        buf = self.buffers[i]
        if buf is None or buf.shape[1:] != tail or buf.dtype != dtype or buf.shape[0] < n:
            rows_ = max(n, buf.shape[0] if buf is not None and buf.shape[1:] == tail else 0)
            buf = self.buffers[i] = torch.empty((rows_, *tail), dtype=dtype, pin_memory=True)
            self.allocated += 1
        return i, buf[:n]

    def done(self, i: int, event: torch.cuda.Event) -> None:
        self.events[i] = event


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def device_batches(source: np.ndarray, batches: Iterable[Index], device: torch.device | str,
                   depth: int = DEPTH, ring: _PinnedRing | None = None) -> Iterator[torch.Tensor]:
    """``source[index]`` for each index in ``batches``, in order, as tensors on ``device`` (same
    dtype and shape as the numpy rows), read ``depth`` batches ahead on a background thread.

    A tensor is safe to use on the current stream when yielded. Leaving the loop early (break, an
    exception) stops the reader."""
    device = torch.device(device)
    batches = list(batches)
    if not batches:
        return
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device) if cuda else None
    ring = ring or (_PinnedRing() if cuda else None)
    tail = tuple(source.shape[1:])
    dtype = torch.from_numpy(np.empty(0, dtype=source.dtype)).dtype
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for index in batches:
                if stop.is_set():
                    return
                if cuda:
                    slot, host = ring.take(rows(index, len(source)), tail, dtype)
                    gather(source, index, out=host.numpy())
                    with torch.cuda.device(device), torch.cuda.stream(stream):
                        t = host.to(device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                    ring.done(slot, event)
                    item = (t, event)
                else:
                    item = (torch.from_numpy(gather(source, index)), None)
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))
            return
        put(_END)

    thread = threading.Thread(target=read, name="bench-datapath", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            t, event = item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)  # the copy is done before the model reads it
                t.record_stream(current)   # and its memory is not reused before the model is done
            elif t.device != device:
                t = t.to(device)  # MPS: a plain copy
            yield t
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get(timeout=0.05)  # unblock a reader waiting on a full queue
            except queue.Empty:
                pass
        thread.join()


def batches_of(source: np.ndarray, batches: Sequence[Index], device: torch.device | str,
               depth: int = DEPTH) -> Iterator[tuple[Index, torch.Tensor]]:
    """(index, tensor on device) pairs: ``device_batches`` with the index it read."""
    return zip(batches, device_batches(source, batches, device, depth))


__all__ = ["device_batches", "batches_of", "sequential", "gather", "release", "host_to_device"]
