"""Writing ONNX: the tree's graph with every weight taken from the tree's entry of the same name.

An ONNX file needs a graph, so only a tree that carries one (read from ONNX, or made by
an operation on such a tree) can be written. Every weight tensor of the graph takes its
data, dtype and shape from its entry; a graph weight without an entry is dropped when no
node uses it and is an error otherwise; an entry the graph does not hold is an error.

Where the weights go:
  - inline (`raw_data`), the default for a model read with inline weights;
  - external data, the default for a model read with external data (and for any model
    whose weights would pass protobuf's 2 GB limit): tensors of at least the size
    threshold go to one data file beside the model, each at a 64 KiB-aligned offset
    when it is 1 MiB or more (so onnxruntime can map it), smaller ones stay inline.
`with_write_options` chooses (the --external-data / --inline / --size-threshold options).

A model and its data file are one unit (`save_atomically`): each write gets a data file of
its own, `<model name>.<12 hex digits>.data`, written and fsynced under a temporary name and
renamed into place before the model is written (atomically) to point at it. A reader of the
destination at any moment sees the old model with its old data file or the new model with
the new one: the model's `location` says which. The previous data file is removed after
the new model is in place, when surgery wrote it and nothing still reads it.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import output_file
from ..durable import fsync, fsync_path
from ..errors import OutputError
from ..graph import GRAPH
from ..tree import Entry, Tree, same_file
from . import onnx_tensors
from .onnx_model import OnnxGraph, constant_value, iter_graphs, proto_module

__all__ = ["WRITE_OPTIONS", "DEFAULT_THRESHOLD", "with_write_options", "check_writable", "save", "save_atomically"]

WRITE_OPTIONS = "onnx.write"  # format_state key: {"external": bool | None, "threshold": int}
DEFAULT_THRESHOLD = 1024  # bytes; onnx's own default for external data
PROTOBUF_LIMIT = (2 << 30) - 1
_ALIGN, _ALIGN_FROM = 64 << 10, 1 << 20
_EXTERNAL = 1  # TensorProto.EXTERNAL

Progress = Callable[[int], None]


def with_write_options(tree: Tree, *, external: bool | None = None, threshold: int | None = None) -> Tree:
    """`tree` that writes its weights as external data (True), inline (False) or as read (None)."""
    state = dict(tree.format_state)
    state[WRITE_OPTIONS] = {"external": external, "threshold": DEFAULT_THRESHOLD if threshold is None else threshold}
    return tree.derive(format_state=state)


# -- the plan: the model to write and where each weight goes ---------------------------


@dataclass
class _Plan:
    model: Any  # a copy of the graph's model, weights not yet filled in
    slots: list[tuple[Any, Entry]]  # (TensorProto in `model`, the entry that fills it)
    external: set[str] = field(default_factory=set)  # names of entries written to the data file


def check_writable(tree: Tree) -> None:
    """Everything save checks, without writing (names, dtypes, the 2 GB limit)."""
    _plan(tree)


def _plan(tree: Tree) -> _Plan:
    graph = _graph(tree)
    model = type(graph.model)()
    model.CopyFrom(graph.model)
    where = str(graph.source or "onnx")
    used = _used_names(model, where)
    slots: list[tuple[Any, Entry]] = []
    for g in iter_graphs(model.graph, where):
        slots += _initializer_slots(g, tree, used, where)
        slots += _constant_slots(g, tree, used, where)
    _check_every_entry_placed(tree, {e.name for _, e in slots}, where)
    for _, e in slots:
        onnx_tensors.onnx_code(e.dtype, e.name)
    return _Plan(model, slots, _external_names(tree, graph, model, slots))


def _graph(tree: Tree) -> OnnxGraph:
    graph = tree.format_state.get(GRAPH)
    if not isinstance(graph, OnnxGraph):
        raise OutputError(
            f"an ONNX file needs a graph, and this {tree.format or 'in-memory'} checkpoint is only tensors",
            "onnx",
            "put the weights into an existing model with `surgery transplant WEIGHTS MODEL.onnx -o OUT.onnx`, "
            "or export the model from PyTorch",
        )
    return graph


def _used_names(model: Any, where: str) -> set[str]:
    used = {v.name for v in model.graph.output}
    for g in iter_graphs(model.graph, where):
        used.update(v.name for v in g.output)
        for node in g.node:
            used.update(node.input)
    return used


def _initializer_slots(g: Any, tree: Tree, used: set[str], where: str) -> list[tuple[Any, Entry]]:
    for i in reversed(range(len(g.initializer))):
        name = g.initializer[i].name
        if name not in tree:
            _refuse_if_used(name, used, where)
            del g.initializer[i]
            _drop_graph_input(g, name)  # IR < 4 models list initializers as inputs too
    return [(t, tree[t.name]) for t in g.initializer]


def _constant_slots(g: Any, tree: Tree, used: set[str], where: str) -> list[tuple[Any, Entry]]:
    slots = []
    for i in reversed(range(len(g.node))):
        node = g.node[i]
        tensor = constant_value(node)
        if tensor is None or len(node.output) != 1:
            continue
        name = node.output[0]
        if name in tree:
            slots.append((tensor, tree[name]))
        elif not onnx_tensors.has_data(tensor) and math.prod(tensor.dims) > 0:  # a weight whose entry is gone
            _refuse_if_used(name, used, where)
            del g.node[i]
    return slots[::-1]


def _refuse_if_used(name: str, used: set[str], where: str) -> None:
    if name in used:
        raise OutputError(
            f"weight {name!r} is used by the graph but the tree has no tensor of that name",
            where,
            "keep the tensor (check --drop/--keep and renames), or cut the nodes that use it with `surgery truncate`",
        )


def _drop_graph_input(g: Any, name: str) -> None:
    for i in reversed(range(len(g.input))):
        if g.input[i].name == name:
            del g.input[i]


def _check_every_entry_placed(tree: Tree, placed: set[str], where: str) -> None:
    strays = [name for name in tree if name not in placed]
    if strays:
        more = f" (and {len(strays) - 1} more)" if len(strays) > 1 else ""
        raise OutputError(
            f"tensor {strays[0]!r}{more} is not a weight of the ONNX graph",
            where,
            "an ONNX file's weights must belong to its graph: put them into the model with "
            "`surgery transplant WEIGHTS MODEL.onnx -o OUT.onnx`, which copies the tensors whose names match",
        )


def _external_names(tree: Tree, graph: OnnxGraph, model: Any, slots: list[tuple[Any, Entry]]) -> set[str]:
    options = tree.format_state.get(WRITE_OPTIONS) or {}
    asked = options.get("external")
    threshold = int(options.get("threshold", DEFAULT_THRESHOLD))
    weights = sum(e.nbytes for _, e in slots)
    skeleton = model.ByteSize() + 64 * len(slots)
    external = asked if asked is not None else (graph.external_data or skeleton + weights > PROTOBUF_LIMIT)
    names = {e.name for _, e in slots if e.nbytes >= threshold} if external else set()
    inline = skeleton + sum(e.nbytes for _, e in slots if e.name not in names)
    if inline > PROTOBUF_LIMIT:
        if asked is False:
            raise OutputError(
                f"the weights are {inline:,} bytes, past protobuf's 2 GB limit for one ONNX file",
                "--inline",
                "keep them in external data: drop --inline, or pass --external-data",
            )
        raise OutputError(
            f"the inline part of the model is {inline:,} bytes, past protobuf's 2 GB limit",
            "--size-threshold",
            "lower --size-threshold so that more tensors go to the data file",
        )
    return names


# -- writing ------------------------------------------------------------------------


def save(tree: Tree, path: Path, *, progress: Progress | None = None, data_name: str | None = None) -> None:
    """Write the model to `path` (and its external data to `data_name` beside it), not atomically.

    surgery.io.save calls save_atomically instead, which writes both as one unit.
    """
    plan = _plan(tree)
    if plan.external:
        _write_data(plan, path.parent / (data_name or f"{path.name}.data"), data_name or f"{path.name}.data", progress)
    _write_model(plan, tree, path, progress)


def save_atomically(tree: Tree, path: Path, *, progress: Progress | None = None) -> None:
    """Write model and data file so that `path` always names a complete pair (module docstring)."""
    from ..atomic import atomic_output

    path = Path(path)
    plan = _plan(tree)
    previous = _our_data_files(path)
    data_path = None
    if plan.external:
        data_name = f"{path.name}.{uuid.uuid4().hex[:12]}.data"
        data_path = path.parent / data_name
        with atomic_output(data_path) as tmp:
            _write_data(plan, tmp, data_name, progress)
    try:
        with atomic_output(path) as tmp:
            _write_model(plan, tree, tmp, progress)
    except BaseException:
        if data_path is not None:
            data_path.unlink(missing_ok=True)
        raise
    inputs = tree.source_paths()
    for old in previous:
        if old != data_path and not any(same_file(old, p) for p in inputs):
            old.unlink(missing_ok=True)


def _write_data(plan: _Plan, data_path: Path, data_name: str, progress: Progress | None) -> None:
    expected = sum(e.nbytes for _, e in plan.slots if e.name in plan.external)  # before alignment padding
    with output_file.create(data_path, expected) as out:
        for tensor, e in plan.slots:
            if e.name not in plan.external:
                continue
            if e.nbytes >= _ALIGN_FROM and out.offset % _ALIGN:
                out.write(bytes(_ALIGN - out.offset % _ALIGN))
            offset = out.offset
            written = e.copy_into(out, progress)
            if written != e.nbytes:
                raise OutputError(f"tensor {e.name!r} gave {written} bytes but {e.nbytes} were expected", e.name, "the input changed while it was read; run again")
            _point_at(tensor, data_name, offset, written)
    fsync_path(data_path)  # save() writes the data file outside an atomic output: make it durable here


def _point_at(tensor: Any, location: str, offset: int, length: int) -> None:
    tensor.data_location = _EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        item = tensor.external_data.add()
        item.key, item.value = key, value


def _write_model(plan: _Plan, tree: Tree, path: Path, progress: Progress | None) -> None:
    for tensor, e in plan.slots:
        del tensor.dims[:]
        tensor.dims.extend(e.shape)
        tensor.data_type = onnx_tensors.onnx_code(e.dtype, e.name)
        if e.name not in plan.external:
            tensor.raw_data = b"".join(bytes(chunk) for chunk in e.iter_bytes())
            if progress:
                progress(e.nbytes)
    _declare_weight_inputs(plan)
    del plan.model.metadata_props[:]
    for key, value in tree.metadata.items():
        prop = plan.model.metadata_props.add()
        prop.key, prop.value = key, value
    with open(path, "wb") as f:
        f.write(plan.model.SerializeToString())
        f.flush()
        fsync(f.fileno())


def _declare_weight_inputs(plan: _Plan) -> None:
    """Models of IR < 4 list initializers among the graph inputs: keep those types equal to the weights."""
    weights = {tensor.name: tensor for tensor, _ in plan.slots if tensor.name}
    for g in iter_graphs(plan.model.graph, "onnx"):
        for value in g.input:
            tensor = weights.get(value.name)
            if tensor is None or not value.type.HasField("tensor_type"):
                continue
            value.type.tensor_type.elem_type = tensor.data_type
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in tensor.dims:
                shape.dim.add().dim_value = d


def _our_data_files(path: Path) -> list[Path]:
    """Data files surgery wrote that the model now at `path` points at (to remove once replaced)."""
    if not path.is_file() or path.is_symlink():
        return []
    try:
        model = proto_module().ModelProto()
        model.ParseFromString(path.read_bytes())
    except Exception:  # not a model we can read: then it points at nothing of ours
        return []
    ours = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.data")
    found = []
    for g in iter_graphs(model.graph, str(path)):
        tensors = [*g.initializer, *(t for t in map(constant_value, g.node) if t is not None)]
        for t in tensors:
            location = next((x.value for x in t.external_data if x.key == "location"), "")
            candidate = path.parent / location
            if ours.fullmatch(location) and candidate.is_file() and not candidate.is_symlink():
                found.append(candidate)
    return sorted(set(found))
