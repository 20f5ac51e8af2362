"""One ONNX TensorProto <-> one tree entry: dtypes, data sources and the external-data checks.

Where a tensor's bytes come from decides how it is read:
  - external data (`data_location = EXTERNAL`, `location`/`offset`/`length`): the bytes sit raw
    and little-endian in a file beside the model, so the entry is a `FileRange` over them and
    unchanged tensors are copied file to file in the kernel. The location is checked first
    (relative, inside the model's folder, a regular file and not a symlink, in bounds), so a
    hostile model can never make us read anything else;
  - `raw_data`: the same raw bytes, held in memory because protobuf had to parse the file;
  - the typed fields (`float_data`, `int32_data` holding float16/bfloat16/float8 bits, `int64_data`,
    ...): decoded on demand by `onnx.numpy_helper.to_array`.
onnx (and numpy) are imported inside the functions that read data, so listing a model needs
neither: dtypes stay names until data is read.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptFileError, FormatError, UnsafeFileError
from ..tree import Entry, FileRange, Source

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["ONNX_TO_DTYPE", "DTYPE_TO_ONNX", "dtype_of", "onnx_code", "entry_of", "has_data", "strip_data"]

_FIX = "the model is corrupt; export it again"

# ONNX TensorProto.DataType codes and the surgery dtype each holds (see surgery/dtypes.py).
ONNX_TO_DTYPE: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    16: "bfloat16",
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    24: "float8_e8m0fnu",
}
DTYPE_TO_ONNX = {name: code for code, name in ONNX_TO_DTYPE.items()}

# ONNX types surgery has no dtype for, named so the error can say which.
_UNSUPPORTED = {
    0: "UNDEFINED",
    8: "STRING",
    15: "COMPLEX128",
    21: "UINT4",
    22: "INT4",
    23: "FLOAT4E2M1 (packed 4-bit)",
    25: "UINT2",
    26: "INT2",
    27: "FLOAT6E2M3 (packed 6-bit)",
    28: "FLOAT6E3M2 (packed 6-bit)",
}


def dtype_of(code: int, tensor: str, where: str) -> str:
    """The surgery dtype of an ONNX data_type code, or a FormatError naming the ONNX type."""
    if code in ONNX_TO_DTYPE:
        return ONNX_TO_DTYPE[code]
    kind = _UNSUPPORTED.get(code, f"unknown data_type {code}")
    raise FormatError(
        f"tensor {tensor!r} is {kind}, which surgery cannot hold",
        where,
        f"surgery reads these ONNX tensor types: {', '.join(sorted(DTYPE_TO_ONNX))}",
    )


def onnx_code(dtype: str, tensor: str) -> int:
    try:
        return DTYPE_TO_ONNX[dtype]
    except KeyError:
        raise FormatError(
            f"tensor {tensor!r} is {dtype}, which ONNX cannot store", tensor, "cast it to a dtype ONNX has first"
        ) from None


# The typed field that holds each dtype when raw_data is not used (onnx.proto's comments;
# onnx.helper.tensor_dtype_to_field gives the same, but needs `import onnx`).
_TYPED_FIELD = {
    **dict.fromkeys(("float32", "complex64"), "float_data"),
    **dict.fromkeys(("int64",), "int64_data"),
    **dict.fromkeys(("float64",), "double_data"),
    **dict.fromkeys(("uint32", "uint64"), "uint64_data"),
}
_TYPED_FIELD.update({name: "int32_data" for name in DTYPE_TO_ONNX if name not in _TYPED_FIELD})

# -- data sources -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ExternalRange(FileRange):
    """A FileRange into an external data file; it also names the model, so writers never overwrite it."""

    model: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.path, self.model) if self.model is not None else (self.path,)


@dataclass(frozen=True, eq=False)
class InlineBytes(Source):
    """A tensor's `raw_data`: already little-endian, C-order bytes, held since the parse."""

    raw: bytes
    model: Path

    def iter_bytes(self, entry: Entry) -> Iterator[memoryview]:
        yield memoryview(self.raw)

    def read_array(self, entry: Entry) -> np.ndarray:
        import numpy as np  # only reading data needs numpy; listing a model does not

        dtype = dtypes.get(entry.dtype).numpy().newbyteorder("<")
        return np.frombuffer(self.raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))

    def paths(self) -> tuple[Path, ...]:
        return (self.model,)


@dataclass(frozen=True, eq=False)
class InlineTyped(Source):
    """A tensor held in a typed field (float_data, int32_data, ...); decoded by onnx on demand."""

    proto: Any  # a TensorProto holding only this tensor
    model: Path

    def read_array(self, entry: Entry) -> np.ndarray:
        from onnx import numpy_helper

        array = numpy_helper.to_array(self.proto)
        return array.view(dtypes.get(entry.dtype).numpy()).reshape(entry.shape)

    def paths(self) -> tuple[Path, ...]:
        return (self.model,)


# -- reading one tensor -------------------------------------------------------------


# location -> the checked data file and its size: what one model's tensors share (see _data_file).
DataFiles = dict[str, tuple[Path, int]]


def entry_of(tensor: Any, name: str, kind: str, model: Path, files: DataFiles | None = None) -> Entry:
    """The lazy entry for a TensorProto (which still holds its data); checks sizes and locations.

    `files`, shared by the calls for one model, keeps each external data file's check, so a
    model of thousands of tensors in one data file checks that file once, not once per tensor.
    """
    dtype = dtype_of(tensor.data_type, name, str(model))
    shape = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in shape):
        raise CorruptFileError(f"tensor {name!r} has negative dims {list(shape)}", str(model), _FIX)
    nbytes = dtypes.get(dtype).nbytes(math.prod(shape))
    attrs = {"onnx.kind": kind}
    if tensor.data_location == 1:  # TensorProto.EXTERNAL
        return Entry(name, shape, dtype, _external_range(tensor, name, nbytes, model, files), attrs)
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data
        if len(raw) != nbytes:
            raise CorruptFileError(
                f"tensor {name!r} of shape {list(shape)} {dtype} needs {nbytes} bytes but its raw_data holds {len(raw)}",
                str(model),
                _FIX,
            )
        return Entry(name, shape, dtype, InlineBytes(raw, model), attrs)
    return Entry(name, shape, dtype, _typed_source(tensor, name, dtype, shape, model), attrs)


def _typed_source(tensor: Any, name: str, dtype: str, shape: tuple[int, ...], model: Path) -> InlineTyped:
    field = _TYPED_FIELD[dtype]
    count = len(getattr(tensor, field))
    expected = math.prod(shape) * (2 if dtype == "complex64" else 1)
    if count != expected:
        raise CorruptFileError(
            f"tensor {name!r} of shape {list(shape)} needs {expected} values but its {field} holds {count}",
            str(model),
            _FIX,
        )
    proto = type(tensor)()
    proto.CopyFrom(tensor)
    proto.ClearField("external_data")
    return InlineTyped(proto, model)


def _external_range(tensor: Any, name: str, nbytes: int, model: Path, files: DataFiles | None) -> ExternalRange:
    for e in tensor.external_data:  # protobuf hands a string that is not UTF-8 back as bytes
        if not isinstance(e.key, str) or not isinstance(e.value, str):
            raise CorruptFileError(
                f"external data {e.key!r} is {e.value!r}, which is not valid UTF-8", f"{model}, tensor {name!r}", _FIX
            )
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"{model}, tensor {name!r}, location {location!r}"
    path, size = _data_file(location, model, where, {} if files is None else files)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else nbytes
    except ValueError:
        raise CorruptFileError(
            f"external data offset {info.get('offset')!r} or length {info.get('length')!r} is not an integer", where, _FIX
        ) from None
    if offset < 0 or length < 0:
        raise CorruptFileError(f"external data offset {offset} or length {length} is negative", where, _FIX)
    if length != nbytes:
        raise CorruptFileError(
            f"external data length {length} disagrees with the {nbytes} bytes that dims {list(tensor.dims)} need",
            where,
            _FIX,
        )
    if offset + length > size:
        raise CorruptFileError(
            f"external data at offset {offset} length {length} runs past the end of the {size}-byte file", where, _FIX
        )
    return ExternalRange(path, offset, length, model)


def _data_file(location: str, model: Path, where: str, files: DataFiles) -> tuple[Path, int]:
    """The data file `location` names, checked (safe_location) and sized the first time a tensor names it."""
    known = files.get(location)
    if known is None:
        path = safe_location(location, model.parent, where)
        known = files[location] = (path, path.stat().st_size)
    return known


def safe_location(location: str, folder: Path, where: str) -> Path:
    """The data file a `location` names, only if it is a plain regular file inside `folder`.

    Nothing is opened here: only the name and the file's metadata (lstat) are looked at.
    """
    fix = "external data must be a regular file inside the model's folder; surgery never reads elsewhere"
    if not location:
        raise CorruptFileError("external data has no location", where, _FIX)
    if "\x00" in location:
        raise UnsafeFileError("external data location holds a NUL byte", where, fix)
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeFileError("external data location is an absolute path", where, fix)
    if ".." in relative.parts or ".." in location.replace("\\", "/").split("/"):
        raise UnsafeFileError("external data location climbs out of the model's folder with '..'", where, fix)
    path = folder / relative
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise CorruptFileError(
            "external data file is missing", where, "copy the data file beside the model (the name is its location)"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFileError("external data location is a symlink", where, fix)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError("external data location is not a regular file", where, fix)
    real, home = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, home]) != home:
        raise UnsafeFileError("external data location leaves the model's folder through a symlink", where, fix)
    return path


# -- the weightless skeleton ----------------------------------------------------------

_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
    "external_data",
)


def has_data(tensor: Any) -> bool:
    return tensor.data_location == 1 or any(
        tensor.HasField(f) if f == "raw_data" else len(getattr(tensor, f)) for f in _DATA_FIELDS
    )


def strip_data(tensor: Any) -> None:
    """Leave name, dims and data_type; drop the data, wherever it was held."""
    for f in _DATA_FIELDS:
        tensor.ClearField(f)
    tensor.ClearField("data_location")
