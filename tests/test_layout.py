"""convert_layout and `surgery convert --layout`: axes, names, refusals with exact messages."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import surgery
from helpers import error_line, run
from surgery.errors import OperationError
from surgery.ops.layout import MAP_KEY, convert_layout, parse_flatten_shape, parse_rules
from surgery.provenance import history
from surgery.tree import KERAS, TORCH, UNKNOWN, Entry, Source, Tree


def arange(shape, dtype="float32") -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def keras_tree(*named, config: dict | None = None) -> Tree:
    metadata = {"model_config": json.dumps(config)} if config else {}
    return Tree([Entry.from_array(n, a) for n, a in named], convention=KERAS, metadata=metadata)


def torch_tree(*named) -> Tree:
    return Tree([Entry.from_array(n, a) for n, a in named], convention=TORCH)


def message(excinfo) -> str:
    return excinfo.value.one_line()


class NoRead(Source):
    def read_array(self, entry):
        raise AssertionError("data was read")


# -- axes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, perm",
    [((3, 4, 5), (2, 1, 0)), ((2, 3, 4, 5), (3, 2, 0, 1)), ((2, 3, 4, 5, 6), (4, 3, 0, 1, 2))],
    ids=["conv1d", "conv2d", "conv3d"],
)
def test_conv_kernels_move_to_out_in_spatial_and_back(shape, perm):
    kernel = arange(shape)
    new, report = convert_layout(keras_tree(("c/kernel", kernel), ("c/bias", arange(shape[-1]))), "torch")
    assert list(new) == ["c.weight", "c.bias"]
    np.testing.assert_array_equal(new["c.weight"].read(), kernel.transpose(perm))
    assert report.names("transposed") == ["c.weight"]
    back, _ = convert_layout(new, "keras")
    np.testing.assert_array_equal(back["c/kernel"].read(), kernel)


def test_conv2d_uses_the_reference_permutations():
    kernel = arange((3, 3, 2, 4))
    new, report = convert_layout(keras_tree(("c/kernel", kernel)), "torch")
    np.testing.assert_array_equal(new["c.weight"].read(), kernel.transpose(3, 2, 0, 1))
    assert report.changes[-1].detail == "conv: transpose(3, 2, 0, 1)"
    back, report = convert_layout(new, "keras")
    assert report.changes[-1].detail == "conv: transpose(2, 3, 1, 0)"


def test_dense_kernel_is_transposed():
    new, _ = convert_layout(keras_tree(("fc/kernel", arange((3, 2))), ("fc/bias", arange(2))), "torch")
    np.testing.assert_array_equal(new["fc.weight"].read(), arange((3, 2)).T)
    assert new["fc.weight"].shape == (2, 3) and new.convention == TORCH


def test_depthwise_kernel_orders_channels_as_torch_groups_do():
    kernel = arange((3, 3, 4, 2))  # (h, w, in, mult)
    new, _ = convert_layout(keras_tree(("dw/depthwise_kernel", kernel)), "torch")
    weight = new["dw.weight"].read()
    assert weight.shape == (8, 1, 3, 3)
    for c in range(4):
        for m in range(2):
            np.testing.assert_array_equal(weight[c * 2 + m, 0], kernel[:, :, c, m])


def test_depthwise_back_to_keras_assumes_multiplier_1_without_memory():
    new, report = convert_layout(torch_tree(("dw.weight", arange((6, 1, 3, 3)))), "keras", depthwise=["dw"])
    assert new["dw/depthwise_kernel"].shape == (3, 3, 6, 1)
    np.testing.assert_array_equal(new["dw/depthwise_kernel"].read()[:, :, 5, 0], arange((6, 1, 3, 3))[5, 0])
    assert report.notes == ["dw.weight: depth_multiplier 1 assumed (6 channels); a larger one needs the Keras shape"]


def test_a_grouped_conv_that_is_not_depthwise_is_refused():
    with pytest.raises(OperationError) as e:
        convert_layout(torch_tree(("g.weight", arange((6, 2, 3, 3)))), "keras", depthwise=["g"])
    assert message(e) == (
        "depthwise weight 'g.weight' [6, 2, 3, 3] has 2 input channels per group, not 1 (g.weight); "
        "only torch convs with groups == in_channels map to Keras DepthwiseConv"
    )


def test_transposed_convs_come_from_the_model_config_or_globs():
    config = {"class_name": "Functional", "config": {"layers": [{"class_name": "Conv2DTranspose", "name": "up", "config": {"name": "up"}}]}}
    tree = keras_tree(("up/kernel", arange((3, 3, 5, 8))), config=config)
    _, report = convert_layout(tree, "torch")
    assert report.facts["layers"] == {"up": "transposed"}
    _, report = convert_layout(keras_tree(("up/kernel", arange((3, 3, 5, 8)))), "torch", transposed=["u*"])
    assert report.facts["layers"] == {"up": "transposed"}
    new, report = convert_layout(keras_tree(("up/kernel", arange((3, 3, 5, 8)))), "torch")
    assert report.facts["layers"] == {"up": "conv"}
    assert new["up.weight"].shape == (8, 5, 3, 3)  # (in, out, h, w) either way: the same permutation


def test_conversion_is_lazy_and_keeps_dtypes():
    tree = Tree([Entry("c/kernel", (3, 3, 2, 4), "bfloat16", NoRead()), Entry("c/bias", (4,), "float16", NoRead())], convention=KERAS)
    new, _ = convert_layout(tree, "torch")
    assert [(e.name, e.shape, e.dtype) for e in new.values()] == [("c.weight", (4, 2, 3, 3), "bfloat16"), ("c.bias", (4,), "float16")]
    assert new["c.bias"].source is tree["c/bias"].source


# -- BatchNorm and PReLU ---------------------------------------------------------------------


def bn_tree() -> Tree:
    return keras_tree(*((f"bn/{p}", arange(3) + k) for k, p in enumerate(("gamma", "beta", "moving_mean", "moving_variance"))))


def test_batchnorm_names_and_step_counter():
    new, report = convert_layout(bn_tree(), "torch")
    assert list(new) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    counter = new["bn.num_batches_tracked"]
    assert (counter.shape, counter.dtype, counter.read().item()) == ((), "int64", 0)
    assert report.names("added") == ["bn.num_batches_tracked"]
    assert report.notes == ["BatchNorm eps is not stored in weights: Keras defaults to 1e-3, torch to 1e-5; build the torch layers with eps=1e-3"]
    back, report = convert_layout(new, "keras")
    assert list(back) == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert report.names("dropped") == ["bn.num_batches_tracked"]


def test_torch_batchnorm_becomes_keras_order_whatever_the_torch_order():
    tree = torch_tree(("bn.running_var", arange(2)), ("bn.weight", arange(2)), ("bn.num_batches_tracked", np.array(5)),
                      ("bn.bias", arange(2)), ("bn.running_mean", arange(2)))
    new, _ = convert_layout(tree, "keras")
    assert list(new) == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert new["bn/gamma"].attrs["keras.weight_name"] == "bn/gamma:0" and new["bn/gamma"].attrs["keras.layer"] == "bn"


def test_keras_batchnorm_with_only_gamma_is_refused():
    tree = keras_tree(("bn/gamma", arange(2)), ("bn/moving_mean", arange(2)), ("bn/moving_variance", arange(2)))
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch")
    assert message(e) == (
        "BatchNorm 'bn' has only one of gamma and beta; torch BatchNorm has both or neither (bn); "
        "build the Keras layer with center and scale both on or both off"
    )


def test_prelu_per_channel_slopes_map_both_ways():
    new, _ = convert_layout(keras_tree(("act/alpha", arange((1, 1, 5)))), "torch")
    assert new["act.weight"].shape == (5,)
    back, _ = convert_layout(new, "keras")
    assert back["act/alpha"].shape == (1, 1, 5)  # remembered
    fresh, report = convert_layout(torch_tree(("prelu.weight", arange(4))), "keras")
    assert fresh["prelu/alpha"].shape == (1, 1, 4)
    assert report.notes == ["prelu.weight: PReLU slopes given Keras shape (1, 1, 4), for image inputs with shared_axes=[1, 2]"]


def test_prelu_slopes_per_position_are_refused():
    with pytest.raises(OperationError) as e:
        convert_layout(keras_tree(("act/alpha", arange((4, 4, 5)))), "torch")
    assert message(e) == (
        "PReLU alpha 'act/alpha' [4, 4, 5] holds a slope per position; torch.nn.PReLU holds one per channel (act/alpha); "
        "build the Keras PReLU with shared_axes over every axis but the channels (e.g. shared_axes=[1, 2])"
    )


# -- the Dense after a Flatten ----------------------------------------------------------------


def flatten_tree(config: bool = True) -> Tree:
    layers = [
        {"class_name": "Conv2D", "config": {"name": "conv"}, "inbound_nodes": []},
        {"class_name": "Flatten", "config": {"name": "flatten"}, "inbound_nodes": [{"args": [{"config": {"keras_history": ["conv", 0, 0]}}]}]},
        {"class_name": "Dropout", "config": {"name": "drop"}, "inbound_nodes": [[["flatten", 0, 0, {}]]]},
        {"class_name": "Dense", "config": {"name": "fc"}, "inbound_nodes": [[["drop", 0, 0, {}]]]},
        {"class_name": "Dense", "config": {"name": "out"}, "inbound_nodes": [[["fc", 0, 0, {}]]]},
    ]
    named = [("conv/kernel", arange((3, 3, 1, 3))), ("fc/kernel", arange((2 * 2 * 3, 4))), ("out/kernel", arange((4, 2)))]
    return keras_tree(*named, config={"class_name": "Functional", "config": {"layers": layers}} if config else None)


def test_flatten_fed_dense_inputs_are_reordered_nhwc_to_nchw():
    new, report = convert_layout(flatten_tree(), "torch", flatten_shapes={"fc": (2, 2, 3)})
    x = np.random.default_rng(0).standard_normal((2, 2, 3)).astype("float32")  # one NHWC feature map
    keras_y = x.reshape(-1) @ flatten_tree()["fc/kernel"].read()
    torch_y = new["fc.weight"].read() @ x.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(torch_y, keras_y, rtol=1e-6)
    back, _ = convert_layout(new, "keras")  # the shape is remembered
    np.testing.assert_array_equal(back["fc/kernel"].read(), flatten_tree()["fc/kernel"].read())
    again, _ = convert_layout(torch_tree(("fc.weight", new["fc.weight"].read())), "keras", flatten_shapes={"fc": (2, 2, 3)})
    np.testing.assert_array_equal(again["fc/kernel"].read(), flatten_tree()["fc/kernel"].read())


def test_flatten_fed_dense_without_its_shape_is_refused_from_the_config():
    with pytest.raises(OperationError) as e:
        convert_layout(flatten_tree(), "torch")
    assert message(e) == (
        "Dense layer 'fc' follows a Flatten (the model_config shows a Flatten feeding it); its inputs must be "
        "reordered from NHWC to NCHW (fc); give the Flatten's input shape in Keras order: --flatten-shape fc=H,W,C"
    )


def test_flatten_fed_dense_without_its_shape_is_refused_from_the_shapes():
    with pytest.raises(OperationError) as e:
        convert_layout(flatten_tree(config=False), "torch")
    assert "its 12 inputs are a multiple of the 3 channels of conv 'conv'" in message(e)
    torch_side = torch_tree(("conv.weight", arange((3, 1, 3, 3))), ("fc.weight", arange((4, 12))))
    with pytest.raises(OperationError) as e:
        convert_layout(torch_side, "keras")
    assert message(e).endswith("(fc); give the Flatten's input shape in Keras order: --flatten-shape fc=H,W,C")


def test_a_dense_after_pooling_is_not_refused():
    tree = torch_tree(("conv.weight", arange((3, 1, 3, 3))), ("fc.weight", arange((4, 3))))
    new, _ = convert_layout(tree, "keras")
    assert new["fc/kernel"].shape == (3, 4)


def test_flatten_shape_must_match_the_kernel():
    with pytest.raises(OperationError) as e:
        convert_layout(flatten_tree(), "torch", flatten_shapes={"fc": (2, 2, 2)})
    assert message(e) == (
        "--flatten-shape 2,2,2 gives 8 inputs but kernel 'fc/kernel' [12, 4] has 12 (fc/kernel); "
        "give the shape of the Flatten's input, H,W,C in Keras order (model.summary() shows it)"
    )


def test_flatten_shape_must_name_a_dense_layer():
    with pytest.raises(OperationError) as e:
        convert_layout(flatten_tree(), "torch", flatten_shapes={"conv": (2, 2, 3)})
    assert message(e) == "--flatten-shape names 'conv', which is not a Dense layer of this checkpoint (--flatten-shape); use one of: fc, out"


def test_parse_flatten_shape():
    assert parse_flatten_shape("block/fc=7,7,64") == ("block/fc", (7, 7, 64))
    assert parse_flatten_shape("fc4=none") == ("fc4", None) and parse_flatten_shape("fc4=None") == ("fc4", None)
    with pytest.raises(OperationError) as e:
        parse_flatten_shape("fc=7x7x64")
    assert message(e) == "--flatten-shape 'fc=7x7x64' is not LAYER=H,W,C or LAYER=none (--flatten-shape); write e.g. --flatten-shape dense=7,7,64"


# -- conventions, rules, refusals ---------------------------------------------------------------


def test_unknown_layout():
    with pytest.raises(OperationError) as e:
        convert_layout(bn_tree(), "tensorflow")
    assert message(e) == "unknown layout 'tensorflow' (--layout); use torch or keras"


def test_unknown_convention_asks_for_the_source_layout():
    tree = Tree([Entry.from_array("fc.weight", arange((2, 3))), Entry.from_array("bn/gamma", arange((3,)))], convention=UNKNOWN)
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "keras")
    assert message(e) == (
        "the checkpoint does not say whether its weights are in Keras or PyTorch layout, and the names mix Keras "
        "(bn/gamma) and PyTorch (fc.weight) weight names (--layout); say which with --from-layout keras or --from-layout torch"
    )


def test_a_source_layout_the_names_show_is_used_and_reported():
    tree = Tree([Entry.from_array("fc.weight", arange((2, 3)))], convention=UNKNOWN)
    new, report = convert_layout(tree, "keras")
    assert new["fc/kernel"].shape == (3, 2) and new.convention == KERAS
    assert report.notes[0] == "torch layout inferred: the names are PyTorch weight names (fc.weight); pass --from-layout to override"


def test_a_contradicting_source_layout_is_refused():
    with pytest.raises(OperationError) as e:
        convert_layout(bn_tree(), "torch", source="torch")
    assert message(e) == "--from-layout torch contradicts the checkpoint, which is in keras layout (--from-layout); drop --from-layout"


def test_a_tree_already_in_the_target_layout_is_returned_unchanged():
    tree = bn_tree()
    new, report = convert_layout(tree, "keras")
    assert new is tree and report.notes == ["already in keras layout; nothing changed"] and not report.changes


def test_rules_rename_after_the_default_mapping_and_are_recorded():
    tree = keras_tree(("conv2d_1/kernel", arange((3, 3, 1, 2))), ("conv2d_1/bias", arange(2)))
    new, report = convert_layout(tree, "torch", rules=[(r"^conv2d_1\.", "features.0.")])
    assert list(new) == ["features.0.weight", "features.0.bias"]
    assert [(c.before, c.after) for c in report.changes if c.kind == "renamed"] == [
        ("conv2d_1/kernel", "features.0.weight"), ("conv2d_1/bias", "features.0.bias")
    ]
    assert history(new)[-1]["op"] == "convert-layout" and history(new)[-1]["rules"] == [[r"^conv2d_1\.", "features.0."]]
    assert MAP_KEY in new.metadata


def test_rules_that_merge_two_names_are_refused():
    tree = keras_tree(("a/bias", arange(2)), ("b/bias", arange(2)))
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch", rules=[(r"^[ab]\.", "x.")])
    assert message(e) == "two tensors map to the name 'x.bias' (x.bias); change the --rules so every tensor keeps its own name"


def test_bad_rules_are_refused():
    with pytest.raises(OperationError) as e:
        convert_layout(bn_tree(), "torch", rules=[("(", "x")])
    assert message(e) == (
        "rule 1 ('(' -> 'x') is invalid: missing ), unterminated subpattern at position 0 (--rules); "
        "rules are Python regular expressions; replacements may use \\1 or \\g<name>"
    )


def test_parse_rules_json_and_toml():
    assert parse_rules('[["^a\\\\.", "b."]]', "json") == [("^a\\.", "b.")]
    assert parse_rules('{"rules": [["x", "y"]]}', "json") == [("x", "y")]
    assert parse_rules('rules = [["^a\\\\.", "b."]]', "toml") == [("^a\\.", "b.")]
    with pytest.raises(OperationError) as e:
        parse_rules('{"a": 1}', "json", "names.json")
    assert message(e) == (
        'the rules file does not hold a list of [regex, replacement] pairs (names.json); write e.g. [["^conv2d_1\\\\.", '
        '"features.0."]] (JSON) or rules = [["^conv2d_1\\\\.", "features.0."]] (TOML)'
    )
    with pytest.raises(OperationError) as e:
        parse_rules("rules = [", "toml", "r.toml")
    assert message(e).startswith("the rules file is not valid TOML (")


def test_separable_convs_are_refused_by_name():
    tree = keras_tree(("sep/depthwise_kernel", arange((3, 3, 2, 1))), ("sep/pointwise_kernel", arange((1, 1, 2, 4))))
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch")
    assert message(e) == (
        "layer 'sep' is a Keras SeparableConv, which has no PyTorch layout we can map: it is a depthwise and a "
        "pointwise conv; torch needs two modules (sep); drop it first, or convert it by hand"
    )


def test_keras3_numbered_weights_need_a_known_layer_kind():
    tree = keras_tree(("norm/0", arange(3)), ("norm/1", arange(3)), ("norm/2", arange(3)))
    with pytest.raises(OperationError) as e:
        convert_layout(tree, "torch")
    assert message(e) == (
        "cannot tell what kind of layer 'norm' is (tensors norm/0 [3] float32, norm/1 [3] float32, norm/2 [3] float32) "
        "(norm); convert a file saved with its model_config (model.save), or name it with --transposed/--rules"
    )
    bn = keras_tree(*((f"batch_normalization/{k}", arange(3)) for k in range(4)))
    assert list(convert_layout(bn, "torch")[0])[-1] == "batch_normalization.num_batches_tracked"


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def keras_file(tmp_path):
    tree = keras_tree(("conv/kernel", arange((3, 3, 1, 3))), ("conv/bias", arange(3)), ("fc/kernel", arange((12, 4))), ("fc/bias", arange(4)))
    path = tmp_path / "m.safetensors"
    surgery.save(tree, path)
    return path


def test_cli_converts_and_lists_every_change(tmp_path, keras_file):
    out = tmp_path / "t.safetensors"
    result = run("convert", keras_file, "-o", out, "--layout", "torch", "--flatten-shape", "fc=2,2,3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "layout keras -> torch: 2 transposed, 4 renamed, 0 added, 0 dropped"
    assert "  transposed conv.weight [3, 3, 1, 3] -> [3, 1, 3, 3] (conv: transpose(3, 2, 0, 1))" in lines
    assert "  renamed fc/bias -> fc.bias" in lines
    tree = surgery.load(out)
    assert tree.convention == TORCH and list(tree) == ["conv.weight", "conv.bias", "fc.weight", "fc.bias"]


def test_cli_json_and_dry_run(tmp_path, keras_file):
    out = tmp_path / "t.safetensors"
    result = run("convert", keras_file, "-o", out, "--layout", "torch", "--flatten-shape", "fc=2,2,3", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["layout"]["facts"]["layers"] == {"conv": "conv", "fc": "dense"}
    assert [c["kind"] for c in document["layout"]["changes"]].count("transposed") == 2
    assert not out.exists()


def test_cli_missing_flatten_shape(tmp_path, keras_file):
    result = run("convert", keras_file, "-o", tmp_path / "t.safetensors", "--layout", "torch")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: Dense layer 'fc' follows a Flatten (its 12 inputs are a multiple of the 3 channels of conv 'conv'); "
        "its inputs must be reordered from NHWC to NCHW (fc); give the Flatten's input shape in Keras order: "
        "--flatten-shape fc=H,W,C"
    )


def test_cli_bad_flatten_shape(tmp_path, keras_file):
    result = run("convert", keras_file, "-o", tmp_path / "t.safetensors", "--layout", "torch", "--flatten-shape", "fc=7,7,64")
    assert error_line(result) == (
        "error: --flatten-shape 7,7,64 gives 3136 inputs but kernel 'fc/kernel' [12, 4] has 12 (fc/kernel); "
        "give the shape of the Flatten's input, H,W,C in Keras order (model.summary() shows it)"
    )
    result = run("convert", keras_file, "-o", tmp_path / "t.safetensors", "--layout", "torch", "--flatten-shape", "7,7,64")
    assert result.exit_code == 2
    assert error_line(result) == ("error: invalid value for '--flatten-shape': --flatten-shape '7,7,64' is not LAYER=H,W,C or LAYER=none; "
                                  "write e.g. --flatten-shape dense=7,7,64; see 'surgery convert --help'")


def test_cli_unknown_layout_is_a_usage_error(tmp_path, keras_file):
    result = run("convert", keras_file, "-o", tmp_path / "t.safetensors", "--layout", "onnx")
    assert result.exit_code == 2 and "'onnx' is not one of 'torch', 'keras'" in result.stderr


def test_cli_unknown_convention(tmp_path):
    src = tmp_path / "plain.npz"
    np.savez(src, **{"fc.weight": arange((2, 3))})
    result = run("convert", src, "-o", tmp_path / "k.h5", "--layout", "keras", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "note: torch layout inferred: the names are PyTorch weight names (fc.weight); pass --from-layout to override" in result.stdout
    result = run("convert", src, "-o", tmp_path / "k.h5", "--layout", "keras", "--from-layout", "torch", "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "k.h5") as f:
        assert f["fc"].attrs["weight_names"].tolist() == [b"fc/kernel:0"] and f["fc/fc/kernel:0"].shape == (3, 2)


def test_cli_layout_options_need_layout(tmp_path, keras_file):
    result = run("convert", keras_file, "-o", tmp_path / "t.safetensors", "--flatten-shape", "fc=2,2,3")
    assert result.exit_code == 2
    assert error_line(result) == "error: --flatten-shape only applies with --layout: add --layout torch or --layout keras; see 'surgery convert --help'"


def test_cli_rules_file(tmp_path, keras_file):
    rules = tmp_path / "names.toml"
    rules.write_text('rules = [["^conv\\\\.", "features.0."], ["^fc\\\\.", "classifier."]]\n')
    out = tmp_path / "t.safetensors"
    result = run("convert", keras_file, "-o", out, "--layout", "torch", "--flatten-shape", "fc=2,2,3", "--rules", rules, "-q")
    assert result.exit_code == 0, result.stderr
    assert list(surgery.load(out)) == ["features.0.weight", "features.0.bias", "classifier.weight", "classifier.bias"]
    bad = tmp_path / "bad.json"
    bad.write_text('[["(", "x"]]')
    result = run("convert", keras_file, "-o", out, "--layout", "torch", "--rules", bad, "--force")
    assert error_line(result).startswith(f"error: rule 1 ('(' -> 'x') is invalid: missing ), unterminated subpattern at position 0 ({bad});")


def test_cli_torch_to_keras_h5_keeps_keras_weight_order(tmp_path):
    src = tmp_path / "t.safetensors"
    tree = torch_tree(("bn.running_mean", arange(2)), ("bn.running_var", arange(2)), ("bn.weight", arange(2)), ("bn.bias", arange(2)),
                      ("bn.num_batches_tracked", np.array(3)))
    surgery.save(tree, src)
    out = tmp_path / "k.h5"
    result = run("convert", src, "-o", out, "--layout", "keras")
    assert result.exit_code == 0, result.stderr
    assert "  dropped bn.num_batches_tracked (Keras BatchNormalization has no step counter)" in result.stdout
    with h5py.File(out) as f:
        assert [n.decode() for n in f["bn"].attrs["weight_names"]] == ["bn/gamma:0", "bn/beta:0", "bn/moving_mean:0", "bn/moving_variance:0"]


def test_torch_depthwise_multiplier_comes_from_the_layer_before():
    tree = torch_tree(("c.weight", arange((4, 3, 3, 3))), ("dw.weight", arange((8, 1, 3, 3))))
    new, report = convert_layout(tree, "keras", depthwise=["dw"])
    assert new["dw/depthwise_kernel"].shape == (3, 3, 4, 2)
    assert report.notes == ["dw.weight: depth_multiplier 2 (4 input channels, from the layer before)"]
    np.testing.assert_array_equal(new["dw/depthwise_kernel"].read()[:, :, 3, 1], arange((8, 1, 3, 3))[7, 0])


def test_torch_kinds_follow_keras_automatic_names_given_by_the_rules():
    tree = torch_tree(("f.1.weight", arange((8, 1, 3, 3))), ("f.4.weight", arange(5)))
    rules = [(r"^f\.1/", "depthwise_conv2d/"), (r"^f\.4/", "p_re_lu/")]
    new, report = convert_layout(tree, "keras", rules=rules)
    assert report.facts["layers"] == {"f.1": "depthwise", "f.4": "prelu"}
    assert list(new) == ["depthwise_conv2d/depthwise_kernel", "p_re_lu/alpha"]
