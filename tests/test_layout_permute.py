"""A Permute before the Flatten (MTCNN's R-Net and O-Net, ported from Caffe), and a wrong C.

`conv3 -> prelu3 -> permute -> flatten3 -> fc4`: the Keras Flatten reads the permuted map, so
the usual NHWC->NCHW reorder of fc4's inputs would be wrong. surgery refuses by name unless
told `--flatten-shape fc4=none`; then the torch weights must equal, exactly, those of a torch
module whose Linear reads the same permuted flatten order, and its outputs Keras's.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import error_line, run

from surgery.errors import OperationError
from surgery.ops.layout import convert_layout
from surgery.tree import KERAS, Entry, Tree

os.environ.setdefault("KERAS_BACKEND", "torch")


def _message(e: pytest.ExceptionInfo) -> str:
    return f"{e.value.what} ({e.value.where}); {e.value.fix}"


def test_a_given_c_must_be_the_channels_of_the_conv_before():
    tree = Tree(
        [Entry.from_array("conv/kernel", np.zeros((3, 3, 2, 8), "float32")), Entry.from_array("fc/kernel", np.zeros((64, 4), "float32"))],
        convention=KERAS,
    )
    convert_layout(tree, "torch", flatten_shapes={"fc": (2, 4, 8)})  # C 8 is the conv's: fine
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch", flatten_shapes={"fc": (4, 4, 4)})  # the right product, the wrong C
    assert _message(e) == "--flatten-shape fc=4,4,4 gives C=4, but conv 'conv' before it has 8 channels (--flatten-shape); give the Flatten's input shape in Keras order, H,W,8"


def test_a_permute_in_layer_names_is_refused_by_name_without_a_config():
    """A Keras 2 weights file lists weightless layers in layer_names: the Permute shows there."""
    entries = [
        Entry.from_array("conv3/kernel", np.zeros((2, 2, 4, 6), "float32"), {"keras.layer": "conv3"}),
        Entry.from_array("prelu3/alpha", np.zeros((1, 1, 6), "float32"), {"keras.layer": "prelu3"}),
        Entry.from_array("fc4/kernel", np.zeros((24, 5), "float32"), {"keras.layer": "fc4"}),
    ]
    order = json.dumps(["input_1", "conv3", "prelu3", "permute", "flatten3", "fc4"])
    tree = Tree(entries, format="keras_h5", convention=KERAS, format_state={"keras.layer_names": order})
    for shapes in ({}, {"fc4": (2, 2, 6)}):
        with pytest.raises(OperationError) as e:
            convert_layout(tree, "torch", flatten_shapes=shapes)
        assert _message(e) == (
            "Dense layer 'fc4' reads a Flatten of Permute layer 'permute' (conv3 -> prelu3 -> permute -> flatten3 -> fc4): its "
            "inputs are not in NHWC order, so the NHWC->NCHW reorder would be wrong (permute); if the torch model flattens in "
            "the order the Permute makes (as MTCNN ports do), pass --flatten-shape fc4=none; otherwise convert this layer by hand"
        )
    new, report = convert_layout(tree, "torch", flatten_shapes={"fc4": None})
    np.testing.assert_array_equal(new["fc4.weight"].read(), tree["fc4/kernel"].read().T)
    assert "fc4: inputs kept in the order Permute 'permute' makes them (--flatten-shape fc4=none)" in report.notes


def test_a_prelu_between_the_conv_and_the_flatten_does_not_hide_the_flatten():
    entries = [
        Entry.from_array("conv3/kernel", np.zeros((2, 2, 4, 6), "float32")),
        Entry.from_array("prelu3/alpha", np.zeros((1, 1, 6), "float32")),
        Entry.from_array("fc4/kernel", np.zeros((24, 5), "float32")),
    ]
    tree = Tree(entries, convention=KERAS)
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch")
    assert e.value.what == (
        "Dense layer 'fc4' follows a Flatten (its 24 inputs are a multiple of the 6 channels of conv 'conv3'); "
        "its inputs must be reordered from NHWC to NCHW"
    )
    convert_layout(tree, "torch", flatten_shapes={"fc4": (2, 2, 6)})


# -- real Keras 3 and torch ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rnet(tmp_path_factory):
    """An MTCNN R-Net-shaped Keras model (24x24 input; small widths), saved as a full model and
    as Keras 2-style weights (layer_names only)."""
    keras = pytest.importorskip("keras")
    from keras.src.legacy.saving import legacy_h5_format

    image = keras.Input((12, 12, 3), name="input_1")
    x = keras.layers.Conv2D(4, 3, name="conv1")(image)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, name="conv2")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = keras.layers.Conv2D(8, 2, name="conv3")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    x = keras.layers.Permute((3, 2, 1), name="permute")(x)
    x = keras.layers.Flatten(name="flatten3")(x)
    x = keras.layers.Dense(16, name="fc4")(x)
    x = keras.layers.PReLU(name="prelu4")(x)
    model = keras.Model(image, keras.layers.Dense(2, name="fc5-1")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3 for w in layer.get_weights()])
    folder = tmp_path_factory.mktemp("mtcnn")
    model.save(folder / "rnet.h5")
    import h5py

    with h5py.File(folder / "rnet_weights.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return keras, model, folder


def torch_rnet():
    import torch

    class RNet(torch.nn.Module):
        """The torch module a port writes: its Linear reads the conv map permuted as Keras's Permute((3, 2, 1)) does."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = torch.nn.Conv2d(3, 4, 3), torch.nn.PReLU(4)
            self.conv2, self.prelu2 = torch.nn.Conv2d(4, 6, 3, stride=2), torch.nn.PReLU(6)
            self.conv3, self.prelu3 = torch.nn.Conv2d(6, 8, 2), torch.nn.PReLU(8)
            self.fc4, self.prelu4 = torch.nn.Linear(8 * 3 * 3, 16), torch.nn.PReLU(16)
            self.add_module("fc5-1", torch.nn.Linear(16, 2))

        def forward(self, x):
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.prelu1(self.conv1(x))))))
            x = x.permute(0, 1, 3, 2).flatten(1)  # NCHW -> (C, W, H): Keras's NHWC -> (C, W, H)
            return getattr(self, "fc5-1")(self.prelu4(self.fc4(x)))

    return RNet()


@pytest.mark.interop
@pytest.mark.parametrize("name", ["rnet.h5", "rnet_weights.h5"])
def test_mtcnn_rnet_converts_with_no_reorder_and_equals_the_reference_torch_weights(rnet, tmp_path, name):
    torch = pytest.importorskip("torch")
    keras, model, folder = rnet
    src = folder / name
    refused = run("convert", src, "-o", tmp_path / "refused.pt", "--layout", "torch")
    assert refused.exit_code == 1
    assert error_line(refused).startswith("error: Dense layer 'fc4' reads a Flatten of Permute layer 'permute' (conv3 -> prelu3 -> permute -> flatten3 -> fc4)")
    out = tmp_path / "rnet.pt"
    result = run("convert", src, "-o", out, "--layout", "torch", "--flatten-shape", "fc4=none", "-q")
    assert result.exit_code == 0, result.stderr
    state = torch.load(out, weights_only=True)
    reference = {}
    for layer in model.layers:
        weights = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        if not weights:
            continue
        if layer.name.startswith("conv"):
            reference[f"{layer.name}.weight"], reference[f"{layer.name}.bias"] = weights[0].transpose(3, 2, 0, 1), weights[1]
        elif layer.name.startswith("fc"):
            reference[f"{layer.name}.weight"], reference[f"{layer.name}.bias"] = weights[0].T, weights[1]
        else:
            reference[f"{layer.name}.weight"] = weights[0].reshape(-1)
    assert sorted(state) == sorted(reference)
    for key, want in reference.items():
        assert state[key].numpy().tobytes() == np.ascontiguousarray(want).tobytes(), key
    net = torch_rnet()
    net.load_state_dict(state, strict=True)
    x = np.random.default_rng(1).standard_normal((2, 12, 12, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(model(x))
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
