"""PyTorch checkpoints in torch.save's zip format, read without torch and without running code.

A `.pt` file is a zip archive: `<name>/data.pkl` is a pickle of the state dict, and each
tensor's storage is a member `<name>/data/<key>`, stored uncompressed. The pickle is read
by an unpickler that knows only what a state dict needs (containers, tensor rebuild
calls, storage types) and maps those to our own harmless stand-ins; any other global,
whatever a `__reduce__` payload asks for, is refused with its name. There is no fallback
to a full unpickler and no flag that enables one.

Tensor data is never unpickled: each entry points at its bytes inside the archive, so
inspecting or converting reads only what it needs.

Not yet here (see the PyTorch issue): the legacy non-zip format and writing.
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
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import CorruptFileError, FormatError, UnsafeFileError
from ..tree import TORCH, Entry, FileRange, Source, Tree

NAME = "torch"
SUFFIXES = (".pt", ".pth")
# Writing needs torch's own pickler; until it is here, outputs go elsewhere (see surgery.io.check_output).
CANNOT_WRITE = "write .safetensors instead, which torch loads with safetensors.torch.load_file"
_FIX = "the file is corrupt or not a torch.save checkpoint; save it again"
_UNSAFE_FIX = "surgery reads only tensors and plain containers; re-save with torch.save(model.state_dict(), path)"
MAX_PICKLE = 256 << 20  # a state dict's pickle holds names and shapes only; more is not a checkpoint

# Containers that wrap a state dict in training checkpoints, in the order we look for them.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "ema", "module", "net")

_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64", "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
}


def sniff(path: Path, head: bytes, size: int) -> bool:
    if not path.is_file() or head[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# -- the restricted unpickler ---------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int


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
    itemsize = dtypes.get(dtype.dtype).bits // 8
    typed = _StorageRef(storage.key, dtype.dtype, storage.numel // max(itemsize, 1) if storage.dtype == "uint8" else storage.numel)
    return _rebuild_tensor(typed, offset, size, stride)


def _rebuild_parameter(data, *_ignored) -> Any:
    return data


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
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(f"the checkpoint asks to load {module}.{name}, which is not a tensor or container", self.where, _UNSAFE_FIX) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeFileError(f"the checkpoint holds an unknown persistent object {str(pid)[:60]!r}", self.where, _UNSAFE_FIX)
        _, kind, key, _location, numel = pid
        return _StorageRef(str(key), kind.dtype, int(numel))


# -- reading ------------------------------------------------------------------------


class _Strided(Source):
    """A tensor that views its storage with a gap or a non-contiguous stride."""

    def __init__(self, storage: FileRange, ref: _TensorRef) -> None:
        self.storage, self.ref = storage, ref

    def read_array(self, entry: Entry) -> np.ndarray:
        base = self.storage.read_array(Entry(entry.name, (self.ref.storage.numel,), entry.dtype, self.storage))
        view = np.lib.stride_tricks.as_strided(
            base[self.ref.offset :], self.ref.shape, tuple(s * base.itemsize for s in self.ref.stride)
        )
        return np.ascontiguousarray(view)

    def paths(self) -> tuple[Path, ...]:
        return self.storage.paths()


def load(path: Path, key: str | None = None) -> Tree:
    path = Path(path)
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
            obj = _Unpickler(z.read(pkl), where).load()
            members = {i.filename: i for i in z.infolist()}
    except zipfile.BadZipFile as e:
        raise FormatError(
            "not a torch.save zip archive (the legacy non-zip format is not read yet)",
            where,
            "re-save it with a current torch.save, or convert it with torch where you trust the file",
        ) from e
    except (EOFError, pickle.UnpicklingError, ValueError, struct.error) as e:
        raise CorruptFileError(f"cannot read the checkpoint ({e})", where, _FIX) from e
    state, chosen = _state_dict(obj, key, where)
    entries = []
    with open(path, "rb") as raw:
        for name, ref in state.items():
            entries.append(_entry(path, raw, members, prefix, str(name), ref))
    metadata = {"surgery.torch_key": chosen} if chosen else {}
    return Tree(entries, format=NAME, convention=TORCH, metadata=metadata)


def _state_dict(obj: Any, key: str | None, where: str) -> tuple[dict[str, _TensorRef], str]:
    def tensors(d: Any) -> dict[str, _TensorRef] | None:
        if not isinstance(d, dict):
            return None
        found = {k: v for k, v in d.items() if isinstance(v, _TensorRef)}
        return found if found or not d else None

    if key is not None:
        if not isinstance(obj, dict) or key not in obj or tensors(obj[key]) is None:
            keys = ", ".join(str(k) for k in obj) if isinstance(obj, dict) else "none"
            raise FormatError(f"no state dict under key {key!r}", where, f"choose one of: {keys}")
        return tensors(obj[key]), key
    direct = tensors(obj)
    if direct:
        return direct, ""
    if isinstance(obj, dict):
        for k in CONTAINER_KEYS:
            if k in obj and tensors(obj[k]):
                return tensors(obj[k]), k
    raise FormatError("no state dict of tensors found in the checkpoint", where, "pass --key NAME for the entry that holds it")


def _entry(path: Path, raw: Any, members: dict, prefix: str, name: str, ref: _TensorRef) -> Entry:
    where = str(path)
    member = members.get(f"{prefix}data/{ref.storage.key}")
    if member is None:
        raise CorruptFileError(f"tensor {name!r} points at storage {ref.storage.key!r}, which is missing", where, _FIX)
    if member.compress_type != zipfile.ZIP_STORED:
        raise FormatError(f"storage {ref.storage.key!r} is compressed", where, "re-save with torch.save, which stores tensors uncompressed")
    dtype = dtypes.get(ref.storage.dtype)
    length = dtype.nbytes(ref.storage.numel)
    if member.file_size != length:
        raise CorruptFileError(f"storage {ref.storage.key!r} holds {member.file_size} bytes but its header says {length}", where, _FIX)
    raw.seek(member.header_offset)
    local = raw.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"storage {ref.storage.key!r} has no local zip header", where, _FIX)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = member.header_offset + 30 + name_len + extra_len
    storage = FileRange(path, start, length)
    numel = math.prod(ref.shape)
    if any(n < 0 for n in ref.shape) or ref.offset < 0 or (numel and ref.offset + _span(ref) > ref.storage.numel):
        raise CorruptFileError(f"tensor {name!r} reaches past its storage", where, _FIX)
    if _contiguous(ref):
        source: Source = FileRange(path, start + dtype.nbytes(ref.offset), dtype.nbytes(numel))
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
