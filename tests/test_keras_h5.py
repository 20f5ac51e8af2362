"""The Keras HDF5 reader and writer on the layouts real files use, built here with h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import surgery
from helpers import digest, error_line, run
from surgery.tree import TORCH, Entry, Tree


def keras2_file(path, *, nested=True, encoding="fixed", split=False, inner=None, compression=None):
    """A Keras 2 save_weights file with one conv and one weightless layer."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)
    bias = np.arange(6, dtype=np.float32)
    inner = inner or "conv"
    weights = [f"{inner}/kernel:0", f"{inner}/bias:0"] if nested else ["kernel:0", "bias:0"]

    def names(values):
        if encoding == "fixed":
            return np.array([v.encode() for v in values], dtype="S40")
        return np.array(values, dtype=h5py.string_dtype())

    with h5py.File(path, "w", track_order=True) as f:
        layer_names = names(["input", "conv"])
        if split:
            f.attrs["layer_names0"], f.attrs["layer_names1"] = layer_names[:1], layer_names[1:]
        else:
            f.attrs["layer_names"] = layer_names
        f.attrs["keras_version"] = "2.4.0" if encoding != "fixed" else b"2.4.0"
        f.attrs["backend"] = "tensorflow"
        f.create_group("input").attrs["weight_names"] = np.zeros(0, "S1")
        g = f.create_group("conv")
        g.attrs["weight_names"] = names(weights)
        g.create_dataset(weights[0], data=kernel, chunks=(3, 3, 2, 2) if compression else None, compression=compression)
        g.create_dataset(weights[1], data=bias)
    return kernel, bias


@pytest.mark.parametrize(
    "variant",
    [dict(), dict(nested=False), dict(encoding="vlen"), dict(split=True), dict(inner="conv_renamed_7")],
    ids=["nested", "unnested", "vlen-str", "split-attribute", "inner-name-differs"],
)
def test_keras2_variants_read_as_layer_slash_weight(tmp_path, variant):
    path = tmp_path / "w.h5"
    kernel, bias = keras2_file(path, **variant)
    tree = surgery.load(path)
    assert tree.format == "keras_h5" and tree.convention == surgery.KERAS
    assert list(tree) == ["conv/kernel", "conv/bias"]
    np.testing.assert_array_equal(tree["conv/kernel"].read(), kernel)
    np.testing.assert_array_equal(tree["conv/bias"].read(), bias)
    assert tree.metadata["keras_version"] == "2.4.0"
    # Written back, Keras' own bookkeeping survives: layer order, weightless layers, weight names.
    out = tmp_path / "out.h5"
    surgery.save(tree, out)
    with h5py.File(out) as f, h5py.File(path) as g:
        assert [n.decode() for n in f.attrs["layer_names"]] == ["input", "conv"]
        assert list(f["input"].attrs["weight_names"]) == []
        weight_names = [n.decode() for n in f["conv"].attrs["weight_names"]]
        assert weight_names == [n.decode() if isinstance(n, bytes) else n for n in g["conv"].attrs["weight_names"]]
        np.testing.assert_array_equal(f["conv"][weight_names[0]][()], kernel)


def test_unchanged_datasets_are_copied_with_their_chunks_and_compression(tmp_path):
    path = tmp_path / "w.h5"
    keras2_file(path, compression="gzip")
    out = tmp_path / "out.h5"
    surgery.save(surgery.load(path), out)
    with h5py.File(out) as f:
        ds = f["conv/conv/kernel:0"]
        assert ds.compression == "gzip" and ds.chunks == (3, 3, 2, 2)
        # the stored (compressed) bytes are the same: copied, not re-encoded
        with h5py.File(path) as g:
            src = g["conv/conv/kernel:0"]
            assert ds.id.get_storage_size() == src.id.get_storage_size()


def test_changed_dataset_keeps_its_compression(tmp_path):
    path = tmp_path / "w.h5"
    keras2_file(path, compression="gzip")
    out = tmp_path / "out.h5"
    result = run("subsample", path, "-o", out, "--layers", "conv", "--classes", "5,0", "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        assert f["conv/conv/kernel:0"].shape == (3, 3, 2, 2) and f["conv/conv/kernel:0"].compression == "gzip"


def test_input_file_is_never_modified(tmp_path):
    path = tmp_path / "w.h5"
    keras2_file(path)
    before = digest(path)
    assert run("subsample", path, "-o", tmp_path / "o.h5", "--layers", "conv", "--classes", "1", "-q").exit_code == 0
    assert digest(path) == before


def test_hdf5_without_keras_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    assert error_line(run("inspect", path)) == (
        f"error: an HDF5 file without Keras weights (no layer_names, model_weights or layers group) ({path}); "
        "surgery reads files written by Keras save_weights or model.save"
    )


def test_listed_weight_that_is_missing_is_corrupt(tmp_path):
    path = tmp_path / "w.h5"
    keras2_file(path)
    with h5py.File(path, "a") as f:
        del f["conv/conv/bias:0"]
    assert error_line(run("inspect", path)) == (
        f"error: weight 'conv/bias:0' of layer 'conv' is listed but missing ({path}); "
        "the file is corrupt or not a Keras weights file; re-save it with model.save_weights"
    )


def test_truncated_hdf5_is_a_clear_error(tmp_path):
    path = tmp_path / "w.h5"
    keras2_file(path)
    (tmp_path / "cut.h5").write_bytes(path.read_bytes()[:900])
    line = error_line(run("inspect", tmp_path / "cut.h5"))
    assert line.startswith("error: cannot open the HDF5 file (") and line.endswith(
        "; the file is corrupt or not a Keras weights file; re-save it with model.save_weights"
    )


def test_torch_layout_is_refused_for_keras_output(tmp_path):
    tree = Tree([Entry.from_array("fc.weight", np.zeros((2, 3), np.float32))], convention=TORCH)
    src = tmp_path / "t.safetensors"
    surgery.save(tree, src)
    out = tmp_path / "t.h5"
    assert error_line(run("convert", src, "-o", out)) == (
        "error: the weights are in PyTorch layout (output axis first); Keras files need Keras layout (keras_h5); "
        "write safetensors or npz instead"
    )
    assert not out.exists()


def test_bfloat16_is_refused_for_hdf5(tmp_path):
    src = tmp_path / "bf.safetensors"
    surgery.save(Tree([Entry.from_array("d/kernel", np.zeros(2, np.float32))], convention=surgery.KERAS), src)
    result = run("convert", src, "-o", tmp_path / "bf.h5", "--dtype", "bfloat16")
    assert error_line(result) == (
        "error: tensor 'd/kernel' is bfloat16, which HDF5 cannot store (d/kernel); cast it first with --dtype float32"
    )


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "complex64"])
def test_every_hdf5_dtype_round_trips(tmp_path, dtype):
    array = (np.arange(-3, 3) % 2 == 0) if dtype == "bool" else np.arange(6).astype(dtype)
    tree = Tree([Entry.from_array("layer/w", array.reshape(2, 3)), Entry.from_array("layer/empty", np.zeros((0, 2), dtype))], convention=surgery.KERAS)
    path = tmp_path / "t.h5"
    surgery.save(tree, path)
    back = surgery.load(path)
    assert [(e.name, e.shape, e.dtype) for e in back.values()] == [(e.name, e.shape, e.dtype) for e in tree.values()]
    np.testing.assert_array_equal(back["layer/w"].read(), array.reshape(2, 3))
