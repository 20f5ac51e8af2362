"""transplant: load a pretrained checkpoint into another by name; real torch and Keras prove the result."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import surgery  # noqa: E402
from helpers import digest, error_line, run  # noqa: E402
from surgery.errors import OperationError  # noqa: E402
from surgery.ops.transplant import transplant  # noqa: E402
from surgery.provenance import history  # noqa: E402
from surgery.tree import KERAS, TORCH, Entry, Tree  # noqa: E402

torch = pytest.importorskip("torch")
STRICT_FIX = "add --map rules or --strip-prefix so the names match, or drop --strict to keep what matches"


def arrays(**named) -> Tree:
    return Tree([Entry.from_array(k.replace("__", "."), v) for k, v in named.items()], convention=TORCH)


def pre_and_target() -> tuple[Tree, Tree]:
    pre = arrays(body__w=np.arange(6, dtype="float32").reshape(2, 3), body__b=np.ones(2, "float32"),
                 head__w=np.ones((10, 2), "float32"), extra=np.zeros(1, "int64"))
    target = arrays(body__w=np.zeros((2, 3), "float16"), body__b=np.zeros(2, "float32"),
                    head__w=np.zeros((3, 2), "float32"), new__w=np.zeros(4, "float32"))
    return pre, target


# -- the operation -----------------------------------------------------------------


def test_transplant_reports_every_kind_and_keeps_target_structure():
    pre, target = pre_and_target()
    target.metadata["note"] = "target"
    new, report = transplant(pre, target)
    assert list(new) == list(target) and new.convention == TORCH and new.metadata["note"] == "target"
    assert report.facts == {"copied": 2, "cast": 1, "missing": 1, "unexpected": 1, "mismatched": 1}
    assert [(c.kind, c.name, c.before, c.after) for c in report.changes] == [
        ("copied", "body.w", "float32", "float16"),
        ("cast", "body.w", "float32", "float16"),
        ("copied", "body.b", "float32", "float32"),
        ("mismatched", "head.w", "[10, 2]", "[3, 2]"),
        ("missing", "new.w", "", "[4]"),
        ("unexpected", "extra", "[1]", ""),
    ]
    assert new["body.w"].dtype == "float16"
    np.testing.assert_array_equal(new["body.w"].read(), np.arange(6, dtype="float16").reshape(2, 3))
    assert new["body.b"].source is pre["body.b"].source  # copied without reading
    assert new["head.w"] is target["head.w"] and new["new.w"] is target["new.w"]
    assert history(new)[-1]["op"] == "transplant" and history(new)[-1]["copied"] == 2


def test_rules_rename_pretrained_first():
    pre, target = pre_and_target()
    new, report = transplant(pre, target, rules=[("^extra$", "new.w")])
    assert report.facts["mismatched"] == 2  # extra [1] now meets new.w [4]
    assert report.facts["unexpected"] == 0


def test_strict_names_counts_and_the_first_of_each_kind():
    pre, target = pre_and_target()
    with pytest.raises(OperationError) as e:
        transplant(pre, target, strict=True)
    assert str(e.value) == (
        f"transplant is not exact: 1 missing, 1 unexpected, 1 mismatched (first missing: 'new.w') (--strict); {STRICT_FIX}"
    )
    with pytest.raises(OperationError) as e:
        transplant(pre, Tree([pre["body.w"], pre["body.b"], pre["extra"]], convention=TORCH), strict=True)
    assert str(e.value) == (
        f"transplant is not exact: 0 missing, 1 unexpected, 0 mismatched (first unexpected: 'head.w') (--strict); {STRICT_FIX}"
    )


def test_packed_dtypes_are_not_cast():
    pre = Tree([Entry("w", (2,), "float4_e2m1fn", pre_and_target()[0]["extra"].source)])
    target = Tree([Entry.from_array("w", np.zeros(2, "float32"))])
    with pytest.raises(OperationError) as e:
        transplant(pre, target)
    assert str(e.value) == (
        "tensor 'w' is float4_e2m1fn in PRETRAINED and float32 in TARGET, and packed dtypes cannot be cast (w); "
        "convert one of them to the other's dtype first"
    )


def test_an_unknown_layout_is_not_guessed():
    pre = Tree([Entry.from_array("fc/kernel", np.zeros((3, 2), "float32"))], convention=KERAS)
    # names of both frameworks: they do not tell the layout
    target = Tree([Entry.from_array("fc/kernel", np.zeros((3, 2), "float32")), Entry.from_array("x.weight", np.zeros(2, "float32"))])
    new, report = transplant(pre, target)
    assert report.facts["missing"] == 1 and report.notes == [
        "PRETRAINED is in keras layout and TARGET in unknown layout: nothing converted; "
        "if both are one framework's weights, convert PRETRAINED with `surgery convert --layout` first"
    ]


def test_a_layout_the_names_show_is_used_and_reported():
    kernel = np.arange(6, dtype="float32").reshape(3, 2)
    pre = Tree([Entry.from_array("fc/kernel", kernel)], convention=KERAS)
    target = Tree([Entry.from_array("fc.weight", np.zeros((2, 3), "float32"))])  # a safetensors file without format=pt
    new, report = transplant(pre, target, strict=True)
    np.testing.assert_array_equal(new["fc.weight"].read(), kernel.T)
    assert report.notes[:2] == [
        "TARGET is taken as torch layout: the names are PyTorch weight names (fc.weight)",
        "converted PRETRAINED from keras to torch layout (1 renamed, 1 transposed)",
    ]


def test_layouts_that_differ_are_converted():
    kernel = np.arange(6, dtype="float32").reshape(3, 2)
    pre = Tree([Entry.from_array("fc/kernel", kernel)], convention=KERAS)
    target = Tree([Entry.from_array("fc.weight", np.zeros((2, 3), "float32"))], convention=TORCH)
    new, report = transplant(pre, target, strict=True)
    np.testing.assert_array_equal(new["fc.weight"].read(), kernel.T)
    assert report.notes[0] == "converted PRETRAINED from keras to torch layout (1 renamed, 1 transposed)"


# -- real torch --------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def trained(classes: int, seed: int) -> Net:
    torch.manual_seed(seed)
    net = Net(classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a missed copy shows
        net.backbone[1].running_mean.uniform_(-1, 1)
        net.backbone[1].running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.fixture
def torch_files(tmp_path):
    from safetensors.torch import save_file

    pre, init = trained(10, 0), trained(3, 1)
    torch.save(pre.state_dict(), tmp_path / "pretrained.pt")
    save_file(init.state_dict(), tmp_path / "init.safetensors")
    return pre, init, tmp_path


def test_torch_head_swap_copies_the_backbone_and_keeps_the_new_head(torch_files):
    from safetensors.torch import load_file

    pre, init, folder = torch_files
    before = digest(folder / "pretrained.pt"), digest(folder / "init.safetensors")
    out = folder / "start.safetensors"
    result = run("transplant", folder / "pretrained.pt", folder / "init.safetensors", "-o", out)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("copied 7: ") and "backbone.1.num_batches_tracked" in lines[0]
    assert lines[1:] == [
        "missing 0 (kept as initialised)",
        "unexpected 0 (not in TARGET)",
        "mismatched 2 (shape differs, kept as initialised): head.bias [10] -> [3], head.weight [10, 4] -> [3, 4]",
        "  by name: head.* (2)",
        f"wrote {out} (safetensors)",
    ]
    model = Net(3).eval()
    model.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), pre.backbone(x))
        assert torch.equal(model.head.weight, init.head.weight)
    assert (digest(folder / "pretrained.pt"), digest(folder / "init.safetensors")) == before


def test_torch_transplant_json_dry_run_and_strict(torch_files):
    _, _, folder = torch_files
    out = folder / "start.safetensors"
    result = run("transplant", folder / "pretrained.pt", folder / "init.safetensors", "-o", out, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["counts"] == {"copied": 7, "cast": 0, "missing": 0, "unexpected": 0, "mismatched": 2}
    assert document["mismatched"] == [  # in TARGET's order (safetensors files sort their names)
        {"name": "head.bias", "pretrained": "[10]", "target": "[3]"},
        {"name": "head.weight", "pretrained": "[10, 4]", "target": "[3, 4]"},
    ]
    assert document["dry_run"] is True and not out.exists()
    strict = run("transplant", folder / "pretrained.pt", folder / "init.safetensors", "-o", out, "--strict")
    assert strict.exit_code == 1
    assert error_line(strict) == (
        f"error: transplant is not exact: 0 missing, 0 unexpected, 2 mismatched (first mismatched: 'head.bias') (--strict); {STRICT_FIX}"
    )
    assert not out.exists()


def test_transplant_strips_a_prefix_and_never_writes_over_an_input(torch_files):
    pre, _, folder = torch_files
    torch.save({f"module.{k}": v for k, v in pre.state_dict().items()}, folder / "ddp.pt")
    out = folder / "start.safetensors"
    result = run("transplant", folder / "ddp.pt", folder / "init.safetensors", "-o", out, "--strip-prefix", "module.", "--map", r"^head\.=old_head.", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["notes"] == ["stripped 'module.' from 9 PRETRAINED names"]
    assert document["unexpected"] == ["old_head.weight", "old_head.bias"] and document["missing"] == ["head.bias", "head.weight"]
    same = Net(10)
    from safetensors.torch import save_file

    save_file(same.state_dict(), folder / "same.safetensors")
    before = digest(folder / "same.safetensors")
    clash = run("transplant", folder / "pretrained.pt", folder / "same.safetensors", "-o", folder / "same.safetensors", "--force")
    assert clash.exit_code == 1
    assert error_line(clash) == (
        f"error: the output would overwrite an input ({folder / 'same.safetensors'}); choose a different output path; inputs are never modified"
    )
    assert digest(folder / "same.safetensors") == before


def test_many_names_are_listed_20_at_a_time(tmp_path):
    pre = Tree([Entry.from_array(f"p{i:02d}", np.zeros(1, "float32")) for i in range(25)])
    target = Tree([Entry.from_array("t", np.zeros(1, "float32")), Entry.from_array("p00", np.zeros(1, "float32"))])
    surgery.save(pre, tmp_path / "pre.npz")
    surgery.save(target, tmp_path / "target.npz")
    result = run("transplant", tmp_path / "pre.npz", tmp_path / "target.npz", "-o", tmp_path / "out.npz", "--dry-run")
    assert result.exit_code == 0, result.stderr
    listed = ", ".join(f"p{i:02d}" for i in range(1, 21))
    assert f"unexpected 24 (not in TARGET): {listed}, … and 4 more (--verbose lists all)" in result.stdout.splitlines()
    verbose = run("transplant", tmp_path / "pre.npz", tmp_path / "target.npz", "-o", tmp_path / "out.npz", "--dry-run", "--verbose")
    assert "unexpected 24 (not in TARGET): " + ", ".join(f"p{i:02d}" for i in range(1, 25)) in verbose.stdout.splitlines()


# -- across formats, with real Keras ---------------------------------------------------


keras = pytest.importorskip("keras")


def keras_net(classes: int, seed: int) -> "keras.Model":
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(classes, name="fc")(x))


def legacy_h5(model, path) -> None:
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_pretrained_safetensors_into_a_keras_h5_target(tmp_path):
    pre, init = keras_net(5, 0), keras_net(2, 1)
    legacy_h5(pre, tmp_path / "pre.h5")
    legacy_h5(init, tmp_path / "init.h5")
    assert run("convert", tmp_path / "pre.h5", "-o", tmp_path / "pre.safetensors", "-q").exit_code == 0
    out = tmp_path / "start.h5"
    result = run("transplant", tmp_path / "pre.safetensors", tmp_path / "init.h5", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["copied"] == ["conv1/kernel", "conv1/bias"] and document["notes"] == []
    assert [m["name"] for m in document["mismatched"]] == ["fc/kernel", "fc/bias"]
    model = keras_net(2, 2)
    model.load_weights(str(out))  # by layer order: TARGET's layout was kept
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv1").kernel), keras.ops.convert_to_numpy(pre.get_layer("conv1").kernel))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("fc").kernel), keras.ops.convert_to_numpy(init.get_layer("fc").kernel))


class TorchTwin(torch.nn.Module):
    """keras_net in PyTorch: the same layer names, so only the layouts differ."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_keras_h5_into_a_fresh_torch_target_converts_the_layout(tmp_path, suffix):
    from safetensors.torch import save_file

    pre = keras_net(5, 0)
    legacy_h5(pre, tmp_path / "pre.h5")
    init = TorchTwin(5)
    if suffix == ".pt":
        torch.save(init.state_dict(), tmp_path / "init.pt")
    else:
        save_file(init.state_dict(), tmp_path / "init.safetensors", metadata={"format": "pt"})  # as transformers writes
    out = tmp_path / f"start{suffix}"
    result = run("transplant", tmp_path / "pre.h5", tmp_path / f"init{suffix}", "-o", out, "--strict")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "note: converted PRETRAINED from keras to torch layout (4 renamed, 2 transposed)"
    model = TorchTwin(5).eval()
    state = torch.load(out, weights_only=True) if suffix == ".pt" else __import__("safetensors.torch").torch.load_file(out)
    model.load_state_dict(state, strict=True)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    want = keras.ops.convert_to_numpy(pre(x))
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
