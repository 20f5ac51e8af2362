"""Properties of classes by name: resolution agrees with indices, and a move and its inverse lose no shared class."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from surgery import labels
from surgery.ops import resample_classes
from surgery.tree import TORCH, Entry, Tree

TABLES = ["coco80", "coco80+bg", "coco91", "voc20", "voc21"]
POOL = labels.load("imagenet1k")[:60]  # names for made-up label spaces


def _head(rows: int, seed: int) -> Tree:
    """A torch Linear head with arbitrary float32 bit patterns (NaN payloads included)."""
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 2**32, size=(rows, 3), dtype=np.uint32).view(np.float32)
    bias = rng.integers(0, 2**32, size=rows, dtype=np.uint32).view(np.float32)
    return Tree([Entry.from_array("fc.weight", weight), Entry.from_array("fc.bias", bias)], convention=TORCH)


def _bits(tree: Tree, name: str) -> np.ndarray:
    return tree[name].read().view(np.uint32)


@st.composite
def named_picks(draw):
    table = draw(st.sampled_from(TABLES))
    names = labels.load(table)
    real = [i for i, n in enumerate(names) if not labels.is_placeholder(n)]
    picked = draw(st.lists(st.sampled_from(real), min_size=1, max_size=8, unique=True))
    spelled = [names[i].upper() if draw(st.booleans()) else names[i] for i in picked]  # case is ignored
    return table, spelled, draw(st.booleans()), draw(st.integers(0, 2**16))


@given(named_picks())
def test_subsampling_by_names_equals_subsampling_by_the_resolved_indices(case):
    table, spelled, background, seed = case
    names = labels.load(table)
    tree = _head(len(names), seed)
    by_name, _ = resample_classes(tree, spelled, labels=table, background=background)
    resolved = labels.resolve_classes(spelled, labels.space(table), background=background)
    by_index, _ = resample_classes(tree, resolved.classes)
    expected = labels.resolve(spelled, names, table)
    auto = background and labels.is_background(names[0]) and 0 not in expected
    assert resolved.classes == [0] * auto + expected
    for name in ("fc.weight", "fc.bias"):
        assert np.array_equal(_bits(by_name, name), _bits(by_index, name))
    assert labels.own(by_name).names == tuple(names[c] for c in resolved.classes)


@st.composite
def two_spaces(draw):
    source = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=12, unique=True))
    target = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=12, unique=True))
    return source, target, draw(st.integers(0, 2**16))


@given(two_spaces())
def test_a_move_and_its_inverse_keep_every_shared_class_bit_exact(case):
    source, target, seed = case
    tree = _head(len(source), seed)
    there, _ = resample_classes(tree, labels=source, to_labels=target, init="zeros")
    back, _ = resample_classes(there, labels=target, to_labels=source, init="zeros")
    assert back["fc.weight"].shape == tree["fc.weight"].shape
    for i, name in enumerate(source):
        if name in target:
            assert np.array_equal(_bits(back, "fc.weight")[i], _bits(tree, "fc.weight")[i])
            assert _bits(back, "fc.bias")[i] == _bits(tree, "fc.bias")[i]
        else:
            assert not back["fc.weight"].read()[i].any()  # lost on the way there, new (zeros) on the way back
    assert labels.own(back).names == tuple(source)
