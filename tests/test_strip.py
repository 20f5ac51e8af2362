"""strip-head and truncate by example: which head is found and why, exact error messages,
dry runs that write nothing, and --json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES
from helpers import digest, error_line, run
from surgery.errors import OperationError
from surgery.io import load, save
from surgery.ops.strip import HeadMatch, detect_head, layer_order, strip_head, truncate
from surgery.provenance import history
from surgery.tree import KERAS, TORCH, Entry, Tree

SSD = FIXTURES / "ssd300_coco_tiny.h5"


def tree_of(names: list[str], convention=TORCH) -> Tree:
    rng = np.random.default_rng(0)
    return Tree([Entry.from_array(n, rng.standard_normal((3, 2)).astype("float32")) for n in names], convention=convention)


RESNET = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
          "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight",
          "fc.weight", "fc.bias"]
VGG = ["features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
       "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
       "classifier.6.weight", "classifier.6.bias"]
KERAS_VGG = ["block1_conv1/kernel", "block1_conv1/bias", "fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias",
             "predictions/kernel", "predictions/bias"]


@pytest.fixture
def resnet(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save(tree_of(RESNET), path)
    return path


# -- detection -----------------------------------------------------------------------


def test_torchvision_fc_is_found_by_the_table():
    head = detect_head(tree_of(RESNET))
    assert head == HeadMatch(("fc",), ("fc.weight", "fc.bias"), "known torchvision/timm top: fc")


def test_torchvision_classifier_star_takes_the_whole_classifier():
    head = detect_head(tree_of(VGG))
    assert head.layers == ("classifier.0", "classifier.3", "classifier.6")
    assert head.tensors == tuple(VGG[4:])


def test_keras_applications_top_without_a_model_config():
    head = detect_head(tree_of(KERAS_VGG, KERAS))
    assert head.layers == ("fc1", "fc2", "predictions")
    assert head.why == "known keras-applications top: fc1, fc2, predictions"


def test_timm_head_fc_keeps_head_norm():
    names = ["stem.0.weight", "stages.0.blocks.0.conv_dw.weight", "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"]
    assert detect_head(tree_of(names)).tensors == ("head.fc.weight", "head.fc.bias")


def test_explicit_globs_match_layers_or_tensors():
    head = detect_head(tree_of(RESNET), ["layer2.*", "fc.bias"])
    assert head.tensors == ("layer2.0.conv1.weight", "layer2.0.downsample.0.weight", "fc.bias")
    assert head.why == "--head layer2.* fc.bias: 3 layers, 3 tensors"


def test_no_head_found_names_the_last_layers():
    with pytest.raises(OperationError) as e:
        detect_head(tree_of(["conv1.weight", "conv2.weight", "conv3.weight", "conv3.bias"]))
    assert e.value.one_line() == (
        "no classification head found; the checkpoint ends with conv1, conv2, conv3 (--head); "
        "name the head with --head GLOB, e.g. --head 'conv3'"
    )


def test_two_tables_disagree_so_the_candidates_are_listed():
    with pytest.raises(OperationError) as e:
        detect_head(tree_of(["conv.weight", "last_linear.weight", "fc.weight"]))
    assert e.value.one_line() == (
        "cannot tell which layers are the head, 2 candidates: fc (torchvision); last_linear, fc (timm) (--head); "
        "choose with --head GLOB"
    )


def test_a_known_top_in_the_middle_is_not_taken():
    with pytest.raises(OperationError) as e:
        detect_head(tree_of(["conv1.weight", "fc.weight", "fc.bias", "conv2.weight"]))
    assert e.value.one_line() == (
        "cannot tell which layers are the head, 1 candidates: fc (torchvision/timm, not the last layers) (--head); "
        "choose with --head GLOB"
    )


def test_unknown_family():
    with pytest.raises(OperationError) as e:
        detect_head(tree_of(RESNET), family="yolo")
    assert e.value.one_line() == (
        "unknown head family 'yolo' (--family); use one of: keras-applications, torchvision, timm, ssd"
    )


def test_ssd_heads_are_removed_only_when_asked():
    tree = load(SSD)
    with pytest.raises(OperationError) as e:
        detect_head(tree)
    assert e.value.fix.endswith("or remove the ssd head with --family ssd")
    head = detect_head(tree, family="ssd")
    assert {layer.rsplit("_", 2)[-2:][0] for layer in head.layers} == {"mbox"}
    assert len(head.layers) == 12 and all(t.endswith(("/kernel", "/bias")) for t in head.tensors)


# -- the operations ------------------------------------------------------------------


def test_strip_head_shares_the_kept_entries_and_records_itself():
    tree = tree_of(RESNET)
    new, report = strip_head(tree)
    assert list(new) == RESNET[:-2]
    assert all(new[n] is tree[n] for n in new)
    assert report.names("dropped") == ["fc.weight", "fc.bias"]
    assert report.changes[0].before == "[3, 2] float32"
    assert history(new)[-1]["op"] == "strip-head" and history(new)[-1]["layers"] == ["fc"]
    assert list(tree) == RESNET  # the input is untouched


def test_removing_every_tensor_is_refused():
    with pytest.raises(OperationError) as e:
        strip_head(tree_of(["fc.weight", "fc.bias"]))
    assert e.value.one_line() == "removing the layers from fc on would leave no tensors (--head); choose fewer layers"


def test_truncate_after_a_module_keeps_all_of_it():
    new, report = truncate(tree_of(RESNET), "layer1")
    assert list(new) == RESNET[:8]
    assert report.facts["after"] == "layer1.0.bn1"
    assert report.facts["removed_layers"] == ["layer2.0.conv1", "layer2.0.downsample.0", "fc"]


def test_truncate_follows_the_keras_layer_list_with_weightless_layers():
    tree = load(SSD)
    order = layer_order(tree)
    new, report = truncate(tree, "conv6_2")
    assert layer_order(new) == order[: order.index("conv6_2") + 1]
    assert json.loads(new.format_state["keras.layer_names"]) == order[: order.index("conv6_2") + 1]


def test_truncate_unknown_layer_suggests_the_nearest():
    with pytest.raises(OperationError) as e:
        truncate(tree_of(RESNET), "layer9")
    assert e.value.one_line() == "no layer named 'layer9' (--after); nearest names: layer2, layer1, layer2.0"


# -- the commands --------------------------------------------------------------------


def test_cli_strip_head_lists_every_removed_tensor(resnet, tmp_path):
    before = digest(resnet)
    out = tmp_path / "backbone.safetensors"
    result = run("strip-head", resnet, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "head: known torchvision/timm top: fc",
        "removed 1 layers: fc",
        "  fc.weight  [3, 2] float32",
        "  fc.bias  [3, 2] float32",
        f"wrote {out} (safetensors, 10 tensors kept, 2 removed)",
    ]
    assert list(load(out)) == RESNET[:-2]
    assert digest(resnet) == before


def test_cli_dry_run_writes_nothing(resnet, tmp_path):
    out = tmp_path / "backbone.safetensors"
    result = run("strip-head", resnet, "-o", out, "--dry-run")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == f"would write {out} (safetensors, 10 tensors kept, 2 removed)"
    assert list(tmp_path.iterdir()) == [resnet]


def test_cli_json(resnet, tmp_path):
    result = run("strip-head", resnet, "-o", tmp_path / "b.safetensors", "--json", "--dry-run")
    document = json.loads(result.stdout)
    assert document["head"] == {"layers": ["fc"], "tensors": ["fc.weight", "fc.bias"], "why": "known torchvision/timm top: fc"}
    assert document["removed_tensors"] == [{"name": "fc.weight", "was": "[3, 2] float32"}, {"name": "fc.bias", "was": "[3, 2] float32"}]
    assert document["removed_layers"] == ["fc"] and document["kept_tensors"] == 10 and document["dry_run"] is True


def test_cli_head_matching_nothing(resnet, tmp_path):
    result = run("strip-head", resnet, "-o", tmp_path / "b.safetensors", "--head", "nope*", "--head", "head.?")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: --head nope* head.? matches no layer or tensor (--head); list the names with `surgery inspect`; "
        "globs are case-sensitive and '*' crosses '/' and '.'"
    )


def test_cli_no_head_found(tmp_path):
    path = tmp_path / "convs.safetensors"
    save(tree_of(["conv1.weight", "conv2.weight"]), path)
    result = run("strip-head", path, "-o", tmp_path / "b.safetensors")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: no classification head found; the checkpoint ends with conv1, conv2 (--head); "
        "name the head with --head GLOB, e.g. --head 'conv2'"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convs.safetensors"]


def test_cli_ambiguous_head(tmp_path):
    path = tmp_path / "m.safetensors"
    save(tree_of(["conv.weight", "last_linear.weight", "fc.weight"]), path)
    result = run("strip-head", path, "-o", tmp_path / "b.safetensors")
    assert error_line(result) == (
        "error: cannot tell which layers are the head, 2 candidates: fc (torchvision); last_linear, fc (timm) "
        "(--head); choose with --head GLOB"
    )


def test_cli_truncate_unknown_layer(resnet, tmp_path):
    result = run("truncate", resnet, "-o", tmp_path / "t.safetensors", "--after", "layr2")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: no layer named 'layr2' (--after); nearest names: layer2, layer2.0, layer1"
    )


def test_cli_truncate_json_and_dry_run(resnet, tmp_path):
    out = tmp_path / "t.safetensors"
    result = run("truncate", resnet, "-o", out, "--after", "layer1", "--json", "--dry-run")
    document = json.loads(result.stdout)
    assert document["after"] == "layer1.0.bn1"
    assert [r["name"] for r in document["removed_tensors"]] == RESNET[8:]
    assert not out.exists()


def test_cli_keras_ssd_family_keeps_the_layer_list_consistent(tmp_path):
    out = tmp_path / "base.h5"
    result = run("strip-head", SSD, "-o", out, "--family", "ssd", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert len(document["removed_tensors"]) == 24 and len(document["removed_layers"]) == 12
    original = layer_order(load(SSD))
    written = load(out)
    assert layer_order(written) == [n for n in original if n not in document["removed_layers"]]
    assert not any("mbox_conf" in n or "mbox_loc" in n for n in written)
    assert "model_config" not in written.metadata  # a weights file stays a weights file
