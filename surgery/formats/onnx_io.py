"""ONNX models: every weight as a lazy tree entry, and the weightless graph beside them.

Which tensors are entries (the weights):
  - every initializer, of the main graph and of nested graphs (If/Loop/Scan bodies), under
    its own name;
  - every `Constant` node whose `value` is a floating-point tensor (any size, scalars too),
    or an integer or bool tensor of more than SMALL_CONSTANT elements, named by the
    Constant's output. Smaller integer Constants are shapes, axes and indices: they stay in
    the graph, where graph edits can read and change them. `value_float(s)`/`value_int(s)`
    Constants and Constants inside model-local functions stay in the graph too.

The model is parsed with `onnx.load(..., load_external_data=False)`: external data is never
read here (each tensor becomes a `FileRange` into its data file, checked for safety), while
inline tensors come with the parse, so a model with inline weights costs one parse of the
whole file and memory about its size. Custom-op libraries are never loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import dtypes
from ..errors import CorruptFileError, FormatError
from ..graph import GRAPH
from ..tree import TORCH, Entry, Tree
from . import onnx_tensors
from .onnx_model import OnnxGraph, constant_value, iter_graphs, proto_module
from .onnx_writer import check_writable, save, save_atomically, with_write_options

__all__ = ["NAME", "SUFFIXES", "sniff", "load", "save", "save_atomically", "check_writable", "describe", "with_write_options"]

NAME = "onnx"
SUFFIXES = (".onnx",)
SMALL_CONSTANT = 64  # integer/bool Constants up to this many elements are graph structure, not weights
_FIX = "the file is corrupt or not an ONNX model; export it again"

# ModelProto fields (number, wire type) that may follow ir_version at the start of a file.
_MODEL_FIELDS = {(2, 2), (3, 2), (4, 2), (5, 0), (6, 2), (7, 2), (8, 2), (14, 2), (20, 2), (25, 2)}


# -- detection ----------------------------------------------------------------------


def sniff(path: Path, head: bytes, size: int) -> bool:
    """An ONNX file is a ModelProto: field 1 (ir_version, a small varint), then another model field."""
    if path.is_dir() or len(head) < 3 or head[0] != 0x08:
        return False
    version, i = 0, 1
    while i < len(head) and head[i] & 0x80:
        version |= (head[i] & 0x7F) << (7 * (i - 1))
        i += 1
    if i >= len(head) - 1:
        return False
    version |= head[i] << (7 * (i - 1))
    tag = head[i + 1]
    return 1 <= version <= 64 and (tag >> 3, tag & 7) in _MODEL_FIELDS


# -- reading ------------------------------------------------------------------------


def load(path: Path) -> Tree:
    """A lazy tree over an ONNX model: its weights as entries, the weightless model as its graph."""
    path = Path(path)
    model = _parse(path)
    entries = _take_weights(model, path)
    metadata = {p.key: p.value for p in model.metadata_props}
    external = any(isinstance(e.source, onnx_tensors.ExternalRange) for e in entries)
    graph = OnnxGraph(model, path, external_data=external)
    return Tree(entries, format=NAME, convention=TORCH, metadata=metadata, format_state={GRAPH: graph})


def _parse(path: Path) -> Any:
    """What onnx.load(path, load_external_data=False) does: read the bytes, parse the ModelProto."""
    model = proto_module().ModelProto()
    from google.protobuf.message import DecodeError

    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:
        if "depth" in str(e).lower() or "recursion" in str(e).lower():
            raise CorruptFileError("the ONNX protobuf nests messages deeper than protobuf allows", str(path), _FIX) from None
        raise CorruptFileError(f"cannot parse the ONNX protobuf ({_short(e)})", str(path), _FIX) from None
    if not model.HasField("graph"):
        raise CorruptFileError("the model has no graph", str(path), _FIX)
    return model


def _short(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _take_weights(model: Any, path: Path) -> list[Entry]:
    """The weights' entries, in graph order; each weight's TensorProto is left without data."""
    entries: dict[str, Entry] = {}
    files: onnx_tensors.DataFiles = {}  # each external data file is checked once for the whole model

    def add(entry: Entry) -> None:
        if entry.name in entries:
            raise CorruptFileError(f"two weights are named {entry.name!r}", str(path), _FIX)
        entries[entry.name] = entry

    for graph in iter_graphs(model.graph, str(path)):
        if len(graph.sparse_initializer):
            name = graph.sparse_initializer[0].values.name
            raise FormatError(
                f"sparse initializer {name!r} is not supported", str(path), "densify it before export, or use onnx tools"
            )
        for tensor in graph.initializer:
            add(onnx_tensors.entry_of(tensor, tensor.name, "initializer", path, files))
            onnx_tensors.strip_data(tensor)
        for node in graph.node:
            tensor = constant_value(node)
            if tensor is not None and len(node.output) == 1 and is_weight_constant(tensor):
                add(onnx_tensors.entry_of(tensor, node.output[0], "constant", path, files))
                onnx_tensors.strip_data(tensor)
    return list(entries.values())


def is_weight_constant(tensor: Any) -> bool:
    """Floating Constants always count as weights; integer and bool ones only past SMALL_CONSTANT elements."""
    dtype = onnx_tensors.ONNX_TO_DTYPE.get(tensor.data_type)
    if dtype is None:
        return False  # strings and the like stay in the graph
    return dtypes.get(dtype).kind in "fc" or math.prod(tensor.dims) > SMALL_CONSTANT


# -- what inspect shows -----------------------------------------------------------------


def describe(tree: Tree) -> dict[str, Any]:
    """The model's facts beside its tensors: IR version, opsets, producer, inputs and outputs."""
    graph = tree.format_state.get(GRAPH)
    if not isinstance(graph, OnnxGraph):
        return {}
    model = graph.model
    weights = {t.name for t in model.graph.initializer}
    return {
        "ir_version": model.ir_version,
        "opsets": {_text(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": {"name": _text(model.producer_name), "version": _text(model.producer_version)},
        "graph": _text(model.graph.name),
        "nodes": len(model.graph.node),
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in weights],
        "outputs": [_value_info(v) for v in model.graph.output],
        "external_data": sorted({e.source.path.name for e in tree.values() if _is_external(e)}),
    }


def _is_external(entry: Entry) -> bool:
    return isinstance(entry.source, onnx_tensors.ExternalRange)


def _text(value: str | bytes) -> str:
    """A string field as shown: protobuf hands one that is not UTF-8 back as bytes, shown escaped."""
    return value if isinstance(value, str) else repr(value)


def _value_info(value: Any) -> dict[str, Any]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": _text(value.name), "type": kind or "unknown"}
    tensor = value.type.tensor_type
    dtype = onnx_tensors.ONNX_TO_DTYPE.get(tensor.elem_type, f"onnx type {tensor.elem_type}")
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (_text(d.dim_param) or None) for d in tensor.shape.dim]
    return {"name": _text(value.name), "dtype": dtype, "shape": shape}
