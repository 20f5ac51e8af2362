"""The dtypes a tensor tree can hold, named as numpy (and ml_dtypes) name them.

Entries carry dtype *names*, not numpy dtype objects, so a tree can be
listed without importing numpy or ml_dtypes (`surgery inspect` imports neither).
The numpy dtype is looked up only when data is materialised. Sub-byte dtypes
(4- and 6-bit floats) are packed in files; they are carried as raw bytes and
cannot be materialised as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["DType", "DTYPES", "get", "from_numpy", "FLOATING"]


@dataclass(frozen=True)
class DType:
    name: str  # numpy / ml_dtypes name, e.g. "bfloat16"
    safetensors: str  # safetensors header code, e.g. "BF16"
    bits: int  # bits per element; 4 or 6 means packed
    kind: str  # "b" bool, "i" signed, "u" unsigned, "f" float, "c" complex

    @property
    def packed(self) -> bool:
        return self.bits % 8 != 0

    @property
    def numpy_native(self) -> bool:
        """True when numpy itself has this dtype (no ml_dtypes needed)."""
        return self.name not in _ML_DTYPES

    @property
    def is_floating(self) -> bool:
        return self.kind == "f"

    def nbytes(self, numel: int) -> int:
        """Bytes that `numel` elements occupy on disk (packed dtypes round up)."""
        return (numel * self.bits + 7) // 8

    def numpy(self) -> np.dtype:
        """The numpy dtype of this name; ml_dtypes is imported only when needed."""
        if self.packed:
            raise FormatError(
                f"dtype {self.name} is packed at {self.bits} bits per element and has no numpy array form",
                self.name,
                "it can be inspected, copied and converted, but not edited",
            )
        import numpy as np  # here, not at the top: listing a checkpoint needs no numpy

        if self.numpy_native:
            return np.dtype(self.name)
        import ml_dtypes  # only for bfloat16 and the float8 family

        return np.dtype(getattr(ml_dtypes, self.name))


# ml_dtypes names that numpy itself does not define.
_ML_DTYPES = {
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn",
    "float6_e2m3fn",
    "float6_e3m2fn",
}

DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("bool", "BOOL", 8, "b"),
        DType("uint8", "U8", 8, "u"),
        DType("int8", "I8", 8, "i"),
        DType("uint16", "U16", 16, "u"),
        DType("int16", "I16", 16, "i"),
        DType("uint32", "U32", 32, "u"),
        DType("int32", "I32", 32, "i"),
        DType("uint64", "U64", 64, "u"),
        DType("int64", "I64", 64, "i"),
        DType("float16", "F16", 16, "f"),
        DType("bfloat16", "BF16", 16, "f"),
        DType("float32", "F32", 32, "f"),
        DType("float64", "F64", 64, "f"),
        DType("complex64", "C64", 64, "c"),
        DType("float8_e4m3fn", "F8_E4M3", 8, "f"),
        DType("float8_e5m2", "F8_E5M2", 8, "f"),
        DType("float8_e4m3fnuz", "F8_E4M3FNUZ", 8, "f"),
        DType("float8_e5m2fnuz", "F8_E5M2FNUZ", 8, "f"),
        DType("float8_e8m0fnu", "F8_E8M0", 8, "f"),
        DType("float4_e2m1fn", "F4", 4, "f"),
        DType("float6_e2m3fn", "F6_E2M3", 6, "f"),
        DType("float6_e3m2fn", "F6_E3M2", 6, "f"),
    )
}

FLOATING = tuple(name for name, d in DTYPES.items() if d.is_floating)

_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values()}


def get(name: str) -> DType:
    """The DType called `name` (a numpy name such as "float32")."""
    try:
        return DTYPES[name]
    except KeyError:
        raise FormatError(
            f"unknown dtype {name!r}", "dtype", f"use one of: {', '.join(DTYPES)}"
        ) from None


def from_safetensors(code: str) -> DType | None:
    """The DType for a safetensors header code, or None if we do not know it."""
    return _BY_SAFETENSORS.get(code)


def from_numpy(dtype: np.dtype) -> DType:
    """The DType of a numpy dtype, whatever its byte order."""
    import numpy as np

    dtype = np.dtype(dtype)
    name = dtype.name
    if name in DTYPES and not DTYPES[name].packed:
        return DTYPES[name]
    raise FormatError(
        f"numpy dtype {dtype.str} ({name}) cannot be stored",
        "dtype",
        f"cast it to one of: {', '.join(n for n, d in DTYPES.items() if not d.packed)}",
    )
