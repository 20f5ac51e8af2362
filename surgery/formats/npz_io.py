"""NumPy .npz archives: a zip of .npy members, one per tensor, and nothing else.

An npz written here holds exactly the tree's tensors, so `np.load(f)` gives a state
dict that `load_state_dict(strict=True)` accepts and `for k in np.load(f)` sees only
tensors. npz has no slot for metadata, so it keeps no provenance, metadata or
convention (the names tell the convention, see `surgery.conventions`), and dtypes numpy
lacks (bfloat16, float8, packed fp4/fp6) are refused: write safetensors for those.

Files written by earlier versions carry a `__surgery__.json` member (metadata,
convention, the real dtype of raw-bit members); it is still read.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .. import dtypes
from ..durable import fsync
from ..errors import CorruptFileError, OutputError, UnsafeFileError
from ..tree import CONVENTIONS, UNKNOWN, Entry, Source, Tree
from ._errors import ZIP_ERRORS, corrupt_on
from ._errors import describe as _describe
from ._json import loads_strict

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
# numpy (whose .npy header reader we use) is imported when an npz is read or written, not when
# this module is: format detection imports it for every zip, a PyTorch checkpoint's too.

NAME = "npz"
SUFFIXES = (".npz",)
SIDE_MEMBER = "__surgery__.json"
# deflate cannot expand data by more than about 1032:1; a larger claim is a lie or a bomb.
_MAX_DEFLATE_RATIO = 1100
_MAX_SIDE = 100 << 20
_FIX = "the file is corrupt or not an .npz archive; re-export it"

Progress = Callable[[int], None]


def sniff(path: Path, head: bytes, size: int) -> bool:
    if path.is_dir() or head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except ZIP_ERRORS:  # whatever a broken archive raises, it is not an npz we can read
        return False
    return all(n.endswith(".npy") or n == SIDE_MEMBER for n in names)


# -- reading ------------------------------------------------------------------------


class _Member(Source):
    """One .npy member of an archive, read when asked."""

    def __init__(self, path: Path, member: str, stored: np.dtype, fortran: bool, stored_shape: tuple[int, ...]) -> None:
        self.path, self.member = path, member
        self.stored, self.fortran, self.stored_shape = stored, fortran, stored_shape

    def _raw(self, entry: Entry) -> bytes:
        with corrupt_on(ZIP_ERRORS, str(self.path), f"member {self.member!r}", _FIX):
            with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
                _read_npy_header(f)
                raw = f.read(entry.nbytes + 1)
        if len(raw) != entry.nbytes:
            raise CorruptFileError(
                f"member {self.member!r} holds {len(raw)} data bytes but its header needs {entry.nbytes}",
                str(self.path),
                _FIX,
            )
        return raw

    def read_array(self, entry: Entry) -> np.ndarray:
        import numpy as np

        target = dtypes.get(entry.dtype).numpy()  # raises for packed dtypes
        array = np.frombuffer(self._raw(entry), dtype=self.stored).reshape(
            self.stored_shape, order="F" if self.fortran else "C"
        )
        if np.dtype(self.stored.name) != target:  # raw bits of a dtype numpy lacks
            array = array.view(self.stored.newbyteorder("<")).view(target)
        return np.array(array.astype(target.newbyteorder("="), copy=False), order="C", copy=True)

    def iter_bytes(self, entry: Entry) -> Iterator[memoryview]:
        if dtypes.get(entry.dtype).packed or (not self.fortran and self.stored.byteorder != ">"):
            yield memoryview(self._raw(entry))
        else:
            yield from super().iter_bytes(entry)

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if reader is None:
        raise ValueError(f"unsupported .npy version {version}")
    return reader(f)


def load(path: Path) -> Tree:
    path = Path(path)
    where = str(path)
    with corrupt_on(ZIP_ERRORS, where, "the zip archive", _FIX):
        try:
            z = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise CorruptFileError(f"not a readable zip archive ({e})", where, _FIX) from e
    with z, corrupt_on(ZIP_ERRORS, where, "the zip archive", _FIX):
        side = _side(z, where)
        entries = [_member_entry(z, info, side, path) for info in z.infolist() if info.filename != SIDE_MEMBER]
    convention = CONVENTIONS.get(side.get("convention", ""), UNKNOWN)
    return Tree(entries, format=NAME, convention=convention, metadata=side.get("metadata", {}))


def _side(z: zipfile.ZipFile, where: str) -> dict:
    if SIDE_MEMBER not in z.namelist():
        return {}
    if z.getinfo(SIDE_MEMBER).file_size > _MAX_SIDE:
        raise CorruptFileError(f"{SIDE_MEMBER} is larger than {_MAX_SIDE} bytes", where, _FIX)
    side = loads_strict(z.read(SIDE_MEMBER), where, SIDE_MEMBER, _FIX)
    fields_ok = isinstance(side, dict) and all(
        isinstance(side.get(k, {}), dict) for k in ("metadata", "dtypes", "shapes")
    )
    if not fields_ok or not all(isinstance(v, str) for v in side.get("metadata", {}).values()):
        raise CorruptFileError(f"{SIDE_MEMBER} does not have the expected fields", where, _FIX)
    return side


def _member_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo, side: dict, path: Path) -> Entry:
    where = f"{path}, member {info.filename!r}"
    if not info.filename.endswith(".npy"):
        raise CorruptFileError("member is not a .npy array", where, _FIX)
    name = info.filename[: -len(".npy")]
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(info.compress_size, 1) * _MAX_DEFLATE_RATIO:
        raise CorruptFileError(f"member claims {info.file_size} bytes from {info.compress_size} compressed", where, _FIX)
    try:
        with z.open(info) as f:
            shape, fortran, stored = _read_npy_header(f)
            header_len = f.tell()
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, SyntaxError) as e:
        raise CorruptFileError(f"bad .npy header ({e})", where, _FIX) from e
    except ZIP_ERRORS as e:  # compression method, encryption, bad deflate data
        raise CorruptFileError(f"cannot read the member ({_describe(e)})", where, _FIX) from e
    if stored.hasobject:
        raise UnsafeFileError("member holds Python objects, which load by unpickling", where, "store numeric arrays only")
    real = _real_dtype(side.get("dtypes", {}).get(name), stored, where)
    logical = tuple(side.get("shapes", {}).get(name, shape))
    want = real.nbytes(math.prod(logical))
    if info.file_size - header_len != want or stored.itemsize * math.prod(shape) != want:
        raise CorruptFileError(
            f"shape {list(logical)} of {real.name} needs {want} bytes but the member holds {info.file_size - header_len}",
            where,
            _FIX,
        )
    return Entry(name, logical, real.name, _Member(path, info.filename, stored, fortran, tuple(shape)))


def _real_dtype(recorded: str | None, stored: np.dtype, where: str) -> dtypes.DType:
    try:
        return dtypes.get(recorded) if recorded else dtypes.from_numpy(stored)
    except Exception as e:
        raise CorruptFileError(f"unsupported dtype {recorded or stored.str}", where, "store a numeric dtype") from e


# -- writing ------------------------------------------------------------------------


def check_writable(tree: Tree) -> None:
    """What an npz cannot hold, refused before anything is written."""
    for e in tree.values():
        if "\x00" in e.name:
            raise OutputError(f"tensor name {e.name!r} holds a NUL character", "npz", "rename it, or write safetensors")
        if not dtypes.get(e.dtype).numpy_native:
            raise OutputError(
                f"npz cannot hold {e.dtype} tensors such as {e.name!r}: numpy has no such dtype",
                "npz",
                "write .safetensors, or cast with --dtype float32",
            )


def save(tree: Tree, path: Path, *, progress: Progress | None = None) -> None:
    """Stream every tensor into a new .npz at `path`, one member at a time (stored, not deflated).

    Members are exactly the tensors; metadata and provenance are not kept (npz has no place for them).
    """
    check_writable(tree)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for e in tree.entries():
            with z.open(_member_info(e.name + ".npy"), "w", force_zip64=True) as f:
                _write_npy_header(f, _member_layout(e))
                for chunk in e.iter_bytes():
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))
    with open(path, "rb") as f:
        fsync(f.fileno())


def _member_info(name: str) -> zipfile.ZipInfo:
    # A fixed timestamp keeps archives byte-identical from run to run.
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    return info


def _member_layout(e: Entry) -> dict:
    """The .npy header for an entry (numpy's own dtype, little-endian)."""
    from numpy.lib import format as npy

    stored = dtypes.get(e.dtype).numpy().newbyteorder("<")
    return {"descr": npy.dtype_to_descr(stored), "fortran_order": False, "shape": tuple(e.shape)}


def _write_npy_header(f, header: dict) -> None:
    from numpy.lib import format as npy

    try:
        npy.write_array_header_1_0(f, header)
    except ValueError:  # header longer than version 1.0 allows
        npy.write_array_header_2_0(f, header)
