"""Layout conversion properties: Keras -> torch -> Keras (and torch -> Keras -> torch) is the identity
on names, shapes, dtypes and bytes, for random conv/dense/BatchNorm/depthwise trees in every float
dtype, with zero-size axes; and the torch side matches numpy's transpose."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from .strategies import RawBytes, signature, tensor_bytes

from surgery import dtypes
from surgery.ops.layout import MAP_KEY, convert_layout
from surgery.tree import KERAS, TORCH, Entry, Tree

FLOATS = sorted(n for n, d in dtypes.DTYPES.items() if d.is_floating and not d.packed)
dims = st.integers(0, 3)  # zero-size channel axes included


def raw_entry(draw, name: str, shape: tuple[int, ...], dtype: str) -> Entry:
    d = dtypes.get(dtype)
    raw = draw(st.binary(min_size=d.nbytes(int(np.prod(shape, dtype=np.int64))), max_size=d.nbytes(int(np.prod(shape, dtype=np.int64)))))
    return Entry(name, shape, dtype, RawBytes(raw))


@st.composite
def keras_layers(draw):
    """A Keras tree (Keras 2 names) and the flatten shapes of its Dense layers."""
    entries, flatten = [], {}
    conv_out = None  # channels of the last conv: the C of a Dense's flatten shape after it
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv1d", "conv2d", "conv3d", "dense", "bn", "depthwise"]))
        dtype = draw(st.sampled_from(FLOATS))
        layer = f"{kind}_{k}"
        cin, cout = draw(dims), draw(dims)
        if kind == "dense" and conv_out is not None:
            cin = conv_out
        conv_out = {"dense": None, "depthwise": cin * cout}.get(kind, cout if kind.startswith("conv") else conv_out)
        if kind.startswith("conv"):
            spatial = tuple(draw(dims) for _ in range(int(kind[4])))
            entries.append(raw_entry(draw, f"{layer}/kernel", (*spatial, cin, cout), dtype))
        elif kind == "depthwise":
            entries.append(raw_entry(draw, f"{layer}/depthwise_kernel", (draw(dims), draw(dims), cin, cout), dtype))
            cout = cin * cout
        elif kind == "dense":
            h, w = draw(dims), draw(dims)
            flatten[layer] = (h, w, cin)
            entries.append(raw_entry(draw, f"{layer}/kernel", (h * w * cin, cout), dtype))
        else:
            for p in ("gamma", "beta", "moving_mean", "moving_variance"):
                entries.append(raw_entry(draw, f"{layer}/{p}", (cout,), dtype))
            continue
        if draw(st.booleans()):
            entries.append(raw_entry(draw, f"{layer}/bias", (cout,), dtype))
    return Tree(entries, convention=KERAS), flatten


@given(keras_layers())
def test_keras_to_torch_to_keras_is_the_identity(case):
    tree, flatten = case
    torch_tree, report = convert_layout(tree, "torch", flatten_shapes=flatten)
    assert torch_tree.convention == TORCH
    assert len(torch_tree) == len(tree) + len(report.names("added"))
    back, _ = convert_layout(torch_tree, "keras")
    assert back.convention == KERAS
    assert signature(back) == signature(tree)
    assert tensor_bytes(back) == tensor_bytes(tree)


@given(keras_layers())
def test_conv_and_dense_weights_match_numpy_transpose(case):
    tree, flatten = case
    torch_tree, _ = convert_layout(tree, "torch", flatten_shapes=flatten)
    for name, entry in tree.items():
        layer, _, param = name.partition("/")
        if param != "kernel":
            continue
        got = torch_tree[f"{layer}.weight"].read()
        want = entry.read()
        if layer.startswith("dense"):
            h, w, c = flatten[layer]
            want = want.reshape(h, w, c, -1 if want.size else want.shape[1]).transpose(3, 2, 0, 1).reshape(got.shape)
        else:
            r = want.ndim
            want = want.transpose(r - 1, r - 2, *range(r - 2))
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@st.composite
def torch_layers(draw):
    """A torch tree of Linear/Conv/BatchNorm modules (num_batches_tracked 0, as Keras cannot keep it)."""
    entries, flatten = [], {}
    conv_out = None  # channels of the last conv: a Linear after it reads a (1, 1, conv_out) map
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "linear", "bn"]))
        dtype = draw(st.sampled_from(FLOATS))
        module = f"blocks.{k}.{kind}"
        out = draw(dims)
        if kind == "bn":
            for p in ("weight", "bias", "running_mean", "running_var"):
                entries.append(raw_entry(draw, f"{module}.{p}", (out,), dtype))
            entries.append(Entry.from_array(f"{module}.num_batches_tracked", np.zeros((), np.int64)))
            continue
        rank = 2 if kind == "linear" else draw(st.integers(3, 5))
        shape = (out, *(draw(dims) for _ in range(rank - 1)))
        if kind == "linear" and conv_out is not None:
            shape = (out, conv_out)
        conv_out = out if kind == "conv" else None
        if kind == "linear":  # a Linear after a Conv is refused without its Flatten's shape
            flatten[module] = (1, 1, shape[1])
        entries.append(raw_entry(draw, f"{module}.weight", shape, dtype))
        if draw(st.booleans()):
            entries.append(raw_entry(draw, f"{module}.bias", (out,), dtype))
    return Tree(entries, convention=TORCH), flatten


@given(torch_layers())
def test_torch_to_keras_to_torch_is_the_identity(case):
    tree, flatten = case
    keras_tree, _ = convert_layout(tree, "keras", flatten_shapes=flatten)
    # The way back is told the flatten shapes too, as a user converting such a file back would be.
    back, _ = convert_layout(keras_tree, "torch", flatten_shapes=flatten)
    back = back.derive(metadata={k: v for k, v in back.metadata.items() if k != MAP_KEY})
    assert signature(back) == signature(tree)
    assert tensor_bytes(back) == tensor_bytes(tree)
