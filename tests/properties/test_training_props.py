"""Optimizer state follows class surgery: numpy is the reference for every moment."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from surgery.formats.torch_training import (
    TRAINING_KEY,
    OptimizerState,
    TrainingState,
    training_state,
)
from surgery.ops.classes import apply_plan, plan_classes
from surgery.tree import TORCH, Entry, Tree


def training_tree(classes: int, anchors: int, seed: int) -> Tree:
    rng = np.random.default_rng(seed)
    shapes = {"body.weight": (4, 3), "head.weight": (anchors * classes, 4), "head.bias": (anchors * classes,)}
    model = [Entry.from_array(n, rng.standard_normal(s).astype("float32")) for n, s in shapes.items()]
    moments = [
        Entry.from_array(f"optimizer/state/{n}/{k}", rng.standard_normal(s).astype("float32"))
        for n, s in shapes.items()
        for k in ("exp_avg", "exp_avg_sq")
    ] + [Entry.from_array(f"optimizer/state/{n}/step", np.array(3.0, "float32")) for n in shapes]
    raw = {"state": {i: {} for i in range(3)}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]}
    optimizer = OptimizerState("optimizer", "optimizer", "Adam-family", tuple(shapes), "", 3.0, Tree(moments), raw)
    state = TrainingState("model", (optimizer,), ("epoch",), {"model": None, "optimizer": raw, "epoch": 1})
    return Tree(model, format="torch", convention=TORCH, format_state={TRAINING_KEY: state})


@given(
    st.integers(2, 6).flatmap(
        lambda k: st.tuples(st.just(k), st.lists(st.one_of(st.none(), st.integers(0, k - 1)), min_size=1, max_size=8, unique=True))
    ),
    st.integers(1, 3),
    st.integers(0, 2**16),
)
def test_moments_take_the_weights_channels_and_new_ones_are_zero(k_and_classes, anchors, seed):
    k, classes = k_and_classes
    tree = training_tree(k, anchors, seed)
    plan = plan_classes(tree, classes, layer_globs=["head"], anchors=anchors, seed=1)
    edited, _ = apply_plan(tree, plan, seed=1)
    before, after = training_state(tree).optimizers[0].tensors, training_state(edited).optimizers[0].tensors
    (layer,) = plan.layers
    mapping = layer.channel_map  # whatever layout the plan chose, the moments follow the weights
    for param in ("head.weight", "head.bias"):
        for key in ("exp_avg", "exp_avg_sq"):
            old = before[f"optimizer/state/{param}/{key}"].read()
            new = after[f"optimizer/state/{param}/{key}"].read()
            assert new.shape[0] == len(mapping) == edited[param].shape[0]
            for j, c in enumerate(mapping):
                expected = old[c] if isinstance(c, int) else np.zeros_like(old[0])
                assert np.array_equal(new[j], expected)
            weights = edited[param].read()
            kept = [j for j, c in enumerate(mapping) if isinstance(c, int)]
            assert np.array_equal(weights[kept], tree[param].read()[[mapping[j] for j in kept]])
    for name in ("optimizer/state/body.weight/exp_avg", "optimizer/state/head.weight/step"):
        assert after[name] is before[name]  # untouched entries are shared, step counters kept
