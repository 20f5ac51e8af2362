"""Properties of reinit and adapt-input, with numpy as the reference.

reinit: tensors outside --layers are untouched (the same entries, the same bytes); chosen
tensors keep shape and dtype, stay within their distribution's bound, have a std near the
target when large, are exact for constants, and are the same bytes for the same seed; zero-size
axes work. adapt-input: 3 channels is the identity, 1 channel is the sum, and for N = 3k an
input whose N channels repeat R, G, B gives the original conv output.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from .strategies import entries, tensor_bytes
from surgery import dtypes
from surgery.ops.fans import fans
from surgery.ops.reinit import adapt_input, reinit
from surgery.tree import KERAS, TORCH, Entry, Tree

FLOATS = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = {"keras": KERAS, "torch": TORCH}
kernel_shapes = st.lists(st.integers(0, 5), min_size=2, max_size=5).map(tuple)  # dense and 1-D/2-D/3-D convs, zero-size axes


def np_dtype(name: str) -> np.dtype:
    return dtypes.get(name).numpy()


@st.composite
def layer_trees(draw, dtype_names=FLOATS):
    """Layers `L0..Lk` with a kernel and a bias of random float dtype, plus unrelated entries of any dtype."""
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    sep = "/" if layout == "keras" else "."
    kernel_param, out_axis = ("kernel", -1) if layout == "keras" else ("weight", 0)
    items = []
    for i in range(draw(st.integers(1, 3))):
        shape = draw(kernel_shapes)
        dtype = draw(st.sampled_from(dtype_names))
        rng = np.random.default_rng(i)
        kernel = rng.standard_normal(shape).astype(np_dtype(dtype))
        items.append(Entry.from_array(f"L{i}{sep}{kernel_param}", kernel))
        items.append(Entry.from_array(f"L{i}{sep}bias", rng.standard_normal(shape[out_axis]).astype(np_dtype(dtype))))
    others = draw(st.lists(entries(), max_size=2, unique_by=lambda e: e.name))
    items += [e.renamed(f"other{sep}{k}{e.name}") for k, e in enumerate(others)]
    return Tree(items, convention=LAYOUTS[layout]), layout


def chosen_layers(tree: Tree) -> st.SearchStrategy:
    layers = sorted({n.split("/")[0].split(".")[0] for n in tree if n.startswith("L")})
    return st.lists(st.sampled_from(layers), min_size=1, unique=True)


@given(st.data(), layer_trees(), st.sampled_from(["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal:0.3", "zeros", "ones", "constant:-2.5"]), st.integers(0, 2**32 - 1))
def test_reinit_touches_only_the_chosen_layers_and_keeps_shape_and_dtype(data, made, init, seed):
    tree, _ = made
    globs = data.draw(chosen_layers(tree))
    new, report = reinit(tree, globs, init, seed=seed)
    assert [(e.name, e.shape, e.dtype) for e in new.values()] == [(e.name, e.shape, e.dtype) for e in tree.values()]
    chosen = {n for n in tree if n.split("/")[0].split(".")[0] in globs}
    assert set(report.names("reinitialised")) == chosen
    before, after = tensor_bytes(tree), tensor_bytes(new)
    for name in tree:
        if name not in chosen:
            assert new[name] is tree[name] and after[name] == before[name]
        else:
            array = new[name].read()
            assert array.dtype == np_dtype(tree[name].dtype) and array.shape == tree[name].shape
    again, _ = reinit(tree, globs, init, seed=seed)
    assert tensor_bytes(again) == after  # same seed, same bytes


@given(layer_trees(), st.integers(0, 2**32 - 1))
def test_xavier_uniform_stays_within_its_bound_and_biases_are_zero(made, seed):
    tree, layout = made
    new, _ = reinit(tree, "L*", "xavier_uniform", seed=seed)
    for name, entry in tree.items():
        if not name.startswith("L"):
            continue
        values = new[name].read().astype(np.float64)
        if name.endswith("bias"):
            assert not values.any()
            continue
        if entry.numel == 0:
            continue
        fan_in, fan_out = fans(entry.shape, layout)
        bound = math.sqrt(6 / (fan_in + fan_out))
        eps = float(ml_dtypes.finfo(np_dtype(entry.dtype)).eps)  # rounding to the dtype may move a value by this much
        assert np.abs(values).max() <= bound * (1 + eps)


@given(st.sampled_from(["xavier_normal", "kaiming_normal", "kaiming_uniform", "normal:0.05"]), st.sampled_from(FLOATS), st.sampled_from(sorted(LAYOUTS)), st.integers(0, 2**32 - 1))
def test_large_tensors_get_the_target_std(init, dtype, layout, seed):
    shape = (3, 3, 48, 64) if layout == "keras" else (64, 48, 3, 3)
    tree = Tree([Entry.from_array("big/kernel" if layout == "keras" else "big.weight", np.zeros(shape, np_dtype(dtype)))], convention=LAYOUTS[layout])
    new, report = reinit(tree, "big", init, seed=seed)
    values = new[next(iter(new))].read().astype(np.float64)
    fan_in, fan_out = 9 * 48, 9 * 64
    target = {
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
        "kaiming_normal": math.sqrt(2) / math.sqrt(fan_in),
        "kaiming_uniform": math.sqrt(2) * math.sqrt(3 / fan_in) / math.sqrt(3),  # U(-b, b) has std b/sqrt(3)
        "normal:0.05": 0.05,
    }[init]
    assert abs(values.std() / target - 1) < 0.05  # 27 648 samples: the estimate's error is well under 1%
    assert abs(values.mean()) < 0.05 * target


@given(kernel_shapes, st.sampled_from([*FLOATS, "float8_e4m3fn", "float8_e5m2"]), st.sampled_from([("zeros", 0.0), ("ones", 1.0), ("constant:-2.5", -2.5), ("constant:0.1", 0.1)]))
def test_constants_are_exact(shape, dtype, init):
    text, value = init
    tree = Tree([Entry.from_array("c.weight", np.ones(shape, np_dtype(dtype)))], convention=TORCH)
    new, _ = reinit(tree, "c", text)
    got = new["c.weight"].read()
    assert got.dtype == np_dtype(dtype) and got.shape == shape
    np.testing.assert_array_equal(got.astype(np.float64), np.full(shape, np.array(value).astype(np_dtype(dtype)).astype(np.float64)))


# -- adapt-input ------------------------------------------------------------------------

conv_kernels = st.tuples(st.integers(0, 4), st.integers(1, 3), st.integers(1, 3))  # out, kh, kw


def make_conv(layout: str, out: int, kh: int, kw: int, dtype: str, seed: int) -> tuple[Tree, np.ndarray]:
    """A conv kernel in `layout`, and the same numbers as OIHW."""
    oihw = np.random.default_rng(seed).standard_normal((out, 3, kh, kw)).astype(np_dtype(dtype))
    stored = oihw if layout == "torch" else np.ascontiguousarray(oihw.transpose(2, 3, 1, 0))
    name = "stem.weight" if layout == "torch" else "stem/kernel"
    return Tree([Entry.from_array(name, stored)], convention=LAYOUTS[layout]), oihw


def as_oihw(array: np.ndarray, layout: str) -> np.ndarray:
    return array if layout == "torch" else array.transpose(3, 2, 0, 1)


@given(conv_kernels, st.sampled_from(FLOATS), st.sampled_from(sorted(LAYOUTS)), st.integers(0, 99))
def test_three_channels_is_the_identity(kernel, dtype, layout, seed):
    tree, _ = make_conv(layout, *kernel, dtype, seed)
    new, _ = adapt_input(tree, 3)
    assert tensor_bytes(new) == tensor_bytes(tree)
    assert [(e.shape, e.dtype) for e in new.values()] == [(e.shape, e.dtype) for e in tree.values()]


@given(conv_kernels, st.sampled_from(FLOATS), st.sampled_from(sorted(LAYOUTS)), st.integers(0, 99))
def test_one_channel_is_the_sum(kernel, dtype, layout, seed):
    tree, oihw = make_conv(layout, *kernel, dtype, seed)
    new, _ = adapt_input(tree, 1)
    got = as_oihw(new[next(iter(new))].read(), layout)
    assert got.dtype == np_dtype(dtype) and got.shape == (kernel[0], 1, kernel[1], kernel[2])
    want = oihw.astype(np.float64).sum(axis=1, keepdims=True)
    eps = float(ml_dtypes.finfo(np_dtype(dtype)).eps)
    scale = np.abs(oihw.astype(np.float64)).sum(axis=1, keepdims=True)
    assert np.all(np.abs(got.astype(np.float64) - want) <= 2 * eps * scale)


@given(conv_kernels, st.sampled_from(["float32", "float64"]), st.sampled_from(sorted(LAYOUTS)), st.integers(1, 5), st.integers(0, 99))
def test_n_channels_repeating_rgb_give_the_original_output(kernel, dtype, layout, k, seed):
    n = 3 * k
    tree, oihw = make_conv(layout, *kernel, dtype, seed)
    new, _ = adapt_input(tree, n)
    adapted = as_oihw(new[next(iter(new))].read(), layout).astype(np.float64)
    assert adapted.shape == (kernel[0], n, kernel[1], kernel[2])
    patch = np.random.default_rng(seed + 1).standard_normal((3, kernel[1], kernel[2]))  # one receptive field, CHW
    repeated = np.tile(patch, (k, 1, 1))  # R, G, B, R, G, B, ...
    original = np.einsum("oihw,ihw->o", oihw.astype(np.float64), patch)
    got = np.einsum("oihw,ihw->o", adapted, repeated)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, original, rtol=tol, atol=tol * np.abs(oihw).sum())


@given(st.integers(1, 12))
def test_zero_output_channels_adapt(n):
    tree = Tree([Entry.from_array("c.weight", np.zeros((0, 3, 3, 3), "float32"))], convention=TORCH)
    assume(n != 3)
    new, _ = adapt_input(tree, n)
    assert new["c.weight"].read().shape == (0, n, 3, 3)
