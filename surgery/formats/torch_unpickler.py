"""The restricted unpickler that reads a torch checkpoint's pickles without running code.

It knows only what a state dict needs (containers, tensor rebuild calls, storage types) and
maps those to harmless stand-ins (`_ALLOWED`); any other global becomes an inert placeholder
(`_Refused`), refused by name where the state dict needs it. Storages are recorded by key
and size, never read. Any failure is one `SurgeryError` naming the file.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

from .. import dtypes
from ..errors import CorruptFileError, FormatError, SurgeryError, UnsafeFileError

_FIX = "the file is corrupt or not a torch.save checkpoint; save it again"
_UNSAFE_FIX = "surgery reads only tensors and plain containers and never runs a checkpoint's code; save model.state_dict() where the model is built"
_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UInt16Storage": "uint16", "UInt32Storage": "uint32",
    "UInt64Storage": "uint64", "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
}


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
