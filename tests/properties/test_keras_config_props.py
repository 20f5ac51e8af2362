"""Properties of surgery.keras_config: after class surgery every shape the config records for the
class scores holds the new class count, and nothing upstream of the head changes.

Configs are drawn as Keras 3 writes them (recorded tensor shapes, build_config): an input, a
conv, an anchor-major conf head, a Reshape to (-1, K), then a chain of layers that keep the class
axis; numpy arithmetic is the reference (anchors x K channels become anchors x len(classes)).
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from surgery.ops.classes import resample_classes
from surgery.tree import KERAS, Entry, Tree

KEEPING = ("Softmax", "Dropout", "Activation", "ReLU")


def tensor(source: str, shape: list) -> dict:
    return {"class_name": "__keras_tensor__", "config": {"shape": shape, "dtype": "float32", "keras_history": [source, 0, 0]}}


def node(name: str, class_name: str, source: str | None, shape: list | None, **config) -> dict:
    record = {"class_name": class_name, "name": name, "config": {"name": name, **config}, "inbound_nodes": []}
    if source is not None:
        record["inbound_nodes"] = [{"args": [tensor(source, shape)], "kwargs": {}}]
        record["build_config"] = {"input_shape": list(shape)}
    return record


@st.composite
def ssd_configs(draw):
    K, anchors, side = draw(st.integers(2, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    layers = [
        node("image", "InputLayer", None, None, batch_shape=[None, side, side, 3]),
        node("conv", "Conv2D", "image", [None, side, side, 3], filters=4),
        node("x_mbox_conf", "Conv2D", "conv", [None, side, side, 4], filters=anchors * K),
        node("reshape", "Reshape", "x_mbox_conf", [None, side, side, anchors * K], target_shape=[-1, K]),
    ]
    for k, class_name in enumerate(draw(st.lists(st.sampled_from(KEEPING), max_size=4))):
        layers.append(node(f"after_{k}", class_name, layers[-1]["name"], [None, side * side * anchors, K]))
    document = {"class_name": "Functional", "config": {"name": "m", "layers": layers, "input_layers": [["image", 0, 0]], "output_layers": [[layers[-1]["name"], 0, 0]]}}
    classes = draw(st.lists(st.integers(0, K - 1), min_size=1, max_size=K, unique=True))
    return json.dumps(document), K, anchors, classes


@given(ssd_configs())
def test_every_recorded_class_shape_holds_the_new_count(case):
    config, K, anchors, classes = case
    tree = Tree(
        [Entry.from_array("x_mbox_conf/kernel", np.zeros((3, 3, 4, anchors * K), "float32")), Entry.from_array("x_mbox_conf/bias", np.zeros(anchors * K, "float32"))],
        convention=KERAS,
        metadata={"model_config": config},
    )
    edited, _ = resample_classes(tree, classes, source_classes=K)
    before, after = json.loads(config)["config"]["layers"], json.loads(edited.metadata["model_config"])["config"]["layers"]
    n = len(classes)
    assert after[:2] == before[:2]  # upstream of the head: untouched
    assert after[2]["config"]["filters"] == anchors * n
    assert after[3]["config"]["target_shape"] == [-1, n]
    assert after[3]["inbound_nodes"][0]["args"][0]["config"]["shape"][-1] == anchors * n
    for layer in after[4:]:
        assert layer["inbound_nodes"][0]["args"][0]["config"]["shape"][-1] == n
        assert layer["build_config"]["input_shape"][-1] == n
