"""Keras 3 `.keras` zips: found by content, read in place, written atomically, and loaded back by Keras.

Class surgery on `.keras` files is proven in test_keras_config_interop.py (parametrised over
`.h5` and `.keras`); here: detection, strip-head and truncate, round trips, and broken zips.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from helpers import digest, error_line, leftovers, run

from surgery.formats.keras_training import keras_training

from surgery import formats
from surgery.io import load

pytestmark = pytest.mark.interop


def model() -> keras.Model:
    image = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="stem")(image)
    x = keras.layers.Conv2D(4, 3, name="body")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, name="predictions")(x)
    return keras.Model(image, keras.layers.Activation("softmax", name="probs")(x))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compiled and trained model (so its config has a compile_config), saved as .keras."""
    keras.utils.set_random_seed(0)
    m = model()
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(1).standard_normal((4, 6, 6, 3)).astype("float32")
    m.fit(x, np.eye(5, dtype="float32")[[0, 1, 2, 3]], epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "m.keras"
    m.save(path)
    return path, m, x


def features(m: keras.Model, layer: str, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.Model(m.inputs, m.get_layer(layer).output)(x, training=False))


def test_a_keras_zip_is_found_by_content_whatever_its_name(tmp_path, saved):
    path, _, _ = saved
    renamed = tmp_path / "model.zip"
    shutil.copy(path, renamed)
    assert formats.detect(path) == "keras" and formats.detect(renamed) == "keras"
    tree = load(renamed)
    assert list(tree) == ["stem/0", "stem/1", "body/0", "body/1", "predictions/0", "predictions/1"]
    assert tree.metadata["keras_version"] == keras.__version__
    assert json.loads(tree.metadata["model_config"])["class_name"] == "Functional"
    (optimizer,) = keras_training(tree).optimizers  # proven from config.json: the moments follow every edit
    assert optimizer.mapped and optimizer.param_names == tuple(tree)


def test_strip_head_on_a_keras_zip_loads_and_keeps_the_features(tmp_path, saved):
    path, original, x = saved
    before = digest(path)
    out = tmp_path / "headless.keras"
    result = run("strip-head", path, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "note: compile_config dropped: its losses and metrics were for the removed outputs" in result.stdout
    assert digest(path) == before and leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["headless.keras"]
    headless = keras.saving.load_model(out)
    assert [layer.name for layer in headless.layers] == ["image", "stem", "body", "pool"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(headless(x)), features(original, "pool", x))
    with zipfile.ZipFile(out) as z:
        assert json.loads(z.read("config.json"))["compile_config"] is None
        assert json.loads(z.read("metadata.json")) == json.loads(zipfile.ZipFile(path).read("metadata.json"))
        assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED


def test_truncate_on_a_keras_zip_loads_and_keeps_the_features(tmp_path, saved):
    path, original, x = saved
    out = tmp_path / "stem.keras"
    assert run("truncate", path, "-o", out, "--after", "stem", "-q").exit_code == 0
    stem = keras.saving.load_model(out)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stem(x)), features(original, "stem", x))


def test_removing_a_layer_re_keys_the_groups_of_later_layers_of_its_class(tmp_path, saved):
    """Keras 3 keys layer groups by class and order (conv2d, conv2d_1, conv2d_2): without
    `left` (conv2d_1), `right` must be written as conv2d_1 or Keras finds no weights for it."""
    _, _, x = saved
    image = keras.Input((6, 6, 3), name="image")
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem")(image)
    left = keras.layers.Conv2D(2, 3, padding="same", name="left")(stem)
    right = keras.layers.Conv2D(3, 3, padding="same", name="right")(stem)
    two = keras.Model(image, [left, right])
    src = tmp_path / "two.keras"
    two.save(src)
    out = tmp_path / "right.keras"
    assert run("strip-head", src, "-o", out, "--head", "left", "-q").exit_code == 0
    with zipfile.ZipFile(out) as z, z.open("model.weights.h5") as f:
        import h5py

        with h5py.File(f) as h5:
            assert sorted(h5["layers"]) == ["conv2d", "conv2d_1", "input_layer"]
            assert h5["layers/conv2d_1/vars"].attrs["name"] == "right"
    only = keras.saving.load_model(out)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(only(x)), keras.ops.convert_to_numpy(two(x)[1]))


def test_a_keras_zip_round_trips_through_surgery_byte_for_byte_in_its_weights(tmp_path, saved):
    path, original, x = saved
    out = tmp_path / "same.keras"
    assert run("convert", path, "-o", out, "-q").exit_code == 0
    again = keras.saving.load_model(out)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)), keras.ops.convert_to_numpy(original(x)))
    assert [(e.name, e.shape) for e in load(out).values()] == [(e.name, e.shape) for e in load(path).values()]
    weights = tmp_path / "m.weights.h5"
    assert run("convert", path, "-o", weights, "-q").exit_code == 0  # the weights alone: a Keras 3 .weights.h5
    fresh = model()
    fresh.load_weights(weights)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(original(x)))


def test_only_a_keras_tree_can_be_written_as_keras(tmp_path, fixtures_dir):
    result = run("convert", fixtures_dir / "ssd300_coco_tiny.h5", "-o", tmp_path / "x.keras")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: a .keras file needs a model's config and the Keras 3 weights layout it was read with (keras); "
        "write .keras only from a .keras file; otherwise write .h5 or .weights.h5"
    )


# -- broken zips ----------------------------------------------------------------------------


def _expect(path, message: str) -> None:
    result = run("inspect", path)
    assert result.exit_code == 1
    assert error_line(result) == message


def _rezip(source, target, compression: int = zipfile.ZIP_STORED, weights: bytes | None = None) -> None:
    """A copy of a .keras zip with another compression, or other bytes for its weights."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, weights if weights is not None and info.filename == "model.weights.h5" else src.read(info))


def test_a_truncated_keras_file_is_one_line(tmp_path, saved):
    path, _, _ = saved
    broken = tmp_path / "cut.keras"
    broken.write_bytes(path.read_bytes()[:300])
    _expect(
        broken,
        f"error: cannot read the .keras zip (BadZipFile: File is not a zip file) ({broken}); "
        "the file is corrupt or not a Keras 3 model; re-save it with model.save('model.keras')",
    )


def test_a_zip_without_the_weights_is_refused(tmp_path):
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    _expect(
        path,
        f"error: a zip without model.weights.h5, so not a .keras model ({path}); "
        "the file is corrupt or not a Keras 3 model; re-save it with model.save('model.keras')",
    )


def test_a_compressed_weights_member_is_extracted_to_a_temporary_copy_and_said(tmp_path, saved, capsys):
    """Keras never compresses model.weights.h5, but a re-zipped file may: it is read from a copy."""
    import gc

    path, original, x = saved
    packed = tmp_path / "packed.keras"
    _rezip(path, packed, zipfile.ZIP_DEFLATED)
    tree = load(packed)
    note = capsys.readouterr().err
    assert note.startswith(f"note: model.weights.h5 is compressed inside {packed}, so it was extracted to ")
    copy = Path(note.split(" extracted to ", 1)[1].split(" (removed when done)")[0])
    assert copy.exists() and tree.source_paths() == {packed}  # the zip stays the input that must not be overwritten
    plain = load(path)
    assert all(tree[n].read().tobytes() == plain[n].read().tobytes() for n in plain)
    del tree
    gc.collect()
    assert not copy.exists()
    out = tmp_path / "headless.keras"
    result = run("strip-head", packed, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    headless = keras.saving.load_model(out)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(headless(x)), features(original, "pool", x))


def test_a_member_claiming_bytes_past_the_end_is_refused(tmp_path, saved):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02")  # the first central directory entry
    while True:  # the central directory entry of model.weights.h5
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_length] == b"model.weights.h5":
            break
        at = data.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<LL", data, at + 20, 10**8, 10**8)
    lying = tmp_path / "lying.keras"
    lying.write_bytes(bytes(data))
    result = run("inspect", lying)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: model.weights.h5 claims 100000000 bytes at offset ") and "past the end of the" in line


def test_an_hdf5_member_that_is_not_hdf5_is_one_line(tmp_path, saved):
    path, _, _ = saved
    bad = tmp_path / "bad.keras"
    _rezip(path, bad, weights=b"not hdf5 at all" * 10)
    result = run("inspect", bad)
    assert result.exit_code == 1
    assert error_line(result).startswith("error: cannot open the HDF5 file (")
