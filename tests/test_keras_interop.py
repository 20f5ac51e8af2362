"""Real Keras 3 (torch backend) reads what we write, and computes the same numbers.

The founding workflow end to end: Keras builds and saves an SSD-like model with 81
classes and 4/6 anchors; `surgery subsample` keeps 9 classes; Keras loads the result
into the same architecture built for 9 classes, whose predictions must equal the
original's at the kept classes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import surgery  # noqa: E402
from helpers import run  # noqa: E402
from surgery.ops.classes import channel_map, parse_classes  # noqa: E402

ROAD = "0,3,8,1,2,10,4,6,12"
# SSD300's six predictor layers and their boxes per location.
ANCHORS = {"conv4_3_norm": 4, "fc7": 6, "conv6_2": 6, "conv7_2": 6, "conv8_2": 4, "conv9_2": 4}


def ssd_like(n_classes: int) -> "keras.Model":
    """SSD300's head structure at toy size: six feature maps, each with a conf head
    (anchors × classes channels) and a loc head (anchors × 4)."""
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv4_3")(inp)
    x = keras.layers.BatchNormalization(name="conv4_3_bn")(x)
    features = {"conv4_3_norm": x}
    for name in list(ANCHORS)[1:]:
        strides = 1 if name in ("fc7", "conv9_2") else 2
        x = keras.layers.Conv2D(6, 3, strides=strides, padding="same", activation="relu", name=name)(x)
        features[name] = x
    outputs = []
    for name, feature in features.items():
        a = ANCHORS[name]
        outputs.append(keras.layers.Conv2D(a * n_classes, 3, padding="same", name=f"{name}_mbox_conf")(feature))
        outputs.append(keras.layers.Conv2D(a * 4, 3, padding="same", name=f"{name}_mbox_loc")(feature))
    return keras.Model(inp, outputs)


def randomised(model: "keras.Model", seed: int) -> "keras.Model":
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3 for w in layer.get_weights()])
    return model


def predict(model, x):
    return [keras.ops.convert_to_numpy(t) for t in model.predict(x, verbose=0)]


@pytest.fixture(scope="module")
def original():
    keras.utils.set_random_seed(0)
    return randomised(ssd_like(81), 1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype("float32")


def check_kept_classes(original, edited, images):
    classes = parse_classes(ROAD)
    want, got = predict(original, images), predict(edited, images)
    for k, name in enumerate(ANCHORS):
        conf = 2 * k
        keep = channel_map("anchor-major", 81, ANCHORS[name], classes)
        np.testing.assert_array_equal(got[conf], want[conf][..., keep])
        np.testing.assert_array_equal(got[conf + 1], want[conf + 1])  # loc heads untouched


@pytest.mark.parametrize("layout", ["full-model .h5", "Keras 2-style weights .h5"])
def test_subsampled_legacy_h5_loads_by_name_into_a_9_class_model(tmp_path, original, images, layout):
    src = tmp_path / "ssd_coco.h5"
    if layout == "full-model .h5":
        original.save(src)
    else:
        from keras.src.legacy.saving import legacy_h5_format

        legacy_h5_format.save_weights_to_hdf5_group(__import__("h5py").File(src, "w"), original)
    out = tmp_path / "ssd_road.h5"
    result = run("subsample", src, "-o", out, "--classes", ROAD, "--anchors", "4", "--verify", "-q")
    assert result.exit_code == 0, result.stderr
    edited = ssd_like(9)
    edited.load_weights(str(out), by_name=True)
    check_kept_classes(original, edited, images)
    plain = ssd_like(9)
    plain.load_weights(str(out))  # topological loading works too: the layer order is kept
    check_kept_classes(original, plain, images)


def test_subsampled_keras3_weights_load_with_load_weights(tmp_path, original, images):
    src = tmp_path / "ssd_coco.weights.h5"
    original.save_weights(src)
    out = tmp_path / "ssd_road.weights.h5"
    result = run("subsample", src, "-o", out, "--classes", ROAD, "-q")  # anchors from the loc layers
    assert result.exit_code == 0, result.stderr
    edited = ssd_like(9)
    edited.load_weights(str(out))
    check_kept_classes(original, edited, images)


def test_full_model_keeps_config_and_carries_the_optimizer_state(tmp_path, original, images):
    model = randomised(ssd_like(81), 1)
    model.compile(optimizer="adam", loss="mse")
    model.fit(images, [np.zeros_like(t) for t in predict(model, images)], epochs=1, verbose=0)
    src = tmp_path / "trained.h5"
    model.save(src)
    import h5py

    with h5py.File(src) as f:
        assert "optimizer_weights" in f  # the case we must handle
        config = f.attrs["model_config"]
    out = tmp_path / "road.h5"
    result = run("subsample", src, "-o", out, "--classes", ROAD, "--anchors", "4")
    assert result.exit_code == 0, result.stderr
    assert "note: optimizer state reshaped with its parameters (24): " in result.stdout
    with h5py.File(out) as f:
        names = [n.decode() for n in f["optimizer_weights"].attrs["weight_names"]]
        assert names == [v.path for v in model.optimizer.variables]  # in Keras's order, under Keras's names
        momentum = f["optimizer_weights"][next(n for n in names if n.endswith("/fc7_mbox_conf_bias_momentum"))][()]
        assert momentum.shape == (6 * 9,)
        assert "training_config" in f.attrs
        rewritten = json.loads(f.attrs["model_config"])  # the conf heads' filters follow the 9 classes
    filters = {layer["name"]: layer["config"].get("filters") for layer in rewritten["config"]["layers"]}
    assert filters["conv4_3_norm_mbox_conf"] == 36 and filters["fc7_mbox_conf"] == 54 and filters["fc7_mbox_loc"] == 24
    assert json.loads(config)["config"]["layers"][1:4] == rewritten["config"]["layers"][1:4]
    edited = ssd_like(9)
    edited.load_weights(str(out), by_name=True)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(edited.get_layer("conv4_3").kernel), keras.ops.convert_to_numpy(model.get_layer("conv4_3").kernel)
    )


def test_upsampled_model_keeps_old_classes_in_keras(tmp_path, original, images):
    src = tmp_path / "ssd.h5"
    original.save(src)
    out = tmp_path / "more.h5"
    assert run("upsample", src, "-o", out, "--num-classes", "83", "--anchors", "4", "-q").exit_code == 0
    edited = ssd_like(83)
    edited.load_weights(str(out), by_name=True)
    want, got = predict(original, images), predict(edited, images)
    for k, name in enumerate(ANCHORS):
        for a in range(ANCHORS[name]):
            np.testing.assert_array_equal(got[2 * k][..., a * 83 : a * 83 + 81], want[2 * k][..., a * 81 : (a + 1) * 81])


def test_converted_from_safetensors_loads_in_keras(tmp_path, original, images):
    """A Keras tree written as safetensors and back still loads: the names carry the layers."""
    src = tmp_path / "m.h5"
    original.save(src)
    st = tmp_path / "m.safetensors"
    assert run("convert", src, "-o", st, "-q").exit_code == 0
    assert surgery.load(st).convention == surgery.KERAS
    back = tmp_path / "back.h5"
    assert run("convert", st, "-o", back, "-q").exit_code == 0
    model = ssd_like(81)
    model.load_weights(str(back), by_name=True)
    for a, b in zip(predict(model, images), predict(original, images)):
        np.testing.assert_array_equal(a, b)
