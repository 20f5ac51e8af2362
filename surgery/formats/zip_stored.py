"""Stored (uncompressed) zip archives written at the speed of a file copy.

The bytes are exactly those of `zipfile.ZipFile(f, "w", ZIP_STORED)` when each member is
opened with `open(ZipInfo(name) with extra and file_size set, "w")` on a seekable file,
Zip64 records included (tests/test_zip_stored.py compares the two byte for byte). What
differs is how each member's data and CRC-32 get there:

* a member whose bytes lie in a file is copied file to file (`FileRange.copy_into`: straight
  into the buffers of a direct write, or in the kernel; surgery.output_file), never as Python
  objects; its CRC is computed on a worker thread from the source file's pages (mmap, no
  copy) while the copy runs, and patched into the local header afterwards. When the range is
  itself a stored member of a zip (a .pt read by surgery), the CRC recorded in that zip's
  directory is reused instead.
* a member whose bytes come through Python (computed tensors, the pickle) is written chunk
  by chunk, each chunk's CRC computed on the worker while the chunk is written.

The CRC is ISA-L's (`isal`, several times faster than zlib's here) when installed, else zlib's.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptFileError
from ..tree import Entry, FileRange

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations are not evaluated at run time

    from ..output_file import OutputFile

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same numbers, slower
    from zlib import crc32

__all__ = ["StoredZipWriter", "crc32", "file_crc32", "local_header_size", "stored_member_crc"]

Progress = Callable[[int], None]

_WINDOW = 16 << 20  # bytes of a source file mapped at a time for its CRC
_AHEAD = 2  # chunks written ahead of their CRC: bounds the memory a slow CRC can hold
_DOSDATE = (1980 - 1980) << 9 | 1 << 5 | 1  # ZipInfo's default date_time, (1980, 1, 1, 0, 0, 0)
_VERSION, _ZIP64_VERSION = zipfile.DEFAULT_VERSION, zipfile.ZIP64_VERSION
_CREATE_SYSTEM = 0 if sys.platform == "win32" else 3  # as ZipInfo sets it
_EXTERNAL_ATTR = 0o600 << 16  # what ZipFile.open(..., "w") gives a member without one
_CRC_AT = 14  # offset of the CRC-32 field in a local file header


def _zip64_local(size: int) -> bool:
    """zipfile's rule for giving a member written by `open(..., "w")` a Zip64 local header."""
    return size * 1.05 > zipfile.ZIP64_LIMIT


def _encoded(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), 0x800  # the "language encoding" flag: names in UTF-8


def local_header_size(name: str, extra_len: int, size: int) -> int:
    """Bytes of a member's local header, so callers can place its data (e.g. on an alignment)."""
    return 30 + len(_encoded(name)[0]) + extra_len + (20 if _zip64_local(size) else 0)


@dataclass
class _Member:
    name: bytes
    flags: int
    extra: bytes
    offset: int
    size: int
    crc: int | Future
    in_header: int  # the CRC its local header was written with: patched at the end when it differs

    @property
    def zip64(self) -> bool:
        return _zip64_local(self.size)

    def local_header(self, crc: int) -> bytes:
        extra, sizes, version = self.extra, self.size, _VERSION
        if self.zip64:
            extra += struct.pack("<HHQQ", 1, 16, self.size, self.size)
            sizes, version = 0xFFFFFFFF, _ZIP64_VERSION
        head = struct.pack(zipfile.structFileHeader, zipfile.stringFileHeader, version, 0, self.flags, zipfile.ZIP_STORED,
                           0, _DOSDATE, crc, sizes, sizes, len(self.name), len(extra))
        return head + self.name + extra

    def central_entry(self) -> bytes:
        limit = zipfile.ZIP64_LIMIT
        fields: list[int] = []
        sizes = header_offset = 0
        if self.size > limit:
            fields += [self.size, self.size]
            sizes = 0xFFFFFFFF
        else:
            sizes = self.size
        if self.offset > limit:
            fields.append(self.offset)
            header_offset = 0xFFFFFFFF
        else:
            header_offset = self.offset
        extra = self.extra
        version = _ZIP64_VERSION if self.zip64 else _VERSION
        if fields:
            extra = struct.pack("<HH" + "Q" * len(fields), 1, 8 * len(fields), *fields) + extra
            version = _ZIP64_VERSION
        head = struct.pack(zipfile.structCentralDir, zipfile.stringCentralDir, version, _CREATE_SYSTEM, version, 0, self.flags,
                           zipfile.ZIP_STORED, 0, _DOSDATE, self.crc, sizes, sizes, len(self.name), len(extra), 0, 0, 0,
                           _EXTERNAL_ATTR, header_offset)
        return head + self.name + extra


class StoredZipWriter:
    """Appends stored members to `out`, a new file (surgery.output_file), then the central directory.

    Use as a context manager: leaving the block without an error writes the directory.
    """

    def __init__(self, out: OutputFile) -> None:
        self.out = out
        self.offset = 0
        self.members: list[_Member] = []
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()  # set on the way out: a CRC still running gives up at its next window

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            self._stop.set()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def write_bytes(self, name: str, data: bytes, extra: bytes = b"") -> None:
        """A small member, written with its header in one call."""
        member = self._member(name, extra, len(data), crc32(data))
        member.in_header = member.crc  # type: ignore[assignment]
        self._append(member.local_header(member.crc) + data)

    def write_chunks(self, name: str, chunks: Iterable[bytes | memoryview], size: int, extra: bytes = b"",
                     progress: Progress | None = None) -> int:
        """A member of `size` bytes from `chunks`; returns how many bytes the chunks gave.

        The header is patched afterwards, so a count other than `size` leaves a broken
        archive: the caller raises then.
        """
        member = self._member(name, extra, size, 0)
        self._append(member.local_header(0))
        crc = _ChunkCrc(self._worker())
        written = 0
        for chunk in chunks:
            crc.update(chunk)
            self.out.write(chunk)
            written += len(chunk)
            self.offset += len(chunk)
            if progress:
                progress(len(chunk))
        member.crc = crc.result
        return written

    def copy_range(self, name: str, entry: Entry, source: FileRange, extra: bytes = b"",
                   progress: Progress | None = None) -> int:
        """A member holding the bytes of `source`, copied file to file; returns the count copied."""
        known = stored_member_crc(source.path, source.offset, source.length)
        member = self._member(name, extra, source.length, known or 0)
        member.in_header = known or 0
        self._append(member.local_header(member.in_header))
        if known is None:
            member.crc = self._worker().submit(_file_crc, source.path, source.offset, source.length, self._stop)
        written = source.copy_into(entry, self.out, progress)
        self.offset += written
        return written

    def crcs(self) -> list[int]:
        """Every member's CRC-32 so far, in order (waiting for those still being computed)."""
        for m in self.members:
            if isinstance(m.crc, Future):
                m.crc = m.crc.result()
        return [m.crc for m in self.members]  # type: ignore[misc]

    def close(self) -> None:
        """Patch the CRCs into the local headers, then write the central directory and end records."""
        self.crcs()
        for m in self.members:
            if m.crc != m.in_header:
                self.out.patch(m.offset + _CRC_AT, struct.pack("<I", m.crc))
        start = self.offset
        directory = b"".join(m.central_entry() for m in self.members)
        self.out.write(directory + _end_records(len(self.members), start, len(directory)))
        self.offset += len(directory)

    def _member(self, name: str, extra: bytes, size: int, crc: int) -> _Member:
        raw, flags = _encoded(name)
        member = _Member(raw, flags, extra, self.offset, size, crc, 0)
        self.members.append(member)
        return member

    def _append(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def _worker(self) -> ThreadPoolExecutor:
        if self._pool is None:  # one thread: CRCs of one stream must run in order, and the copy takes the other core
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="surgery-crc32")
        return self._pool


def _end_records(count: int, start: int, size: int) -> bytes:
    """zipfile's end of central directory, preceded by the Zip64 end record and locator when needed."""
    out = b""
    if count > zipfile.ZIP_FILECOUNT_LIMIT or start > zipfile.ZIP64_LIMIT or size > zipfile.ZIP64_LIMIT:
        out += struct.pack(zipfile.structEndArchive64, zipfile.stringEndArchive64, 44, 45, 45, 0, 0, count, count, size, start)
        out += struct.pack(zipfile.structEndArchive64Locator, zipfile.stringEndArchive64Locator, 0, start + size, 1)
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    return out + struct.pack(zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, count, count, size, start, 0)


class _ChunkCrc:
    """The running CRC of a stream, each chunk's share computed on the worker while the caller writes it."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.value = 0
        self.lock = threading.Lock()
        self.pending: deque[Future] = deque()

    def update(self, chunk: bytes | memoryview) -> None:
        while len(self.pending) >= _AHEAD:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._add, chunk))  # one worker: chunks are added in order

    def _add(self, chunk: bytes | memoryview) -> None:
        self.value = crc32(chunk, self.value)

    @property
    def result(self) -> int:
        while self.pending:
            self.pending.popleft().result()
        return self.value


def file_crc32(path: Path, offset: int, length: int) -> int:
    """CRC-32 of `length` bytes of `path` from `offset`, read through mmap windows (no copy into Python)."""
    return _file_crc(path, offset, length, threading.Event())


def _file_crc(path: Path, offset: int, length: int, stop: threading.Event) -> int:
    crc = 0
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < offset + length:  # a mapping past the end would fault, not raise
            raise CorruptFileError(f"file ended before byte {offset + length}", str(path), "the file is truncated; copy or download it again")
        end = offset + length
        while offset < end and not stop.is_set():
            base = offset - offset % mmap.ALLOCATIONGRANULARITY  # mappings start on the granularity
            span = min(offset + _WINDOW, end) - base
            with mmap.mmap(f.fileno(), span, access=mmap.ACCESS_READ, offset=base) as window, memoryview(window) as view:
                crc = crc32(view[offset - base : span], crc)
            offset = base + span
    return crc


def stored_member_crc(path: Path, offset: int, length: int) -> int | None:
    """The CRC that a zip at `path` records for a stored member whose data is exactly this range, if any."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _stored_members(str(path), stat.st_size, stat.st_mtime_ns).get((offset, length))


@lru_cache(maxsize=8)
def _stored_members(path: str, size: int, mtime_ns: int) -> dict[tuple[int, int], int]:
    """(data offset, size) -> CRC of every stored member of the zip at `path`; empty if it is not a zip."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != zipfile.stringFileHeader:
                return {}
            found = {}
            for info in zipfile.ZipFile(f).infolist():
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    continue
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) < 30 or local[:4] != zipfile.stringFileHeader:
                    continue
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                found[(info.header_offset + 30 + name_len + extra_len, info.file_size)] = info.CRC
            return found
    except (OSError, zipfile.BadZipFile, ValueError, struct.error, EOFError):
        return {}
