"""Class surgery inside an ONNX graph: make every value downstream of an edited class head agree.

The class edit (`surgery.ops.classes`) changes a head's weights from A anchors × K classes to
A × K' along their output axis. In a checkpoint that is all; in a graph, the head's output
travels on through Transposes, a Reshape to (N, -1, K), a Concat over feature maps and a
Softmax, and any of those may hold the class count in a constant. The steps:

1. every edited head weight becomes a `Carrier` (onnx_carriers) of the class axis;
2. `walk` (onnx_class_rules) follows the carriers node by node, one rule per operator, and
   collects what must change, or refuses, naming the node;
3. the edits are applied to a copy of the graph: the head weights' dims, the constants (a
   shared one is copied for the readers that need the new value), Split attributes and the
   declared shapes of outputs and value_info; changed constants that are tree entries are
   replaced in the tree too;
4. strict ONNX shape inference must accept the edit wherever it accepts the original.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from ..errors import OperationError
from ..graph import GRAPH
from ..report import Report
from ..tree import Entry, Tree
from .onnx_carriers import Carrier, Walk, format_dims
from .onnx_class_rules import walk
from .onnx_index import Dim, GraphIndex, attribute

__all__ = ["follow_classes"]


# -- the public step -----------------------------------------------------------------


def follow_classes(graph, before: Tree, after: Tree, plan, report: Report) -> Tree:
    """`after` (the class edit of `before`'s head weights) with `graph` made to agree.

    Raises:
        OperationError: naming the node whose dependence on the class count cannot be followed.
    """
    model = copy.deepcopy(graph.model)
    index = GraphIndex(model, before)
    state = Walk(index)
    state.carried.update(_head_carriers(index, before, after, plan))
    walk(state)
    _apply_attributes(state)  # by node index: before any Constant copy is inserted
    _apply_weight_dims(model, after, plan)
    replace_entries, add_entries = _apply_constants(state, before)
    _apply_declared_shapes(state)
    _check_shapes(graph.model, model)
    report.notes.extend(f"graph: {line}" for line in state.lines)
    report.facts["graph_edits"] = list(state.lines)
    edited = after.derive(replace=replace_entries, add=add_entries)
    return edited.derive(format_state={**edited.format_state, GRAPH: graph.with_model(model)})


def _head_carriers(index: GraphIndex, before: Tree, after: Tree, plan) -> dict[str, Carrier]:
    out: dict[str, Carrier] = {}
    for lp in plan.layers:
        groups, fields, inner = {
            "anchor-major": (lp.anchors, 0, 1),
            "anchor-major-fields": (lp.anchors, lp.fields, 1),
            "class-major": (1, 0, lp.group),
        }.get(lp.layout, (1, 0, 1))
        for name in lp.tensors:
            shape = before[name].shape
            rank = len(shape)
            axis = 0 if rank == 1 else lp.axis % rank
            c = Carrier(axis, rank, groups, fields, plan.source_classes, plan.num_classes, inner)
            if not (index.is_constant(name) and c.size() == shape[axis] and c.size(new=True) == after[name].shape[axis]):
                raise OperationError(
                    f"head tensor {name} {list(shape)} is not a graph weight with {c.size()} numbers on axis {axis}",
                    name,
                    "report this as a bug, with the model",
                )
            out[name] = c
    return out


def _apply_weight_dims(model: onnx.ModelProto, after: Tree, plan) -> None:
    """The edited head weights' new dims, in their initializers or Constant nodes (data stays in the tree)."""
    names = {name for lp in plan.layers for name in lp.tensors}
    for t in model.graph.initializer:
        if t.name in names:
            t.dims[:] = after[t.name].shape
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.dims[:] = after[node.output[0]].shape


def _apply_attributes(state: Walk) -> None:
    for i, name, values in state.attr_edits:
        node = state.index.nodes[i]
        for attr in node.attribute:
            if attr.name == name:
                attr.ints[:] = values


def _apply_constants(state: Walk, before: Tree) -> tuple[dict[str, Entry], list[Entry]]:
    """Rewrite each constant the rules asked to change; give a changed copy to its readers when others share it."""
    index = state.index
    replace_entries: dict[str, Entry] = {}
    add_entries: list[Entry] = []
    taken = _all_names(index.model)
    pending: list[tuple[int, onnx.NodeProto]] = []  # Constant copies, inserted last so node indices stay valid
    for const, wanted in state.const_edits.items():
        base = index.constant(const)
        groups: dict[tuple[tuple[int, int], ...], list[tuple[int, int]]] = {}
        for reader, positions in wanted.items():
            groups.setdefault(tuple(sorted(positions.items())), []).append(reader)
        readers = {(i, slot) for i in index.consumers.get(const, []) for slot, n in enumerate(index.nodes[i].input) if n == const}
        shared = const in index.graph_outputs() or len(groups) > 1 or readers != set(next(iter(groups.values())))
        for edit, users in groups.items():
            value = base.copy().reshape(-1)
            for pos, v in edit:
                value[pos] = v
            value = value.reshape(base.shape).astype(base.dtype)
            name = const
            if shared:
                name = _fresh(f"{const}_classes", taken)
                for i, slot in users:
                    index.nodes[i].input[slot] = name
            inserted = _store_constant(index, before, const, name, value, replace_entries, add_entries, taken)
            if inserted is not None:
                pending.append(inserted)
            if shared:
                state.lines.append(f"constant {name}: a copy of {const} (which other nodes share) holding {value.reshape(-1).tolist()}")
    for producer, clone in sorted(pending, key=lambda p: -p[0]):
        index.model.graph.node.insert(producer + 1, clone)
    return replace_entries, add_entries


def _store_constant(
    index: GraphIndex, before: Tree, const: str, name: str, value: np.ndarray, replace_entries: dict, add_entries: list, taken: set[str]
) -> tuple[int, onnx.NodeProto] | None:
    """Put the new value of `const` under `name` (itself, or a copy for some of its readers).

    Returns a new Constant node to insert after node `producer`, for a copied Constant.
    """
    graph = index.model.graph
    weight = const in before  # its data lives in the tree; the graph keeps name and dims only
    if weight:
        entry = Entry.from_array(name, value, attrs=before[const].attrs)
        if name == const:
            replace_entries[name] = entry
            return None
        add_entries.append(entry)
    if const in index.initializers:
        if weight:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(index.initializers[const])
            tensor.name = name
        else:
            tensor = onnx.numpy_helper.from_array(value, name)
        if name == const:
            index.initializers[const].CopyFrom(tensor)
        else:
            graph.initializer.append(tensor)
        return None
    producer = index.producer[const]
    node = graph.node[producer]
    if weight:
        tensor = copy.deepcopy(attribute(node, "value"))
    else:
        tensor = onnx.numpy_helper.from_array(value)
    if name == const:
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))
        return None
    clone = onnx.helper.make_node("Constant", [], [name], name=_fresh(f"{node.name or name}_classes", taken), value=tensor)
    return producer, clone


def _apply_declared_shapes(state: Walk) -> None:
    """The declared class-axis size of outputs, value_info and weight inputs follows the edit."""
    graph = state.index.model.graph
    for info in [*graph.output, *graph.value_info, *graph.input]:  # inputs: IR<4 lists weights as inputs too
        c = state.carried.get(info.name)
        if not isinstance(c, Carrier) or not info.type.HasField("tensor_type"):
            continue
        dims = info.type.tensor_type.shape.dim
        if c.axis < len(dims) and dims[c.axis].HasField("dim_value") and dims[c.axis].dim_value == c.size():
            before = format_dims([_dim_of(d) for d in dims])
            dims[c.axis].dim_value = c.size(new=True)
            if info in graph.output and c.size() != c.size(new=True):
                state.lines.append(f"output {info.name}: {before} -> {format_dims([_dim_of(d) for d in dims])}")


def _check_shapes(original: onnx.ModelProto, edited: onnx.ModelProto) -> None:
    """A last guard: strict shape inference must accept the edit wherever it accepts the original."""
    try:
        onnx.shape_inference.infer_shapes(original, check_type=True, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001 - the original already fails strict inference: it cannot judge the edit
        return
    try:
        onnx.shape_inference.infer_shapes(edited, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types here
        raise OperationError(
            f"the edited graph fails ONNX shape inference: {' '.join(str(e).split())[:300]}",
            "graph",
            "report this as a bug, with the model and the command",
        ) from e


def _dim_of(d) -> Dim:
    return int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)


def _all_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {n.name for n in graph.node}
    for node in graph.node:
        names.update(node.output)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name
