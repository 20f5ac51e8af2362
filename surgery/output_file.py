"""A new file written front to back, by the fastest durable path the system offers.

Every streaming writer (safetensors, `.pt`, ONNX external data) appends its bytes through an
`OutputFile`: `write` for bytes it has, `copy_range` for bytes that lie unchanged in an
input, and `patch` for a few bytes it can only fill in later (a zip member's CRC).

Two ways to reach the disk, chosen by `create`:

* **Direct** (Linux and the BSDs, wherever the filesystem takes O_DIRECT): the bytes are
  gathered in page-aligned 32 MiB buffers, and two writer threads write full buffers with
  O_DIRECT while the next one fills. Each byte goes from the buffer to the disk once, and
  nothing is left dirty in the page cache: the closing fsync has only metadata to commit,
  and the writes never wait behind the kernel's dirty-page throttling, which is what makes
  a plain `cp` of many GB slow. Measured here (BENCHMARKS.md), a 4.6 GB copy took 2.0-2.7 s
  this way against 2.3-4.8 s for `cp && sync`, and 17 GB took 7.6-9.3 s against 16-42 s.
  With `--no-sync`, an output that fits under the kernel's dirty limit (`_dirty_room`, about a
  fifth of free memory) goes through the page cache instead, as `cp` does: it is written at
  memory speed and the disk takes it later (4.3 GB: 0.93-1.13x `cp`, where the direct path
  took up to 1.57x). A larger one takes the direct path with only the fsyncs skipped, which
  beats the page cache once it has to throttle (16 GB: 0.53-0.92x `cp`).
* **Through the page cache** (where O_DIRECT is refused, or `DIRECT` is off): bytes are
  written with write(2), and unchanged ranges are copied file to file in the kernel
  (copy_file_range), as cp does. When the output must be durable, writeback of each 32 MB is
  requested as it is written (surgery.durable.Writeback), so the closing fsync waits only for
  the tail; otherwise each range is asked for in one call, as cp does, which was 1.4-2x faster
  here than calls of 32 MiB to 2047 MiB.

Both give the same bytes; `tests/test_output_file.py` proves it by property.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .durable import Writeback, syncing

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations are not evaluated at run time

__all__ = ["OutputFile", "create", "write_all"]

Progress = Callable[[int], None]

DIRECT = True  # False: always the page cache (tests compare the two paths)

_KERNEL_CHUNK = 32 << 20  # bytes per copy_file_range call while writeback is requested as the copy goes
_CHUNK = 16 << 20  # bytes per read/write step where the kernel can't copy
# copy_file_range is refused across some filesystems and by some kernels; then we copy by hand.
_KERNEL_COPY = hasattr(os, "copy_file_range")
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}
# O_DIRECT is refused by some filesystems (at open, or at the first write): then the page cache is used.
_NO_DIRECT = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}

_DIRECT_NEEDS = ("O_DIRECT", "pwrite", "preadv")  # Linux and some BSDs have them all
_ALIGN = 4096  # what O_DIRECT asks of offsets, lengths and memory: a page covers every common disk's block
_BLOCK = 32 << 20  # one direct write: 16 MiB was 10-20% slower here, 64 MiB no faster
_WRITERS = 2  # writes in flight at once: one more keeps the disk busy while a write completes
_BUFFERS = _WRITERS + 2  # one filling and one ready besides those being written: copy and disk never wait


def write_all(fd: int, data: memoryview | bytes) -> None:
    """os.write may write less than asked; loop until all of `data` is written."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def create(path: Path, expected_bytes: int | None = None) -> OutputFile:
    """Create (or truncate) `path` for writing front to back; use as a context manager.

    Leaving the block normally finishes the file (the direct path writes its last buffer and
    applies deferred patches); leaving it by an exception stops at once. Either way the
    descriptor is closed. The fsync is the caller's (surgery.atomic does it for every output).

    `expected_bytes`, the output's size if the writer knows it (with the files the same save
    writes after this one, such as later shards), lets an output that will not be fsynced
    (`--no-sync`) stay in the page cache when it fits under the kernel's dirty limit: then it
    is written at memory speed, as `cp` does, and the disk takes it later.
    """
    if not syncing() and expected_bytes is not None and expected_bytes <= _dirty_room():
        return _PageCacheOutput(path)
    if DIRECT and all(hasattr(os, name) for name in _DIRECT_NEEDS):
        direct = _DirectOutput.open(path)
        if direct is not None:
            return direct
    return _PageCacheOutput(path)


def _dirty_room(meminfo: str = "/proc/meminfo", vm: str = "/proc/sys/vm") -> int:
    """Bytes that can still be dirtied before the kernel makes writers wait for the disk; 0 if unknown.

    Linux's limit is vm.dirty_bytes, or else vm.dirty_ratio percent of the memory that can
    hold file pages (free memory plus the file cache). Writes under it return at memory speed;
    past it, each writer is held to the disk's pace, and the direct path is faster.
    """
    try:
        fields = {}
        for line in Path(meminfo).read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0]) * 1024  # kB
        limit = int(Path(vm, "dirty_bytes").read_text())
        if not limit:
            dirtyable = fields["MemFree"] + fields["Active(file)"] + fields["Inactive(file)"]
            limit = dirtyable * int(Path(vm, "dirty_ratio").read_text()) // 100
        return max(0, limit - fields["Dirty"] - fields["Writeback"])
    except (OSError, ValueError, KeyError, IndexError):  # not Linux, or a kernel that says less
        return 0


class OutputFile:
    """Appends bytes to a new file; `offset` is the count appended so far."""

    fd: int
    offset: int

    def write(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def copy_range(self, path: Path, offset: int, length: int, progress: Progress | None = None) -> int:
        """Append `length` bytes of `path` from `offset`; return the count, less if the file ends first."""
        raise NotImplementedError

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already appended; in the file by the time the block is left at the latest."""
        raise NotImplementedError

    def finish(self) -> None:
        """Everything written and patched (called when the block is left without an error)."""

    def release(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self.finish()
        finally:
            self.release()


class _PageCacheOutput(OutputFile):
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.offset = 0
        self._writeback = Writeback(self.fd, start=0)  # asks for nothing when no fsync will follow

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        write_all(self.fd, view)
        self._appended(len(view))

    def copy_range(self, path: Path, offset: int, length: int, progress: Progress | None = None) -> int:
        # Ask for the whole range at once unless writeback is requested every 32 MB: measured here
        # (ext4, Linux 6.18), a 4.3 GB copy in calls of 32 MiB to 2047 MiB took 1.4-2x as long as
        # calls asking for all of it, as cp does, though the kernel stops each call at 2 GiB anyway.
        step = _KERNEL_CHUNK if self._writeback.enabled else length
        with open(path, "rb") as f:
            left = length
            while left and _KERNEL_COPY:
                try:
                    n = os.copy_file_range(f.fileno(), self.fd, min(left, step), offset)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    break
                if n == 0:
                    return length - left
                offset, left = offset + n, left - n
                self._appended(n)
                if progress:
                    progress(n)
            f.seek(offset)  # by hand, where the kernel can't copy
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                self.write(chunk)
                left -= len(chunk)
                if progress:
                    progress(len(chunk))
        return length - left

    def patch(self, offset: int, data: bytes) -> None:
        if hasattr(os, "pwrite"):
            os.pwrite(self.fd, data, offset)
            return
        here = os.lseek(self.fd, 0, os.SEEK_CUR)  # Windows has no pwrite: seek there and back
        os.lseek(self.fd, offset, os.SEEK_SET)
        write_all(self.fd, data)
        os.lseek(self.fd, here, os.SEEK_SET)

    def _appended(self, n: int) -> None:
        self.offset += n
        self._writeback.advance(n)


class _DirectOutput(OutputFile):
    """O_DIRECT writes of full aligned buffers by writer threads; the tail is padded, then truncated."""

    @classmethod
    def open(cls, path: Path) -> _DirectOutput | None:
        """The direct path for `path`, or None where the filesystem refuses O_DIRECT."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError as e:
            if e.errno in _NO_DIRECT:
                return None
            raise
        try:
            # Some filesystems accept the flag at open and refuse the first write: try one block now.
            with mmap.mmap(-1, _ALIGN) as probe:
                os.pwrite(fd, probe, 0)
            os.ftruncate(fd, 0)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError) and e.errno in _NO_DIRECT:
                return None
            raise
        return cls(fd)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._full: queue.Queue[tuple[mmap.mmap, int, int] | None] = queue.Queue()
        for _ in range(_BUFFERS):
            self._free.put(mmap.mmap(-1, _BLOCK))  # anonymous maps are page-aligned, as O_DIRECT needs
        self._buffer = self._free.get()
        self._view = memoryview(self._buffer)
        self._start = 0  # file offset of the buffer being filled
        self._fill = 0
        self._deferred: list[tuple[int, bytes]] = []
        self._error: BaseException | None = None
        self._stopping = False
        self._writers = [threading.Thread(target=self._drain, name="surgery-direct-write", daemon=True) for _ in range(_WRITERS)]
        for writer in self._writers:
            writer.start()

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), _BLOCK - self._fill)
            self._view[self._fill : self._fill + n] = view[:n]
            view = view[n:]
            self._filled(n)

    def copy_range(self, path: Path, offset: int, length: int, progress: Progress | None = None) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):  # the source is read once, front to back: read ahead further
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)
            left = length
            while left:
                with self._view[self._fill : self._fill + min(left, _BLOCK - self._fill)] as room:
                    n = os.preadv(fd, [room], offset)  # read straight into the buffer the disk will take
                if n == 0:
                    break
                offset, left = offset + n, left - n
                self._filled(n)
                if progress:
                    progress(n)
        finally:
            os.close(fd)
        return length - left

    def patch(self, offset: int, data: bytes) -> None:
        if offset >= self._start and offset + len(data) <= self._start + self._fill:
            self._view[offset - self._start : offset - self._start + len(data)] = data  # still in the buffer
        else:
            self._deferred.append((offset, bytes(data)))  # already with the writer: applied after the last write

    def finish(self) -> None:
        if self._fill:
            padded = -(-self._fill // _ALIGN) * _ALIGN  # a direct write is whole blocks: pad, truncate after
            self._view[self._fill : padded] = bytes(padded - self._fill)
            self._full.put((self._buffer, padded, self._start))
        self._stop_writers()
        self._raise_writer_error()
        os.ftruncate(self.fd, self.offset)
        if self._deferred:
            import fcntl

            # The few patched bytes go through the page cache: they are not blocks of their own,
            # and the closing fsync carries them with the metadata.
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            for offset, data in self._deferred:
                os.pwrite(self.fd, data, offset)

    def release(self) -> None:
        if any(writer.is_alive() for writer in self._writers):  # left by an exception: drop what is queued
            self._stopping = True
            self._stop_writers()  # waits for the writes under way
        self._view.release()
        buffers = [self._buffer]
        while not self._free.empty():
            buffers.append(self._free.get_nowait())
        for buffer in buffers:
            with contextlib.suppress(BufferError):  # a view still held (by a traceback): the collector frees it
                buffer.close()  # give the buffers (128 MiB) back now, not when the collector finds them
        super().release()

    def _filled(self, n: int) -> None:
        self._fill += n
        self.offset += n
        if self._fill == _BLOCK:
            self._raise_writer_error()
            self._full.put((self._buffer, _BLOCK, self._start))
            self._view.release()
            self._buffer = self._free.get()  # the writer returns every buffer, also after an error
            self._view = memoryview(self._buffer)
            self._start += _BLOCK
            self._fill = 0

    def _stop_writers(self) -> None:
        for _ in self._writers:
            self._full.put(None)  # each writer leaves at the first None it takes, after the buffers before it
        for writer in self._writers:
            writer.join()

    def _drain(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, length, at = item
            if self._error is None and not self._stopping:
                with memoryview(buffer) as whole, whole[:length] as view:  # released even when a traceback keeps the frame
                    try:
                        _pwrite_all(self.fd, view, at)
                    except BaseException as e:  # raised in the copying thread at its next step
                        self._error = e
            self._free.put(buffer)

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise self._error


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
