"""diff properties over every dtype: a tree against itself is all identical; one changed element is found
exactly; and every result equals numpy's over whole arrays, whatever the chunk size and file layout."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgery import dtypes
from surgery.ops.diff import diff_trees, summarize
from surgery.tree import Entry, FileRange, Tree

from .strategies import RawBytes, tensor_bytes, trees


@given(trees())
def test_a_tree_against_itself_is_all_identical(tree):
    results = list(diff_trees(tree, tree))
    assert [r.name for r in results] == list(tree)
    assert all(r.status == "identical" and r.bit_equal for r in results)
    assert summarize(results).equal


@given(trees(max_size=5), st.data())
def test_changing_one_element_finds_exactly_that_tensor(tree, data):
    candidates = [e for e in tree.values() if e.numel]
    if not candidates:
        return
    target = data.draw(st.sampled_from(candidates))
    raw = bytearray(tensor_bytes(tree)[target.name])
    dtype = dtypes.get(target.dtype)
    at = data.draw(st.integers(0, len(raw) - 1))
    if dtype.name == "bool":
        raw[at] ^= 1
    else:
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    changed = tree.derive(replace={target.name: Entry(target.name, target.shape, target.dtype, RawBytes(bytes(raw)))})
    results = {r.name: r for r in diff_trees(tree, changed)}
    flipped = results[target.name]
    assert not flipped.bit_equal
    others = [r for name, r in results.items() if name != target.name]
    assert all(r.status == "identical" and r.bit_equal for r in others)
    # A flipped bit is a changed value, except where two bit patterns mean one value
    # (NaN payloads, +0/-0, float8 NaN encodings): then the values are still equal.
    if flipped.status == "identical":
        assert dtype.is_floating and not dtype.packed and flipped.max_abs == 0
    else:
        assert flipped.status == "changed" and flipped.reasons == ("values",)
        assert dtype.packed or flipped.max_abs > 0


def _reference(raw_a: bytes, raw_b: bytes, entry: Entry, atol: float, rtol: float) -> tuple[bool, float | None, float | None, float | None]:
    """numpy over whole arrays, no chunks and no fast path: (within tolerance, max |a-b|, mean |a-b|, rel max)."""
    dtype = dtypes.get(entry.dtype)
    if dtype.packed:
        return raw_a == raw_b, None, None, None
    little = dtype.numpy().newbyteorder("<") if dtype.bits > 8 else dtype.numpy()
    x, y = np.frombuffer(raw_a, little), np.frombuffer(raw_b, little)
    wide = np.complex128 if dtype.kind == "c" else np.float64
    wx, wy = x.astype(wide), y.astype(wide)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        delta = np.abs(wx - wy)
        if dtype.kind in "iub":
            same = x == y
            delta[~same & (delta == 0)] = 1.0
        else:
            same = (wx == wy) | (np.isnan(wx) & np.isnan(wy))
        delta[same] = 0.0
        delta[np.isnan(delta)] = math.inf
        within = bool(np.all(same | (delta <= atol + rtol * np.abs(wy))))
        scale = np.maximum(np.abs(wx), np.abs(wy))
        relative = np.where(delta == 0, 0.0, delta / np.where(scale == 0, 1.0, scale))
        relative[np.isnan(relative)] = math.inf
    if not delta.size:
        return within, 0.0, 0.0, 0.0
    return within, float(delta.max()), float(delta.sum() / delta.size), float(relative.max())


def _edited(raw: bytes, dtype: dtypes.DType, data) -> bytes:
    """raw kept, one byte changed, or all bytes drawn again (bools stay 0 or 1)."""
    how = data.draw(st.sampled_from(["keep", "keep", "byte", "all"])) if raw else "keep"
    out = bytearray(raw)
    if how == "byte":
        out[data.draw(st.integers(0, len(raw) - 1))] ^= 1 if dtype.name == "bool" else data.draw(st.integers(1, 255))
    elif how == "all":
        out = bytearray(data.draw(st.binary(min_size=len(raw), max_size=len(raw))))
        if dtype.name == "bool":
            out = bytearray(b & 1 for b in out)
    return bytes(out)


def _in_file(path: Path, raws: dict[str, bytes], tree, data) -> dict[str, Entry]:
    """Each tensor's bytes at its place in one file, mostly back to back (runs), sometimes after a gap."""
    entries, at = {}, 0
    with open(path, "wb") as f:
        for name, raw in raws.items():
            gap = data.draw(st.sampled_from([0, 0, 0, 1, 7]))
            f.write(b"\xa5" * gap)
            at += gap
            f.write(raw)
            e = tree[name]
            file_backed = data.draw(st.booleans()) or data.draw(st.booleans())  # a few stay in memory (the rechunk path)
            entries[name] = Entry(name, e.shape, e.dtype, FileRange(path, at, len(raw)) if file_backed else RawBytes(raw))
            at += len(raw)
    return entries


@settings(deadline=None)
@given(trees(max_size=6), st.integers(1, 40), st.sampled_from([(0.0, 0.0), (0.5, 0.0), (0.0, 0.1)]), st.data())
def test_diff_matches_numpy_over_whole_arrays_whatever_the_chunk(tree, chunk, tolerance, data):
    atol, rtol = tolerance
    raws_a = tensor_bytes(tree)
    raws_b = {name: _edited(raw, dtypes.get(tree[name].dtype), data) for name, raw in raws_a.items()}
    with tempfile.TemporaryDirectory() as tmp:
        side_a = _in_file(Path(tmp) / "a", raws_a, tree, data)
        side_b = _in_file(Path(tmp) / "b", raws_b, tree, data)
        tree_a, tree_b = (Tree(list(side.values())) for side in (side_a, side_b))
        results = list(diff_trees(tree_a, tree_b, atol=atol, rtol=rtol, chunk=chunk))
    assert [r.name for r in results] == list(tree)
    for r in results:
        within, max_abs, mean_abs, rel_max = _reference(raws_a[r.name], raws_b[r.name], tree[r.name], atol, rtol)
        assert r.bit_equal == (raws_a[r.name] == raws_b[r.name])
        assert r.status == ("identical" if within else "changed"), r
        assert (r.max_abs, r.rel_max) == (max_abs, rel_max), r
        if mean_abs is None or not math.isfinite(mean_abs):  # None (packed), inf; NaN cannot happen
            assert r.mean_abs == mean_abs, r
        else:  # summed in another order (chunk by chunk)
            assert r.mean_abs == pytest.approx(mean_abs, rel=1e-12, abs=0.0), r

