"""Properties of strip-head and truncate, with numpy bytes as the reference: exactly the named
tensors go, every other tensor stays bit-exact and in order (every dtype, zero-size axes)."""

from __future__ import annotations

import glob

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .strategies import signature, tensor_bytes, trees
from surgery.errors import OperationError
from surgery.naming import layer_of
from surgery.ops.strip import layer_order, strip_head, truncate


@given(tree=trees(), data=st.data())
def test_strip_with_globs_removes_exactly_the_named_tensors(tree, data):
    names = list(tree)
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, min_size=1), label="chosen") if names else []
    expected_gone = {n for n in names if n in chosen or layer_of(n) in chosen}
    globs = [glob.escape(n) for n in chosen]
    if not names:
        return
    if len(expected_gone) == len(names):
        with pytest.raises(OperationError):
            strip_head(tree, globs)
        return
    before = tensor_bytes(tree)
    new, report = strip_head(tree, globs)
    assert set(report.names("dropped")) == expected_gone
    assert signature(new) == [s for s in signature(tree) if s[0] not in expected_gone]
    assert tensor_bytes(new) == {n: b for n, b in before.items() if n not in expected_gone}
    assert tensor_bytes(tree) == before  # the input is untouched


@given(tree=trees(), data=st.data())
def test_truncate_keeps_a_prefix_of_the_layer_order(tree, data):
    order = layer_order(tree)
    if not order:
        return
    k = data.draw(st.integers(0, len(order) - 1), label="k")
    before = tensor_bytes(tree)
    new, report = truncate(tree, order[k])
    assert layer_order(new) == order[: k + 1]
    kept = [n for n in tree if layer_of(n) in set(order[: k + 1])]
    assert list(new) == kept
    assert tensor_bytes(new) == {n: before[n] for n in kept}
    assert report.names("dropped") == [n for n in tree if n not in set(kept)]
