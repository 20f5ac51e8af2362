"""rename, strip-prefix, keep/drop: exact messages, the CLI, and real Keras / torch loaders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import surgery  # noqa: E402
from helpers import digest, error_line, run  # noqa: E402
from surgery.errors import OperationError  # noqa: E402
from surgery.ops.names import parse_rule, rename, select, strip_prefix  # noqa: E402
from surgery.provenance import history  # noqa: E402
from surgery.tree import Entry, Tree  # noqa: E402

RULE_FIX = "write REGEX=REPL, e.g. 'module\\.(.*)=\\1'; a literal '=' in the regex is written \\="


def small_tree() -> Tree:
    return Tree(
        [
            Entry.from_array("module.backbone.weight", np.arange(6, dtype="float32").reshape(2, 3)),
            Entry.from_array("module.backbone.bias", np.arange(2, dtype="float32")),
            Entry.from_array("module.head.weight", np.ones((4, 2), "float16")),
            Entry.from_array("step", np.array(7, "int64")),
        ]
    )


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.safetensors"
    surgery.save(small_tree(), path)
    return path


# -- parse_rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"^module\.(.*)=\1", (r"^module\.(.*)", r"\1")),
        (r"a\=b=c=d", (r"a\=b", "c=d")),  # \= is a literal '=' in the regex; the replacement may hold '='
        ("head=", ("head", "")),
    ],
)
def test_parse_rule_splits_at_the_first_unescaped_equals(text, expected):
    assert parse_rule(text) == expected


def test_escaped_equals_matches_a_literal_equals():
    tree = Tree([Entry.from_array("a=b.w", np.zeros(1, "float32"))])
    assert list(rename(tree, [parse_rule(r"a\=b=ab")])[0]) == ["ab.w"]


def test_parse_rule_errors_are_one_line():
    with pytest.raises(OperationError) as e:
        parse_rule("module.")
    assert str(e.value) == f"rule 'module.' has no '=' (--map); {RULE_FIX}"
    with pytest.raises(OperationError) as e:
        parse_rule("=x")
    assert str(e.value) == f"rule '=x' has an empty regex (--map); {RULE_FIX}"


# -- rename -------------------------------------------------------------------------


def test_rename_applies_rules_in_order_and_shares_data():
    tree = small_tree()
    new, report = rename(tree, [(r"^module\.", ""), (r"^backbone\.", "body.")])
    assert list(new) == ["body.weight", "body.bias", "head.weight", "step"]
    assert [(c.kind, c.before, c.after) for c in report.changes] == [
        ("renamed", "module.backbone.weight", "body.weight"),
        ("renamed", "module.backbone.bias", "body.bias"),
        ("renamed", "module.head.weight", "head.weight"),
    ]
    assert new["body.weight"].source is tree["module.backbone.weight"].source  # nothing read, nothing copied
    assert new["step"] is tree["step"]
    assert list(tree) == list(small_tree())  # the input is untouched
    assert history(new)[-1]["op"] == "rename" and history(new)[-1]["rules"] == [[r"^module\.", ""], [r"^backbone\.", "body."]]


def test_rename_substitutes_every_match_in_the_name():
    tree = Tree([Entry.from_array("a.a.w", np.zeros(1, "float32"))])
    assert list(rename(tree, [("a", "b")])[0]) == ["b.b.w"]


@pytest.mark.parametrize(
    "rules, message",
    [
        ([("(", "x")], "bad regex '(': missing ), unterminated subpattern (--map (=x); " + RULE_FIX),
        ([("head", r"\2")], "bad replacement '\\\\2': invalid group reference 2 (--map head=\\2); refer only to groups the regex has"),
        (
            [("^nothing", "x")],
            "rule '^nothing' matches no tensor name (--map ^nothing=x); list the names with `surgery inspect`; "
            "regexes are case-sensitive and match anywhere unless anchored with ^ and $",
        ),
        (
            [(r"\.(weight|bias)$", ".p")],
            "tensors 'module.backbone.weight' and 'module.backbone.bias' would both be named 'module.backbone.p' "
            "(module.backbone.p); make the rules keep names apart",
        ),
        ([("^step$", "")], "tensor 'step' would get an empty name (step); change the rule so something is left"),
    ],
)
def test_rename_errors(rules, message):
    with pytest.raises(OperationError) as e:
        rename(small_tree(), rules)
    assert str(e.value) == message


def test_collision_with_an_unrenamed_name_is_an_error():
    with pytest.raises(OperationError) as e:
        rename(small_tree(), [("^module.head.weight$", "step")])
    assert str(e.value) == "tensors 'module.head.weight' and 'step' would both be named 'step' (step); make the rules keep names apart"


def test_a_later_rule_sees_the_earlier_rules_result():
    new, _ = rename(small_tree(), [("^module.head", "head"), ("^head", "classifier")])
    assert "classifier.weight" in new
    with pytest.raises(OperationError, match="rule '\\^module.head' matches no tensor name"):
        rename(small_tree(), [("^module.", ""), ("^module.head", "x")])


def test_rename_not_strict_allows_a_rule_without_match():
    new, report = rename(small_tree(), [("^nothing", "x")], strict=False)
    assert list(new) == list(small_tree()) and report.changes == []


# -- strip_prefix and select ----------------------------------------------------------


def test_strip_prefix_keeps_names_without_it():
    new, report = strip_prefix(small_tree(), "module.")
    assert list(new) == ["backbone.weight", "backbone.bias", "head.weight", "step"]
    assert report.names("renamed") == ["module.backbone.weight", "module.backbone.bias", "module.head.weight"]
    assert history(new)[-1]["prefix"] == "module."


def test_strip_prefix_errors():
    with pytest.raises(OperationError) as e:
        strip_prefix(small_tree(), "model.")
    assert str(e.value) == "no tensor name starts with 'model.' (--strip-prefix); list the names with `surgery inspect`"
    tree = Tree([Entry.from_array("m.w", np.zeros(1, "float32")), Entry.from_array("w", np.zeros(1, "float32"))])
    with pytest.raises(OperationError) as e:
        strip_prefix(tree, "m.")
    assert str(e.value) == "tensors 'm.w' and 'w' would both be named 'w' (w); make the rules keep names apart"


def test_select_keep_then_drop():
    new, report = select(small_tree(), keep=["module.*"], drop=["*.bias"])
    assert list(new) == ["module.backbone.weight", "module.head.weight"]
    assert [(c.kind, c.name, c.before) for c in report.changes] == [
        ("dropped", "module.backbone.bias", "module.backbone.bias [2] float32"),
        ("dropped", "step", "step [] int64"),
    ]
    assert history(new)[-1] == {**history(new)[-1], "op": "select", "keep": ["module.*"], "drop": ["*.bias"]}


@pytest.mark.parametrize(
    "keep, drop, message",
    [
        (["head.*"], [], "--keep 'head.*' matches no tensor name (--keep); list the names with `surgery inspect`; "
         "globs are case-sensitive and '*' crosses '/' and '.'"),
        ([], ["*.Bias"], "--drop '*.Bias' matches no tensor name (--drop); list the names with `surgery inspect`; "
         "globs are case-sensitive and '*' crosses '/' and '.'"),
        (["*.bias"], ["module.*"], "--keep and --drop leave no tensor (--keep/--drop); loosen the globs"),
    ],
)
def test_select_errors(keep, drop, message):
    with pytest.raises(OperationError) as e:
        select(small_tree(), keep=keep, drop=drop)
    assert str(e.value) == message


# -- the CLI --------------------------------------------------------------------------


def test_rename_dry_run_prints_the_plan_and_writes_nothing(tmp_path, src):
    out = tmp_path / "out.safetensors"
    result = run("rename", src, "-o", out, "--map", r"^module\.=", "--map", r"^backbone\.=body.", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "module.backbone.weight -> body.weight",
        "module.backbone.bias -> body.bias",
        "module.head.weight -> head.weight",
        f"would write {out} (safetensors, 4 tensors, 3 renamed)",
    ]
    assert not out.exists()


def test_rename_writes_and_json_lists_everything(tmp_path, src):
    before = digest(src)
    out = tmp_path / "out.safetensors"
    result = run("rename", src, "-o", out, "--strip-prefix", "module.", "--drop", "step", "--map", "^head=classifier", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["renamed"] == [
        {"before": "module.backbone.weight", "after": "backbone.weight"},
        {"before": "module.backbone.bias", "after": "backbone.bias"},
        {"before": "module.head.weight", "after": "head.weight"},
        {"before": "head.weight", "after": "classifier.weight"},
    ]
    assert document["dropped"] == ["step"] and document["tensors"] == 3 and document["format"] == "safetensors"
    written = surgery.load(out)
    assert list(written) == ["backbone.weight", "backbone.bias", "classifier.weight"]
    np.testing.assert_array_equal(written["backbone.weight"].read(), small_tree()["module.backbone.weight"].read())
    assert written["classifier.weight"].dtype == "float16"
    assert [step["op"] for step in history(written)] == ["strip-prefix", "select", "rename"]
    assert digest(src) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--map", "module."], f"error: invalid value for '--map': rule 'module.' has no '='; {RULE_FIX}; see 'surgery rename --help'"),
        (["--map", "(=x"], f"error: invalid value for '--map': bad regex '(': missing ), unterminated subpattern; {RULE_FIX}; see 'surgery rename --help'"),
        (["--strip-prefix", "model."], "error: no tensor name starts with 'model.' (--strip-prefix); list the names with `surgery inspect`"),
        ([], "error: nothing to rename: give --map REGEX=REPL, --strip-prefix, --keep or --drop; see 'surgery rename --help'"),
    ],
)
def test_rename_cli_errors_are_one_line(tmp_path, src, args, message):
    result = run("rename", src, "-o", tmp_path / "out.safetensors", *args)
    assert result.exit_code == (1 if "--strip-prefix" in args else 2)
    assert error_line(result) == message
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_takes_name_options(tmp_path, src):
    out = tmp_path / "out.safetensors"
    result = run("convert", src, "-o", out, "--strip-prefix", "module.", "--keep", "backbone.*", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["dropped"] == ["head.weight", "step"]  # globs see the stripped names
    assert [r["after"] for r in document["renamed"]] == ["backbone.weight", "backbone.bias", "head.weight"]
    assert list(surgery.load(out)) == ["backbone.weight", "backbone.bias"]
    text = run("convert", src, "-o", out, "--drop", "step", "--force")
    assert "dropped 1 tensors: step" in text.stdout


# -- real clients ---------------------------------------------------------------------


def test_strip_prefix_of_a_dataparallel_checkpoint_loads_strictly_into_the_bare_module(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 6, 6))
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, ddp)
    for command in (["rename", ddp], ["convert", ddp]):
        out = tmp_path / f"{command[0]}.safetensors"
        result = run(*command, "-o", out, "--strip-prefix", "module.", "-q")
        assert result.exit_code == 0, result.stderr
        from safetensors.torch import load_file

        bare = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2))
        bare.load_state_dict(load_file(out), strict=True)
        for key, value in net.state_dict().items():
            assert torch.equal(bare.state_dict()[key], value), key


keras = pytest.importorskip("keras")


def two_dense(prefix: str) -> "keras.Model":
    inp = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, activation="tanh", name=f"{prefix}_a")(inp)
    return keras.Model(inp, keras.layers.Dense(2, name=f"{prefix}_b")(hidden))


@pytest.fixture(scope="module")
def original():
    keras.utils.set_random_seed(3)
    return two_dense("dense")


@pytest.mark.parametrize("layout", ["weights", "model"])
def test_renamed_keras_h5_loads_into_a_model_with_the_new_layer_names(tmp_path, original, layout):
    import h5py

    src = tmp_path / "dense.h5"
    if layout == "model":
        original.save(src)
    else:
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(src, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, original)
    out = tmp_path / "fc.h5"
    result = run("rename", src, "-o", out, "--map", "^dense_=fc_")
    assert result.exit_code == 0, result.stderr
    assert "dense_a/kernel -> fc_a/kernel" in result.stdout
    assert ("note: model_config still names the old layers" in result.stdout) == (layout == "model")
    with h5py.File(out) as f:
        root = f["model_weights"] if layout == "model" else f
        assert [n.decode() for n in root.attrs["layer_names"]] == ["x", "fc_a", "fc_b"]  # order kept, input layer too
        assert [n.decode() for n in root["fc_a"].attrs["weight_names"]] == ["fc_a/kernel:0", "fc_a/bias:0"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    want = keras.ops.convert_to_numpy(original(x))
    for by_name in (True, False):
        model = two_dense("fc")
        model.load_weights(str(out), by_name=by_name)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), want)


def test_renamed_keras3_weights_file_keeps_its_structure(tmp_path, original):
    src = tmp_path / "dense.weights.h5"
    original.save_weights(src)
    out = tmp_path / "fc.weights.h5"
    result = run("rename", src, "-o", out, "--map", "^dense_=fc_", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["notes"] == [
        "Keras 3 .weights.h5: the datasets keep their places (layers/<key>/vars/<i>); "
        "Keras loads them by model structure, so the new names show in surgery only"
    ]
    model = two_dense("fc")
    model.load_weights(str(out))
    x = np.ones((1, 4), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(original(x)))
