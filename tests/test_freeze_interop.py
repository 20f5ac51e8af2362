"""Freeze maps on real frameworks: a torch module trained one SGD step, and a Keras 3 model's flags."""

from __future__ import annotations

import json

import pytest

from helpers import run
from surgery.errors import OperationError
from surgery.ops.freeze import FreezeMap

torch = pytest.importorskip("torch")

LR = 0.125


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture
def net_and_map(tmp_path):
    """A module, its torch.save checkpoint, and a function that runs `surgery freeze` on it."""
    torch.manual_seed(0)
    net = Net()
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)

    def make(*options: str) -> dict:
        out = tmp_path / "freeze.json"
        result = run("freeze", ckpt, "-o", out, "--force", "-q", *options)
        assert result.exit_code == 0, result.stderr
        return json.loads(out.read_text())

    return net, make, tmp_path / "freeze.json"


def sgd_step(net, groups):
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=0, weight_decay=0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    optimizer.zero_grad()
    net(x).square().sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    optimizer.step()
    return before, grads


@pytest.mark.parametrize("recipe, head_mult", [("small-similar", 1.0), ("large-similar", 10.0)])
def test_one_sgd_step_moves_exactly_what_the_map_says(net_and_map, recipe, head_mult):
    from surgery.torch import apply_freeze_map

    net, make, path = net_and_map
    document = make("--recipe", recipe, "--head", "fc")
    assert document["buffers"] == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    groups = apply_freeze_map(net, path, LR)
    body_trains = recipe == "large-similar"
    assert [g["lr_mult"] for g in groups] == ([1.0, head_mult] if body_trains else [head_mult])
    assert groups[-1]["lr"] == LR * head_mult and groups[-1]["params"] == [net.fc.weight, net.fc.bias]
    assert {n: p.requires_grad for n, p in net.named_parameters()} == {
        n: body_trains or n.startswith("fc.") for n in document["parameters"]
    }
    before, grads = sgd_step(net, groups)
    for name, param in net.named_parameters():
        mult = document["parameters"][name]["lr_mult"]
        if not document["parameters"][name]["trainable"]:
            assert grads[name] is None
            assert torch.equal(param.detach(), before[name]), name  # bit for bit
        else:
            expected = before[name] - LR * mult * grads[name]
            torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7)
            assert not torch.equal(param.detach(), before[name]), name


def test_map_as_dict_or_freezemap_and_frozen_params_in_no_group(net_and_map):
    from surgery.torch import apply_freeze_map

    net, make, _ = net_and_map
    document = make("--freeze", "conv", "--lr-mult", "fc.*=3", "--lr-mult", "bn=2")
    groups = apply_freeze_map(net, FreezeMap.from_json(document), 1.0)
    assert [(g["lr_mult"], g["lr"], len(g["params"])) for g in groups] == [(2.0, 2.0, 2), (3.0, 3.0, 2)]
    assert apply_freeze_map(net, document, 1.0)[0]["params"] == [net.bn.weight, net.bn.bias]
    assert not net.conv.weight.requires_grad and net.fc.bias.requires_grad


def test_strict_names_on_both_sides(net_and_map):
    from surgery.torch import apply_freeze_map

    net, make, _ = net_and_map
    document = make()
    missing = {**document, "parameters": {k: v for k, v in document["parameters"].items() if k != "bn.bias"}}
    with pytest.raises(OperationError) as e:
        apply_freeze_map(net, missing, LR)
    assert e.value.one_line() == (
        f"module parameter 'bn.bias' is not in the freeze map ({document['source']}); "
        "make the map from this model's checkpoint, or pass strict=False to leave it as it is"
    )
    extra = {**document, "parameters": {**document["parameters"], "bn.running_mean": {"trainable": True, "lr_mult": 1.0}}}
    with pytest.raises(OperationError) as e:
        apply_freeze_map(net, extra, LR)
    assert e.value.one_line() == (
        f"freeze map parameter 'bn.running_mean' is a buffer of the module ({document['source']}); "
        "check the map was made from this model's checkpoint (a prefix such as 'module.' may differ), or pass strict=False"
    )
    renamed = {**document, "parameters": {"model." + k: v for k, v in document["parameters"].items()}}
    with pytest.raises(OperationError, match=r"^module parameter 'conv.weight' is not in the freeze map"):
        apply_freeze_map(net, renamed, LR)
    net.bn.bias.requires_grad_(False)
    groups = apply_freeze_map(net, missing | {"parameters": {"conv.weight": {"trainable": False, "lr_mult": 1.0}, "nope": {"trainable": True}}}, LR, strict=False)
    assert groups[0]["params"] == [net.conv.bias, net.bn.weight, net.fc.weight, net.fc.bias]  # unmapped keep requires_grad


def test_tied_parameters_must_agree():
    from surgery.torch import apply_freeze_map

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].weight = net[0].weight
    names = ["0.weight", "0.bias", "1.weight", "1.bias"]
    same = {"parameters": {n: {"trainable": True, "lr_mult": 1.0} for n in names}}
    assert [len(g["params"]) for g in apply_freeze_map(net, same, LR)] == [3]
    split = {"parameters": {**same["parameters"], "1.weight": {"trainable": False, "lr_mult": 1.0}}}
    with pytest.raises(OperationError, match=r"^tied parameters '0.weight' and '1.weight' are set differently"):
        apply_freeze_map(net, split, LR)


# -- Keras 3 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("keras")
    model = build_keras(keras)
    model.save(folder / "model.h5")
    model.save_weights(folder / "model.weights.h5")
    return folder


def build_keras(keras):
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 3, name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.Flatten(name="flatten"),
            layers.Dense(5, name="predictions"),
        ]
    )


@pytest.mark.parametrize("filename", ["model.h5", "model.weights.h5"])
def test_keras_flags_follow_the_map(keras_files, tmp_path, filename):
    import keras

    from surgery.keras import apply_freeze_map

    out = tmp_path / "freeze.json"
    result = run("freeze", keras_files / filename, "-o", out, "--recipe", "small-similar")
    assert result.exit_code == 0, result.stderr
    document = json.loads(out.read_text())
    assert len(document["buffers"]) == 2 and all(b.startswith("bn1/") for b in document["buffers"])
    model = build_keras(keras)
    report = apply_freeze_map(model, out)
    assert {layer.name: layer.trainable for layer in model.layers if layer.weights} == {
        "conv1": False, "bn1": False, "predictions": True,
    }
    assert [w.path.split("/")[-2:] for w in model.trainable_weights] == [["predictions", "kernel"], ["predictions", "bias"]]
    assert report.facts["frozen"] == ["conv1", "bn1"] and report.facts["trainable"] == ["predictions"]
    assert not any("learning rate" in n for n in report.notes)
    assert any(n.startswith("frozen BatchNormalization layers (bn1) run in inference mode") for n in report.notes)


def test_keras_note_about_learning_rates(keras_files, tmp_path):
    import keras

    from surgery.keras import apply_freeze_map

    out = tmp_path / "freeze.json"
    assert run("freeze", keras_files / "model.h5", "-o", out, "--recipe", "large-similar", "-q").exit_code == 0
    model = build_keras(keras)
    for layer in model.layers:
        layer.trainable = False
    report = apply_freeze_map(model, out)
    assert all(layer.trainable for layer in model.layers if layer.weights)
    assert report.notes == [
        "Keras has no per-layer learning rate, so the map's lr_mult is not applied (predictions x10); "
        "train those layers first with the rest frozen, or scale their gradients in a custom train_step"
    ]


def test_keras_layer_parameters_must_agree_and_names_must_exist():
    import keras

    from surgery.keras import apply_freeze_map

    model = build_keras(keras)
    names = ["conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta", "predictions/kernel", "predictions/bias"]
    document = {"source": "m.h5", "parameters": {n: {"trainable": True, "lr_mult": 1.0} for n in names}}
    split = {**document, "parameters": {**document["parameters"], "conv1/bias": {"trainable": False, "lr_mult": 1.0}}}
    with pytest.raises(OperationError) as e:
        apply_freeze_map(model, split)
    assert e.value.one_line() == (
        "layer 'conv1' has frozen ('conv1/bias') and trainable ('conv1/kernel') parameters (m.h5); "
        "Keras freezes whole layers: give all of a layer's parameters the same trainable flag"
    )
    unknown = {**document, "parameters": {**document["parameters"], "head/kernel": {"trainable": True}}}
    with pytest.raises(OperationError) as e:
        apply_freeze_map(model, unknown)
    assert e.value.one_line() == (
        "freeze map parameter 'head/kernel' belongs to no layer of the model (m.h5); "
        "check the map was made from this model's .h5, or pass strict=False"
    )
    partial = {**document, "parameters": {n: s for n, s in document["parameters"].items() if not n.startswith("bn1/")}}
    with pytest.raises(OperationError) as e:
        apply_freeze_map(model, partial)
    assert e.value.one_line() == (
        "layer 'bn1' of the model has weights but no parameter in the freeze map (m.h5); "
        "make the map from this model's .h5, or pass strict=False to leave the layer as it is"
    )
    report = apply_freeze_map(model, unknown | {"parameters": partial["parameters"] | {"head/kernel": {"trainable": True}}}, strict=False)
    assert report.notes[:2] == ["ignored 'head/kernel': the model has no layer 'head'", "left 'bn1' as it is (trainable=True): not in the freeze map"]
