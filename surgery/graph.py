"""A computation graph that some trees carry beside their tensors (ONNX models).

A checkpoint is only tensors, but an ONNX model is tensors *inside a graph*: a class
head's Reshape constant or a graph output's declared shape must follow an edit of
the head's weights, and a cut removes nodes as well as tensors. A reader that has a
graph stores an object with the methods below under `tree.format_state[GRAPH]`;
the operations ask it to follow their edits. The core never imports the framework
that implements it (the object comes from the format's own module), so this stays
numpy-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from .ops.classes import ClassPlan
    from .report import Report
    from .tree import Tree

__all__ = ["GRAPH", "Graph", "graph_of"]

GRAPH = "graph"  # the format_state key


@runtime_checkable
class Graph(Protocol):
    """What an operation may ask of the graph a tree carries. Every method is pure."""

    format: str  # the format that owns the graph ("onnx")

    def follow_classes(self, before: Tree, after: Tree, plan: ClassPlan, report: Report) -> Tree:
        """`after` (the class edit of `before`'s head tensors) with the graph made to agree.

        Raises OperationError, naming the node, when the graph cannot be proven to agree.
        """

    def truncate(self, tree: Tree, after: str) -> tuple[Tree, Report]:
        """Keep what computes the value or node `after`, which becomes the single output."""

    def strip_head(self, tree: Tree, globs: Sequence[str], family: str | None) -> tuple[Tree, Report]:
        """Cut the graph before its classification head."""

    def class_axis(self, name: str) -> int | None:
        """The output (class) axis of weight `name` as the node consuming it reads it, or None."""

    def layers_of_nodes(self, globs: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """For each glob, the layers of the weights read by the nodes it names: {layer: weights}.

        A weight whose name holds a layer (`surgery.naming.layer_of`) counts under that layer;
        anonymous ones (`onnx::MatMul_14`) under their node's name.
        """


def graph_of(tree: Tree) -> Graph | None:
    """The graph `tree` carries, or None for a plain checkpoint."""
    graph = tree.format_state.get(GRAPH)
    return graph if isinstance(graph, Graph) else None
