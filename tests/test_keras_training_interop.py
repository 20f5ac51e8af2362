"""Keras optimizer state through surgery, proven with real Keras 3 (torch backend): the moments
Keras restores are the kept rows of the originals, new rows start at zero, and training resumes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from helpers import error_line, run

keras = pytest.importorskip("keras")

CLASSES = [0, 3, 1]
IMAGES = np.random.default_rng(0).random((16, 8, 8, 3)).astype(np.float32)


def classifier(classes: int = 5, optimizer=None):
    """A small conv + batch norm + dense classifier, compiled with Adam."""
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(classes, name="cls")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-2), loss=keras.losses.MeanSquaredError())
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(7)
    model = classifier()
    targets = np.random.default_rng(1).random((16, 5)).astype(np.float32)
    model.fit(IMAGES, targets, epochs=1, batch_size=4, verbose=0)  # 4 steps: moments are not zero
    path = tmp_path_factory.mktemp("trained") / "trained.keras"
    model.save(path)
    return path, _by_slot(model)


def _by_slot(model) -> dict[str, np.ndarray]:
    """Optimizer variables by name without the optimizer's own (adam, adam_1, ... as other tests made optimizers)."""
    return {v.path.split("/", 1)[1]: v.numpy() for v in model.optimizer.variables}


def _optimizer_values(path):
    model = keras.saving.load_model(path)
    return model, _by_slot(model)


def test_subsample_keeps_the_moments_of_the_kept_classes(tmp_path, trained):
    src, before = trained
    out = tmp_path / "three.keras"
    result = run("subsample", src, "-o", out, "--classes", ",".join(map(str, CLASSES)), "--layers", "cls")
    assert result.exit_code == 0, result.stderr
    assert "optimizer state reshaped with its parameters (4): optimizer/state/cls/0/momentum" in result.stdout
    model, after = _optimizer_values(out)
    assert set(after) == set(before) and len(after) == 14
    for path, value in before.items():
        if path.startswith("cls_"):
            assert np.array_equal(after[path], np.take(value, CLASSES, axis=-1)), path
        else:
            assert np.array_equal(after[path], value), path  # iteration, learning rate, untouched layers
    assert int(after["iteration"]) == 4
    model.fit(IMAGES, np.zeros((16, 3), np.float32), epochs=1, batch_size=16, verbose=0)  # training resumes
    assert int(model.optimizer.iterations.numpy()) == 5


def test_upsample_new_classes_start_from_zero_moments(tmp_path, trained):
    src, before = trained
    out = tmp_path / "seven.keras"
    result = run("upsample", src, "-o", out, "--num-classes", "7", "--layers", "cls", "-q")
    assert result.exit_code == 0, result.stderr
    model, after = _optimizer_values(out)
    for slot in ("momentum", "velocity"):
        kernel, old = after[f"cls_kernel_{slot}"], before[f"cls_kernel_{slot}"]
        assert np.array_equal(kernel[:, :5], old) and not kernel[:, 5:].any()
        bias = after[f"cls_bias_{slot}"]
        assert np.array_equal(bias[:5], before[f"cls_bias_{slot}"]) and not bias[5:].any()
    assert np.array_equal(after["conv1_kernel_momentum"], before["conv1_kernel_momentum"])
    model.fit(IMAGES, np.zeros((16, 7), np.float32), epochs=1, batch_size=16, verbose=0)


def test_inspect_shows_the_keras_training_state(trained):
    src, _ = trained
    result = run("inspect", src)
    assert "training: optimizer: Keras Adam (momentum, velocity), step 4, 14 tensors for 6 parameters, as optimizer/state/<parameter>/<key>" in result.stdout
    document = json.loads(run("inspect", src, "--json").stdout)["training"]
    assert document["optimizers"][0]["mapped"] and document["framework"] == "keras"


def test_a_plain_conversion_keeps_the_optimizer_byte_for_byte(tmp_path, trained):
    src, before = trained
    out = tmp_path / "same.keras"
    assert run("convert", src, "-o", out, "-q").exit_code == 0
    _, after = _optimizer_values(out)
    assert all(np.array_equal(after[k], v) for k, v in before.items())


def test_drop_optimizer_writes_the_model_without_it(tmp_path, trained):
    src, _ = trained
    out = tmp_path / "bare.keras"
    result = run("subsample", src, "-o", out, "--classes", "0,3,1", "--layers", "cls", "--drop-optimizer", "-q")
    assert result.exit_code == 0, result.stderr
    with zipfile.ZipFile(out) as z:
        z.extract("model.weights.h5", tmp_path)
    import h5py

    with h5py.File(tmp_path / "model.weights.h5") as f:
        assert "optimizer" not in f


def test_a_count_that_does_not_match_the_optimizer_is_refused(tmp_path):
    keras.utils.set_random_seed(3)
    model = classifier(optimizer=keras.optimizers.Adam(1e-2, amsgrad=True))
    model.fit(IMAGES, np.zeros((16, 5), np.float32), epochs=1, batch_size=16, verbose=0)
    src = tmp_path / "amsgrad.keras"
    model.save(src)
    config = json.loads(zipfile.ZipFile(src).read("config.json"))
    config["compile_config"]["optimizer"]["config"]["amsgrad"] = False  # the config no longer says what the file holds
    forged = tmp_path / "forged.keras"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(forged, "w") as b:
        for info in a.infolist():
            b.writestr(info, json.dumps(config) if info.filename == "config.json" else a.read(info))
    result = run("subsample", forged, "-o", tmp_path / "out.keras", "--classes", "0,1", "--layers", "cls")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: subsample/upsample would have to move the optimizer state, but optimizer holds 20 variables but Adam "
        "for the 6 trainable variables of config.json's layers would hold 14 (optimizer); pass --drop-optimizer to write "
        "the checkpoint without optimizer state (training then restarts its moments)"
    )


def test_keras3_legacy_h5_loader_does_not_restore_optimizer_state(tmp_path, trained):
    """Keras 3.15's own full-model .h5 (legacy) loader: it writes optimizer_weights, but loads
    them into an optimizer it has not built, so even its own files come back with fresh moments.
    surgery still carries them (by name), for tf.keras 2 and for whenever Keras loads them again."""
    keras.utils.set_random_seed(5)
    model = classifier()
    model.fit(IMAGES, np.zeros((16, 5), np.float32), epochs=1, batch_size=16, verbose=0)
    src = tmp_path / "legacy.h5"
    model.save(src)
    reloaded = keras.saving.load_model(src)
    assert len(model.optimizer.variables) == 14
    assert [v.path.split("/")[1] for v in reloaded.optimizer.variables] == ["iteration", "learning_rate"]  # no moments restored
    out = tmp_path / "three.h5"
    result = run("subsample", src, "-o", out, "--classes", "0,3,1", "--layers", "cls", "-q")
    assert result.exit_code == 0, result.stderr
    import h5py

    with h5py.File(out) as f:
        group = f["optimizer_weights"]
        names = [n.decode() for n in group.attrs["weight_names"]]
        assert names == [v.path for v in model.optimizer.variables]
        kernel = next(n for n in names if n.endswith("/cls_kernel_momentum"))
        momentum = model.optimizer.variables[names.index(kernel)].numpy()
        assert np.array_equal(group[kernel][()], momentum[:, [0, 3, 1]])


def test_a_frozen_layer_has_no_slots_and_the_order_still_holds(tmp_path):
    """conv1 frozen (trainable=False in config.json): Adam builds slots only for bn1 and cls."""
    keras.utils.set_random_seed(11)
    model = classifier()
    model.get_layer("conv1").trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.MeanSquaredError())
    model.fit(IMAGES, np.ones((16, 5), np.float32), epochs=1, batch_size=8, verbose=0)
    src = tmp_path / "frozen.keras"
    model.save(src)
    before = _by_slot(model)
    assert not any("conv1" in p for p in before) and len(before) == 2 + 2 * 4
    out = tmp_path / "three.keras"
    assert run("subsample", src, "-o", out, "--classes", "4,2,0", "--layers", "cls", "-q").exit_code == 0
    _, after = _optimizer_values(out)
    for path, value in before.items():
        expected = np.take(value, [4, 2, 0], axis=-1) if path.startswith("cls_") else value
        assert np.array_equal(after[path], expected), path


def test_strip_head_drops_the_optimizer_with_the_compile_config(tmp_path, trained):
    src, _ = trained
    out = tmp_path / "body.keras"
    result = run("strip-head", src, "-o", out, "--head", "cls")
    assert result.exit_code == 0, result.stderr
    assert "optimizer dropped with the training config: an uncompiled model has no optimizer to restore" in result.stdout
    with zipfile.ZipFile(out) as z:
        z.extract("model.weights.h5", tmp_path)
    import h5py

    with h5py.File(tmp_path / "model.weights.h5") as f:
        assert "optimizer" not in f
    assert getattr(keras.saving.load_model(out), "optimizer", None) is None  # loads, uncompiled


def test_a_weights_file_cannot_prove_its_optimizer_order(tmp_path):
    """Keras 3's save_weights of a compiled model stores optimizer/vars too, but no config says
    which layer is trainable or in what order: edits refuse until --drop-optimizer."""
    keras.utils.set_random_seed(13)
    model = classifier()
    model.fit(IMAGES, np.zeros((16, 5), np.float32), epochs=1, batch_size=16, verbose=0)
    src = tmp_path / "trained.weights.h5"
    model.save_weights(src)
    result = run("subsample", src, "-o", tmp_path / "out.weights.h5", "--classes", "0,3,1", "--layers", "cls")
    assert error_line(result) == (
        "error: subsample/upsample would have to move the optimizer state, but a .weights.h5 file has no config.json, which "
        "would prove the order of optimizer/vars (optimizer); pass --drop-optimizer to write the checkpoint without "
        "optimizer state (training then restarts its moments)"
    )
    out = tmp_path / "three.weights.h5"
    assert run("subsample", src, "-o", out, "--classes", "0,3,1", "--layers", "cls", "--drop-optimizer", "-q").exit_code == 0
    edited = classifier(3)
    edited.load_weights(out)
    np.testing.assert_array_equal(edited.get_layer("cls").kernel.numpy(), model.get_layer("cls").kernel.numpy()[:, [0, 3, 1]])
