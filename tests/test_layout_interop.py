"""Real Keras 3 and real PyTorch agree after `surgery convert --layout`.

One small image model is built twice: in Keras 3 (Conv2D, DepthwiseConv2D, BatchNormalization,
Conv2DTranspose, PReLU, Flatten, Dense, Dense) and as the equivalent torch.nn.Module (BatchNorm
with Keras's eps=1e-3, eval mode, paddings matching 'same'/'valid'). Keras weights are saved in
every layout Keras writes, converted to PyTorch layout, and loaded with
`load_state_dict(strict=True)`; torch weights go the other way into Keras `load_weights`. The
two models must then give the same outputs (NHWC vs NCHW input) within 1e-5.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from helpers import error_line, run  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import surgery  # noqa: E402

# Keras's automatic names, so a file without a model_config still says what each layer is.
NAMES = ("conv2d", "depthwise_conv2d", "batch_normalization", "conv2d_transpose", "p_re_lu", "dense", "dense_1")
TORCH_NAMES = ("features.0", "features.1", "features.2", "features.3", "features.4", "head.1", "head.2")
FLATTEN = "13,13,5"  # the Flatten's input in Keras order: (8x8 -> same) 8x8 -> (valid 3x3) 6x6 -> (x2 transpose) 13x13, 5 channels
TO_TORCH = [[rf"^{k}\.", f"{t}."] for k, t in zip(NAMES, TORCH_NAMES)]
TO_KERAS = [[rf"^{t.replace('.', '[.]')}/", f"{k}/"] for k, t in zip(NAMES, TORCH_NAMES)]


def keras_model() -> "keras.Model":
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name=NAMES[0])(inp)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="valid", name=NAMES[1])(x)
    x = keras.layers.BatchNormalization(name=NAMES[2])(x)
    x = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="valid", name=NAMES[3])(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name=NAMES[4])(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7, name=NAMES[5])(x)
    return keras.Model(inp, keras.layers.Dense(3, name=NAMES[6])(x))


class TorchModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.Conv2d(4, 8, 3, groups=4),
            torch.nn.BatchNorm2d(8, eps=1e-3),
            torch.nn.ConvTranspose2d(8, 5, 3, stride=2),
            torch.nn.PReLU(5),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(845, 7), torch.nn.Linear(7, 3))

    def forward(self, x):
        return self.head(self.features(x))


def random_weights(shapes_and_names, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for name, shape in shapes_and_names:
        w = rng.standard_normal(shape).astype("float32") * 0.3
        out.append(np.abs(w) + 0.5 if "var" in name else w)  # variances must be positive
    return out


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype("float32")


@pytest.fixture(scope="module")
def trained_keras():
    model = keras_model()
    for k, layer in enumerate(model.layers):
        layer.set_weights(random_weights([(w.path, w.shape) for w in layer.weights], k))
    return model


@pytest.fixture(scope="module")
def trained_torch():
    model = TorchModel().eval()
    state = model.state_dict()
    values = random_weights([(k, tuple(v.shape)) for k, v in state.items() if v.dtype == torch.float32], 5)
    it = iter(values)
    model.load_state_dict({k: torch.from_numpy(next(it)) if v.dtype == torch.float32 else v for k, v in state.items()})
    return model


def keras_out(model, images) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(images, training=False))


def torch_out(model, images) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def save_keras(model, path, layout: str) -> None:
    if layout == "full-model .h5":
        model.save(path)
    elif layout == "legacy weights .h5":
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    else:
        model.save_weights(path)


SUFFIX = {"full-model .h5": "m.h5", "legacy weights .h5": "w.h5", "Keras 3 .weights.h5": "m.weights.h5"}


@pytest.mark.parametrize("layout", list(SUFFIX))
def test_keras_weights_load_into_torch_strictly_and_compute_the_same(tmp_path, trained_keras, images, layout):
    src = tmp_path / SUFFIX[layout]
    save_keras(trained_keras, src, layout)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(TO_TORCH))
    out = tmp_path / "torch.safetensors"
    result = run("convert", src, "-o", out, "--layout", "torch", "--flatten-shape", f"dense={FLATTEN}", "--rules", rules)
    assert result.exit_code == 0, result.stderr
    assert "added features.2.num_batches_tracked [] int64" in result.stdout
    assert "note: BatchNorm eps is not stored in weights" in result.stdout
    model = TorchModel().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(out).items()}, strict=True)
    np.testing.assert_allclose(torch_out(model, images), keras_out(trained_keras, images), atol=1e-5, rtol=0)


def test_keras_weights_written_as_a_torch_pt_load_with_torch_load(tmp_path, trained_keras, images):
    src = tmp_path / "m.h5"
    save_keras(trained_keras, src, "full-model .h5")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(TO_TORCH))
    out = tmp_path / "model.pt"
    result = run("convert", src, "-o", out, "--layout", "torch", "--flatten-shape", f"dense={FLATTEN}", "--rules", rules, "-q")
    assert result.exit_code == 0, result.stderr
    model = TorchModel().eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    np.testing.assert_allclose(torch_out(model, images), keras_out(trained_keras, images), atol=1e-5, rtol=0)


def test_torch_load_refuses_a_flatten_dense_without_its_shape(tmp_path, trained_keras):
    """Without --flatten-shape the Dense after the Flatten would be silently wrong: refused."""
    src = tmp_path / "w.h5"
    save_keras(trained_keras, src, "legacy weights .h5")
    result = run("convert", src, "-o", tmp_path / "t.safetensors", "--layout", "torch")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: Dense layer 'dense' follows a Flatten (its 845 inputs are a multiple of the 5 channels of conv "
        "'conv2d_transpose'); its inputs must be reordered from NHWC to NCHW (dense); give the Flatten's input "
        "shape in Keras order: --flatten-shape dense=H,W,C"
    )
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize("how", ["safetensors", "torch.save .pt"])
def test_torch_state_dict_loads_into_keras_and_computes_the_same(tmp_path, trained_torch, images, how):
    state = trained_torch.state_dict()
    if how == "safetensors":
        src = tmp_path / "model.safetensors"
        save_file(state, src, metadata={"format": "pt"})
    else:
        src = tmp_path / "model.pt"
        torch.save(state, src)
    rules = tmp_path / "rules.toml"
    rules.write_text("rules = [\n" + ",\n".join(f"  [{json.dumps(a)}, {json.dumps(b)}]" for a, b in TO_KERAS) + "\n]\n")
    out = tmp_path / "keras.h5"
    result = run("convert", src, "-o", out, "--layout", "keras", "--flatten-shape", f"dense={FLATTEN}", "--rules", rules)
    assert result.exit_code == 0, result.stderr
    assert "dropped features.2.num_batches_tracked" in result.stdout
    model = keras_model()
    model.load_weights(str(out))
    np.testing.assert_allclose(keras_out(model, images), torch_out(trained_torch, images), atol=1e-5, rtol=0)
    by_name = keras_model()
    by_name.load_weights(str(out), by_name=True)  # the rules gave every layer its Keras name
    np.testing.assert_allclose(keras_out(by_name, images), torch_out(trained_torch, images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("middle", ["t.safetensors", "t.pt"])
def test_keras_to_torch_and_back_gives_the_keras_file_back(tmp_path, trained_keras, images, middle):
    """The torch file remembers the Keras names and shapes: no options are needed going back."""
    src = tmp_path / "m.weights.h5"
    save_keras(trained_keras, src, "Keras 3 .weights.h5")
    mid = tmp_path / middle
    assert run("convert", src, "-o", mid, "--layout", "torch", "--flatten-shape", f"dense={FLATTEN}", "-q").exit_code == 0
    back = tmp_path / "back.h5"
    result = run("convert", mid, "-o", back, "--layout", "keras", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layout"]["facts"]["from"] == "torch"
    original, returned = surgery.load(src), surgery.load(back)
    assert list(returned) == list(original)
    for name in original:
        np.testing.assert_array_equal(returned[name].read(), original[name].read())
    model = keras_model()
    model.load_weights(str(back), by_name=True)  # a Keras 3 file lists layers alphabetically, and so does this one
    np.testing.assert_array_equal(keras_out(model, images), keras_out(trained_keras, images))
