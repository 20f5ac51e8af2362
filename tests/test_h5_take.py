"""How a take reads an HDF5 dataset (surgery.formats.h5_take): which way for which storage, and its refusals.

That every way equals numpy.take is a property (tests/properties/test_take_props.py); these
pin which way is taken, so that a change of the cost model shows up here.
"""

from __future__ import annotations

import re
from unittest import mock

import h5py
import numpy as np
import pytest

import surgery
from surgery.errors import CorruptFileError
from surgery.formats import h5_take
from surgery.tree import FileRange, Source

ROWS, COLS = 64, 20_000  # 5.1 MB of float32: past h5_take.SMALL, so it is not read whole
KEEP = [0, 3, 4, 5, 19_999, 7]  # runs, a jump back, the last column


def _head(path, **options) -> np.ndarray:
    array = np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        g.create_dataset("dense/kernel:0", data=array, **options)
    return array


def _ways(path, indices=KEEP, axis=-1) -> tuple[np.ndarray, dict[str, int]]:
    """The take, and how often each way of reading was used."""
    entry = surgery.load(path)["dense/kernel"]
    with mock.patch.object(FileRange, "read_take", autospec=True, side_effect=FileRange.read_take) as in_place, \
         mock.patch.object(Source, "read_take", autospec=True, side_effect=Source.read_take) as whole:
        got = entry.take(indices, axis)
    return got, {"in_place": in_place.call_count, "whole": whole.call_count}


def test_contiguous_storage_is_read_in_place(tmp_path):
    array = _head(tmp_path / "w.h5")
    got, ways = _ways(tmp_path / "w.h5")
    assert ways == {"in_place": 1, "whole": 0}
    assert np.array_equal(got, array[:, KEEP])


@pytest.mark.parametrize("options", [{"chunks": (16, 1000)}, {"compression": "gzip"}], ids=["chunked", "compressed"])
def test_chunked_or_compressed_storage_is_read_by_hdf5_selection(tmp_path, options):
    array = _head(tmp_path / "w.h5", **options)
    got, ways = _ways(tmp_path / "w.h5")
    assert ways == {"in_place": 0, "whole": 0}
    assert np.array_equal(got, array[:, KEEP])


def test_a_small_dataset_is_read_whole(tmp_path):
    array = _head(tmp_path / "w.h5")
    with mock.patch.object(h5_take, "SMALL", ROWS * COLS * 4):
        got, ways = _ways(tmp_path / "w.h5")
    assert ways == {"in_place": 0, "whole": 1}
    assert np.array_equal(got, array[:, KEEP])


def test_big_endian_storage_is_read_by_hdf5_selection(tmp_path):
    array = _head(tmp_path / "w.h5", dtype=">f4")
    got, ways = _ways(tmp_path / "w.h5")
    assert ways == {"in_place": 0, "whole": 0}
    assert np.array_equal(got, array[:, KEEP]) and got.dtype == np.dtype("float32")


def test_an_index_out_of_range_is_numpys_index_error(tmp_path):
    _head(tmp_path / "w.h5")
    entry = surgery.load(tmp_path / "w.h5")["dense/kernel"]
    with pytest.raises(IndexError, match=re.escape(f"index {COLS} is out of bounds for axis 1 with size {COLS}")):
        entry.take([0, COLS], -1)
    with pytest.raises(IndexError, match=re.escape(f"index -{COLS + 1} is out of bounds for axis 1 with size {COLS}")):
        entry.take([-COLS - 1], 1)


def test_a_dataset_placed_past_the_end_of_its_file_is_refused_before_reading(tmp_path):
    # HDF5 1.14 already refuses such a file when it opens the dataset ("invalid dataset size");
    # the in-place read checks again, so a library that trusts the header cannot read past the end.
    path = tmp_path / "w.h5"
    _head(path)
    entry = surgery.load(path)["dense/kernel"]
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        real = f["dense/dense/kernel:0"]
        claims = mock.Mock(wraps=real, dtype=real.dtype)
        claims.id = mock.Mock(get_create_plist=real.id.get_create_plist, get_offset=lambda: size - 100, get_storage_size=real.id.get_storage_size)
        claims.file.id.get_filesize = lambda: size
        with pytest.raises(CorruptFileError) as e:
            h5_take._in_place(claims, entry, entry.source, "re-save it")
    assert str(e.value) == f"dataset '/dense/dense/kernel:0' claims bytes {size - 100}..{size - 100 + ROWS * COLS * 4} but the file holds {size} ({path}); re-save it"
