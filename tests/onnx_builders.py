"""Small ONNX models for the tests, built with onnx's own helpers (and torch.onnx where named)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

onnx = __import__("pytest").importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSET = 25  # Identity takes every tensor type from opset 25 (float8e8m0 too)


def identity_model(tensors: list, *, constants: list | None = None, ir_version: int = 10):
    """A valid model whose graph outputs are each weight through an Identity node.

    `tensors` become initializers and `constants` Constant nodes; every one is used, so the
    checker and onnxruntime see a complete graph for any tensor type.
    """
    nodes, outputs = [], []
    for t in constants or []:
        nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    for t in [*tensors, *(constants or [])]:
        nodes.append(helper.make_node("Identity", [t.name], [f"{t.name}__out"]))
        outputs.append(helper.make_tensor_value_info(f"{t.name}__out", t.data_type, list(t.dims)))
    graph = helper.make_graph(nodes, "weights", [], outputs, initializer=tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=ir_version, producer_name="tests")


def save(model, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def initializer_facts(path: Path) -> list[tuple[str, list[int], str]]:
    """(name, shape, numpy dtype name) of every initializer, as numpy_helper gives them."""
    model = onnx.load_model(str(path))  # loads external data, as a user's script would
    return [(t.name, list(numpy_helper.to_array(t).shape), numpy_helper.to_array(t).dtype.name) for t in model.graph.initializer]


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every initializer's array by numpy_helper (the reference)."""
    model = onnx.load_model(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def matmul_constant_model():
    """A Paddle2ONNX-style model: weights only in Constant nodes, plus a small int64 shape Constant."""
    w = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    b = np.arange(6, dtype=np.float16)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
        helper.make_node("Constant", [], ["b16"], value=helper.make_tensor("b16", TensorProto.FLOAT16, [6], b.tolist())),
        helper.make_node("Cast", ["b16"], ["b"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1], np.int64), "shape")),
        helper.make_node("MatMul", ["x", "W"], ["y0"]),
        helper.make_node("Add", ["y0", "b"], ["y1"]),
        helper.make_node("Reshape", ["y1", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def check(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)
