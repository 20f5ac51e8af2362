"""`--verify` for ONNX: run the original and the edited model in onnxruntime and compare.

Each class head's own output (the Conv, Gemm or MatMul output, before any Transpose, Reshape
or Softmax) is made a graph output in both models; one seeded input is fed to both; every
kept channel of the edited head is compared with its source channel of the original. The
pre-activation values are compared because a Softmax over a different class set rightly
changes every probability.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import OperationError
from ..tree import Tree

__all__ = ["verify_in_runtime"]


def verify_in_runtime(original: Path, edited: Path | Tree, plan, *, seed: int = 0) -> list[dict[str, object]]:
    """One row per head layer: channels compared, channels in all, largest |difference|.

    `edited` is the written file, or (for --dry-run) the edited tree, written to a
    temporary folder first.
    """
    if isinstance(edited, Tree):
        from ..io import save

        with tempfile.TemporaryDirectory(prefix="surgery-verify-") as folder:
            path = Path(folder) / "edited.onnx"
            save(edited, path)
            return verify_in_runtime(original, path, plan, seed=seed)
    import onnx

    models = [onnx.load(str(original)), onnx.load(str(edited))]
    heads = [_head_value(models[0], lp) for lp in plan.layers]
    feeds = _seeded_inputs(models[0], seed)
    outputs = [_run(model, [value for value, _ in heads], feeds, path) for model, path in zip(models, (original, edited))]
    rows = []
    for lp, (value, axis), before, after in zip(plan.layers, heads, outputs[0], outputs[1]):
        kept = [(j, c) for j, c in enumerate(lp.channel_map) if isinstance(c, int)]
        new = np.take(after, [j for j, _ in kept], axis=axis).astype(np.float64)
        old = np.take(before, [c for _, c in kept], axis=axis).astype(np.float64)
        worst = float(np.abs(new - old).max(initial=0.0))
        rows.append({"layer": lp.layer, "compared": len(kept), "channels": lp.new_channels, "max_abs_diff": worst, "value": value})
    return rows


def _head_value(model, lp) -> tuple[str, int]:
    """The value a head layer's node makes, and its class axis there.

    The node reading the layer's kernel: a Conv or Gemm (class axis 1), a MatMul, or the Add of
    a MatMul's bias (a layer of its own when the weight's name is anonymous; class axis -1).
    """
    axes = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": -1, "Add": -1}
    for op in axes:
        for node in model.graph.node:
            if node.op_type == op and any(name in lp.tensors for name in node.input):
                return node.output[0], axes[op]
    raise OperationError(f"no Conv, Gemm, MatMul or Add node reads {lp.tensors[0]}", lp.layer, "verify this edit with `surgery verify` on the weights")


def _seeded_inputs(model, seed: int) -> dict[str, np.ndarray]:
    """A standard-normal array for every graph input; symbolic dims (batch) become 1."""
    from onnx import helper

    weights = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tt = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds


def _run(model, values: list[str], feeds: dict[str, np.ndarray], path: Path) -> list[np.ndarray]:
    import onnxruntime as ort
    from onnx import helper

    declared = {o.name for o in model.graph.output}
    for name in values:
        if name not in declared:
            model.graph.output.append(helper.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graph as written
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(values, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise OperationError(f"onnxruntime cannot run the model: {' '.join(str(e).split())[:300]}", str(path), "check the model with `surgery inspect`; --verify feeds one seeded input with symbolic dims set to 1") from e
