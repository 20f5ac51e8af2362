"""Keras optimizer variables follow class surgery, whatever their naming style and order: numpy
is the reference for every moment, and the names Keras loads them by stay as they were."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from surgery.formats.keras_training import FRAMEWORK, by_name, h5_names, keras_training
from surgery.formats.torch_training import TRAINING_KEY, TrainingState
from surgery.ops.classes import apply_plan, plan_classes
from surgery.tree import KERAS, Entry, Tree

STYLES = {
    "slot-last": lambda param, slot: f"training/Adam/{param}/{slot}:0",
    "slot-first": lambda param, slot: f"Adam/{slot}/{param}:0",
    "flat": lambda param, slot: f"adam/{param.replace('/', '_')}_{slot}",
}


def keras_tree(classes: int, style: str, order: list[int], seed: int) -> Tree:
    rng = np.random.default_rng(seed)
    shapes = {"conv1/kernel": (3, 3, 3, 4), "conv1/bias": (4,), "cls/kernel": (4, classes), "cls/bias": (classes,)}
    model = [Entry.from_array(n, rng.standard_normal(s).astype("float32"), {"keras.weight_name": f"{n}:0", "keras.layer": n.split("/")[0]}) for n, s in shapes.items()]
    raw = [Entry.from_array(STYLES[style](n, slot), rng.standard_normal(s).astype("float32")) for slot in ("m", "v") for n, s in shapes.items()]
    raw = [Entry.from_array("Adam/iterations:0", np.array(7, "int64")), *(raw[i] for i in order)]
    optimizer, reason = by_name("optimizer_weights", raw, model)
    assert reason == ""
    state = TrainingState("", (optimizer,), (), {}, framework=FRAMEWORK)
    return Tree(model, format="keras_h5", convention=KERAS, format_state={TRAINING_KEY: state})


@given(
    st.integers(2, 6).flatmap(
        lambda k: st.tuples(st.just(k), st.lists(st.one_of(st.none(), st.integers(0, k - 1)), min_size=1, max_size=8, unique=True))
    ),
    st.sampled_from(sorted(STYLES)),
    st.permutations(range(8)),
    st.integers(0, 2**16),
)
def test_moments_take_the_kernels_columns_and_new_ones_are_zero(k_and_classes, style, order, seed):
    k, classes = k_and_classes
    tree = keras_tree(k, style, list(order), seed)
    plan = plan_classes(tree, classes, layer_globs=["cls"], seed=1)
    edited, _ = apply_plan(tree, plan, seed=1)
    before, after = keras_training(tree).optimizers[0], keras_training(edited).optimizers[0]
    (layer,) = plan.layers
    for param in ("cls/kernel", "cls/bias"):
        for slot in ("m", "v"):
            old = before.tensors[f"optimizer/state/{param}/{slot}"].read()
            new = after.tensors[f"optimizer/state/{param}/{slot}"].read()
            assert new.shape == edited[param].shape
            for j, c in enumerate(layer.channel_map):
                expected = old[..., c] if isinstance(c, int) else np.zeros_like(old[..., 0])
                assert np.array_equal(new[..., j], expected)
    assert [n for n, _ in h5_names(after)] == [n for n, _ in h5_names(before)]  # Keras loads them by order, under these names
    for name in ("optimizer/Adam/iterations", "optimizer/state/conv1/kernel/m"):
        assert after.tensors[name] is before.tensors[name]  # untouched entries are shared, the counter kept
