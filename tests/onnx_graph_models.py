"""Models for the ONNX graph-surgery tests, exported by real torch.onnx or built with onnx.helper,
and a way to run them in onnxruntime with extra outputs (a head's logits before the Softmax)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 16, 16)


def retinaface_module(anchors: int = 2, classes: int = 2, *, pick_class: int | None = None):
    """RetinaFace's head layout: per feature map a 1x1 class conv (anchors x classes), permute to
    NHWC, view(N, -1, classes), concatenated over maps, then Softmax; a bbox and a landmark head
    the same way. `pick_class` returns conf[..., pick_class] instead (a Gather of a fixed class)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RetinaFace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Conv2d(3, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.class_head = nn.ModuleList([nn.Conv2d(8, anchors * classes, 1) for _ in range(2)])
            self.bbox_head = nn.ModuleList([nn.Conv2d(8, anchors * 4, 1) for _ in range(2)])
            self.landmark_head = nn.ModuleList([nn.Conv2d(8, anchors * 10, 1) for _ in range(2)])

        def forward(self, x):
            f1 = F.relu(self.body(x))
            feats = [f1, F.relu(self.down(f1))]

            def run(heads, k):
                outs = []
                for head, f in zip(heads, feats):
                    o = head(f).permute(0, 2, 3, 1).contiguous()
                    outs.append(o.view(o.shape[0], -1, k))
                return torch.cat(outs, 1)

            conf = F.softmax(run(self.class_head, classes), dim=-1)
            if pick_class is not None:
                conf = conf[..., pick_class]
            return run(self.bbox_head, 4), conf, run(self.landmark_head, 10)

    return RetinaFace().eval()


def export(module, path: Path, *, dynamo: bool = False, outputs=("loc", "conf", "landms")) -> Path:
    import torch

    x = torch.zeros(INPUT_SHAPE)
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "dynamic_axes": {"input": {0: "batch"}}, "opset_version": 17}
    torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=list(outputs), **kwargs)
    return path


def seeded_input(seed: int = 0, shape=INPUT_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_model(path: Path, feeds: dict[str, np.ndarray], extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every graph output, plus `extra` values made outputs, by name (onnxruntime, CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    for name in extra:
        model.graph.output.append(onnx.helper.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def softmax_input(path: Path) -> str:
    """The value the (single) Softmax reads: the class logits."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")


def node_named(path: Path, op_type: str) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(n.name for n in model.graph.node if n.op_type == op_type)


def conv_head_model(anchors: int, classes: int, weight: np.ndarray, bias: np.ndarray, *, channels: int = 3, size: int = 4):
    """A one-head graph made with onnx.helper: Conv(anchors x classes) -> Transpose -> Reshape(1, -1, K) -> Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    out_channels = anchors * classes
    nodes = [
        helper.make_node("Conv", ["x", "head.weight", "head.bias"], ["logits_nchw"], name="head", kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["logits_nchw"], ["logits_nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["logits_nhwc", "conf_shape"], ["logits"], name="per_anchor"),
        helper.make_node("Softmax", ["logits"], ["conf"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("conf", TensorProto.FLOAT, [1, size * size * anchors, classes])],
        initializer=[
            numpy_helper.from_array(weight.reshape(out_channels, channels, 1, 1).astype(np.float32), "head.weight"),
            numpy_helper.from_array(bias.reshape(out_channels).astype(np.float32), "head.bias"),
            numpy_helper.from_array(np.array([1, -1, classes], np.int64), "conf_shape"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
