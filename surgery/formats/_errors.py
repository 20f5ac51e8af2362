"""What third-party readers raise on a corrupt file, turned into our CorruptFileError at each format's edge.

zipfile and zlib raise far more than BadZipFile on hostile archives: zlib.error for bad
deflate data, NotImplementedError for unknown compression methods, zip versions and
flag bits, RuntimeError for encrypted members, UnicodeDecodeError for UTF-8-flagged
names that are not UTF-8, and OSError/ValueError/struct.error/EOFError/OverflowError for
offsets and sizes that lie. h5py adds RuntimeError, KeyError, ValueError, TypeError and
OSError from HDF5's own checks.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CorruptFileError, SurgeryError

# Errors a problem with the file itself raises (not a corrupt archive): let the caller say so.
_NOT_CORRUPTION = (FileNotFoundError, PermissionError, IsADirectoryError, MemoryError)

ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, UnicodeDecodeError, OSError, ValueError,
    EOFError, struct.error, OverflowError, KeyError, IndexError,
)
H5_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, KeyError, ValueError, TypeError, OSError, IndexError, OverflowError, AttributeError, UnicodeDecodeError)


def describe(e: BaseException) -> str:
    """The cause in a few words, on one line, for the message's parentheses."""
    if isinstance(e, zlib.error):
        return f"bad compressed data: {e}"
    if isinstance(e, UnicodeDecodeError):
        return f"a name is not valid UTF-8: byte {e.object[e.start:e.start + 1]!r} at {e.start}"
    if isinstance(e, RuntimeError) and "encrypt" in str(e).lower():
        return "an encrypted member"
    if isinstance(e, NotImplementedError):
        return f"unsupported zip feature: {e}"
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_disk_full(e: BaseException) -> bool:
    """HDF5 reports a failed write as text ("errno = 28, error message = 'No space left on device'")."""
    import errno

    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "errno = 28" in text or "No space left on device" in text


def corrupt_error(e: BaseException, where: str, place: str, fix: str) -> CorruptFileError:
    """The CorruptFileError for a third-party exception `e` met while reading `place`."""
    return CorruptFileError(f"cannot read {place} ({describe(e)})", where, fix)


@contextmanager
def corrupt_on(errors: tuple[type[BaseException], ...], where: str, place: str, fix: str) -> Iterator[None]:
    """Raise any of `errors` inside the block as CorruptFileError("cannot read <place> (<why>)")."""
    try:
        yield
    except (SurgeryError, *_NOT_CORRUPTION):
        raise
    except errors as e:
        raise corrupt_error(e, where, place, fix) from e
