"""Graph surgery on ONNX trees: what `OnnxGraph` (surgery.graph.Graph) delegates to.

- `follow_classes`: after a class edit of a head's weights, fix every value downstream that
  carries the class count (onnx_classes, with onnx_carriers and the per-operator onnx_class_rules);
- `truncate`, `strip_head`: cut the graph and drop what no longer feeds its outputs (onnx_cut);
- `class_axis`: a weight's output (class) axis, read from the node that consumes it, and
  `layers_of_nodes`: the layers `--layers NODE_GLOB` names, for the planner (`surgery.ops.classes`);
- `verify`: run the original and the edited model in onnxruntime (onnx_verify).

Each function takes the `OnnxGraph` first; none changes its input.
"""

from __future__ import annotations

from ..naming import layer_of, matches
from .onnx_classes import follow_classes
from .onnx_cut import strip_head, truncate
from .onnx_index import class_axis_of_use

__all__ = ["class_axis", "follow_classes", "layers_of_nodes", "strip_head", "truncate"]


def class_axis(graph, name: str) -> int | None:
    """The output axis of weight `name` as the nodes reading it see it; None if they do not agree or say.

    Conv weight axis 0, ConvTranspose axis 1, Gemm B axis 0 with transB=1 (else 1), MatMul B
    axis -1 (as a non-negative index), a bias axis 0.
    """
    rank = next((len(t.dims) for t in graph.model.graph.initializer if t.name == name), None)
    axes = set()
    for node in graph.model.graph.node:
        if rank is None and node.op_type == "Constant" and node.output and node.output[0] == name:
            rank = next((len(a.t.dims) for a in node.attribute if a.name == "value"), None)
    if rank is None:
        return None
    for node in graph.model.graph.node:
        for slot, value in enumerate(node.input):
            if value == name:
                axes.add(class_axis_of_use(node, slot, rank))
    return axes.pop() if len(axes) == 1 else None


def layers_of_nodes(graph, globs) -> dict[str, dict[str, list[str]]]:
    """For each glob, {layer: weights} for the weights that the nodes it matches read.

    `--layers '/class_head.0/Conv'` (a TorchScript node name) picks layer `class_head.0`;
    a weight without a layer in its name (`onnx::MatMul_14`, a constant-folded Linear weight)
    makes its node a layer of its own, `/class_embed/MatMul`.
    """
    weights = {t.name for t in graph.model.graph.initializer}
    weights |= {n.output[0] for n in graph.model.graph.node if n.op_type == "Constant" and n.output}
    out: dict[str, dict[str, list[str]]] = {}
    for glob in globs:
        found: dict[str, list[str]] = {}
        for node in graph.model.graph.node:
            if node.name and matches(node.name, [glob]):
                for name in node.input:
                    if name in weights:
                        found.setdefault(layer_of(name) or node.name, []).append(name)
        out[glob] = found
    return out
