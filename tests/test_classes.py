"""Class-axis surgery by example: the tutorial's numbers, exact error messages, and nothing
written after an error."""

from __future__ import annotations

import json

import numpy as np
import pytest

import surgery
from conftest import FIXTURES
from helpers import digest, error_line, leftovers, run
from surgery.errors import OperationError
from surgery.ops.classes import channel_map, parse_classes, plan_classes, resample_classes, verify
from surgery.tree import KERAS, TORCH, Entry, Tree

SSD = FIXTURES / "ssd300_coco_tiny.h5"
SSD3 = FIXTURES / "ssd300_coco_tiny.weights.h5"
ROAD = "0,3,8,1,2,10,4,6,12"
TUTORIAL_4_ANCHORS = [0, 3, 8, 1, 2, 10, 4, 6, 12, 81, 84, 89, 82, 83, 91, 85, 87, 93, 162, 165, 170, 163, 164,
                      172, 166, 168, 174, 243, 246, 251, 244, 245, 253, 247, 249, 255]


def ssd_tree(in_channels=512, dtype="float32") -> Tree:
    """A Keras-layout SSD conf/loc pair with the tutorial's shapes."""
    rng = np.random.default_rng(0)
    arrays = {
        "conv4_3_norm_mbox_conf/kernel": rng.standard_normal((3, 3, in_channels, 324)).astype(dtype),
        "conv4_3_norm_mbox_conf/bias": rng.standard_normal(324).astype(dtype),
        "conv4_3_norm_mbox_loc/kernel": rng.standard_normal((3, 3, in_channels, 16)).astype(dtype),
        "conv4_3_norm_mbox_loc/bias": rng.standard_normal(16).astype(dtype),
    }
    return Tree([Entry.from_array(k, v) for k, v in arrays.items()], convention=KERAS)


def test_tutorial_index_list_for_four_anchors():
    assert channel_map("anchor-major", 81, 4, parse_classes(ROAD)) == TUTORIAL_4_ANCHORS


def test_tutorial_shapes_and_values():
    tree = ssd_tree()
    new, report = resample_classes(tree, parse_classes(ROAD), anchors=4)
    kernel, bias = new["conv4_3_norm_mbox_conf/kernel"], new["conv4_3_norm_mbox_conf/bias"]
    assert kernel.shape == (3, 3, 512, 36) and bias.shape == (36,)
    assert kernel.dtype == "float32" and kernel.read().dtype == np.float32  # never float64
    np.testing.assert_array_equal(kernel.read(), tree["conv4_3_norm_mbox_conf/kernel"].read()[..., TUTORIAL_4_ANCHORS])
    np.testing.assert_array_equal(bias.read(), tree["conv4_3_norm_mbox_conf/bias"].read()[TUTORIAL_4_ANCHORS])
    assert new["conv4_3_norm_mbox_loc/kernel"] is tree["conv4_3_norm_mbox_loc/kernel"]  # untouched, shared
    assert new.metadata["surgery.num_classes"] == "9"
    assert json.loads(new.metadata["surgery.source_classes"]) == [0, 3, 8, 1, 2, 10, 4, 6, 12]
    assert report.facts["num_classes"] == 9


def test_anchors_inferred_from_paired_loc_layer():
    plan = plan_classes(ssd_tree(8), parse_classes("0,1"))
    assert plan.source_classes == 81 and plan.layers[0].anchors == 4
    assert "4 anchors from conv4_3_norm_mbox_loc" in plan.layers[0].why


def test_the_founding_command_on_the_ssd300_fixture(tmp_path):
    out = tmp_path / "road.h5"
    result = run("subsample", SSD, "-o", out, "--classes", ROAD, "--anchors", "4", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "fc7_mbox_conf: ssd head (classes: *_mbox_conf); 486 channels = 6 anchors × 81; resolved to 6 anchors " \
           "because --anchors 4 does not fit 486 channels of 81 classes" in result.stdout
    assert "verified: 270 kept channels in 6 layers, largest |difference| 0" in result.stdout
    assert result.stdout.rstrip().endswith("Build the model with 9 classes (background included).")
    tree, source = surgery.load(out), surgery.load(SSD)
    expected = {"conv4_3_norm": 36, "fc7": 54, "conv6_2": 54, "conv7_2": 54, "conv8_2": 36, "conv9_2": 36}
    for head, channels in expected.items():
        assert tree[f"{head}_mbox_conf/kernel"].shape == (3, 3, 4, channels)
        assert tree[f"{head}_mbox_conf/bias"].shape == (channels,)
        np.testing.assert_array_equal(tree[f"{head}_mbox_loc/kernel"].read(), source[f"{head}_mbox_loc/kernel"].read())
    assert list(tree) == list(source)  # same names, same order
    assert tree.metadata["surgery.num_classes"] == "9"


def test_keras3_file_subsamples_with_anchors_from_loc_layers(tmp_path):
    out = tmp_path / "road.weights.h5"
    result = run("subsample", SSD3, "-o", out, "--classes", ROAD, "--json", "--verify")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [layer["anchors"] for layer in doc["layers"]] == [4, 6, 6, 6, 4, 4]
    assert all(row["max_abs_diff"] == 0 for row in doc["verify"])
    assert surgery.load(out)["fc7_mbox_conf/0"].shape == (3, 3, 4, 54)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "road.h5"
    result = run("subsample", SSD, "-o", out, "--classes", ROAD, "--anchors", "4", "--dry-run")
    assert result.exit_code == 0
    assert "  conv4_3_norm_mbox_conf/kernel  [3, 3, 4, 324] -> [3, 3, 4, 36]" in result.stdout
    assert "would write" in result.stdout and not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "0,81", "--anchors", "4"],
         "error: class index 81 is out of range: conv4_3_norm_mbox_conf has 81 classes, so indices run 0..80 "
         "(--classes); use source indices in that range (0 is the background class in SSD heads)"),
        (["--classes", "0,-1", "--anchors", "4"],
         "error: class index -1 is out of range: conv4_3_norm_mbox_conf has 81 classes, so indices run 0..80 "
         "(--classes); use source indices in that range (0 is the background class in SSD heads)"),
        (["--classes", "0,1", "--anchors", "5"],
         "error: --anchors 5 does not divide the channels of any class layer; conv4_3_norm_mbox_conf has 324 "
         "(--anchors); values that fit 324 channels: 1 anchors × 324 classes, 2 anchors × 162 classes, "
         "3 anchors × 108 classes, 4 anchors × 81 classes, 6 anchors × 54 classes, 9 anchors × 36 classes, "
         "12 anchors × 27 classes, 18 anchors × 18 classes; pass --anchors conv4_3_norm_mbox_conf=A or --source-classes K"),
        (["--classes", "0,1", "--anchors", "2"],
         "error: layers disagree on the number of classes: conv4_3_norm_mbox_conf (324 channels, --anchors 2) gives 162 "
         "but fc7_mbox_conf (486 channels, --anchors 2) gives 243 (fc7_mbox_conf); "
         "pass --source-classes K, or --anchors LAYER=A for the layer that differs"),
        (["--classes", "0,1", "--anchors", "fc7_mbox_conf=4"],
         "error: --anchors fc7_mbox_conf=4 does not divide its 486 channels (fc7_mbox_conf); values that fit 486 channels: "
         "1 anchors × 486 classes, 2 anchors × 243 classes, 3 anchors × 162 classes, 6 anchors × 81 classes, "
         "9 anchors × 54 classes, 18 anchors × 27 classes, 27 anchors × 18 classes, 54 anchors × 9 classes; "
         "pass --anchors fc7_mbox_conf=A or --source-classes K"),
        (["--classes", "0,1", "--layers", "nothing_*"],
         "error: --layers nothing_* matches no layer (--layers); list the layers with `surgery inspect`; "
         "globs are case-sensitive and '*' crosses '/' and '.'"),
        (["--classes", "0,new", "--anchors", "4"],
         "error: subsample cannot add classes (--classes); use `surgery upsample` to add new classes"),
        (["--anchors", "4"],
         "error: give either the classes to keep or their number (--classes); pass --classes 0,3,8 or --num-classes N"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    before = digest(SSD)
    out = tmp_path / "out.h5"
    result = run("subsample", SSD, "-o", out, *args)
    assert result.exit_code == 1
    assert error_line(result) == message
    assert not out.exists() and leftovers(tmp_path) == [] and digest(SSD) == before


def test_no_classifier_layer_found(tmp_path):
    path = tmp_path / "plain.safetensors"
    surgery.save(Tree([Entry.from_array("backbone.conv.weight", np.zeros((4, 3, 3, 3), np.float32))], convention=TORCH), path)
    result = run("subsample", path, "-o", tmp_path / "out.safetensors", "--classes", "0")
    assert error_line(result) == (
        "error: no classifier layer found (1 layers); name the layers with --layers GLOB (see `surgery inspect`)"
    )
    assert not (tmp_path / "out.safetensors").exists()


def test_per_layer_anchor_override_and_duplicates_reported():
    tree = ssd_tree(2)
    plan = plan_classes(tree, [0, 3, 3], anchors_per_layer={"conv4_3_norm_mbox_conf": 4})
    assert plan.layers[0].anchors == 4 and "(--anchors conv4_3_norm_mbox_conf=4)" in plan.layers[0].why
    assert plan.notes == ("class 3 is kept 2 times; its weights are copied to each place",)


def test_random_pick_keeps_background_and_is_seeded():
    tree = ssd_tree(2)
    a = plan_classes(tree, num_classes=9, seed=5)
    b = plan_classes(tree, num_classes=9, seed=5)
    c = plan_classes(tree, num_classes=9, seed=6)
    assert a.classes == b.classes != c.classes
    assert a.classes[0] == 0 and list(a.classes) == sorted(a.classes) and len(set(a.classes)) == 9


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_upsample_keeps_old_classes_and_dtype(dtype):
    tree = ssd_tree(2, dtype)
    new, report = resample_classes(tree, num_classes=83, anchors=4, seed=3)
    kernel = new["conv4_3_norm_mbox_conf/kernel"].read()
    old = tree["conv4_3_norm_mbox_conf/kernel"].read()
    assert kernel.shape == (3, 3, 2, 4 * 83) and kernel.dtype == np.dtype(dtype)
    for a in range(4):
        np.testing.assert_array_equal(kernel[..., a * 83 : a * 83 + 81], old[..., a * 81 : (a + 1) * 81])
        fresh = kernel[..., a * 83 + 81 : a * 83 + 83].astype(np.float64)
        assert 0 < fresh.std() < 0.02  # gaussian, std 0.005
    bias = new["conv4_3_norm_mbox_conf/bias"].read()
    assert not bias[81:83].any() and not bias[-2:].any()  # new biases are zero
    again, _ = resample_classes(tree, num_classes=83, anchors=4, seed=3)
    np.testing.assert_array_equal(again["conv4_3_norm_mbox_conf/kernel"].read(), kernel)  # reproducible
    assert "new classes initialised with gaussian (seed 3)" in report.notes


def test_upsample_copy_and_mean_inits():
    tree = ssd_tree(2)
    old_k = tree["conv4_3_norm_mbox_conf/kernel"].read()
    old_b = tree["conv4_3_norm_mbox_conf/bias"].read()
    new, _ = resample_classes(tree, [0, 5, None], anchors=4, init="copy:5")
    k, b = new["conv4_3_norm_mbox_conf/kernel"].read(), new["conv4_3_norm_mbox_conf/bias"].read()
    np.testing.assert_array_equal(k[..., 2], old_k[..., 5])
    np.testing.assert_array_equal(b[5], old_b[81 + 5])  # anchor 1's copy comes from anchor 1
    new, _ = resample_classes(tree, [0, None], anchors=4, init="mean")
    np.testing.assert_allclose(new["conv4_3_norm_mbox_conf/bias"].read()[1], old_b[:81].mean(), rtol=1e-6)


def test_unknown_init_is_refused(tmp_path):
    result = run("upsample", SSD, "-o", tmp_path / "o.h5", "--num-classes", "90", "--init", "he", "--anchors", "4")
    assert result.exit_code == 2
    assert error_line(result) == ("error: invalid value for '--init': unknown --init 'he'; use one of: gaussian, zeros, xavier, "
                                  "mean, copy:<class>; see 'surgery upsample --help'")


def test_upsample_cli_then_verify_old_classes(tmp_path):
    out = tmp_path / "more.h5"
    result = run("upsample", SSD, "-o", out, "--num-classes", "85", "--anchors", "4", "--seed", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert surgery.load(out)["fc7_mbox_conf/kernel"].shape == (3, 3, 4, 6 * 85)
    checked = run("verify", SSD, out, "--num-classes", "85", "--anchors", "4", "--json")
    assert checked.exit_code == 0 and json.loads(checked.stdout)["equal"] is True


def test_verify_catches_a_wrong_edit(tmp_path):
    out = tmp_path / "road.h5"
    assert run("subsample", SSD, "-o", out, "--classes", "0,3", "--anchors", "4", "-q").exit_code == 0
    result = run("verify", SSD, out, "--classes", "0,4", "--anchors", "4")
    assert result.exit_code == 1
    assert "DIFFERENT" in result.stdout
    assert error_line(result).startswith("error: the heads differ at kept classes by up to ")


def test_verify_reports_zero_for_library_plan():
    tree = ssd_tree(3)
    plan = plan_classes(tree, parse_classes(ROAD), anchors=4)
    new, _ = resample_classes(tree, parse_classes(ROAD), anchors=4)
    assert verify(tree, new, plan) == [{"layer": "conv4_3_norm_mbox_conf", "compared": 36, "channels": 36, "max_abs_diff": 0.0}]


def test_torch_convention_uses_axis_zero_and_faster_rcnn_moves_boxes_with_classes():
    rng = np.random.default_rng(1)
    arrays = {
        "roi_heads.box_predictor.cls_score.weight": rng.standard_normal((5, 16)).astype(np.float32),
        "roi_heads.box_predictor.cls_score.bias": rng.standard_normal(5).astype(np.float32),
        "roi_heads.box_predictor.bbox_pred.weight": rng.standard_normal((20, 16)).astype(np.float32),
        "roi_heads.box_predictor.bbox_pred.bias": rng.standard_normal(20).astype(np.float32),
    }
    tree = Tree([Entry.from_array(k, v) for k, v in arrays.items()], convention=TORCH)
    new, _ = resample_classes(tree, [0, 3])
    w = new["roi_heads.box_predictor.bbox_pred.weight"].read()
    np.testing.assert_array_equal(w, arrays["roi_heads.box_predictor.bbox_pred.weight"][[0, 1, 2, 3, 12, 13, 14, 15]])
    np.testing.assert_array_equal(new["roi_heads.box_predictor.cls_score.weight"].read(), arrays["roi_heads.box_predictor.cls_score.weight"][[0, 3]])


def test_unknown_convention_needs_axis():
    tree = Tree([Entry.from_array("head.cls_logits.w", np.zeros((18, 4), np.float32))])
    with pytest.raises(OperationError) as e:
        plan_classes(tree, [0], anchors=9)
    assert e.value.one_line() == (
        "the checkpoint does not say which axis of a weight is its output axis, and the names are neither Keras "
        "(kernel, gamma, moving_mean) nor PyTorch (weight, running_mean) weight names (head.cls_logits); "
        "pass --axis -1 for Keras layout or --axis 0 for PyTorch layout"
    )
    assert plan_classes(tree, [0], anchors=9, axis=0).layers[0].channel_map == (0, 2, 4, 6, 8, 10, 12, 14, 16)


def test_the_class_axis_is_read_from_torch_names():
    tree = Tree([Entry.from_array("head.cls_logits.weight", np.zeros((18, 4), np.float32))])
    plan = plan_classes(tree, [0], anchors=9)
    assert plan.layers[0].channel_map == (0, 2, 4, 6, 8, 10, 12, 14, 16)
    assert plan.notes == ("class axis from the names: the names are PyTorch weight names (head.cls_logits.weight); pass --axis to override",)


def test_yolo_layout_keeps_the_five_fields():
    assert channel_map("anchor-major-fields", 3, 2, [2, 0], fields=5) == [0, 1, 2, 3, 4, 7, 5, 8, 9, 10, 11, 12, 15, 13]
