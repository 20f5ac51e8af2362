"""Shared hypothesis strategies: random trees over every dtype, zero-size axes, scalars and unicode names."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from surgery import dtypes
from surgery.tree import KERAS, TORCH, UNKNOWN, Entry, FileRange, Source, Tree

ALL_DTYPES = sorted(dtypes.DTYPES)

# Names: any Unicode text a file can carry. Surrogates are not valid UTF-8, and NUL cannot be a zip member name.
names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12).filter(
    lambda n: n != "__metadata__"  # safetensors reserves it; writing it is refused (tested in the examples)
)
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)  # includes () scalars and 0-size axes


class RawBytes(Source):
    """Exact bytes for one tensor: the bit pattern is the reference, so NaNs and packed dtypes compare exactly."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def iter_bytes(self, entry):
        yield memoryview(self.raw)

    def read_array(self, entry):
        dtype = dtypes.get(entry.dtype).numpy().newbyteorder("<")
        return np.frombuffer(self.raw, dtype=dtype).reshape(entry.shape).copy()


@st.composite
def entries(draw, name_strategy=names, dtype_names=tuple(ALL_DTYPES)) -> Entry:
    name = draw(name_strategy)
    dtype = dtypes.get(draw(st.sampled_from(dtype_names)))
    shape = draw(shapes)
    if dtype.packed:  # packed dtypes exist only in whole bytes (2 fp4 or 4 fp6 values per unit)
        shape = shape + (8 // np.gcd(dtype.bits, 8),) if int(np.prod(shape, dtype=np.int64)) * dtype.bits % 8 else shape
    numel = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=dtype.nbytes(numel), max_size=dtype.nbytes(numel)))
    if dtype.name == "bool":  # only 0 and 1 are bools
        raw = bytes(b & 1 for b in raw)
    return Entry(name, shape, dtype.name, RawBytes(raw))


metadata = st.dictionaries(names, st.text(st.characters(exclude_categories=("Cs",)), max_size=10), max_size=3)


@st.composite
def trees(draw, dtype_names=tuple(ALL_DTYPES), max_size=6) -> Tree:
    items = draw(st.lists(entries(dtype_names=dtype_names), max_size=max_size, unique_by=lambda e: e.name))
    return Tree(items, convention=draw(st.sampled_from([KERAS, TORCH, UNKNOWN])), metadata=draw(metadata))


def tensor_bytes(tree: Tree) -> dict[str, bytes]:
    return {name: b"".join(bytes(c) for c in e.iter_bytes()) for name, e in tree.items()}


def signature(tree: Tree) -> list[tuple[str, tuple[int, ...], str]]:
    return [(e.name, e.shape, e.dtype) for e in tree.values()]


__all__ = ["ALL_DTYPES", "names", "shapes", "entries", "trees", "metadata", "tensor_bytes", "signature", "FileRange"]
