"""PyTorch checkpoints, read without torch and without running code.

Two layouts are read:

- torch.save's zip format (the default since torch 1.6): `<name>/data.pkl` is a pickle of
  the state dict, and each tensor's storage is an uncompressed member `<name>/data/<key>`.
- The legacy format (`_use_new_zipfile_serialization=False`, common in weights that
  packages ship): five pickles in a row (the magic number, the protocol version 1001,
  sys_info, the object, the sorted list of storage keys), then for each key in that order
  an 8-byte little-endian element count and the storage's raw bytes.

Every pickle is read by one unpickler that knows only what a state dict needs
(containers, tensor rebuild calls, storage types) and maps those to our own harmless
stand-ins; any other global, whatever a `__reduce__` payload asks for, is refused with its
name, and BUILD is allowed only on an OrderedDict (torch keeps `_metadata` there). There
is no fallback to a full unpickler and no flag that enables one.

Tensor data is never unpickled: each entry points at its bytes inside the file, so
inspecting or converting reads only what it needs. Every count and offset is checked
against the file's size before anything is read. The unpickler is `torch_unpickler`'s,
choosing the state dict among the pickle's entries `torch_containers`'s, and writing is
`torch_writer`'s.
"""

from __future__ import annotations

import collections
import io
import math
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import dtypes
from ..errors import CorruptFileError, FormatError
from ..tree import CONVENTIONS, DROPPED_ON_READ, TORCH, Entry, FileRange, Source, Tree
from ._errors import ZIP_ERRORS, corrupt_error

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# CONTAINER_KEYS and _ALLOWED stay importable from here, where they used to live.
from .torch_containers import CONTAINER_KEYS, _left_out, _state_dict, _tensors  # noqa: F401
from .torch_unpickler import _ALLOWED, _FIX, _StorageRef, _TensorRef, _unpickle  # noqa: F401

NAME = "torch"
SUFFIXES = (".pt", ".pth")
# Writing needs torch's own pickler; until it is here, outputs go elsewhere (see surgery.io.check_output).
CANNOT_WRITE = "write .safetensors instead, which torch loads with safetensors.torch.load_file"
_TRUNCATED = "the file is truncated; copy or download it again"
MAX_PICKLE = 256 << 20  # a state dict's pickle holds names and shapes only; more is not a checkpoint

# The legacy format's first pickle is this number; the second is the protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAGIC_PICKLED = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # LONG1, 10 bytes
# Where our writer keeps the tree's string metadata: state_dict._metadata["__surgery__"].
SURGERY_METADATA = "__surgery__"
CONVENTION_KEY = "surgery.convention"


def sniff(path: Path, head: bytes, size: int) -> bool:
    if not path.is_file():
        return False
    if _is_legacy(head):
        return True
    if head[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except ZIP_ERRORS:  # whatever a broken archive raises, it is not a checkpoint we can read
        return False


def _is_legacy(head: bytes) -> bool:
    """A pickle (PROTO 2..5, maybe a FRAME) whose first value is the legacy magic number."""
    if head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return False
    at = 2 + (9 if head[2:3] == b"\x95" else 0)  # protocol 4+ frames the pickle
    return head[at : at + len(_MAGIC_PICKLED)] == _MAGIC_PICKLED


# -- reading ------------------------------------------------------------------------


class _Strided(Source):
    """A tensor that views its storage with a gap or a non-contiguous stride."""

    def __init__(self, storage: FileRange, ref: _TensorRef) -> None:
        self.storage, self.ref = storage, ref

    def read_array(self, entry: Entry) -> np.ndarray:
        import numpy as np  # only reading data needs numpy; listing a checkpoint does not

        dtype = dtypes.get(entry.dtype).numpy()
        little = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype  # 1-byte ml_dtypes have no byte order
        buf = bytearray(self.storage.length)
        with open(self.storage.path, "rb") as f:
            f.seek(self.storage.offset)
            got = f.readinto(buf) if buf else 0
        if got != self.storage.length:
            raise CorruptFileError(
                f"expected {self.storage.length} bytes for tensor {entry.name!r}'s storage but the file gave {got}",
                str(self.storage.path),
                "the file is truncated; copy or download it again",
            )
        # Stride over opaque items: as_strided rebuilds arrays from typestrs, which ml_dtypes' float8 lack.
        base = np.frombuffer(buf, dtype=np.dtype((np.void, dtype.itemsize)))
        view = np.lib.stride_tricks.as_strided(
            base[self.ref.offset :], self.ref.shape, tuple(s * base.itemsize for s in self.ref.stride), writeable=False
        )
        return np.ascontiguousarray(view).view(little).astype(dtype, copy=False)

    def paths(self) -> tuple[Path, ...]:
        return self.storage.paths()


def load(path: Path, key: str | None = None) -> Tree:
    """Open a torch.save checkpoint (zip or legacy) lazily, without torch.

    Args:
        path: the checkpoint.
        key: the top-level entry that holds the state dict; by default the checkpoint
            itself when it is one, else the first of CONTAINER_KEYS that is.

    Returns:
        A tree in the TORCH convention; `surgery.torch_key` in its metadata names the
        container the state dict came from, and tensors sharing a storage carry the same
        `torch.storage` attr.

    Raises:
        UnsafeFileError: a pickle asks for anything but tensors and containers.
        CorruptFileError: truncated pickles or data, counts that disagree.
        FormatError: no state dict (or none under `key`).
    """
    path = Path(path)
    with open(path, "rb") as f:
        legacy = _is_legacy(f.read(32))
    refused: list[str] = []
    obj, storages = (_read_legacy if legacy else _read_zip)(path, refused)
    holder, chosen = _state_dict(obj, key, str(path), refused)
    state = _tensors(holder)
    entries = [_entry(path, str(name), ref, storages) for name, ref in state.items()]
    metadata = _surgery_metadata(holder, obj)
    convention = CONVENTIONS.get(metadata.pop(CONVENTION_KEY, ""), TORCH)
    format_state = {}
    if chosen:
        metadata["surgery.torch_key"] = chosen
        left = _left_out(obj, chosen)
        if left:
            format_state[DROPPED_ON_READ] = "; ".join(left)
    format_state.update(_training(obj, chosen, path, entries, storages))
    return Tree(entries, format=NAME, convention=convention, metadata=metadata, format_state=format_state)


def _training(obj: Any, chosen: str, path: Path, entries: list[Entry], storages: dict[str, FileRange]) -> dict:
    """The optimizer state and other entries beside the state dict (see torch_training)."""
    from .torch_training import TRAINING_KEY, read_training

    state = read_training(obj, chosen, path, entries, lambda name, ref: _entry(path, name, ref, storages))
    return {TRAINING_KEY: state} if state is not None else {}


def _read_zip(path: Path, refused: list[str]) -> tuple[Any, dict[str, FileRange]]:
    """The object in data.pkl, and where each storage's bytes are; refused globals go to `refused`."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise FormatError("a zip archive without data.pkl", where, _FIX)
            info = z.getinfo(pkl)
            if info.file_size > MAX_PICKLE:
                raise CorruptFileError(f"data.pkl claims {info.file_size} bytes", where, _FIX)
            prefix = pkl[: -len("data.pkl")]
            storages: dict[str, _StorageRef] = {}
            obj = _unpickle(io.BytesIO(z.read(pkl)), where, storages, refused=refused)
            members = {i.filename: i for i in z.infolist()}
    except zipfile.BadZipFile as e:
        raise FormatError("not a torch.save checkpoint (neither a zip archive nor the legacy format)", where, _FIX) from e
    except (ValueError, struct.error, EOFError) as e:
        raise CorruptFileError(f"cannot read the checkpoint ({e})", where, _FIX) from e
    except ZIP_ERRORS as e:  # compression method, zip version, flag bits, encryption, bad deflate data, names
        raise corrupt_error(e, where, "the zip archive", _FIX) from e
    with open(path, "rb") as raw:
        return obj, {k: _zip_storage(path, raw, members, prefix, ref) for k, ref in storages.items()}


def _zip_storage(path: Path, raw: BinaryIO, members: dict, prefix: str, ref: _StorageRef) -> FileRange:
    where = str(path)
    member = members.get(f"{prefix}data/{ref.key}")
    if member is None:
        raise CorruptFileError(f"storage {ref.key!r} is missing from the archive", where, _FIX)
    if member.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"storage {ref.key!r} is compressed", where, "re-save with torch.save, which stores tensors uncompressed")
    length = dtypes.get(ref.dtype).nbytes(ref.numel)
    if member.file_size != length:
        raise CorruptFileError(f"storage {ref.key!r} holds {member.file_size} bytes but its header says {length}", where, _FIX)
    raw.seek(member.header_offset)
    local = raw.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"storage {ref.key!r} has no local zip header", where, _FIX)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return FileRange(path, member.header_offset + 30 + name_len + extra_len, length)


class _Bounded(io.RawIOBase):
    """A file's bytes from its current position, never more than `limit` in all.

    The pickles are read straight from the file; no pickle can make us allocate or read
    more than the file holds, however large a length it claims.
    """

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        n = self.left if size is None or size < 0 else min(size, self.left)
        line = self.f.readline(n)
        self.left -= len(line)
        return line


def _read_legacy(path: Path, refused: list[str]) -> tuple[Any, dict[str, FileRange]]:
    """Walk the legacy layout once: the five pickles, then each storage's count and place."""
    where = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        pickles = _Bounded(f, min(size, MAX_PICKLE))
        _legacy_header(pickles, where)
        storages: dict[str, _StorageRef] = {}
        obj = _unpickle(pickles, where, storages, legacy=True, refused=refused)
        keys = _unpickle(pickles, where)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CorruptFileError("the storage key list is not a list of names", where, _FIX)
        return obj, _legacy_storages(path, f, size, keys, storages)


def _legacy_header(pickles: _Bounded, where: str) -> None:
    if _unpickle(pickles, where) != LEGACY_MAGIC:
        raise FormatError("not a torch.save checkpoint (bad magic number)", where, _FIX)
    protocol = _unpickle(pickles, where)
    if protocol != LEGACY_PROTOCOL:
        raise FormatError(f"legacy torch.save protocol {str(protocol)[:30]}, expected {LEGACY_PROTOCOL}", where, _FIX)
    if not isinstance(_unpickle(pickles, where), dict):
        raise CorruptFileError("the legacy sys_info is not a dict", where, _FIX)


def _legacy_storages(path: Path, f: BinaryIO, size: int, keys: list[str], storages: dict[str, _StorageRef]) -> dict[str, FileRange]:
    """Each storage: an 8-byte little-endian element count, then its bytes; checked, not read."""
    where = str(path)
    if len(set(keys)) != len(keys):
        raise CorruptFileError("the storage key list names a storage twice", where, _FIX)
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise CorruptFileError(f"storage {missing[0]!r} has no data in the file", where, _FIX)
    found: dict[str, FileRange] = {}
    offset = f.tell()
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise CorruptFileError(f"the storage key list names {key[:40]!r}, which no tensor uses", where, _FIX)
        if offset + 8 > size:
            raise CorruptFileError(f"the file ends before storage {key!r} (at byte {offset} of {size})", where, _TRUNCATED)
        f.seek(offset)
        (count,) = struct.unpack("<q", f.read(8))
        if count != ref.numel:
            raise CorruptFileError(f"storage {key!r} holds {count} elements in the file but its header says {ref.numel}", where, _FIX)
        length = dtypes.get(ref.dtype).nbytes(count)
        if offset + 8 + length > size:
            raise CorruptFileError(f"storage {key!r} needs {length} bytes at byte {offset + 8} but the file has {size}", where, _TRUNCATED)
        found[key] = FileRange(path, offset + 8, length)
        offset += 8 + length
    return found


def _surgery_metadata(*holders: Any) -> dict[str, str]:
    """Our writer's metadata: `_metadata["__surgery__"]` on the state dict, else on its container."""
    for holder in holders:
        if type(holder) is not collections.OrderedDict:
            continue
        versions = holder.__dict__.get("_metadata")
        found = versions.get(SURGERY_METADATA) if isinstance(versions, dict) else None
        if isinstance(found, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
            return dict(found)
    return {}


def _entry(path: Path, name: str, ref: _TensorRef, storages: dict[str, FileRange]) -> Entry:
    where = str(path)
    root = storages[ref.storage.key]
    dtype = dtypes.get(ref.storage.dtype)
    # A storage view (legacy) starts `start` elements into its root storage.
    storage = FileRange(path, root.offset + dtype.nbytes(ref.storage.start), dtype.nbytes(ref.storage.numel))
    numel = math.prod(ref.shape)
    if any(n < 0 for n in ref.shape) or any(s < 0 for s in ref.stride) or len(ref.stride) != len(ref.shape) or ref.offset < 0:
        raise CorruptFileError(f"tensor {name!r} has a negative size, stride or offset", where, _FIX)
    if numel and ref.offset + _span(ref) > ref.storage.numel:
        raise CorruptFileError(f"tensor {name!r} reaches past its storage", where, _FIX)
    if _contiguous(ref):
        source: Source = FileRange(path, storage.offset + dtype.nbytes(ref.offset), dtype.nbytes(numel))
    else:
        source = _Strided(storage, ref)
    return Entry(name, ref.shape, dtype.name, source, {"torch.storage": ref.storage.key})


def _span(ref: _TensorRef) -> int:
    return 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))


def _contiguous(ref: _TensorRef) -> bool:
    expected = 1
    for n, s in zip(reversed(ref.shape), reversed(ref.stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


# Writing needs no reader state; it lives in its own module, imported only to write (it imports
# hashlib, whose OpenSSL start-up `surgery inspect` of a .pt need not pay).


def check_writable(tree: Tree) -> None:
    """See surgery.formats.torch_writer.check_writable."""
    from .torch_writer import check_writable

    check_writable(tree)


def save(tree: Tree, path: Path, **options: Any) -> None:
    """See surgery.formats.torch_writer.save."""
    from .torch_writer import save

    save(tree, path, **options)
