"""What flows through an ONNX graph after a class edit: values that carry the class axis.

A `Carrier` is a value whose axis `axis` holds `groups` blocks (anchors) of `fields` leading
numbers (YOLO's box and objectness) plus the classes, each class `inner` numbers wide (4 for
class-major box regression); `old` and `new` are the class counts before and after the edit.
`Walk` is the state of one walk over the graph (`onnx_class_rules.walk`): what each value
carries, and the constant elements, attributes and report lines the rules ask for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

import numpy as np
import onnx

from ..errors import OperationError
from .onnx_index import Dim, GraphIndex, node_label

__all__ = ["Carrier", "ShapeOf", "Elem", "Flowing", "Walk", "ATTRIBUTE", "CUT_FIX", "format_dims"]

ATTRIBUTE = ""  # an Elem's `const` when the value is a node attribute, not a constant input
CUT_FIX = "cut the graph before it with `surgery truncate --after VALUE` and do that step in your own code"


@dataclass(frozen=True)
class Carrier:
    """A value whose axis `axis` (of `rank`) carries the classes."""

    axis: int
    rank: int
    groups: int
    fields: int
    old: int
    new: int
    inner: int

    def size(self, new: bool = False) -> int:
        return self.groups * (self.fields + (self.new if new else self.old)) * self.inner

    @property
    def block(self) -> int:
        """Numbers one group (anchor) spans on the axis, before the edit."""
        return (self.fields + self.old) * self.inner

    def at(self, axis: int, rank: int, **changes: int) -> Carrier:
        return replace(self, axis=axis, rank=rank, **changes)

    def same_classes(self, other: Carrier) -> bool:
        return (self.fields, self.old, self.new, self.inner) == (other.fields, other.old, other.new, other.inner)


@dataclass(frozen=True)
class ShapeOf:
    """The output of Shape(v) for a carrier v: element k is v's dim `start + k`."""

    carrier: Carrier
    start: int


@dataclass(frozen=True)
class Elem:
    """One element of a constant vector that a node reads: its value and where it lives."""

    value: int | None  # None: computed at run time
    const: str | None = None
    position: int = 0
    node: int = -1  # the node reading the constant, and the input slot
    slot: int = -1


Flowing = Carrier | ShapeOf | None


class Walk:
    """The walk's state: what each value carries, and the edits the rules ask for."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.carried: dict[str, Carrier | ShapeOf] = {}
        self.const_edits: dict[str, dict[tuple[int, int], dict[int, int]]] = {}  # const -> (node, slot) -> {pos: value}
        self.attr_edits: list[tuple[int, str, list[int]]] = []
        self.lines: list[str] = []

    def refuse(self, node: onnx.NodeProto, why: str, fix: str = CUT_FIX) -> NoReturn:
        label = node_label(node)
        raise OperationError(f"cannot carry the class change through node {label} ({node.op_type}): {why}", label, fix)

    def set_elem(self, node: onnx.NodeProto, elem: Elem, value: int) -> None:
        if elem.value == value:
            return
        if elem.const == ATTRIBUTE:
            self.refuse(node, "its bounds are attributes (Slice before opset 10), which surgery does not rewrite", "export the model with opset 10 or later")
        if elem.const is None:
            self.refuse(node, f"the size {elem.value} it needs to change is computed at run time")
        wanted = self.const_edits.setdefault(elem.const, {}).setdefault((elem.node, elem.slot), {})
        wanted[elem.position] = value

    def elems(self, i: int, slot: int) -> list[Elem]:
        """The constant vector read by node i at `slot`, element by element."""
        name = self.index.nodes[i].input[slot]
        value = self.index.constant(name)
        if value is None:
            return []
        return [Elem(int(v), name, k, i, slot) for k, v in enumerate(np.atleast_1d(value).reshape(-1))]


def format_dims(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
