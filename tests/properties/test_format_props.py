"""Properties of the formats: save then load is bit-exact, for every dtype, shape and name."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, strategies as st

import surgery
from helpers import run
from surgery import dtypes
from surgery.formats.safetensors_io import plan_shards

from .strategies import ALL_DTYPES, signature, tensor_bytes, trees

NUMPY_DTYPES = tuple(n for n in ALL_DTYPES if not dtypes.get(n).packed)


def _round_trip(tree, name, **options):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        surgery.save(tree, path, **options)
        back = surgery.load(path)
        return back, signature(back), tensor_bytes(back), dict(back.metadata), back.convention


@given(trees())
def test_safetensors_round_trip_is_bit_exact(tree):
    back, sig, data, meta, _ = _round_trip(tree, "t.safetensors")
    assert sig == signature(tree)
    assert data == tensor_bytes(tree)
    assert meta == tree.metadata


NATIVE_DTYPES = tuple(n for n in ALL_DTYPES if dtypes.get(n).numpy_native)


@given(trees(dtype_names=NATIVE_DTYPES))
def test_npz_round_trip_is_bit_exact_and_holds_only_the_tensors(tree):
    import zipfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.npz"
        surgery.save(tree, path)
        assert zipfile.ZipFile(path).namelist() == [name + ".npy" for name in tree]
        with np.load(path) as plain:
            assert list(plain) == list(tree)
        back = surgery.load(path)
        assert signature(back) == signature(tree)
        assert tensor_bytes(back) == tensor_bytes(tree)
        assert back.metadata == {}  # npz has no metadata slot: no provenance, no metadata


@given(trees(), st.integers(1, 300))
def test_sharding_then_reading_gives_the_same_tree(tree, shard_size):
    back, sig, data, meta, _ = _round_trip(tree, "shards", shard_size=shard_size)
    assert sig == signature(tree)
    assert data == tensor_bytes(tree)
    assert meta == tree.metadata


@given(trees(), st.integers(1, 300))
def test_shard_plan_respects_the_limit_and_order(tree, shard_size):
    shards = plan_shards(tree.entries(), shard_size)
    assert [e.name for shard in shards for e in shard] == list(tree)
    for shard in shards:
        assert len(shard) == 1 or sum(e.nbytes for e in shard) <= shard_size


@given(trees())
def test_inspect_json_agrees_with_the_tree(tree):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        surgery.save(tree, path)
        doc = json.loads(run("inspect", path, "--json").stdout)
    assert doc["tensors"] == [
        {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "nbytes": e.nbytes} for e in tree.values()
    ]
    assert doc["total_bytes"] == tree.total_bytes
    assert doc["metadata"] == tree.metadata


@given(trees())
def test_safetensors_library_reads_what_we_write(tree):
    """The reference reader (safetensors' own Rust code) sees the same names, shapes, dtypes and bytes."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.safetensors"
        surgery.save(tree, path)
        with safe_open(str(path), framework="pt") as f:
            assert set(f.keys()) == set(tree)
            # A Keras-layout tree records its layout; PyTorch's is implied by format=pt, unknown is not written.
            recorded = {"surgery.convention": "keras"} if tree.convention == surgery.KERAS else {}
            if tree.convention == surgery.TORCH and tree.metadata.get("format") != "pt":
                recorded = {"surgery.convention": "torch"}
            assert (f.metadata() or {}) == {**tree.metadata, **recorded}
            for name in f.keys():
                piece = f.get_slice(name)
                assert piece.get_shape() == list(tree[name].shape)
                assert piece.get_dtype() == dtypes.get(tree[name].dtype).safetensors


@given(trees(dtype_names=NUMPY_DTYPES), st.sampled_from(["float16", "bfloat16", "float32"]))
def test_cast_matches_numpy_astype(tree, target):
    cast, report = surgery.ops.cast_floating(tree, target)
    for name, entry in tree.items():
        floating = dtypes.get(entry.dtype).is_floating
        if floating:
            with np.errstate(over="ignore"):
                expected = entry.read().astype(dtypes.get(target).numpy())
            got = cast[name].read()
            assert got.dtype == expected.dtype
            assert got.shape == expected.shape and got.tobytes() == expected.tobytes()
        else:
            assert cast[name] is entry  # untouched entries are shared, not copied
        assert (name in report.names("cast")) == (floating and entry.dtype != target)
