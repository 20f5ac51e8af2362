"""Whether writes are durable, and starting writeback early so the final fsync is short.

`SYNC` is the one switch: every fsync of an output goes through `fsync` / `fsync_path`, and
`Writeback` asks for nothing, when it is off (`--no-sync`, `surgery.io.save(sync=False)`).
The atomic rename is the same either way, so an interrupted *process* still leaves the old
output or the complete new one; what is lost is the guarantee against a crash of the
machine: after a power loss or OS crash soon after the write, the new name may hold a file
whose data had not reached the disk yet (empty or partial).

Durability costs a full flush of every written byte. Done once at the end (`fsync`), the
flush waits for the whole file after the copy is over, so a durable write takes copy
time plus flush time. Asking the kernel to start writeback of each range as soon as it is
written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, Linux) overlaps the two: the disk
works while the next tensors are copied, and the closing fsync only waits for the tail.
Elsewhere this is a no-op and the closing fsync does all the work, as before.

The streaming writers avoid the flush altogether where they can: they write with O_DIRECT
(surgery.output_file), and `Writeback` serves their page-cache path, taken where a
filesystem refuses O_DIRECT.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

__all__ = ["SYNC", "Writeback", "fsync", "fsync_path", "no_sync", "syncing"]

SYNC: ContextVar[bool] = ContextVar("surgery.durable.SYNC", default=True)  # False: skip every fsync of an output

_KICK = 32 << 20  # bytes written between writeback requests: large enough to keep requests few
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None  # a Linux call; elsewhere the closing fsync does all the work
    try:
        # The C library the interpreter is linked with, by dlopen(NULL): ctypes.util.find_library
        # would cost every command tens of milliseconds of start-up (it imports and runs more).
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def syncing() -> bool:
    """True when outputs are made durable (the default); False inside `no_sync()`."""
    return SYNC.get()


@contextmanager
def no_sync() -> Iterator[None]:
    """Skip the fsyncs of every write inside the block (see the module docstring for what a crash can do)."""
    token = SYNC.set(False)
    try:
        yield
    finally:
        SYNC.reset(token)


def fsync(fd: int) -> None:
    """`os.fsync(fd)`, unless syncing is off."""
    if SYNC.get():
        os.fsync(fd)


def fsync_path(path: Path) -> None:
    """fsync a file or folder by its path (a folder: its entries, i.e. renames into it), unless syncing is off."""
    if not SYNC.get():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writeback:
    """Counts the bytes appended to `fd` and asks for writeback every 32 MB.

    Use `advance(n)` as (or inside) a progress callback: copy paths report each chunk they
    append, whether they copy in the kernel or through Python buffers.
    """

    def __init__(self, fd: int, start: int | None = None) -> None:
        self.fd = fd
        self.flushed = os.lseek(fd, 0, os.SEEK_CUR) if start is None else start  # first byte not yet requested
        self.written = self.flushed
        self.enabled = _sync_file_range is not None and SYNC.get()  # no fsync will follow: nothing to start early

    def advance(self, n: int) -> None:
        self.written += n
        if self.enabled and self.written - self.flushed >= _KICK:
            self._request(self.flushed, self.written - self.flushed)
            self.flushed = self.written

    def _request(self, offset: int, length: int) -> None:
        if _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self.enabled = False  # e.g. a filesystem that refuses it: the closing fsync still covers everything

    def progress(self, report: Callable[[int], None] | None) -> Callable[[int], None]:
        """A progress callback that advances this and then calls `report`."""
        if report is None:
            return self.advance

        def both(n: int) -> None:
            self.advance(n)
            report(n)

        return both
