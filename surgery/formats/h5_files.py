"""Opening an HDF5 file where its bytes are: a path, a byte range of another file (a stored
member of a `.keras` zip, read in place), or a temporary copy of a compressed member.

Kept apart from the Keras reader and writer, which only ask for an open `h5py.File`.
"""

from __future__ import annotations

import io
import os
import weakref
from pathlib import Path
from typing import Any

__all__ = ["Place"]


def _h5py():
    from .keras_h5 import _h5py as load  # one place says how a missing h5py is reported

    return load()


class Place:
    """Where an HDF5 file's bytes are when it is a member of another file (a `.keras` zip): a byte
    range of that file, read in place, or a temporary copy (`copy`), which is deleted once no
    entry uses this place any more (or at exit)."""

    def __init__(self, offset: int = 0, size: int = 0, copy: Path | None = None) -> None:
        self.offset, self.size, self.copy = offset, size, copy
        if copy is not None:
            weakref.finalize(self, _unlink, copy)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _RangeFile(io.RawIOBase):
    """A read-only file object over bytes [offset, offset + size) of a file: h5py reads a zip
    member through it without extracting it, and can never read past the member's end."""

    def __init__(self, path: Path, place: Place) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start, self._size, self._pos = place.offset, place.size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), max(0, self._size - self._pos))
        data = os.pread(self._fd, wanted, self._start + self._pos) if wanted else b""
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class _Opened:
    """An h5py.File on a path, on a member's byte range, or on its temporary copy; closes both."""

    def __init__(self, path: Path, place: Place | None) -> None:
        in_place = place is not None and place.copy is None
        self._raw = _RangeFile(path, place) if in_place else None
        target = self._raw if self._raw is not None else (place.copy if place is not None else path)
        try:
            self.file = _h5py().File(target, "r")
        except BaseException:
            self.close_raw()
            raise

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.close_raw()

    def close_raw(self) -> None:
        if self._raw is not None:
            self._raw.close()

    def __enter__(self) -> Any:
        return self.file

    def __exit__(self, *exc: object) -> None:
        self.close()
