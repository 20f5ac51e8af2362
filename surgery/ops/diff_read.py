"""How `diff` reads: each file opened once, two reused buffers, byte streams cut at element boundaries.

A diff reads both checkpoints once, front to back, so its speed is the speed of the reads and of
one `memcmp` per chunk pair. Three things keep it there:
- a file is opened once for the whole diff (not once per tensor: 50,000 tensors, 50,000 opens);
- every full chunk is read with `readinto` into one of two buffers (one per side) allocated
  once, so there is no allocation, and no page fault of fresh memory, per chunk;
- chunks compare as `bytearray == bytearray`, which is `memcmp` (a memoryview comparison goes
  element by element through struct unpacking, a hundred times slower).
A chunk is valid until the next read of its side, which is all the comparison needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Self

from .. import dtypes
from ..tree import Entry, FileRange

# Bytes per side per read: small enough that both chunks are still in cache when they are
# compared (16 MiB ran at half the speed here), large enough that Python's per-read cost vanishes.
CHUNK = 1 << 20


class Reader:
    """The open files and the two buffers of one diff; a context manager that closes the files."""

    def __init__(self, chunk: int = CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 byte, not {chunk}")
        self.chunk = chunk
        self.files: dict[Path, list] = {}  # path -> [raw file, its position]: no lseek for sequential reads
        self.buffers: tuple[bytearray, bytearray] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for file, _ in self.files.values():
            file.close()
        self.files.clear()

    def read(self, side: int, entry: Entry, source: FileRange, offset: int, n: int) -> bytearray:
        """n bytes of source's file from `offset` (absolute): side 0's or side 1's buffer when n is a full chunk."""
        if n == self.chunk:
            if self.buffers is None:
                self.buffers = (bytearray(self.chunk), bytearray(self.chunk))
            buffer = self.buffers[side]
        else:
            buffer = bytearray(n)  # a tail: `==` needs a bytearray of exactly n bytes
        slot = self._open(source.path)
        file: BinaryIO = slot[0]
        if slot[1] != offset:
            file.seek(offset)
        view, got = memoryview(buffer), 0
        while got < n:
            k = file.readinto(view[got:])
            if not k:
                slot[1] = None  # position unknown: seek next time
                raise source._truncated(entry, n - got)
            got += k
        slot[1] = offset + n
        return buffer

    def _open(self, path: Path) -> list:
        slot = self.files.get(path)
        if slot is None:
            slot = self.files[path] = [open(path, "rb", buffering=0), 0]  # noqa: SIM115 - closed by close()
        return slot


def item_bytes(dtype: str) -> int:
    """Bytes of one element, 1 for packed dtypes: chunks are cut only at multiples of this."""
    return max(dtypes.get(dtype).bits // 8, 1)


def aligned(reader: Reader, a: Entry, b: Entry, skip: int = 0) -> Iterator[tuple[bytearray | bytes, bytearray | bytes]]:
    """Both byte streams cut at the same element boundaries, from element `skip` on, whatever chunks each source yields."""
    item_a, item_b = item_bytes(a.dtype), item_bytes(b.dtype)
    elements = max(reader.chunk // max(item_a, item_b), 1)
    stream_a, stream_b = _stream(reader, 0, a, skip * item_a), _stream(reader, 1, b, skip * item_b)
    while True:
        chunk_a, chunk_b = stream_a.take(elements * item_a), stream_b.take(elements * item_b)
        if not chunk_a and not chunk_b:
            return
        yield chunk_a, chunk_b


def _stream(reader: Reader, side: int, entry: Entry, skip: int) -> _FileChunks | _Rechunk:
    source = entry.source
    if type(source) is FileRange:
        return _FileChunks(reader, side, entry, source, skip)
    stream = _Rechunk(entry.iter_bytes())
    if skip:
        stream.take(skip)
    return stream


class _FileChunks:
    """A file range read through the diff's Reader."""

    def __init__(self, reader: Reader, side: int, entry: Entry, source: FileRange, skip: int) -> None:
        self.reader, self.side, self.entry, self.source = reader, side, entry, source
        self.at, self.end = source.offset + skip, source.offset + source.length

    def take(self, n: int) -> bytearray:
        n = min(n, self.end - self.at)
        chunk = self.reader.read(self.side, self.entry, self.source, self.at, n)
        self.at += n
        return chunk


class _Rechunk:
    """Takes exactly n bytes at a time from an iterator of chunks (fewer only at the end)."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        self.chunks, self.pending = chunks, memoryview(b"")

    def take(self, n: int) -> bytes:
        parts, have = [self.pending] if len(self.pending) else [], len(self.pending)
        for chunk in self.chunks if have < n else ():
            chunk = memoryview(chunk).cast("B")
            parts.append(chunk)
            have += len(chunk)
            if have >= n:
                break
        joined = b"".join(parts)
        self.pending = memoryview(joined)[n:]
        return joined[:n]
