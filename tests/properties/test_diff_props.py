"""diff properties over every dtype: a tree against itself is all identical; one changed element is found exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from surgery import dtypes
from surgery.ops.diff import diff_trees, summarize
from surgery.tree import Entry

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
