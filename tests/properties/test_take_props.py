"""Reading only the kept slices of a tensor (class surgery on large heads) equals numpy's take on the whole.

Every way of reading is drawn on purpose: the FileRange's runs of picks and its streamed blocks
(whole outer rows, or blocks of slices when a row outgrows a block), and for HDF5 the whole
read, the in-place read of contiguous storage (also inside another file, as a `.keras` member)
and HDF5's selection on chunked, compressed datasets. Thresholds are drawn small so that
tensors of a few bytes cross them.
"""

from __future__ import annotations

from unittest import mock

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from surgery import dtypes, tree
from surgery.formats import h5_take
from surgery.formats.keras_h5 import H5Dataset, Place
from surgery.tree import Entry, FileRange

from .strategies import RawBytes

INDEXABLE = sorted(n for n in dtypes.DTYPES if dtypes.get(n).numpy_native or n in ("bfloat16", "float8_e4m3fn", "float8_e5m2"))
NATIVE = [n for n in INDEXABLE if dtypes.get(n).numpy_native]  # what HDF5 files hold (Keras stores no bfloat16 datasets)


@st.composite
def takes(draw, dtype_names=INDEXABLE):
    """(dtype, shape, axis, indices): any rank 1-4, zero-size axes, negative axes and indices, repeats, any order."""
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=4)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[axis]
    indices = draw(st.lists(st.integers(-size, size - 1), max_size=10)) if size else []
    if draw(st.booleans()):
        indices = sorted({i % size for i in indices})  # --num-classes picks: sorted, no repeats
    return draw(st.sampled_from(dtype_names)), shape, axis, indices


# Block sizes and read costs that send a take down each path: runs (cost 0), streaming (a huge
# cost), whole rows per block or blocks of slices (a block of a few bytes), and the defaults;
# with and without os.preadv.
costs = st.fixed_dictionaries(
    {"_TAKE_BLOCK": st.sampled_from([1, 3, 8, 40, tree._TAKE_BLOCK]), "_READ_COST": st.sampled_from([0, 1 << 40, tree._READ_COST]), "_PREADV": st.booleans()}
)


def _raw(draw, dtype: str, shape) -> bytes:
    n = dtypes.get(dtype).nbytes(int(np.prod(shape, dtype=np.int64)))
    raw = draw(st.binary(min_size=n, max_size=n))
    return bytes(b & 1 for b in raw) if dtype == "bool" else raw


def _same(got: np.ndarray, reference: np.ndarray) -> None:
    assert got.shape == reference.shape and got.dtype == reference.dtype
    assert got.tobytes() == reference.tobytes()  # bit patterns: NaNs compare too


@settings(max_examples=300, deadline=None)
@given(takes(), costs, st.data())
def test_file_range_take_equals_numpy_take(tmp_path_factory, case, cost, data):
    dtype, shape, axis, indices = case
    raw = _raw(data.draw, dtype, shape)
    path = tmp_path_factory.mktemp("take") / "t.bin"
    path.write_bytes(b"HEAD" + raw + b"TAIL")  # the tensor sits inside a file, as in safetensors
    entry = Entry("w", shape, dtype, FileRange(path, 4, len(raw)))
    reference = np.take(Entry("w", shape, dtype, RawBytes(raw)).read(), indices, axis=axis)
    with mock.patch.multiple(tree, **cost):
        _same(entry.take(indices, axis), reference)


@settings(max_examples=200, deadline=None)
@given(takes(NATIVE), costs, st.sampled_from(["contiguous", "chunked", "compressed", "member"]), st.booleans(), st.data())
def test_h5_take_equals_numpy_take(tmp_path_factory, case, cost, storage, small, data):
    dtype, shape, axis, indices = case
    array = Entry("w", shape, dtype, RawBytes(_raw(data.draw, dtype, shape))).read()
    folder = tmp_path_factory.mktemp("take")
    path = folder / "t.h5"
    options = {}
    if storage in ("chunked", "compressed") and all(shape):  # HDF5 cannot chunk an empty dataset
        options["chunks"] = tuple(max(1, d // 2) for d in shape)
        if storage == "compressed":
            options.update(compression="gzip", shuffle=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=array, **options)
    place = None
    if storage == "member":  # the HDF5 file is a stored member of another file, read in place
        member = path.read_bytes()
        path = folder / "t.keras"
        path.write_bytes(b"PK-ish header" + member + b"central directory")
        place = Place(len(b"PK-ish header"), len(member))
    entry = Entry("w", shape, dtype, H5Dataset(path, "w", place))
    with mock.patch.multiple(tree, **cost), mock.patch.object(h5_take, "SMALL", h5_take.SMALL if small else 0):
        _same(entry.take(indices, axis), np.take(array, indices, axis=axis))
