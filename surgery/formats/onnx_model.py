"""The graph an ONNX tree carries: the parsed model without its weights.

`OnnxGraph` implements `surgery.graph.Graph`. It holds the `onnx.ModelProto` with every
weight tensor (initializer or weight-carrying Constant, see `onnx_io`) reduced to its
name, dims and data_type: the data lives in the tree's entries, and the writer puts it
back. The model is shared between trees and must be treated as immutable: copy it
before editing, then wrap the copy with `with_model`.

The graph operations live in `onnx_surgery`; the methods here only delegate to it,
so this module (and a tree that carries a graph) imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorruptFileError, OperationError

if TYPE_CHECKING:  # pragma: no cover
    from ..ops.classes import ClassPlan
    from ..report import Report
    from ..tree import Tree

__all__ = ["OnnxGraph", "iter_graphs", "constant_value", "proto_module", "MAX_DEPTH"]

MAX_DEPTH = 16  # graphs nested in node attributes (If, Loop, Scan); real models nest a few levels
_GRAPH, _GRAPHS, _TENSOR = 5, 10, 4  # AttributeProto.AttributeType


@dataclass(frozen=True, eq=False)
class OnnxGraph:
    """An ONNX model's graph, weightless, and the file it was read from."""

    model: Any  # onnx.ModelProto; its weight tensors hold no data
    source: Path | None = None
    format: str = "onnx"
    external_data: bool = False  # the model was read with external data: write it so again by default

    def with_model(self, new_model: Any) -> OnnxGraph:
        """The same graph object for an edited copy of the model."""
        return OnnxGraph(new_model, self.source, self.format, self.external_data)

    def source_paths(self) -> tuple[Path, ...]:
        """The model file, so that no output overwrites it even when no tensor is read from it."""
        return (self.source,) if self.source is not None else ()

    # -- surgery.graph.Graph: each method delegates to onnx_surgery.NAME(self, ...) --

    def follow_classes(self, before: Tree, after: Tree, plan: ClassPlan, report: Report) -> Tree:
        return _surgery("follow_classes")(self, before, after, plan, report)

    def truncate(self, tree: Tree, after: str) -> tuple[Tree, Report]:
        return _surgery("truncate")(self, tree, after)

    def strip_head(self, tree: Tree, globs: Sequence[str], family: str | None) -> tuple[Tree, Report]:
        return _surgery("strip_head")(self, tree, globs, family)


def _surgery(name: str):
    try:
        function = getattr(importlib.import_module("surgery.formats.onnx_surgery"), name, None)
    except ModuleNotFoundError as e:
        if e.name != "surgery.formats.onnx_surgery":
            raise
        function = None
    if function is None:
        raise OperationError(
            f"{name.replace('_', '-')} inside an ONNX graph is not available yet",
            "onnx",
            "convert the model's weights to safetensors and edit those",
        )
    return function


# -- the protobuf classes -------------------------------------------------------------


def proto_module():
    """onnx's generated protobuf module (ModelProto, TensorProto, ...), without `import onnx`.

    `import onnx` costs about a second of CPU (it loads its C++ checker and ml_dtypes), which
    would be most of an `inspect`. Its generated `onnx_ml_pb2` needs only protobuf, so it is
    loaded on its own from onnx's installed files: the classes are the very ones onnx uses
    (protobuf keeps one class per message type), so `onnx.ModelProto` accepts them later.
    """
    if "onnx" in sys.modules:
        import onnx.onnx_ml_pb2

        return onnx.onnx_ml_pb2
    loaded = sys.modules.get(_PROTO_MODULE)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.submodule_search_locations:
        from ..errors import FormatError

        raise FormatError("ONNX files need the onnx package", "onnx", "pip install 'surgery[onnx]'")
    location = Path(next(iter(spec.submodule_search_locations))) / "onnx_ml_pb2.py"
    module_spec = importlib.util.spec_from_file_location(_PROTO_MODULE, location)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[_PROTO_MODULE] = module
    return module


_PROTO_MODULE = "surgery._onnx_ml_pb2"


# -- walking a model's graphs (plain protobuf access: no onnx import needed) ----------------


def iter_graphs(graph: Any, where: str, depth: int = 0) -> Iterator[Any]:
    """The graph, then every graph nested in its nodes' attributes, depth first."""
    if depth > MAX_DEPTH:
        raise CorruptFileError(
            f"graphs are nested more than {MAX_DEPTH} deep", where, "the model is hostile or broken; export it again"
        )
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == _GRAPH:
                yield from iter_graphs(attribute.g, where, depth + 1)
            elif attribute.type == _GRAPHS:
                for sub in attribute.graphs:
                    yield from iter_graphs(sub, where, depth + 1)


def constant_value(node: Any) -> Any | None:
    """The TensorProto of a standard `Constant` node's `value` attribute, or None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == _TENSOR:
            return attribute.t
    return None
