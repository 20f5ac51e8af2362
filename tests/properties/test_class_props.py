"""Properties of class-axis surgery over any layout, anchor count, class count, dtype and convention."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from .strategies import RawBytes
from surgery import dtypes
from surgery.ops.classes import apply_plan, plan_classes
from surgery.tree import KERAS, TORCH, Entry, Tree

# Every dtype numpy can index (packed sub-byte dtypes have no elementwise view).
INDEXABLE = sorted(n for n in dtypes.DTYPES if dtypes.get(n).numpy_native or n in ("bfloat16", "float8_e4m3fn", "float8_e5m2"))
FLOATING = ["float16", "float32", "float64", "bfloat16"]


@st.composite
def heads(draw, dtype_names=INDEXABLE):
    """A one-layer head: (tree, layout, K, anchors, fields, group, convention)."""
    layout = draw(st.sampled_from(["anchor-major", "anchor-major-fields", "class-major", "plain"]))
    K = draw(st.integers(1, 7))
    anchors = draw(st.integers(1, 4)) if layout.startswith("anchor") else 1
    fields = draw(st.integers(1, 5)) if layout == "anchor-major-fields" else 0
    group = draw(st.integers(2, 4)) if layout == "class-major" else 1
    channels = anchors * (K + fields) if layout.startswith("anchor") else K * group
    convention = draw(st.sampled_from([KERAS, TORCH]))
    fan_in = draw(st.sampled_from([(), (0,), (2,), (1, 2, 3)]))  # zero-size input axes included
    shape = (*fan_in, channels) if convention is KERAS else (channels, *fan_in)
    dtype = dtypes.get(draw(st.sampled_from(dtype_names)))
    kernel = _random_entry(draw, "head/kernel", shape, dtype)
    bias = _random_entry(draw, "head/bias", (channels,), dtype)
    other = _random_entry(draw, "body/kernel", (2, 2), dtype)
    tree = Tree([other, kernel, bias], convention=convention)
    return tree, layout, K, anchors, fields, group


def _random_entry(draw, name, shape, dtype):
    numel = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=dtype.nbytes(numel), max_size=dtype.nbytes(numel)))
    if dtype.name == "bool":
        raw = bytes(b & 1 for b in raw)
    return Entry(name, shape, dtype.name, RawBytes(raw))


def reference_channels(layout, K, anchors, fields, group, classes):
    """The plain-loops definition of each layout, written independently of channel_map."""
    out = []
    if layout == "plain":
        return list(classes)
    if layout == "class-major":
        for c in classes:
            for k in range(group):
                out.append(c * group + k)
        return out
    for a in range(anchors):
        for f in range(fields):
            out.append(a * (K + fields) + f)
        for c in classes:
            out.append(a * (K + fields) + fields + c)
    return out


def plan(tree, layout, K, fields, group, classes=None, num_classes=None):
    return plan_classes(
        tree, classes, num_classes=num_classes, layer_globs=["head"], layout=layout, source_classes=K,
        fields=fields, group=group,
    )


def bits(array):
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


@given(heads(), st.data())
def test_subsample_equals_numpy_take_per_anchor(head, data):
    tree, layout, K, anchors, fields, group = head
    classes = data.draw(st.lists(st.integers(0, K - 1), min_size=1, max_size=2 * K))
    new, _ = apply_plan(tree, plan(tree, layout, K, fields, group, classes))
    channels = reference_channels(layout, K, anchors, fields, group, classes)
    axis = -1 if tree.convention is KERAS else 0
    kernel = tree["head/kernel"].read()
    got = new["head/kernel"].read()
    assert got.dtype == kernel.dtype and new["head/kernel"].dtype == tree["head/kernel"].dtype
    assert bits(got) == bits(np.take(kernel, channels, axis=axis))
    assert bits(new["head/bias"].read()) == bits(tree["head/bias"].read()[channels])
    assert new["body/kernel"] is tree["body/kernel"]


@given(heads(dtype_names=FLOATING), st.integers(1, 4), st.sampled_from(["gaussian", "zeros", "xavier", "mean", "copy:0"]), st.integers(0, 2**32 - 1))
def test_upsample_keeps_old_classes_bit_exact(head, extra, init, seed):
    tree, layout, K, anchors, fields, group = head
    p = plan(tree, layout, K, fields, group, num_classes=K + extra)
    new, _ = apply_plan(tree, p, init=init, seed=seed)
    old_channels = reference_channels(layout, K, anchors, fields, group, range(K))
    new_channels = reference_channels(layout, K + extra, anchors, fields, group, range(K))
    axis = -1 if tree.convention is KERAS else 0
    for name in ("head/kernel", "head/bias"):
        a = np.take(tree[name].read(), old_channels, axis=axis if name == "head/kernel" else 0)
        b = np.take(new[name].read(), new_channels, axis=axis if name == "head/kernel" else 0)
        assert bits(a) == bits(b)
        assert new[name].read().dtype == tree[name].read().dtype


@given(heads(dtype_names=FLOATING), st.data())
def test_upsample_then_subsample_is_identity_on_kept_classes(head, data):
    tree, layout, K, anchors, fields, group = head
    extra = data.draw(st.integers(1, 3))
    up, _ = apply_plan(tree, plan(tree, layout, K, fields, group, num_classes=K + extra), seed=1)
    keep = data.draw(st.lists(st.integers(0, K - 1), min_size=1, max_size=K))
    down, _ = apply_plan(up, plan(up, layout, K + extra, fields, group, classes=keep))
    direct, _ = apply_plan(tree, plan(tree, layout, K, fields, group, classes=keep))
    for name in ("head/kernel", "head/bias"):
        assert bits(down[name].read()) == bits(direct[name].read())
