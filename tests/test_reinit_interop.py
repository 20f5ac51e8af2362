"""Real torch and Keras 3 read what reinit and adapt-input write, and compute what they should.

* Our fans equal torch's `_calculate_fan_in_and_fan_out` and Keras's `compute_fans`.
* A re-initialised torch checkpoint loads with strict=True, its norms are the identity.
* adapt-input to 1 channel: the model built with in_channels=1 loads the result, and
  conv(gray) equals the original conv(gray repeated to RGB), in torch and in Keras 3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from helpers import run  # noqa: E402
from surgery.ops.fans import fans  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, groups=8)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = self.dw(torch.relu(self.bn(self.stem(x))))
        return self.fc(self.norm(x.mean(dim=(2, 3))))


def trained(seed: int = 0) -> Net:
    """A Net whose parameters and buffers are all far from their defaults."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            t.copy_(torch.rand_like(t.float()).to(t.dtype) * 3 + 2 if t.is_floating_point() else torch.full_like(t, 41))
    return net


@pytest.mark.parametrize(
    "module",
    [torch.nn.Conv1d(4, 6, 5), torch.nn.Conv2d(4, 6, (3, 2)), torch.nn.Conv3d(2, 6, (2, 3, 3)), torch.nn.Linear(7, 3),
     torch.nn.Conv2d(8, 16, 3, groups=8)],
    ids=["conv1d", "conv2d", "conv3d", "linear", "depthwise"],
)
def test_fans_equal_torch(module):
    from torch.nn.init import _calculate_fan_in_and_fan_out

    assert fans(tuple(module.weight.shape), "torch") == _calculate_fan_in_and_fan_out(module.weight)


def test_reinit_output_loads_strictly_and_norms_are_the_identity(tmp_path):
    net = trained()
    src, out = tmp_path / "net.pt", tmp_path / "fresh.safetensors"
    torch.save(net.state_dict(), src)
    result = run("reinit", src, "-o", out, "--layers", "*", "--init", "kaiming_uniform", "--seed", "4", "-q")
    assert result.exit_code == 0, result.stderr
    fresh = Net()
    fresh.load_state_dict(load_file(out), strict=True)
    state = fresh.state_dict()
    for name in ("bn.weight", "bn.running_var", "norm.weight"):
        assert torch.equal(state[name], torch.ones_like(state[name])), name
    for name in ("bn.bias", "bn.running_mean", "norm.bias", "stem.bias", "dw.bias", "fc.bias"):
        assert torch.equal(state[name], torch.zeros_like(state[name])), name
    assert state["bn.num_batches_tracked"].item() == 0
    for name in ("stem.weight", "dw.weight", "fc.weight"):
        fan_in = torch.nn.init._calculate_fan_in_and_fan_out(state[name])[0]
        bound = math.sqrt(2) * math.sqrt(3 / fan_in)  # torch.nn.init.kaiming_uniform_'s bound
        assert state[name].abs().max() <= bound and state[name].abs().max() > bound / 2, name


def test_gray_model_loads_the_adapted_stem_and_sees_gray_as_rgb(tmp_path):
    net = trained(1).eval()
    src, out = tmp_path / "net.pt", tmp_path / "gray.safetensors"
    torch.save(net.state_dict(), src)
    result = run("adapt-input", src, "-o", out, "--channels", "1", "-q")
    assert result.exit_code == 0, result.stderr
    gray_net = Net(in_channels=1).eval()
    gray_net.load_state_dict(load_file(out), strict=True)
    gray = torch.randn(2, 1, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(gray_net.stem(gray), net.stem(gray.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gray_net(gray), net(gray.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)


def test_keras3_gray_model_loads_the_adapted_kernel(tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from keras.src.initializers.random_initializers import compute_fans

    def model(channels: int):
        inp = keras.Input((9, 9, channels), name="image")
        x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inp)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
        return keras.Model(inp, keras.layers.Dense(4, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))

    rgb = model(3)
    rng = np.random.default_rng(5)
    for layer in rgb.layers:
        layer.set_weights([rng.random(w.shape).astype("float32") + 0.5 for w in layer.get_weights()])
    for w in rgb.weights:
        if len(w.shape) >= 2:
            assert fans(tuple(w.shape), "keras") == compute_fans(tuple(w.shape)), w.path
    src, out = tmp_path / "rgb.weights.h5", tmp_path / "gray.weights.h5"
    rgb.save_weights(src)
    result = run("adapt-input", src, "-o", out, "--channels", "1")
    assert result.exit_code == 0, result.stderr
    assert "[3, 3, 3, 8] -> [3, 3, 1, 8]" in result.stdout
    gray_model = model(1)
    gray_model.load_weights(str(out))
    gray = rng.standard_normal((2, 9, 9, 1)).astype("float32")
    want = keras.ops.convert_to_numpy(rgb.predict(np.repeat(gray, 3, axis=-1), verbose=0))
    got = keras.ops.convert_to_numpy(gray_model.predict(gray, verbose=0))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
