"""surgery.keras_config on hand-written configs: what is rewritten, and what is refused by name.

Real Keras proves the rewritten files load (test_keras_config_interop.py); these examples pin
each rule and each message, on Keras 2-style configs (no recorded shapes) and Keras 3 ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from surgery.errors import OperationError
from surgery.ops.classes import resample_classes
from surgery.ops.reinit import adapt_input
from surgery.tree import KERAS, Entry, Tree

K = 5


def layer(class_name: str, name: str, inbound: list[str], **config) -> dict:
    return {"class_name": class_name, "name": name, "config": {"name": name, **config}, "inbound_nodes": [[[s, 0, 0, {}] for s in inbound]] if inbound else []}


def keras2_model(*layers: dict, outputs: list[str]) -> str:
    return json.dumps({"class_name": "Model", "config": {"name": "m", "layers": list(layers), "input_layers": [["image", 0, 0]], "output_layers": [[o, 0, 0] for o in outputs]}})


def head_tree(config: str, channels: int = 2 * K, name: str = "a_mbox_conf") -> Tree:
    return Tree(
        [Entry.from_array(f"{name}/kernel", np.zeros((3, 3, 4, channels), "float32")), Entry.from_array(f"{name}/bias", np.zeros(channels, "float32"))],
        convention=KERAS,
        metadata={"model_config": config},
    )


def config_of(tree: Tree) -> dict[str, dict]:
    return {entry["name"]: entry["config"] for entry in json.loads(tree.metadata["model_config"])["config"]["layers"]}


def message(e: pytest.ExceptionInfo) -> str:
    return f"{e.value.what} ({e.value.where}); {e.value.fix}"


def subsample(config: str, classes=(0, 3), channels: int = 2 * K) -> Tree:
    return resample_classes(head_tree(config, channels), list(classes), source_classes=K)[0]


IMAGE = layer("InputLayer", "image", [], batch_input_shape=[None, 8, 8, 4])


def ssd(*after: dict, outputs: list[str]) -> str:
    return keras2_model(IMAGE, layer("Conv2D", "a_mbox_conf", ["image"], filters=2 * K), *after, outputs=outputs)


def test_the_head_and_a_reshape_after_it_follow_the_new_class_count():
    config = ssd(
        layer("Reshape", "a_reshape", ["a_mbox_conf"], target_shape=[-1, K]),
        layer("Concatenate", "conf", ["a_reshape"], axis=1),
        layer("Activation", "softmax", ["conf"], activation="softmax"),
        outputs=["softmax"],
    )
    tree, report = resample_classes(head_tree(config), [0, 3, 1], source_classes=K)
    layers = config_of(tree)
    assert layers["a_mbox_conf"]["filters"] == 6 and layers["a_reshape"]["target_shape"] == [-1, 3]
    assert report.notes[0] == "model_config rewritten for 3 classes: a_mbox_conf; downstream: a_reshape"


def test_a_reshape_that_does_not_end_in_the_class_count_is_refused():
    config = ssd(layer("Reshape", "odd", ["a_mbox_conf"], target_shape=[-1, 2]), outputs=["odd"])
    with pytest.raises(OperationError) as e:
        subsample(config)
    assert message(e) == (
        "cannot tell how the class count of layer odd follows the edit: Reshape target_shape [-1, 2] does not end in a "
        "multiple of the 5 values per anchor of head a_mbox_conf (odd); subsample a weights-only file (model.save_weights) "
        "and build the new model in Keras, or strip the layers after the head first"
    )


def test_a_permute_that_moves_the_class_axis_is_refused():
    config = ssd(layer("Reshape", "r", ["a_mbox_conf"], target_shape=[-1, K]), layer("Permute", "p", ["r"], dims=[2, 1]), outputs=["p"])
    with pytest.raises(OperationError) as e:
        subsample(config)
    assert e.value.what == "cannot tell how the class count of layer p follows the edit: Permute [2, 1] moves the class axis away from the last place"


def test_scores_joined_with_boxes_pass_to_the_output_but_not_into_a_reshape():
    """ssd_keras's `predictions`: Concatenate(axis=-1) of class scores and boxes. Nothing after it
    carries a count, so the output is fine; a Reshape after it cannot be followed."""
    boxes = layer("Reshape", "boxes", ["image"], target_shape=[-1, 4])
    scores = layer("Reshape", "scores", ["a_mbox_conf"], target_shape=[-1, K])
    joined = layer("Concatenate", "predictions", ["scores", "boxes"], axis=-1)
    assert config_of(subsample(ssd(boxes, scores, joined, outputs=["predictions"])))["scores"]["target_shape"] == [-1, 2]
    with pytest.raises(OperationError) as e:
        subsample(ssd(boxes, scores, joined, layer("Reshape", "again", ["predictions"], target_shape=[-1, 9]), outputs=["again"]))
    assert e.value.what == (
        "cannot tell how the class count of layer again follows the edit: it is a Reshape after the class scores of "
        "a_mbox_conf were joined with other data"
    )


def test_a_concatenate_axis_of_unknown_rank_is_refused():
    config = ssd(layer("Concatenate", "c", ["a_mbox_conf"], axis=2), outputs=["c"])
    config = config.replace('"Conv2D"', '"Dense"').replace('"filters"', '"units"')  # a Dense head: its output rank is its input's
    tree = Tree([Entry.from_array("a_mbox_conf/kernel", np.zeros((4, 2 * K), "float32")), Entry.from_array("a_mbox_conf/bias", np.zeros(2 * K, "float32"))], convention=KERAS, metadata={"model_config": config})
    with pytest.raises(OperationError) as e:
        resample_classes(tree, [0, 1], source_classes=2 * K, layer_globs=["a_mbox_conf"])
    assert e.value.what == "cannot tell how the class count of layer c follows the edit: cannot tell whether Concatenate axis 2 is the class axis (the input's rank is unknown)"


def test_a_head_the_config_disagrees_with_or_lacks_is_refused():
    with pytest.raises(OperationError) as e:
        subsample(ssd(outputs=["a_mbox_conf"]).replace('"filters": 10', '"filters": 12'))
    assert message(e) == (
        "head layer a_mbox_conf: the model_config says filters 12 but its kernel has 10 channels (a_mbox_conf); "
        "the file's config and weights disagree; re-save the model"
    )
    with pytest.raises(OperationError) as e:
        subsample(keras2_model(IMAGE, outputs=["image"]))
    assert message(e) == "layer a_mbox_conf is not a top-level layer of the model_config (a_mbox_conf); edit a weights-only file (model.save_weights) instead"
    with pytest.raises(OperationError) as e:
        subsample("{}")
    assert message(e) == (
        "the model_config is not a Keras model config surgery can read (KeyError: 'config') (model_config); "
        "edit a weights-only file (model.save_weights) instead"
    )


def test_a_keras3_config_has_its_recorded_shapes_rewritten():
    def tensor(source, shape):
        return {"class_name": "__keras_tensor__", "config": {"shape": shape, "dtype": "float32", "keras_history": [source, 0, 0]}}

    reshape = {"class_name": "Reshape", "name": "r", "config": {"name": "r", "target_shape": [-1, K]}, "inbound_nodes": [{"args": [tensor("a_mbox_conf", [None, 8, 8, 2 * K])], "kwargs": {}}]}
    softmax = {"class_name": "Softmax", "name": "s", "config": {"name": "s"}, "build_config": {"input_shape": [None, 128, K]}, "inbound_nodes": [{"args": [tensor("r", [None, 128, K])], "kwargs": {}}]}
    head = {"class_name": "Conv2D", "name": "a_mbox_conf", "config": {"name": "a_mbox_conf", "filters": 2 * K}, "build_config": {"input_shape": [None, 8, 8, 4]}, "inbound_nodes": [{"args": [tensor("image", [None, 8, 8, 4])], "kwargs": {}}]}
    image = {"class_name": "InputLayer", "name": "image", "config": {"name": "image", "batch_shape": [None, 8, 8, 4]}, "inbound_nodes": []}
    config = json.dumps({"class_name": "Functional", "config": {"layers": [image, head, reshape, softmax], "input_layers": [["image", 0, 0]], "output_layers": [["s", 0, 0]]}})
    document = json.loads(subsample(config, classes=(4, 0, 1)).metadata["model_config"])
    r, s = document["config"]["layers"][2:]
    assert r["inbound_nodes"][0]["args"][0]["config"]["shape"] == [None, 8, 8, 6]
    assert r["config"]["target_shape"] == [-1, 3]
    assert s["inbound_nodes"][0]["args"][0]["config"]["shape"] == [None, 128, 3] and s["build_config"]["input_shape"] == [None, 128, 3]


# -- adapt-input ----------------------------------------------------------------------------


def conv_tree(config: str) -> Tree:
    return Tree([Entry.from_array("conv1/kernel", np.ones((3, 3, 3, 4), "float32"))], convention=KERAS, metadata={"model_config": config})


def test_adapt_input_rewrites_the_input_layer_and_a_sequential_first_layer():
    image = layer("InputLayer", "image", [], batch_input_shape=[None, 8, 8, 3])
    config = keras2_model(image, layer("ZeroPadding2D", "pad", ["image"]), layer("Conv2D", "conv1", ["pad"], filters=4), outputs=["conv1"])
    gray, report = adapt_input(conv_tree(config), 1)
    assert config_of(gray)["image"]["batch_input_shape"] == [None, 8, 8, 1]
    assert report.notes == ["model_config rewritten for 1 input channels: image"]
    sequential = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [{"class_name": "Conv2D", "config": {"name": "conv1", "filters": 4, "batch_input_shape": [None, 8, 8, 3]}}]}})
    four, _ = adapt_input(conv_tree(sequential), 4)
    assert json.loads(four.metadata["model_config"])["config"]["layers"][0]["config"]["batch_input_shape"] == [None, 8, 8, 4]
    assert adapt_input(conv_tree(config), 3)[0].metadata["model_config"] == config  # nothing to change


def test_adapt_input_refuses_an_input_that_feeds_more_than_the_conv():
    image = layer("InputLayer", "image", [], batch_input_shape=[None, 8, 8, 3])
    config = keras2_model(image, layer("Conv2D", "conv1", ["image"], filters=4), layer("Flatten", "raw", ["image"]), outputs=["conv1", "raw"])
    with pytest.raises(OperationError) as e:
        adapt_input(conv_tree(config), 1)
    assert message(e) == (
        "cannot give the model conv1's new input channels: between the input and conv1 is image, and it also feeds raw "
        "(conv1); name the first conv with --layer, or edit a weights-only file (model.save_weights)"
    )
    normalized = keras2_model(image, layer("Normalization", "norm", ["image"]), layer("Conv2D", "conv1", ["norm"], filters=4), outputs=["conv1"])
    with pytest.raises(OperationError) as e:
        adapt_input(conv_tree(normalized), 1)
    assert e.value.what == (
        "cannot give the model conv1's new input channels: between the input and conv1 is norm, and it is a Normalization, "
        "which may depend on the channel count"
    )
