"""Reading only the kept slices of a tensor (class surgery on large heads) equals numpy's take on the whole."""

from __future__ import annotations

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from .strategies import RawBytes
from surgery import dtypes
from surgery.formats.keras_h5 import H5Dataset
from surgery.tree import Entry, FileRange

INDEXABLE = sorted(n for n in dtypes.DTYPES if dtypes.get(n).numpy_native or n in ("bfloat16", "float8_e4m3fn", "float8_e5m2"))


@st.composite
def takes(draw):
    """(dtype, shape, axis, indices): any rank 1-4, zero-size axes, repeats and any order."""
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    axis = draw(st.integers(0, len(shape) - 1))
    indices = draw(st.lists(st.integers(0, shape[axis] - 1), max_size=8)) if shape[axis] else []
    return draw(st.sampled_from(INDEXABLE)), shape, axis, indices


def _raw(draw_bytes, dtype: str, shape) -> bytes:
    n = dtypes.get(dtype).nbytes(int(np.prod(shape, dtype=np.int64)))
    raw = draw_bytes(n)
    return bytes(b & 1 for b in raw) if dtype == "bool" else raw


@settings(max_examples=150, deadline=None)
@given(takes(), st.data())
def test_file_range_take_equals_numpy_take(tmp_path_factory, case, data):
    dtype, shape, axis, indices = case
    raw = _raw(lambda n: data.draw(st.binary(min_size=n, max_size=n)), dtype, shape)
    path = tmp_path_factory.mktemp("take") / "t.bin"
    path.write_bytes(b"HEAD" + raw + b"TAIL")  # the tensor sits inside a file, as in safetensors
    entry = Entry("w", shape, dtype, FileRange(path, 4, len(raw)))
    reference = np.take(Entry("w", shape, dtype, RawBytes(raw)).read(), indices, axis=axis)
    got = entry.take(indices, axis)
    assert got.shape == reference.shape and got.dtype == reference.dtype
    assert got.tobytes() == reference.tobytes()  # bit patterns: NaNs compare too


@settings(max_examples=60, deadline=None)
@given(takes(), st.data())
def test_h5_take_equals_numpy_take(tmp_path_factory, case, data):
    dtype, shape, axis, indices = case
    if not dtypes.get(dtype).numpy_native:
        return  # HDF5 files hold numpy's own dtypes (Keras stores no bfloat16 datasets)
    raw = _raw(lambda n: data.draw(st.binary(min_size=n, max_size=n)), dtype, shape)
    array = Entry("w", shape, dtype, RawBytes(raw)).read()
    path = tmp_path_factory.mktemp("take") / "t.h5"
    chunks = data.draw(st.booleans()) and all(shape)
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=array, chunks=tuple(max(1, d // 2) for d in shape) if chunks else None)
    got = Entry("w", shape, dtype, H5Dataset(path, "w")).take(indices, axis)
    reference = np.take(array, indices, axis=axis)
    assert got.shape == reference.shape and got.tobytes() == reference.tobytes()


def test_file_range_take_reports_a_truncated_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(8))  # claims 4 rows of 4 bytes, holds 2
    entry = Entry("w", (4, 1), "float32", FileRange(path, 0, 16))
    import pytest

    from surgery.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match=r"file ended 4 bytes early while reading tensor 'w'"):
        entry.take([3], 0)
