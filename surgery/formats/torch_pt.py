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
against the file's size before anything is read. Writing is `torch_writer`'s.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import dtypes
from ..errors import CorruptFileError, FormatError, SurgeryError, UnsafeFileError
from ..tree import CONVENTIONS, DROPPED_ON_READ, TORCH, Entry, FileRange, Source, Tree
from ._errors import ZIP_ERRORS, corrupt_error

NAME = "torch"
SUFFIXES = (".pt", ".pth")
# Writing needs torch's own pickler; until it is here, outputs go elsewhere (see surgery.io.check_output).
CANNOT_WRITE = "write .safetensors instead, which torch loads with safetensors.torch.load_file"
_FIX = "the file is corrupt or not a torch.save checkpoint; save it again"
_TRUNCATED = "the file is truncated; copy or download it again"
_UNSAFE_FIX = "surgery reads only tensors and plain containers and never runs a checkpoint's code; save model.state_dict() where the model is built"
MAX_PICKLE = 256 << 20  # a state dict's pickle holds names and shapes only; more is not a checkpoint

# Containers that wrap a state dict in training checkpoints, in the order we look for them.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "ema", "module", "net")

# The legacy format's first pickle is this number; the second is the protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAGIC_PICKLED = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # LONG1, 10 bytes
# Where our writer keeps the tree's string metadata: state_dict._metadata["__surgery__"].
SURGERY_METADATA = "__surgery__"
CONVENTION_KEY = "surgery.convention"

_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64", "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
}


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


# -- the restricted unpickler ---------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int
    start: int = 0  # elements into the root storage (legacy storage views)


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor without a storage")
    shape = tuple(int(n) for n in size)
    stride = tuple(int(n) for n in stride)
    return _TensorRef(storage, int(offset), shape, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, _grad, _hooks, dtype, *_ignored) -> _TensorRef:
    # Newer torch saves some dtypes (float8, unsigned) as untyped byte storages plus a dtype.
    if not isinstance(storage, _StorageRef) or not isinstance(dtype, _StorageType):
        raise pickle.UnpicklingError("a tensor without a storage or dtype")
    if storage.dtype == "uint8":
        _check_supported(dtype.dtype)
        itemsize = max(dtypes.get(dtype.dtype).bits // 8, 1)
        storage = _StorageRef(storage.key, dtype.dtype, storage.numel // itemsize, storage.start // itemsize)
    return _rebuild_tensor(storage, offset, size, stride)


class _UnsupportedDtype(Exception):
    """A torch dtype surgery has no DType for; `_unpickle` names it with the file."""


def _check_supported(dtype: str) -> None:
    # torch has dtypes no other format has (complex128, for one); refuse them by name while
    # unpickling rather than fail later on an unknown dtype with no file in the message.
    if dtype not in dtypes.DTYPES:
        raise _UnsupportedDtype(dtype)


def _rebuild_parameter(data, *_ignored) -> Any:
    return data


class _Refused:
    """What the unpickler returns for a global it does not allow: an inert placeholder.

    Nothing of the named class is imported or run. Calling it, building it or filling it
    (what a pickle does to a foreign object) only gives more placeholders, so the rest of
    the pickle still reads; a state dict that contains one is refused by name (`_state_dict`),
    and entries beside the state dict that hold one are skipped and reported.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}, not loaded>"

    def __call__(self, *_args: Any, **_kwargs: Any) -> _Refused:
        return _Refused(self.name)

    def __setitem__(self, _key: Any, _value: Any) -> None:
        pass

    def append(self, _value: Any) -> None:
        pass

    def extend(self, _values: Any) -> None:
        pass


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


# (module, name) -> the stand-in we return instead of the real object.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _StorageType("uint8"),
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),
    **{("torch", storage): _StorageType(dtype) for storage, dtype in _STORAGES.items()},
    # dtype objects, as _rebuild_tensor_v3 names them
    **{("torch", name): _StorageType(name) for name in set(_STORAGES.values())},
    # dtypes torch saves only as untyped storages (they have no typed storage class)
    **{("torch", name): _StorageType(name) for name in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")},
}


class _Unpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be overridden, C's cannot
    """Reads one pickle with only `_ALLOWED` globals.

    `storages` collects every storage the pickle names (key -> root storage); None means
    the pickle may name none (the legacy header pickles). `legacy` selects the legacy
    persistent id, which carries a sixth field: an optional storage view.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, where: str, storages: dict[str, _StorageRef] | None = None, legacy: bool = False) -> None:
        super().__init__(file)
        self.where, self.storages, self.legacy = where, storages, legacy
        self.views: dict[str, _StorageRef] = {}
        self.refused: list[str] = []  # globals replaced by placeholders, in the order asked for

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            # Not imported, never run: a placeholder, refused by name if the state dict needs it.
            self.refused.append(f"{module}.{name}")
            return _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        fields = 6 if self.legacy else 5
        if self.storages is None or not (
            isinstance(pid, tuple) and len(pid) == fields and pid[0] == "storage" and isinstance(pid[1], _StorageType)
        ):
            if self.refused:  # a whole pickled module names its class first: say that class
                raise _refusal(self.refused[0], self.where)
            raise UnsafeFileError(f"the checkpoint holds an unknown persistent object {str(pid)[:60]!r}", self.where, _UNSAFE_FIX)
        kind, key, numel = pid[1], str(pid[2]), _count(pid[4], "storage size")
        _check_supported(kind.dtype)
        if key in self.views:
            raise pickle.UnpicklingError(f"storage key {key!r} also names a storage view")
        root = self.storages.setdefault(key, _StorageRef(key, kind.dtype, numel))
        if root.dtype != kind.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} is read as both {root.dtype} and {kind.dtype}")
        return self._view(root, pid[5]) if self.legacy and pid[5] is not None else root

    def _view(self, root: _StorageRef, view: Any) -> _StorageRef:
        # Storage views (torch < 0.4): (view_key, offset, size) in elements of the root storage.
        if not (isinstance(view, tuple) and len(view) == 3):
            raise pickle.UnpicklingError(f"a storage view {str(view)[:60]!r}")
        key, start, size = str(view[0]), _count(view[1], "view offset"), _count(view[2], "view size")
        if key in self.storages:
            raise pickle.UnpicklingError(f"storage view key {key!r} also names a storage")
        if start + size > root.numel:
            raise pickle.UnpicklingError(f"a view of {size} elements at {start} in storage {root.key!r} of {root.numel}")
        # torch keeps the first view of a key, whatever a later id says.
        return self.views.setdefault(key, _StorageRef(root.key, root.dtype, size, start))

    def _build(self) -> None:
        # torch stores a module's versions as OrderedDict attributes (state_dict._metadata);
        # any other object that asks for its state to be set is not a state dict.
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is _Refused:
            return  # a placeholder keeps no state
        if type(inst) is not collections.OrderedDict:
            raise UnsafeFileError(f"the checkpoint asks to set the state of a {_kind(inst)}, which is not a container", self.where, _UNSAFE_FIX)
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError("an OrderedDict state that is not a dict of attributes")
        inst.__dict__.update(state)

    dispatch[pickle.BUILD[0]] = _build

    def _extension(self) -> None:
        # EXT opcodes name a global through copyreg's process-wide registry, which other code
        # may fill; torch never writes them, so no lookup is made at all.
        raise UnsafeFileError("the checkpoint names a global by a pickle extension code, which state dicts never use", self.where, _UNSAFE_FIX)

    for _opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _extension
    del _opcode

    def _newobj(self) -> None:
        # cls.__new__(cls, *args) in pickle; here only a placeholder can be "created" this way
        # (the allowlist's containers and tensors are all rebuilt by REDUCE).
        args = self.stack.pop()
        self._create(self.stack.pop(), args)

    def _newobj_ex(self) -> None:
        self.stack.pop()  # keyword arguments: nothing to pass them to
        args = self.stack.pop()
        self._create(self.stack.pop(), args)

    def _create(self, cls: Any, args: Any) -> None:
        if type(cls) is not _Refused:
            raise pickle.UnpicklingError(f"NEWOBJ on a {_kind(cls)}")
        self.append(cls(*args))

    dispatch[pickle.NEWOBJ[0]] = _newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _newobj_ex


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise pickle.UnpicklingError(f"a {what} of {str(value)[:30]!r}")
    return value


def _kind(obj: Any) -> str:
    kinds = {_TensorRef: "tensor", _StorageRef: "storage", _StorageType: "storage type"}
    return kinds.get(type(obj), "function" if callable(obj) else type(obj).__name__)


def _unpickle(
    file: BinaryIO, where: str, storages: dict[str, _StorageRef] | None = None, legacy: bool = False, refused: list[str] | None = None
) -> Any:
    """One pickle from `file` through the restricted unpickler; any failure is one error.

    Globals outside the allowlist become placeholders and are listed in `refused`; without
    that list (the legacy header pickles) the first one is an error at once.
    """
    unpickler = _Unpickler(file, where, storages, legacy)
    try:
        obj = unpickler.load()
        if unpickler.refused and refused is None:
            raise _refusal(unpickler.refused[0], where)
        if refused is not None:
            refused.extend(unpickler.refused)
        return obj
    except SurgeryError:
        raise
    except Exception as e:
        if unpickler.refused:  # the placeholders, not the file, made the pickle fail
            raise _refusal(unpickler.refused[0], where) from None
        raise _unpickling_failed(e, where) from (None if isinstance(e, _UnsupportedDtype) else e)


def _refusal(name: str, where: str, fix: str = "") -> UnsafeFileError:
    return UnsafeFileError(f"the checkpoint asks to load {name}, which is not a tensor or container", where, fix or _UNSAFE_FIX)


def _unpickling_failed(e: Exception, where: str) -> SurgeryError:
    if isinstance(e, _UnsupportedDtype):
        return FormatError(
            f"the checkpoint holds {e} tensors, which surgery does not support",
            where,
            "convert or remove those tensors in torch first (complex128 can become complex64)",
        )
    if isinstance(e, EOFError):
        return CorruptFileError("the checkpoint's pickle ends early", where, _FIX)
    # whatever else a malformed pickle does, it is a corrupt file
    detail = f"{type(e).__name__}: {e}" if not isinstance(e, pickle.UnpicklingError) else str(e)
    return CorruptFileError(f"cannot read the checkpoint ({detail[:160]})", where, _FIX)


# -- reading ------------------------------------------------------------------------


class _Strided(Source):
    """A tensor that views its storage with a gap or a non-contiguous stride."""

    def __init__(self, storage: FileRange, ref: _TensorRef) -> None:
        self.storage, self.ref = storage, ref

    def read_array(self, entry: Entry) -> np.ndarray:
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


def _tensors(d: Any) -> dict[str, _TensorRef] | None:
    if not isinstance(d, dict):
        return None
    found = {k: v for k, v in d.items() if isinstance(v, _TensorRef)}
    return found if found or not d else None


def _state_dict(obj: Any, key: str | None, where: str, refused: list[str]) -> tuple[dict, str]:
    """The dict that holds the tensors, and the container key it was under ("" for the top).

    Placeholders for refused globals may sit beside the state dict (a Lightning checkpoint's
    hyper_parameters): with --key they are skipped (and reported), without it the first is
    refused by name, and the fix names the key that reads without it. Anywhere inside the
    chosen state dict they are refused.
    """
    if isinstance(obj, _Refused):
        raise _refusal(obj.name, where)
    if key is None and refused:
        found = [k for k in _containers(obj) if not _refused_in(obj[k])]
        fix = f"surgery never runs a checkpoint's code; its state dict {found[0]!r} reads without it: pass --key {found[0]}" if found else ""
        raise _refusal(refused[0], where, fix)
    if key is not None:
        holder = _keyed(obj, key, where)
    elif preferred := [k for k in _containers(obj) if k in CONTAINER_KEYS]:
        # Known containers first: a training checkpoint may hold a loose tensor beside them (an RNG state).
        key = preferred[0]
        holder = obj[key]
    elif _tensors(obj):
        holder, key = obj, ""
    else:
        found = _containers(obj)
        if not found:
            raise FormatError("no state dict of tensors found in the checkpoint", where, "pass --key NAME for the entry that holds it")
        key = found[0]
        holder = obj[key]
    inside = _refused_in(holder)
    if inside:
        raise _refusal(inside[0], where)
    return holder, key


def _keyed(obj: Any, key: str, where: str) -> dict:
    if _tensors(obj):
        raise FormatError(
            f"--key {key}: the checkpoint is a bare state dict of {len(_tensors(obj))} tensors, with no entries to choose from",
            where,
            "drop --key",
        )
    if isinstance(obj, dict) and key in obj and _tensors(obj[key]) is not None:
        return obj[key]
    found = _containers(obj)
    keys = ", ".join(found) if found else ", ".join(str(k) for k in obj) if isinstance(obj, dict) else "none"
    raise FormatError(f"no state dict under key {key!r}", where, f"choose one of: {keys}")


def _containers(obj: Any) -> list[str]:
    """Top-level keys that hold a state dict, CONTAINER_KEYS first (in their order), then the rest."""
    if not isinstance(obj, dict):
        return []
    holding = [k for k, v in obj.items() if isinstance(k, str) and _tensors(v)]
    return [k for k in CONTAINER_KEYS if k in holding] + [k for k in holding if k not in CONTAINER_KEYS]


def _left_out(obj: dict, chosen: str) -> list[str]:
    """What the reader leaves beside the chosen state dict, for the report: other state dicts, refused entries."""
    left = [f"{k!r} (another state dict, {len(_tensors(obj[k]))} tensors; --key {k} reads it)" for k in _containers(obj) if k != chosen]
    for k, v in obj.items():
        names = _refused_in(v)
        if names and k != chosen:
            left.append(f"{k!r} (holds {', '.join(dict.fromkeys(names))}: skipped, not unpickled)")
    return left


def _refused_in(value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, _Refused):
        return [value.name]
    if depth > 20:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [name for item in items for name in _refused_in(item, depth + 1)]


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


# Writing needs no reader state; it lives in its own module.
from .torch_writer import check_writable, save  # noqa: E402,F401
