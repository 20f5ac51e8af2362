"""Class surgery and cuts inside ONNX graphs, judged by onnxruntime and the ONNX checker.

The RetinaFace-style model is exported here by real torch.onnx (TorchScript exporter, dynamic
batch: its Reshapes take Concat(Shape(x)[0], -1, K)); smaller graphs are built with onnx.helper.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

import onnx  # noqa: E402
from helpers import error_line, run  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_graph_models import (  # noqa: E402
    INPUT_SHAPE,
    check,
    conv_head_model,
    export,
    node_named,
    retinaface_module,
    run_model,
    seeded_input,
    softmax_input,
)

import surgery  # noqa: E402
from surgery.ops.classes import resample_classes  # noqa: E402

pytestmark = pytest.mark.interop

HEAD = ["--layers", "class_head*", "--source-classes", "2"]


@pytest.fixture(scope="module")
def retina(tmp_path_factory):
    return export(retinaface_module(), tmp_path_factory.mktemp("retina") / "retina.onnx")


@pytest.fixture(scope="module")
def original(retina):
    return run_model(retina, {"input": seeded_input()}, extra=(softmax_input(retina),))


# -- class surgery -------------------------------------------------------------------


def test_upsample_retinaface_keeps_old_logits_exactly(retina, original, tmp_path):
    out = tmp_path / "three.onnx"
    result = run("upsample", retina, "-o", out, "--num-classes", "3", *HEAD, "--init", "zeros")
    assert result.exit_code == 0, result.stderr
    batch = _declared(retina)["conf"][0]  # the exporter names the Softmax output's batch dim itself
    assert f"graph: output conf: [{batch}, 640, 2] -> [{batch}, 640, 3]" in result.stdout
    check(out)
    logits = softmax_input(out)
    edited = run_model(out, {"input": seeded_input()}, extra=(logits,))
    assert edited["conf"].shape == (1, 640, 3)
    old = original[softmax_input(retina)]
    assert np.array_equal(edited[logits][..., :2], old)  # exact: onnxruntime rounds 6 channels as it rounds 4
    assert np.array_equal(edited[logits][..., 2], np.zeros((1, 640), np.float32))
    for name in ("loc", "landms"):
        assert np.array_equal(edited[name], original[name])
    assert _declared(out)["conf"] == [batch, 640, 3]


def _declared(path) -> dict[str, list]:
    return {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in onnx.load(str(path)).graph.output}


def test_subsample_swaps_the_logits_exactly_and_leaves_other_outputs(retina, original, tmp_path):
    out = tmp_path / "swapped.onnx"
    result = run("subsample", retina, "-o", out, "--classes", "1,0", *HEAD, "--verify")
    assert result.exit_code == 0, result.stderr
    assert "verified: 8 kept channels in 2 layers, largest |difference| 0" in result.stdout
    check(out)
    edited = run_model(out, {"input": seeded_input()})
    assert np.array_equal(edited["conf"], original["conf"][..., ::-1])
    for name in ("loc", "landms"):
        assert np.array_equal(edited[name], original[name])


def test_subsample_to_one_class_rewrites_the_reshape(retina, original, tmp_path):
    out = tmp_path / "faces.onnx"
    result = run("subsample", retina, "-o", out, "--classes", "1", *HEAD)
    assert result.exit_code == 0, result.stderr
    check(out)
    edited = run_model(out, {"input": seeded_input()}, extra=(softmax_input(out),))
    assert np.array_equal(edited[softmax_input(out)][..., 0], original[softmax_input(retina)][..., 1])


def test_dry_run_verify_in_runtime_writes_nothing(retina, tmp_path):
    out = tmp_path / "never.onnx"
    result = run("upsample", retina, "-o", out, "--num-classes", "4", *HEAD, "--verify", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    assert not out.exists()
    import json

    rows = json.loads(result.stdout)["verify"]
    assert [(r["layer"], r["compared"], r["channels"], r["max_abs_diff"]) for r in rows] == [("class_head.0", 4, 8, 0.0), ("class_head.1", 4, 8, 0.0)]


def test_gather_of_a_fixed_class_is_refused(tmp_path):
    path = export(retinaface_module(pick_class=1), tmp_path / "face_score.onnx")
    gather = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gather" and n.input[0] == "/Softmax_output_0")
    result = run("subsample", path, "-o", tmp_path / "out.onnx", "--classes", "1,0", *HEAD)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: cannot carry the class change through node {gather} (Gather): it gathers fixed indices along the class axis (axis 2), "
        f"which the edit renumbers ({gather}); cut the graph before it with `surgery truncate --after VALUE`, or pick the classes in your own code"
    )
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("held_by", ["initializer", "Constant node"])
def test_shared_shape_constant_gets_a_copy_for_the_class_head(tmp_path, held_by):
    # 4 classes: the class and the bbox Reshapes both read a [.., 4] shape; only the class one may change.
    # An initializer is a tree entry (copied in the tree); a small Constant lives in the graph (copied there).
    weight, bias = np.arange(24 * 3, dtype=np.float32).reshape(24, 3) / 50, np.arange(24, dtype=np.float32) / 10
    model = conv_head_model(2, 4, weight[:8], bias[:8])
    g = model.graph
    g.node.extend([
        helper.make_node("Conv", ["x", "box.weight", "box.bias"], ["box_nchw"], name="box", kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["box_nchw"], ["box_nhwc"], name="box_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["box_nhwc", "conf_shape"], ["loc"], name="box_per_anchor"),
    ])
    g.initializer.extend([numpy_helper.from_array(weight[8:16].reshape(8, 3, 1, 1), "box.weight"), numpy_helper.from_array(bias[8:16], "box.bias")])
    g.output.append(helper.make_tensor_value_info("loc", TensorProto.FLOAT, [1, 32, 4]))
    if held_by == "Constant node":
        shape = next(t for t in g.initializer if t.name == "conf_shape")
        g.node.insert(0, helper.make_node("Constant", [], ["conf_shape"], name="shape", value=shape))
        g.initializer.remove(shape)
    src = tmp_path / "shared.onnx"
    onnx.save(model, str(src))
    tree = surgery.load(src)
    edited, report = resample_classes(tree, [0, 2, 3], layer_globs=["head"], layout="anchor-major", anchors=2)
    out = tmp_path / "out.onnx"
    surgery.save(edited, out)
    check(out)
    assert "graph: constant conf_shape_classes: a copy of conf_shape (which other nodes share) holding [1, -1, 3]" in report.notes
    x = {"x": seeded_input(shape=(1, 3, 4, 4))}
    before, after = run_model(src, x, extra=("logits",)), run_model(out, x, extra=("logits",))
    assert np.array_equal(after["loc"], before["loc"])
    assert np.array_equal(after["logits"], before["logits"][..., [0, 2, 3]])


def _split_slice_model(split_sizes: list[int] | None) -> onnx.ModelProto:
    """YOLO-like: one anchor of 5 fields + 3 classes on the last axis, split into box/obj/classes and sliced."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "det.weight"], ["raw"], name="det"),
        helper.make_node("Add", ["raw", "det.bias"], ["pred"], name="det_bias"),
        helper.make_node("Split", ["pred", "sizes"], ["box", "obj", "cls"], name="split", axis=-1),
        helper.make_node("Sigmoid", ["cls"], ["scores"], name="scores"),
        helper.make_node("Slice", ["pred", "starts", "ends", "axes"], ["tail"], name="tail"),
    ]
    graph = helper.make_graph(
        nodes,
        "fields",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, d]) for n, d in (("box", 4), ("obj", 1), ("scores", 3), ("tail", 4))],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((6, 8)).astype(np.float32), "det.weight"),
            numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "det.bias"),
            numpy_helper.from_array(np.array(split_sizes or [4, 1, 3], np.int64), "sizes"),
            numpy_helper.from_array(np.array([4], np.int64), "starts"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "ends"),
            numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_split_sizes_and_slice_bounds_follow_a_yolo_style_head(tmp_path):
    src = tmp_path / "fields.onnx"
    onnx.save(_split_slice_model(None), str(src))
    tree = surgery.load(src)
    edited, report = resample_classes(tree, [2, 0, 0, 1], layer_globs=["det"], layout="anchor-major-fields", fields=5, anchors=1)
    assert tree["det.weight"].shape == (6, 8) and edited["det.weight"].shape == (6, 9)  # MatMul B: class axis -1
    assert report.notes[-4:] == [
        "graph: Split split: sizes [4, 1, 3] -> [4, 1, 4]",
        "graph: Slice tail: class axis [4, 8) -> [4, 9)",
        "graph: output scores: [2, 3] -> [2, 4]",
        "graph: output tail: [2, 4] -> [2, 5]",
    ]
    out = tmp_path / "out.onnx"
    surgery.save(edited, out)
    check(out)
    x = {"x": seeded_input(shape=(2, 6))}
    before, after = run_model(src, x), run_model(out, x)
    assert np.array_equal(after["box"], before["box"]) and np.array_equal(after["obj"], before["obj"])
    assert np.array_equal(after["scores"], before["scores"][:, [2, 0, 0, 1]])
    assert np.array_equal(after["tail"], before["tail"][:, [0, 3, 1, 1, 2]])  # obj, then the classes


def test_split_inside_the_classes_is_refused(tmp_path):
    src = tmp_path / "fields.onnx"
    onnx.save(_split_slice_model([4, 2, 2]), str(src))
    with pytest.raises(surgery.errors.OperationError) as caught:
        resample_classes(surgery.load(src), [0, 1], layer_globs=["det"], layout="anchor-major-fields", fields=5, anchors=1)
    assert str(caught.value) == (
        "cannot carry the class change through node split (Split): it takes the numbers 4..5 of a class axis of 8, "
        "a fixed range of classes (split); cut the graph before it with `surgery truncate --after VALUE` and do that step in your own code"
    )


def test_concat_with_an_unedited_head_is_refused(tmp_path):
    weight, bias = np.ones((4, 3), np.float32), np.zeros(4, np.float32)
    model = conv_head_model(2, 2, weight, bias)
    g = model.graph
    g.node.extend([
        helper.make_node("Conv", ["x", "other.weight", "other.bias"], ["other_nchw"], name="other", kernel_shape=[1, 1]),
        helper.make_node("Concat", ["logits_nchw", "other_nchw"], ["both"], name="join", axis=0),
    ])
    g.initializer.extend([numpy_helper.from_array(weight.reshape(4, 3, 1, 1), "other.weight"), numpy_helper.from_array(bias, "other.bias")])
    g.output.append(helper.make_tensor_value_info("both", TensorProto.FLOAT, None))
    src = tmp_path / "join.onnx"
    onnx.save(model, str(src))
    with pytest.raises(surgery.errors.OperationError) as caught:
        resample_classes(surgery.load(src), [1], layer_globs=["head"], layout="anchor-major", anchors=2)
    assert str(caught.value) == (
        "cannot carry the class change through node join (Concat): its input other_nchw is not part of the class edit but must agree "
        "with it on axis 1 (join); cut the graph before it with `surgery truncate --after VALUE` and do that step in your own code, "
        "or add its layer with --layers"
    )


def test_gemm_classifier_class_axis_comes_from_the_node(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 5)).eval()
    src = tmp_path / "mlp.onnx"
    torch.onnx.export(module, (torch.zeros(2, 3, 2, 2),), str(src), dynamo=False, input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    assert next(n for n in onnx.load(str(src)).graph.node if n.op_type == "Gemm").attribute[-1].name == "transB"
    out = tmp_path / "mlp3.onnx"
    result = run("subsample", src, "-o", out, "--classes", "4,0,2", "--layers", "3", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "graph: output logits: [n, 5] -> [n, 3]" in result.stdout
    check(out)
    x = {"x": seeded_input(shape=(2, 3, 2, 2))}
    assert np.array_equal(run_model(out, x)["logits"], run_model(src, x)["logits"][:, [4, 0, 2]])


# -- cuts ----------------------------------------------------------------------------


def test_truncate_after_a_value_gives_that_single_output(retina, tmp_path):
    features = "/Relu_1_output_0"
    out = tmp_path / "body.onnx"
    result = run("truncate", retina, "-o", out, "--after", features, "--json")
    assert result.exit_code == 0, result.stderr
    check(out)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == [features]
    assert {t.name for t in model.graph.initializer} == {"body.weight", "body.bias", "down.weight", "down.bias"}
    assert [o.domain for o in model.opset_import] == [""]
    x = {"input": seeded_input()}
    assert np.array_equal(run_model(out, x)[features], run_model(retina, x, extra=(features,))[features])
    import json

    document = json.loads(result.stdout)
    assert document["kept_tensors"] == 4 and len(document["removed_tensors"]) == 12
    assert {"name": "/class_head.0/Conv", "op": "Conv"} in document["removed_nodes"]


def test_truncate_after_a_node_name(retina, tmp_path):
    out = tmp_path / "logits.onnx"
    concat = node_named(retina, "Softmax")
    result = run("truncate", retina, "-o", out, "--after", concat)
    assert result.exit_code == 0, result.stderr
    check(out)
    x = {"input": seeded_input()}
    assert np.array_equal(run_model(out, x)["conf"], run_model(retina, x)["conf"])
    assert {t.name for t in onnx.load(str(out)).graph.initializer} == {"body.weight", "body.bias", "down.weight", "down.bias", "class_head.0.weight", "class_head.0.bias", "class_head.1.weight", "class_head.1.bias"}


def test_truncate_unknown_name_suggests_the_nearest(retina, tmp_path):
    result = run("truncate", retina, "-o", tmp_path / "x.onnx", "--after", "/Relu_9")
    assert result.exit_code == 1
    assert error_line(result) == "error: no node or value named '/Relu_9' (--after); nearest names: /Relu_1, /Relu, /Relu_output_0"


def test_strip_head_cuts_before_the_class_head(retina, tmp_path):
    out = tmp_path / "no_conf.onnx"
    result = run("strip-head", retina, "-o", out, "--head", "class_head*")
    assert result.exit_code == 0, result.stderr
    assert "head: --head class_head*: 2 layers, 4 tensors" in result.stdout
    check(out)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["loc", "landms", "/Relu_output_0", "/Relu_1_output_0"]
    assert not [t.name for t in model.graph.initializer if t.name.startswith("class_head")]
    x = {"input": seeded_input()}
    before, after = run_model(retina, x, extra=("/Relu_output_0", "/Relu_1_output_0")), run_model(out, x)
    for name in after:
        assert np.array_equal(after[name], before[name])


def test_strip_head_of_a_classifier_by_the_table(tmp_path):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return torch.softmax(self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)), -1)

    src = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 8, 8),), str(src), dynamo=False, input_names=["x"], output_names=["p"])
    out = tmp_path / "body.onnx"
    result = run("strip-head", src, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    check(out)
    model = onnx.load(str(out))
    flatten = next(n.output[0] for n in onnx.load(str(src)).graph.node if n.op_type == "Flatten")
    assert [o.name for o in model.graph.output] == [flatten]
    x = {"x": seeded_input(shape=(1, 3, 8, 8))}
    assert np.array_equal(run_model(out, x)[flatten], run_model(src, x, extra=(flatten,))[flatten])
    assert sorted(t.name for t in model.graph.initializer) == ["features.bias", "features.weight"]


@pytest.mark.slow  # torch's dynamo exporter takes seconds to start
def test_dynamo_export_with_external_data_and_a_shape_shared_with_the_box_head(tmp_path):
    # 4 classes and 4 box numbers: the dynamo exporter gives the class and box Reshapes one shape initializer.
    src = export(retinaface_module(classes=4), tmp_path / "retina4.onnx", dynamo=True)
    assert (tmp_path / "retina4.onnx.data").exists()
    out = tmp_path / "two.onnx"
    result = run("subsample", src, "-o", out, "--classes", "3,1", "--layers", "class_head*", "--source-classes", "4", "--verify")
    assert result.exit_code == 0, result.stderr
    assert "a copy of" in result.stdout and "(which other nodes share) holding [1, -1, 2]" in result.stdout
    check(out)
    x = {"input": seeded_input()}
    logits = softmax_input(src)
    before, after = run_model(src, x, extra=(logits,)), run_model(out, x, extra=(softmax_input(out),))
    assert np.array_equal(after[softmax_input(out)], before[logits][..., [3, 1]])
    for name in ("loc", "landms"):
        assert np.array_equal(after[name], before[name])


def test_layers_may_name_the_nodes(retina, tmp_path):
    result = run("subsample", retina, "-o", tmp_path / "x.onnx", "--classes", "1,0", "--source-classes", "2", "--layers", "/class_head.*/Conv", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "class_head.0: chosen by --layers /class_head.*/Conv; 4 channels = 2 anchors × 2 (classes from --source-classes)" in result.stdout
    assert "class_head.1: chosen by --layers /class_head.*/Conv" in result.stdout


def _export_and_subsample(tmp_path, module, shape, input_name, output_name, *options, dynamic_axes=None):
    """Export `module` with the TorchScript exporter, then `subsample ... --verify` it: (source, output, result)."""
    import torch

    src, out = tmp_path / "model.onnx", tmp_path / "edited.onnx"
    torch.onnx.export(module.eval(), (torch.zeros(shape),), str(src), dynamo=False, input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic_axes, opset_version=17)
    result = run("subsample", src, "-o", out, *options, "--verify")
    assert result.exit_code == 0, result.stderr
    return src, out, result


def test_torchvision_style_reshape_of_the_nchw_conv_output(tmp_path):
    # torchvision's RetinaNet: one cls_logits conv shared by every feature map, each output
    # view(N, -1, K, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, K) (H and W read from its shape), then cat.
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Conv2d(3, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.cls_logits = nn.Conv2d(8, 3 * 4, 3, padding=1)

        def forward(self, x):
            f1 = torch.relu(self.body(x))
            outs = []
            for f in (f1, torch.relu(self.down(f1))):
                y = self.cls_logits(f)
                n, _, h, w = y.shape
                outs.append(y.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            return torch.cat(outs, 1)

    src, out, result = _export_and_subsample(tmp_path, Head(), (1, 3, 8, 8), "x", "cls", "--classes", "3,1", "--anchors", "3", dynamic_axes={"x": {0: "n"}})
    assert "cls_logits: retinanet head (classes: *cls_logits)" in result.stdout
    assert "graph: output cls: [Concatcls_dim_0, 240, 4] -> [Concatcls_dim_0, 240, 2]" in result.stdout  # the exporter names the dim
    check(out)
    x = {"x": seeded_input(shape=(1, 3, 8, 8))}
    assert np.array_equal(run_model(out, x)["cls"], run_model(src, x)["cls"][..., [3, 1]])


def test_constant_only_head_is_edited_in_its_constant_nodes(tmp_path):
    # Paddle2ONNX keeps weights in Constant nodes; the shape vector is a small Constant the graph itself holds.
    rng = np.random.default_rng(3)
    model = conv_head_model(2, 3, rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(6).astype(np.float32))
    g = model.graph
    constants = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in g.initializer]
    del g.initializer[:]
    for node in reversed(constants):
        g.node.insert(0, node)
    src = tmp_path / "constants.onnx"
    onnx.save(model, str(src))
    tree = surgery.load(src)
    assert sorted(tree) == ["head.bias", "head.weight"]  # conf_shape is graph structure, not a weight
    edited, _ = resample_classes(tree, [2, 0], layer_globs=["head"], layout="anchor-major", anchors=2)
    out = tmp_path / "out.onnx"
    surgery.save(edited, out)
    check(out)
    shape_node = next(n for n in onnx.load(str(out)).graph.node if n.output[0] == "conf_shape")
    assert numpy_helper.to_array(shape_node.attribute[0].t).tolist() == [1, -1, 2]
    x = {"x": seeded_input(shape=(1, 3, 4, 4))}
    assert np.array_equal(run_model(out, x, extra=("logits",))["logits"], run_model(src, x, extra=("logits",))["logits"][..., [2, 0]])


def test_yolov5_style_detect_head_split_and_concat_of_fields(tmp_path):
    # YOLOv5's Detect: view(bs, na, no, ny, nx).permute(...), split((2, 2, nc + 1), 4), cat((xy, wh, conf), 4), view(bs, -1, no).
    import torch
    from torch import nn

    class Detect(nn.Module):
        def __init__(self, nc: int = 3, na: int = 2) -> None:
            super().__init__()
            self.nc, self.na, self.no = nc, na, nc + 5
            self.m = nn.ModuleList(nn.Conv2d(8, na * self.no, 1) for _ in range(2))
            self.register_buffer("grid", torch.randn(2, 1, na, 4, 4, 2))

        def forward(self, feats):
            z = []
            for i, x in enumerate(feats):
                x = self.m[i](x)
                bs, _, ny, nx = x.shape
                y = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous().sigmoid()
                xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
                z.append(torch.cat((xy * 2 + self.grid[i], (wh * 2) ** 2, conf), 4).view(bs, -1, self.no))
            return torch.cat(z, 1)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), Detect()])

        def forward(self, x):
            a = torch.relu(self.model[0](x))
            return self.model[2]([a, torch.relu(self.model[1](a))])

    src, out, result = _export_and_subsample(tmp_path, Model(), (1, 3, 4, 4), "images", "output0", "--classes", "2,0", "--anchors", "2")
    assert "model.2.m.0: yolo head (classes: model.*.m.*)" in result.stdout
    assert "graph: Split /model.2/Split: sizes [2, 2, 4] -> [2, 2, 3]" in result.stdout
    check(out)
    x = {"images": seeded_input(shape=(1, 3, 4, 4))}
    before, after = run_model(src, x)["output0"], run_model(out, x)["output0"]
    assert after.shape == (1, 64, 7)
    assert np.array_equal(after, before[..., [0, 1, 2, 3, 4, 7, 5]])  # box, objectness, then classes 2 and 0


def test_an_operator_without_a_rule_is_refused_by_name(tmp_path):
    model = conv_head_model(1, 3, np.ones((3, 3), np.float32), np.zeros(3, np.float32))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "k"))
    g.node.append(helper.make_node("TopK", ["logits", "k"], ["top", "top_index"], name="best_two", axis=-1))
    g.output.append(helper.make_tensor_value_info("top", TensorProto.FLOAT, None))
    src = tmp_path / "topk.onnx"
    onnx.save(model, str(src))
    with pytest.raises(surgery.errors.OperationError) as caught:
        resample_classes(surgery.load(src), [0, 1], layer_globs=["head"], source_classes=3)
    assert str(caught.value) == (
        "cannot carry the class change through node best_two (TopK): surgery has no rule for this operator on the class axis "
        "(best_two); cut the graph before it with `surgery truncate --after VALUE` and do that step in your own code"
    )


def test_weights_listed_as_graph_inputs_follow_the_edit_and_the_cut(tmp_path):
    # keep_initializers_as_inputs=True (IR < 4 style): every weight is also a declared graph input.
    import torch

    src = tmp_path / "as_inputs.onnx"
    torch.onnx.export(retinaface_module(), (torch.zeros(INPUT_SHAPE),), str(src), dynamo=False, input_names=["input"], output_names=["loc", "conf", "landms"], opset_version=11, keep_initializers_as_inputs=True)
    up = tmp_path / "up.onnx"
    assert run("upsample", src, "-o", up, "--num-classes", "3", *HEAD).exit_code == 0
    check(up)
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(str(up)).graph.input}
    assert declared["class_head.0.weight"] == [6, 8, 1, 1] and declared["class_head.0.bias"] == [6]
    assert run_model(up, {"input": seeded_input()})["conf"].shape == (1, 640, 3)
    body = tmp_path / "body.onnx"
    assert run("truncate", src, "-o", body, "--after", "/Relu_1_output_0").exit_code == 0
    check(body)
    model = onnx.load(str(body))
    assert [i.name for i in model.graph.input] == ["input", "body.weight", "body.bias", "down.weight", "down.bias"]
    assert [t.name for t in model.graph.initializer] == ["body.weight", "body.bias", "down.weight", "down.bias"]


def test_anonymous_matmul_weight_is_chosen_by_its_node_name(tmp_path):
    # A Linear on 3-D input exports as MatMul(x, onnx::MatMul_N) + Add(class_embed.bias): the weight's name holds no layer.
    import torch
    from torch import nn

    class Queries(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.proj = nn.Linear(6, 8)
            self.class_embed = nn.Linear(8, 5)

        def forward(self, x):
            return self.class_embed(torch.relu(self.proj(x))).softmax(-1)

    src = tmp_path / "queries.onnx"
    torch.onnx.export(Queries().eval(), (torch.zeros(1, 10, 6),), str(src), dynamo=False, input_names=["x"], output_names=["probs"])
    weight = next(n.input[1] for n in onnx.load(str(src)).graph.node if n.name == "/class_embed/MatMul")
    assert weight.startswith("onnx::MatMul_")
    bias_only = run("subsample", src, "-o", tmp_path / "no.onnx", "--classes", "4,0", "--layers", "class_embed")
    assert error_line(bias_only) == (
        "error: cannot carry the class change through node /class_embed/Add (Add): its input /class_embed/MatMul_output_0 has 5 "
        "on the class axis and is not part of the edit (/class_embed/Add); add the layer that makes it with --layers "
        "(a node name works: --layers '/class_embed/MatMul')"
    )
    out = tmp_path / "two.onnx"
    result = run("subsample", src, "-o", out, "--classes", "4,0", "--layers", "class_embed", "--layers", "/class_embed/MatMul", "--verify")
    assert result.exit_code == 0, result.stderr
    assert f"/class_embed/MatMul: chosen by --layers /class_embed/MatMul (the node's weights {weight}); 5 channels" in result.stdout
    assert "verified: 4 kept channels in 2 layers, largest |difference| 0" in result.stdout
    check(out)
    x = {"x": seeded_input(shape=(1, 10, 6))}
    logits = "/class_embed/Add_output_0"
    assert np.array_equal(run_model(out, x, extra=(logits,))[logits], run_model(src, x, extra=(logits,))[logits][..., [4, 0]])
