"""reinit and adapt-input by example: fans per layout, roles by name, exact messages, the CLI."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest

import surgery
from helpers import digest, error_line, run
from surgery.errors import OperationError
from surgery.ops.fans import fans, input_axis
from surgery.ops.reinit import adapt_input, find_input_conv, parse_init, plan_reinit, reinit
from surgery.provenance import history
from surgery.tree import KERAS, TORCH, UNKNOWN, Entry, LazySource, Tree


def tree_of(arrays: dict, convention=TORCH) -> Tree:
    return Tree([Entry.from_array(k, v) for k, v in arrays.items()], convention=convention)


def torch_tree(convention=TORCH) -> Tree:
    rng = np.random.default_rng(0)
    return tree_of(
        {
            "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype("float32"),
            "conv1.bias": rng.standard_normal(8).astype("float32"),
            "bn1.weight": rng.standard_normal(8).astype("float32"),
            "bn1.bias": rng.standard_normal(8).astype("float32"),
            "bn1.running_mean": rng.standard_normal(8).astype("float32"),
            "bn1.running_var": rng.random(8).astype("float32"),
            "bn1.num_batches_tracked": np.array(17, "int64"),
            "ln.weight": rng.standard_normal(16).astype("float32"),
            "ln.bias": rng.standard_normal(16).astype("float32"),
            "fc.weight": rng.standard_normal((10, 16)).astype("float32"),
            "fc.bias": rng.standard_normal(10).astype("float32"),
            "embeddings.position_ids": np.arange(4, dtype="int64"),
        },
        convention,
    )


def plain_names_tree() -> Tree:
    """torch_tree with parameter names neither framework uses, in a file that does not say its layout."""
    plain = {"weight": "w", "running_mean": "mean", "running_var": "var", "num_batches_tracked": "count"}
    renamed = {}
    for name, entry in torch_tree().items():
        layer, _, param = name.rpartition(".")
        renamed[f"{layer}.{plain.get(param, param)}"] = entry.read()
    return tree_of(renamed, UNKNOWN)


# -- fans -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, layout, want",
    [
        ((3, 3, 64, 128), "keras", (3 * 3 * 64, 3 * 3 * 128)),  # Conv2D HWIO
        ((128, 64, 3, 3), "torch", (64 * 3 * 3, 128 * 3 * 3)),  # Conv2d OIHW
        ((5, 16, 32), "keras", (5 * 16, 5 * 32)),  # Conv1D (w, in, out)
        ((32, 16, 5), "torch", (16 * 5, 32 * 5)),  # Conv1d (out, in, w)
        ((2, 3, 3, 4, 8), "keras", (2 * 3 * 3 * 4, 2 * 3 * 3 * 8)),  # Conv3D
        ((8, 4, 2, 3, 3), "torch", (4 * 18, 8 * 18)),  # Conv3d
        ((300, 10), "keras", (300, 10)),  # Dense (in, out)
        ((10, 300), "torch", (300, 10)),  # Linear (out, in)
        ((3, 3, 32, 2), "keras", (3 * 3 * 32, 3 * 3 * 2)),  # depthwise_kernel (h, w, in, multiplier), as Keras does
        ((64, 1, 3, 3), "torch", (9, 64 * 9)),  # depthwise Conv2d(groups=64), as torch does
        ((0, 3, 3, 3), "torch", (27, 0)),
    ],
)
def test_fans_per_layout(shape, layout, want):
    assert fans(shape, layout) == want


def test_fans_refuse_rank_1_and_unknown_layouts():
    with pytest.raises(OperationError) as e:
        fans((8,), "torch")
    assert str(e.value) == ("a tensor of shape [8] has no fan-in and fan-out (they need rank 2 or more) (fans); "
                            "use an init that needs no fans: normal:STD, zeros, ones or constant:V")
    with pytest.raises(OperationError) as e:
        fans((2, 2), "jax")
    assert str(e.value) == "unknown layout 'jax' (--layout); use one of: keras, torch"
    assert input_axis(4, "keras") == 2 and input_axis(4, "torch") == 1 and input_axis(3, "keras") == 1


# -- init names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("glorot", "unknown --init 'glorot' (--init); use one of: xavier_uniform, xavier_normal, kaiming_uniform, "
                   "kaiming_normal, normal:STD, zeros, ones, constant:V"),
        ("normal", "unknown --init 'normal' (--init); use one of: xavier_uniform, xavier_normal, kaiming_uniform, "
                   "kaiming_normal, normal:STD, zeros, ones, constant:V"),
        ("normal:abc", "--init normal:abc: 'abc' is not a standard deviation >= 0 (--init); write e.g. normal:0.01"),
        ("normal:-1", "--init normal:-1: '-1' is not a standard deviation >= 0 (--init); write e.g. normal:0.01"),
        ("constant:nan", "--init constant:nan: 'nan' is not a finite number (--init); write e.g. constant:0.01"),
    ],
)
def test_bad_init_names(text, message):
    with pytest.raises(OperationError) as e:
        parse_init(text)
    assert str(e.value) == message


# -- roles and values -------------------------------------------------------------------


def test_roles_by_name_and_identity_values_for_norms():
    tree = torch_tree()
    new, report = reinit(tree, "*", "xavier_uniform", seed=3)
    got = {c.name: c.detail for c in report.changes}
    assert got == {
        "conv1.weight": "kernel: xavier_uniform, fan_in 27, fan_out 72, bound 0.246183",
        "conv1.bias": "bias: zeros",
        "bn1.weight": "norm: ones",
        "bn1.bias": "norm: zeros",
        "bn1.running_mean": "norm: zeros",
        "bn1.running_var": "norm: ones",
        "bn1.num_batches_tracked": "norm: zeros",
        "ln.weight": "norm: ones",
        "ln.bias": "norm: zeros",
        "fc.weight": "kernel: xavier_uniform, fan_in 16, fan_out 10, bound 0.480384",
        "fc.bias": "bias: zeros",
    }
    assert report.notes == ["left unchanged: embeddings.position_ids is int64, not a floating weight"]
    assert new["embeddings.position_ids"] is tree["embeddings.position_ids"]
    np.testing.assert_array_equal(new["bn1.weight"].read(), np.ones(8, "float32"))
    np.testing.assert_array_equal(new["bn1.running_var"].read(), np.ones(8, "float32"))
    np.testing.assert_array_equal(new["bn1.running_mean"].read(), np.zeros(8, "float32"))
    assert new["bn1.num_batches_tracked"].read() == 0 and new["bn1.num_batches_tracked"].dtype == "int64"
    w = new["conv1.weight"].read()
    assert w.dtype == np.float32 and np.abs(w).max() <= math.sqrt(6 / (27 + 72))
    assert list(new) == list(tree)
    assert [s["op"] for s in history(new)] == ["reinit"]
    assert history(new)[0]["init"] == "xavier_uniform" and history(new)[0]["seed"] == 3


def test_only_matching_tensors_change_and_data_is_lazy():
    tree = torch_tree()
    new, report = reinit(tree, ["fc"], "kaiming_normal")
    assert report.names("reinitialised") == ["fc.weight", "fc.bias"]
    for name in tree:
        if not name.startswith("fc."):
            assert new[name] is tree[name]
    assert isinstance(new["fc.weight"].source, LazySource)
    assert report.facts["tensors"][0] == {
        "name": "fc.weight", "shape": [10, 16], "dtype": "float32", "role": "kernel", "init": "kaiming_normal",
        "fan_in": 16, "fan_out": 10, "std": math.sqrt(2) / 4,
    }


def test_a_tensor_glob_chooses_one_tensor_and_bias_init_is_honoured():
    tree = torch_tree()
    new, report = reinit(tree, ["fc.bias", "conv1"], "zeros", bias_init="constant:0.5")
    assert report.names("reinitialised") == ["conv1.weight", "conv1.bias", "fc.bias"]
    np.testing.assert_array_equal(new["fc.bias"].read(), np.full(10, 0.5, "float32"))
    np.testing.assert_array_equal(new["conv1.weight"].read(), np.zeros((8, 3, 3, 3), "float32"))
    assert new["fc.weight"] is tree["fc.weight"]


def test_keras_names_and_keras3_numbered_variables():
    rng = np.random.default_rng(1)
    keras2 = tree_of(
        {
            "conv/kernel": rng.standard_normal((3, 3, 3, 4)).astype("float32"),
            "conv/bias": rng.standard_normal(4).astype("float32"),
            "bn/gamma": rng.standard_normal(4).astype("float32"),
            "bn/beta": rng.standard_normal(4).astype("float32"),
            "bn/moving_mean": rng.standard_normal(4).astype("float32"),
            "bn/moving_variance": rng.random(4).astype("float32"),
        },
        KERAS,
    )
    _, report = reinit(keras2, "*", "kaiming_uniform")
    assert [c.detail for c in report.changes] == [
        "kernel: kaiming_uniform, fan_in 27, fan_out 36, bound 0.471405",
        "bias: zeros", "norm: ones", "norm: zeros", "norm: zeros", "norm: ones",
    ]
    keras3 = tree_of({k.replace("kernel", "0").replace("bias", "1").replace("gamma", "0").replace("beta", "1")
                      .replace("moving_mean", "2").replace("moving_variance", "3"): keras2[k].read() for k in keras2}, KERAS)
    _, report3 = reinit(keras3, "*", "kaiming_uniform")
    assert [c.detail for c in report3.changes] == [c.detail for c in report.changes]


def test_unknown_convention_needs_layout_only_for_fans():
    tree = plain_names_tree()  # names that do not tell
    with pytest.raises(OperationError) as e:
        reinit(tree, "fc", "xavier_normal")
    assert str(e.value) == ("the checkpoint does not say whether its kernels are Keras (..., in, out) or PyTorch "
                            "(out, in, ...), and the names are neither Keras (kernel, gamma, moving_mean) nor PyTorch "
                            "(weight, running_mean) weight names (--init xavier_normal); pass --layout keras or --layout torch")
    _, report = reinit(tree, "fc", "normal:0.01")
    assert report.changes[0].detail == "kernel: normal:0.01"
    _, report = reinit(tree, "fc", "xavier_normal", layout="keras")
    assert report.changes[0].detail == "kernel: xavier_normal, fan_in 10, fan_out 16, std 0.27735"


def test_refusals():
    tree = tree_of({"scale": np.ones(4, "float32"), "head.w": np.ones((2, 2), "float32")})
    with pytest.raises(OperationError) as e:
        reinit(tree, "scale", "xavier_uniform")
    assert str(e.value) == ("tensor 'scale' has shape [4], which has no fan-in and fan-out (scale); leave it out of "
                            "--layers, or use an init without fans: normal:STD, zeros, ones or constant:V")
    with pytest.raises(OperationError) as e:
        reinit(tree, "head", "zeros", bias_init="xavier_uniform")
    assert str(e.value) == ("--bias-init xavier_uniform needs fans, which a bias has not (--bias-init); "
                            "use zeros, ones, constant:V or normal:STD")
    with pytest.raises(OperationError) as e:
        reinit(tree, ["head", "nothing*"], "zeros")
    assert str(e.value) == ("--layers nothing* matches no layer or tensor (--layers); list the names with `surgery "
                            "inspect`; globs are case-sensitive and '*' crosses '/' and '.'")
    packed = Tree([Entry("q.weight", (2, 4), "float4_e2m1fn", tree["head.w"].source)])
    with pytest.raises(OperationError) as e:
        plan_reinit(packed, ["q"], "zeros")
    assert str(e.value) == ("tensor 'q.weight' is float4_e2m1fn, which cannot be re-initialised (q.weight); leave it "
                            "out of --layers, or convert the checkpoint to a wider float first")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn"])
def test_dtypes_are_kept_and_seeds_are_per_tensor(dtype):
    np_dtype = np.dtype(getattr(ml_dtypes, dtype, dtype))
    tree = tree_of({"a.weight": np.zeros((64, 32), np_dtype), "b.weight": np.zeros((64, 32), np_dtype)})
    both, _ = reinit(tree, "*", "xavier_normal", seed=5)
    one, _ = reinit(tree, "b", "xavier_normal", seed=5)
    other, _ = reinit(tree, "b", "xavier_normal", seed=6)
    b = both["b.weight"].read()
    assert b.dtype == np_dtype and b.shape == (64, 32)
    assert b.tobytes() == one["b.weight"].read().tobytes()  # independent of which other tensors were chosen
    assert b.tobytes() != other["b.weight"].read().tobytes()


# -- adapt-input ------------------------------------------------------------------------


def test_adapt_input_rules_match_timm_in_both_layouts():
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype("float32")  # OIHW
    torch_t = tree_of({"stem.conv.weight": w, "stem.conv.bias": np.ones(4, "float32")})
    gray, report = adapt_input(torch_t, 1)
    np.testing.assert_array_equal(gray["stem.conv.weight"].read(), w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    assert gray["stem.conv.bias"] is torch_t["stem.conv.bias"]
    assert report.facts["rule"] == "summed the 3 RGB input channels into 1 (timm adapt_input_conv)"
    assert report.facts["why"] == "the first rank-4 conv kernel in tree order with 3 input channels (torch layout, input axis 1)"
    four, report = adapt_input(torch_t, 4)
    np.testing.assert_array_equal(four["stem.conv.weight"].read(), w[:, [0, 1, 2, 0]] * np.float32(3 / 4))
    assert report.facts["rule"] == "repeated the RGB weights 2 times, kept the first 4 and scaled by 3/4 (timm adapt_input_conv)"
    assert (report.facts["before"], report.facts["after"]) == ([4, 3, 3, 3], [4, 4, 3, 3])
    hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    keras_t = tree_of({"conv1/kernel": hwio}, KERAS)
    k4, _ = adapt_input(keras_t, 4)
    np.testing.assert_array_equal(k4["conv1/kernel"].read(), four["stem.conv.weight"].read().transpose(2, 3, 1, 0))
    assert [s["op"] for s in history(k4)] == ["adapt-input"] and history(k4)[0]["channels"] == 4
    two, report = adapt_input(keras_t, 2)
    np.testing.assert_array_equal(two["conv1/kernel"].read(), hwio[:, :, :2] * np.float32(3 / 2))
    assert report.facts["rule"] == "kept the first 2 of the 3 RGB weights and scaled by 3/2 (timm adapt_input_conv)"


def test_adapt_input_refuses_a_stored_model_config_it_cannot_rewrite():
    """A model_config that would go stale is rewritten (tests/test_keras_config.py) or refused, never left wrong."""
    kernel = np.zeros((3, 3, 3, 4), "float32")
    tree = Tree([Entry.from_array("conv1_1/kernel", kernel)], convention=KERAS, metadata={"model_config": "{}"})
    with pytest.raises(OperationError) as e:
        adapt_input(tree, 1)
    assert e.value.what == "the model_config is not a Keras model config surgery can read (KeyError: 'config')"
    assert adapt_input(tree, 3)[1].notes == []
    assert adapt_input(Tree([Entry.from_array("c/kernel", kernel)], convention=KERAS), 1)[1].notes == []


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_adapt_input_keeps_the_dtype(dtype):
    np_dtype = np.dtype(getattr(ml_dtypes, dtype, dtype))
    w = np.random.default_rng(3).standard_normal((2, 3, 1, 1)).astype(np_dtype)
    new, _ = adapt_input(tree_of({"c.weight": w}), 5)
    got = new["c.weight"].read()
    work = np.float64 if dtype == "float64" else np.float32
    assert got.dtype == np_dtype and got.shape == (2, 5, 1, 1)
    np.testing.assert_array_equal(got, (w.astype(work)[:, [0, 1, 2, 0, 1]] * work(3 / 5)).astype(np_dtype))


def test_adapt_input_chooses_the_first_rgb_conv_or_the_named_layer():
    tree = tree_of({
        "pre.weight": np.zeros((4, 1, 3, 3), "float32"),
        "stem.weight": np.zeros((4, 3, 3, 3), "float32"),
        "conv1d.weight": np.zeros((4, 3, 5), "float32"),
    })
    assert find_input_conv(tree, "torch")[0].name == "stem.weight"
    assert find_input_conv(tree, "torch", "conv1d") == (tree["conv1d.weight"], "named by --layer conv1d")
    new, _ = adapt_input(tree, 2, layer="conv1d")
    assert new["conv1d.weight"].shape == (4, 2, 5)


def test_adapt_input_errors():
    tree = tree_of({"a.weight": np.zeros((4, 1, 3, 3), "float32"), "fc.weight": np.zeros((2, 4), "float32")})
    cases = [
        (lambda: adapt_input(tree, 1),
         "no conv kernel with 3 input channels found; the first conv kernel, a.weight [4, 1, 3, 3], has 1 "
         "(2 tensors, torch layout); name the layer with --layer NAME (see `surgery inspect`), or check --layout"),
        (lambda: adapt_input(tree, 1, layer="a"),
         "a.weight [4, 1, 3, 3] has 1 input channels (axis 1), not 3 (--layer a); "
         "adapt-input starts from an RGB conv: name a layer whose kernel takes 3 channels"),
        (lambda: adapt_input(tree, 1, layer="fc"),
         "layer fc has no convolution kernel (its tensors: fc.weight [2, 4]) (--layer); name a conv layer"),
        (lambda: adapt_input(tree, 1, layer="nope"), "no layer named 'nope' (--layer); list the layers with `surgery inspect`"),
        (lambda: adapt_input(tree, 0),
         "--channels 0 must be at least 1 (--channels); give the input channels the new model takes, e.g. 1 for grayscale"),
        (lambda: adapt_input(tree_of({"a.weight": np.zeros((4, 3, 3, 3)), "b/kernel": np.zeros(2)}, UNKNOWN), 1),
         "the checkpoint does not say whether its kernels are Keras (..., in, out) or PyTorch (out, in, ...), "
         "and the names mix Keras (b/kernel) and PyTorch (a.weight) weight names (adapt-input); pass --layout keras or --layout torch"),
        (lambda: adapt_input(tree_of({"a.weight": np.zeros((4, 3, 3, 3), "int8")}), 1, layer="a"),
         "a.weight is int8, not a float kernel adapt-input can compute with (a.weight); convert it to float32 first"),
    ]
    for call, message in cases:
        with pytest.raises(OperationError) as e:
            call()
        assert str(e.value) == message


# -- the command line -------------------------------------------------------------------


@pytest.fixture
def torch_file(tmp_path):
    path = tmp_path / "model.safetensors"
    surgery.save(torch_tree(), path)
    return path


def test_cli_reinit_prints_each_tensor_and_writes(tmp_path, torch_file):
    before = digest(torch_file)
    out = tmp_path / "out.safetensors"
    result = run("reinit", torch_file, "-o", out, "--layers", "fc", "--layers", "bn1", "--init", "xavier_uniform", "--seed", "2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "bn1.weight  [8] float32  norm: ones",
        "bn1.bias  [8] float32  norm: zeros",
        "bn1.running_mean  [8] float32  norm: zeros",
        "bn1.running_var  [8] float32  norm: ones",
        "bn1.num_batches_tracked  [] int64  norm: zeros",
        "fc.weight  [10, 16] float32  kernel: xavier_uniform, fan_in 16, fan_out 10, bound 0.480384",
        "fc.bias  [10] float32  bias: zeros",
        f"wrote {out} (safetensors): 7 tensors re-initialised, seed 2",
    ]
    assert digest(torch_file) == before
    written = surgery.load(out)
    np.testing.assert_array_equal(written["conv1.weight"].read(), surgery.load(torch_file)["conv1.weight"].read())
    assert [s["op"] for s in history(written)] == ["reinit"]


def test_cli_reinit_json_and_dry_run(tmp_path, torch_file):
    out = tmp_path / "out.safetensors"
    result = run("reinit", torch_file, "-o", out, "--layers", "fc.weight", "--init", "normal:0.02", "--json", "--dry-run")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is True and not out.exists()
    assert doc["tensors"] == [{"name": "fc.weight", "shape": [10, 16], "dtype": "float32", "role": "kernel", "init": "normal:0.02", "std": 0.02}]


def test_cli_errors_are_one_line(tmp_path, torch_file):
    out = tmp_path / "out.safetensors"
    result = run("reinit", torch_file, "-o", out, "--layers", "head*", "--init", "zeros")
    assert result.exit_code == 1 and not out.exists()
    assert error_line(result) == ("error: --layers head* matches no layer or tensor (--layers); list the names with "
                                  "`surgery inspect`; globs are case-sensitive and '*' crosses '/' and '.'")
    result = run("reinit", torch_file, "-o", out, "--layers", "fc", "--init", "he")
    assert result.exit_code == 2
    assert error_line(result) == ("error: invalid value for '--init': unknown --init 'he'; use one of: xavier_uniform, xavier_normal, "
                                  "kaiming_uniform, kaiming_normal, normal:STD, zeros, ones, constant:V; see 'surgery reinit --help'")
    result = run("adapt-input", torch_file, "-o", out, "--channels", "-2")
    assert result.exit_code == 2
    assert error_line(result) == "error: invalid value for '--channels': -2 is not in the range x>=1; see 'surgery adapt-input --help'"
    npz = tmp_path / "plain.npz"
    surgery.save(plain_names_tree(), npz)
    result = run("reinit", npz, "-o", out, "--layers", "fc", "--init", "kaiming_uniform")
    assert error_line(result) == ("error: the checkpoint does not say whether its kernels are Keras (..., in, out) or "
                                  "PyTorch (out, in, ...), and the names are neither Keras (kernel, gamma, moving_mean) nor "
                                  "PyTorch (weight, running_mean) weight names (--init kaiming_uniform); pass --layout keras or --layout torch")
    assert run("reinit", npz, "-o", out, "--layers", "fc", "--init", "kaiming_uniform", "--layout", "torch", "-q").exit_code == 0


def test_cli_adapt_input(tmp_path, torch_file):
    out = tmp_path / "gray.safetensors"
    result = run("adapt-input", torch_file, "-o", out, "--channels", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "conv1.weight: the first rank-4 conv kernel in tree order with 3 input channels (torch layout, input axis 1)",
        "  [8, 3, 3, 3] -> [8, 1, 3, 3]: summed the 3 RGB input channels into 1 (timm adapt_input_conv)",
        f"wrote {out} (safetensors). Build the model with 1 input channel.",
    ]
    assert surgery.load(out)["conv1.weight"].shape == (8, 1, 3, 3)
    result = run("adapt-input", torch_file, "-o", out, "--channels", "6", "--json", "--force")
    doc = json.loads(result.stdout)
    assert (doc["tensor"], doc["before"], doc["after"], doc["axis"]) == ("conv1.weight", [8, 3, 3, 3], [8, 6, 3, 3], 1)
