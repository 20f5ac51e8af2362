"""Properties of freeze maps: exact coverage, buffers apart, the stated conflict rule, recipe invariants."""

from __future__ import annotations

import fnmatch

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from surgery.errors import OperationError
from surgery.naming import layer_of, param_of
from surgery.ops.freeze import RECIPES, BUFFER_PARAMS, FreezeMap, freeze_map, specificity
from surgery.tree import Entry, Tree

LAYERS = ["conv1", "conv2", "bn1", "layer1.0", "fc", "head", "classifier.1"]
PARAM_NAMES = ["weight", "bias", "kernel", "gamma"]
BUFFERS = sorted(BUFFER_PARAMS)


@st.composite
def param_trees(draw) -> Tree:
    """Random torch- or Keras-style names: parameters, named buffers and integer tensors."""
    sep = draw(st.sampled_from([".", "/"]))
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=5, unique=True))
    entries = []
    for layer in layers:
        for param in draw(st.lists(st.sampled_from(PARAM_NAMES + BUFFERS), min_size=1, max_size=4, unique=True)):
            dtype = "int64" if param == "num_batches_tracked" else draw(st.sampled_from(["float32", "float16", "int8"]))
            entries.append(Entry.from_array(f"{layer}{sep}{param}", np.zeros(2, dtype)))
    return Tree(draw(st.permutations(entries)))


def parameters(tree: Tree) -> list[str]:
    """The reference: floating tensors not named as running statistics."""
    return [n for n, e in tree.items() if e.dtype in ("float32", "float16") and param_of(n) not in BUFFER_PARAMS]


@st.composite
def globs_for(draw, names: list[str]) -> str:
    """A glob that matches at least one of `names` (or its layer): literal, prefix* or *suffix."""
    name = draw(st.sampled_from(names))
    target = draw(st.sampled_from([name, layer_of(name)])) or name
    cut = draw(st.integers(0, len(target)))
    return draw(st.sampled_from([target, target[:cut] + "*", "*" + target[cut:]]))


def hit(name: str, glob: str) -> bool:
    return fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(layer_of(name), glob)


@given(st.data())
def test_every_parameter_is_covered_exactly_once_and_buffers_never(data):
    tree = data.draw(param_trees())
    params = parameters(tree)
    assume(params)
    freeze = data.draw(st.lists(globs_for(params), max_size=3))
    train = data.draw(st.lists(globs_for(params), max_size=3))
    mults = data.draw(st.dictionaries(globs_for(params), st.sampled_from([0.5, 2.0, 10.0]), max_size=2))
    fmap, report = freeze_map(tree, freeze=freeze, train=train, lr_mult=mults)
    assert list(fmap.parameters) == params  # every parameter, once, in checkpoint order
    assert sorted(fmap.buffers) == sorted(set(tree) - set(params))
    assert not set(fmap.buffers) & set(fmap.parameters)
    ruled = [n for r in report.facts["rules"] if r["sets"] in ("trainable", "frozen") for n in r["parameters"]]
    assert sorted(ruled) == sorted(params)  # each parameter decided by exactly one rule
    for name, setting in fmap.parameters.items():
        assert setting.trainable == expected_trainable(name, freeze, train)
        assert setting.lr_mult == expected_mult(name, mults)
    assert FreezeMap.from_json(fmap.to_json()) == fmap


def expected_trainable(name: str, freeze: list[str], train: list[str]) -> bool:
    """The stated rule, written independently: most literal characters; ties go to --train."""
    votes = [(specificity(g), False) for g in freeze if hit(name, g)] + [(specificity(g), True) for g in train if hit(name, g)]
    if not votes:
        return True
    best = max(s for s, _ in votes)
    return any(t for s, t in votes if s == best)


def expected_mult(name: str, mults: dict[str, float]) -> float:
    hits = [(specificity(g), x) for g, x in mults.items() if hit(name, g)]
    return max(hits)[1] if hits else 1.0


@given(st.data(), st.sampled_from(sorted(RECIPES)))
def test_recipe_invariants(data, recipe):
    tree = data.draw(param_trees())
    params = parameters(tree)
    assume(params)
    head = data.draw(st.lists(globs_for(params), min_size=1, max_size=2))
    fmap, _ = freeze_map(tree, recipe=recipe, head=head)
    in_head = {n for n in params if any(hit(n, g) for g in head)}
    assert set(fmap.head) == in_head
    for name, s in fmap.parameters.items():
        if recipe.startswith("small-"):
            assert s.trainable == (name in in_head) and s.lr_mult == 1.0
        else:
            assert s.trainable and s.lr_mult == (10.0 if name in in_head else 1.0)


@given(param_trees(), st.text(alphabet="xyz_", min_size=1, max_size=5))
def test_a_glob_matching_nothing_is_an_error_naming_it(tree, glob):
    assume(parameters(tree))
    assume(not any(hit(n, glob) for n in tree))
    for option in ("freeze", "train"):
        try:
            freeze_map(tree, **{option: [glob]})
        except OperationError as e:
            assert e.what == f"--{option} {glob!r} matches no parameter"
        else:
            raise AssertionError("no error")
