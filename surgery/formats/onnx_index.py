"""What graph surgery needs to know about an ONNX graph: who makes and who reads each value,
which values are constants (and their values), and the shapes shape inference gives.

The graph is the reader's weightless ModelProto: weights keep their name, dims and data type
but no data, so a weight's value is read from the tree entry of the same name. Constants that
are not tree entries (the tiny int64 shape vectors the reader may leave out) keep their data
in the graph and are read from there. Imported by the ONNX surgery modules only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OperationError
from ..tree import Tree

__all__ = ["GraphIndex", "Dim", "subgraph_names", "node_label", "class_axis_of_use"]

Dim = int | str | None  # a static size, a symbolic dim's name, or unknown


def node_label(node: onnx.NodeProto) -> str:
    """How a node is named in messages: its name, else its first output (names are optional)."""
    return node.name or (node.output[0] if node.output else node.op_type)


def subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every value name a node's subgraphs (If/Loop/Scan bodies) read, at any depth."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names |= subgraph_names(inner)
    return names


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


@dataclass
class GraphIndex:
    """An index over one (already copied) ModelProto; `tree` supplies the weights' values."""

    model: onnx.ModelProto
    tree: Tree
    producer: dict[str, int] = field(default_factory=dict)  # value -> index of the node making it
    consumers: dict[str, list[int]] = field(default_factory=dict)  # value -> nodes reading it
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    shapes: dict[str, list[Dim]] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        for i, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in [*node.input, *sorted(subgraph_names(node))]:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self._infer_shapes()

    # -- values ------------------------------------------------------------------------

    @property
    def nodes(self):
        return self.model.graph.node

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def graph_outputs(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        i = self.producer.get(name)
        return i is not None and self.nodes[i].op_type == "Constant"

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, or None if `name` is computed."""
        if not name or not self.is_constant(name):
            return None
        if name in self.tree:
            return self.tree[name].read()
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.nodes[self.producer[name]]
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_int", "value_ints"):
                return np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
            if attr.name in ("value_float", "value_floats"):
                return np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        return None

    def ints(self, name: str, where: onnx.NodeProto) -> list[int]:
        """A constant integer input, as a list; refuses a computed one, naming the node."""
        value = self.constant(name)
        if value is None or value.dtype.kind not in "iu":
            raise OperationError(
                f"node {node_label(where)} ({where.op_type}) takes {name!r} from the graph at run time, so its effect on the class axis cannot be proven",
                node_label(where),
                "cut the graph before it with `surgery truncate --after VALUE`, and do that step in your own code",
            )
        return [int(v) for v in np.atleast_1d(value).reshape(-1)]

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def node_of_weight(self, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
        """(node, input slot) for every node that reads `name`."""
        for i in self.consumers.get(name, []):
            node = self.nodes[i]
            for slot, value in enumerate(node.input):
                if value == name:
                    yield node, slot

    # -- shapes ------------------------------------------------------------------------

    def _infer_shapes(self) -> None:
        """Shapes and element types of every value shape inference can reach (data propagation on)."""
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception:  # noqa: BLE001 - inference is a help, not a requirement: fall back to declared shapes
            inferred = self.model
        graph = inferred.graph
        infos = [*graph.input, *graph.value_info, *graph.output]
        for t in graph.initializer:
            self.shapes[t.name] = list(t.dims)
            self.elem_types[t.name] = t.data_type
        for info in infos:
            kind = info.type.WhichOneof("value")
            if kind != "tensor_type":
                continue
            tt = info.type.tensor_type
            self.elem_types[info.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[info.name] = [_dim(d) for d in tt.shape.dim]
        for node in graph.node:  # a Constant's dims, without reading its value (it may be a large weight)
            if node.op_type == "Constant" and node.output:
                tensor = attribute(node, "value")
                if isinstance(tensor, onnx.TensorProto):
                    self.shapes.setdefault(node.output[0], list(tensor.dims))
                elif attribute(node, "value_ints") is not None or attribute(node, "value_floats") is not None:
                    self.shapes.setdefault(node.output[0], [len(attribute(node, "value_ints") or attribute(node, "value_floats"))])
                else:
                    self.shapes.setdefault(node.output[0], [])


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def class_axis_of_use(node: onnx.NodeProto, slot: int, rank: int) -> int | None:
    """The axis of a weight that becomes the output (class) axis of the node reading it.

    Conv weight (O, I, k...) axis 0; ConvTranspose (I, O/group, k...) axis 1; Gemm B
    axis 0 with transB=1, else 1; MatMul B (K, N) axis -1; a bias (rank 1) axis 0.
    None when the node makes no output axis of it (an input to a node we do not know).
    """
    if rank == 1 and (node.op_type in ("Conv", "ConvTranspose") and slot == 2 or node.op_type == "Gemm" and slot == 2):
        return 0
    if slot != 1:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None
