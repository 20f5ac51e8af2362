"""Class surgery inside an ONNX graph: make every value downstream of an edited class head agree.

The class edit (`surgery.ops.classes`) changes a head's weights from A anchors × K classes to
A × K' along their output axis. In a checkpoint that is all; in a graph, the head's output
travels on through Transposes, a Reshape to (N, -1, K), a Concat over feature maps and a
Softmax, and any of those may hold the class count in a constant. This module follows every
value that carries the class axis (a `Carrier`), node by node in topological order, with one
rule per operator. A rule either says where the class axis goes (and which constant elements,
Split sizes or Slice bounds must change), or refuses, naming the node: a graph is never
written that could fail at run time or silently read the wrong class.

A carrier's axis holds `groups` blocks (anchors) of `fields` leading numbers (YOLO's box and
objectness) plus the classes, each class `inner` numbers wide (4 for class-major box
regression); `old` and `new` are the class counts before and after.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn

import numpy as np
import onnx

from ..errors import OperationError
from ..report import Report
from ..tree import Entry, Tree
from .onnx_index import Dim, GraphIndex, attribute, node_label, subgraph_names

__all__ = ["Carrier", "follow_classes"]

_ATTRIBUTE = ""  # an _Elem's `const` when the value is a node attribute, not a constant input
_CUT_FIX = "cut the graph before it with `surgery truncate --after VALUE` and do that step in your own code"


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
class _Elem:
    """One element of a constant vector that a node reads: its value and where it lives."""

    value: int | None  # None: computed at run time
    const: str | None = None
    position: int = 0
    node: int = -1  # the node reading the constant, and the input slot
    slot: int = -1


Flowing = Carrier | ShapeOf | None


# -- the walk ------------------------------------------------------------------------


class _Follow:
    """The walk's state: what each value carries, and the edits the rules ask for."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.carried: dict[str, Carrier | ShapeOf] = {}
        self.const_edits: dict[str, dict[tuple[int, int], dict[int, int]]] = {}  # const -> (node, slot) -> {pos: value}
        self.attr_edits: list[tuple[int, str, list[int]]] = []
        self.lines: list[str] = []

    def refuse(self, node: onnx.NodeProto, why: str, fix: str = _CUT_FIX) -> NoReturn:
        label = node_label(node)
        raise OperationError(f"cannot carry the class change through node {label} ({node.op_type}): {why}", label, fix)

    def set_elem(self, node: onnx.NodeProto, elem: _Elem, value: int) -> None:
        if elem.value == value:
            return
        if elem.const == _ATTRIBUTE:
            self.refuse(node, "its bounds are attributes (Slice before opset 10), which surgery does not rewrite", "export the model with opset 10 or later")
        if elem.const is None:
            self.refuse(node, f"the size {elem.value} it needs to change is computed at run time")
        wanted = self.const_edits.setdefault(elem.const, {}).setdefault((elem.node, elem.slot), {})
        wanted[elem.position] = value

    def elems(self, i: int, slot: int) -> list[_Elem]:
        """The constant vector read by node i at `slot`, element by element."""
        name = self.index.nodes[i].input[slot]
        value = self.index.constant(name)
        if value is None:
            return []
        return [_Elem(int(v), name, k, i, slot) for k, v in enumerate(np.atleast_1d(value).reshape(-1))]

    def walk(self) -> None:
        for i, node in enumerate(self.index.nodes):
            ins: list[Flowing] = [self.carried.get(n) if n else None for n in node.input]
            captured = sorted(n for n in subgraph_names(node) if n in self.carried)
            if captured:
                self.refuse(node, f"its subgraph reads {captured[0]}, which carries the classes")
            if not any(v is not None for v in ins):
                continue
            rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if rule is None:
                self.refuse(node, "surgery has no rule for this operator on the class axis")
            outs = rule(self, i, node, ins)
            for name, value in zip(node.output, outs):
                if name and value is not None:
                    self.carried[name] = value


# -- rules ---------------------------------------------------------------------------


def _axis(node: onnx.NodeProto, rank: int, default: int = 0, name: str = "axis") -> int:
    return _norm(int(attribute(node, name, default)), rank)


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _data(f: _Follow, node: onnx.NodeProto, ins: Sequence[Flowing]) -> Carrier:
    """The carrier at input 0; refuses a carrier anywhere else and shape vectors of carriers."""
    c = ins[0]
    if not isinstance(c, Carrier):
        if isinstance(c, ShapeOf):
            f.refuse(node, f"it reads the shape of a value whose axis {c.carrier.axis} carries the classes")
        name = next(n for n, v in zip(node.input, ins) if v is not None)
        f.refuse(node, f"its input {name}, which carries the classes, is not its data input")
    for name, other in zip(node.input[1:], ins[1:]):
        if other is not None:
            f.refuse(node, f"its input {name} carries the classes too")
    return c


def _same(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """Elementwise, one input: the class axis stays where it is (Relu, Sigmoid, Softmax, Cast...)."""
    c = _data(f, node, ins)
    return [c] * len(node.output)


def _pool(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    if c.axis != 1:
        f.refuse(node, f"it pools over axis {c.axis}, which carries the classes")
    if len(node.output) > 1 and node.output[1] and f.index.consumers.get(node.output[1]):
        f.refuse(node, "its Indices output counts positions across the class axis")
    return [c, None]


def _broadcast(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """Elementwise with broadcasting: every carrier on one output axis; the rest of size 1 there."""
    if any(isinstance(v, ShapeOf) for v in ins):
        f.refuse(node, "it computes with the shape of a value that carries the classes")
    ranks = []
    for name, v in zip(node.input, ins):
        if not name:
            continue
        r = v.rank if isinstance(v, Carrier) else f.index.rank(name)
        if r is None:
            f.refuse(node, f"the rank of its input {name} is unknown")
        ranks.append(r)
    out_rank = max(ranks)
    carriers = [(v, out_rank - v.rank + v.axis) for v in ins if isinstance(v, Carrier)]
    first, axis = carriers[0]
    for other, other_axis in carriers[1:]:
        if other_axis != axis or not first.same_classes(other) or first.groups != other.groups:
            f.refuse(node, "its inputs carry the classes on different axes or in different layouts")
    for name, v in zip(node.input, ins):
        if not name or v is not None:
            continue
        shape = f.index.shapes.get(name, [])
        pos = axis - (out_rank - len(shape))
        if pos >= 0 and shape[pos] != 1:
            f.refuse(
                node,
                f"its input {name} has {shape[pos] if shape[pos] is not None else 'an unknown size'} on the class axis and is not part of the edit",
            )
    return [first.at(axis, out_rank)] + [None] * (len(node.output) - 1)


def _transpose(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    perm = list(attribute(node, "perm", None) or reversed(range(c.rank)))
    return [c.at(perm.index(c.axis), c.rank)]


def _land(c: Carrier, in_dims: Sequence[Dim], out_dims: Sequence[Dim]) -> tuple[int, Carrier] | None:
    """Where the class axis lands when `in_dims` are reshaped to `out_dims` (row-major).

    A class is `stride` numbers apart in the flat order and one group spans `block × stride /
    inner` of them; both must fall inside one output axis j, with the axes after j dividing
    the stride. Needs the dims from the class axis on (input) and from j on (output) to be known.
    """
    if len(in_dims) != c.rank or in_dims[c.axis] != c.size():
        return None
    after = in_dims[c.axis + 1 :]
    if not all(isinstance(d, int) for d in after):
        return None
    stride = c.inner * math.prod(after)  # flat distance between one class and the next
    span = c.block * math.prod(after)  # flat numbers in one group
    q = 1  # product of the output axes after j
    for j in reversed(range(len(out_dims))):
        d = out_dims[j]
        if not isinstance(d, int):
            return None
        if q <= stride < q * d:
            if stride % q or (q * d) % span:
                return None
            return j, c.at(j, len(out_dims), groups=(q * d) // span, inner=stride // q)
        q *= d
    return None


def _reshape(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    in_dims = f.index.shapes.get(node.input[0], [])
    spec = _shape_spec(f, i, node)
    allowzero = int(attribute(node, "allowzero", 0))
    known = f.index.shapes.get(node.output[0], [])
    out_dims: list[Dim] = []
    for p, e in enumerate(spec):
        d: Dim = known[p] if p < len(known) else None
        if e.value is not None and (e.value > 0 or (e.value == 0 and allowzero)):
            d = e.value
        elif e.value == 0 and p < len(in_dims):
            d = in_dims[p]
        out_dims.append(d)
    _resolve_minus_one(spec, in_dims, out_dims)
    landed = _land(c, in_dims, out_dims)
    if landed is None:
        f.refuse(node, f"it reshapes {_dims(in_dims)} to {_dims(out_dims)}, splitting or merging the class axis {c.axis} in a way that cannot be followed")
    j, out = landed
    for p, e in enumerate(spec):
        copies_class_axis = e.value == 0 and not allowzero and p == c.axis
        if p == j:
            if e.value is not None and e.value > 0:
                f.set_elem(node, e, out.size(new=True))
                if e.value != out.size(new=True):
                    f.lines.append(f"Reshape {node_label(node)}: shape element {p} {e.value} -> {out.size(new=True)} (constant {e.const})")
            elif e.value == -1 or (copies_class_axis and in_dims[p] == out_dims[p]):
                pass  # inferred (or copied) at run time from the new size
            else:
                f.refuse(node, f"element {p} of its shape, on the class axis, is computed at run time")
        elif copies_class_axis:
            f.refuse(node, f"element {p} of its shape copies the class axis of its input")
    return [out]


def _shape_spec(f: _Follow, i: int, node: onnx.NodeProto) -> list[_Elem]:
    """A Reshape's shape, element by element: constants (which can be rewritten) or run-time values.

    The shape is a constant, or a Concat of constants and run-time pieces (TorchScript's
    `view(x.shape[0], -1, K)` gives Concat(Unsqueeze(Gather(Shape(x), 0)), [-1], [K])).
    Run-time pieces never depend on the class count: the walk refuses any node that reads the
    class axis's size out of a shape.
    """
    name = node.input[1]
    if f.index.is_constant(name):
        return f.elems(i, 1)
    producer = f.index.producer.get(name)
    part_node = f.index.nodes[producer] if producer is not None else None
    if part_node is not None and part_node.op_type == "Concat" and int(attribute(part_node, "axis", 0)) in (0, -1):
        out: list[_Elem] = []
        for slot, part in enumerate(part_node.input):
            if f.index.is_constant(part):
                out.extend(f.elems(producer, slot))
                continue
            out.extend([_Elem(None)] * _static_length(f, node, part))
        return out
    return [_Elem(None)] * _static_length(f, node, name)


def _static_length(f: _Follow, node: onnx.NodeProto, name: str) -> int:
    shape = f.index.shapes.get(name)
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
        f.refuse(node, f"the length of its shape piece {name} is unknown")
    return shape[0]


def _resolve_minus_one(spec: Sequence[_Elem], in_dims: Sequence[Dim], out_dims: list[Dim]) -> None:
    """Fill a -1 in the output dims when every other size is known."""
    unknown = [p for p, d in enumerate(out_dims) if not isinstance(d, int)]
    if len(unknown) != 1 or spec[unknown[0]].value != -1 or not all(isinstance(d, int) for d in in_dims):
        return
    rest = math.prod(d for d in out_dims if isinstance(d, int))
    if rest:
        out_dims[unknown[0]] = math.prod(in_dims) // rest  # type: ignore[arg-type]


def _flatten(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    in_dims = f.index.shapes.get(node.input[0], [])
    axis = _axis(node, c.rank, 1)
    head, tail = in_dims[:axis], in_dims[axis:]
    out_dims = [_prod(head), _prod(tail)]
    landed = _land(c, in_dims, out_dims)
    if landed is None:
        f.refuse(node, f"it flattens {_dims(in_dims)} at axis {axis}, merging the class axis in a way that cannot be followed")
    return [landed[1]]


def _prod(dims: Sequence[Dim]) -> Dim:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None  # type: ignore[arg-type]


def _concat(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    first = next(v for v in ins if v is not None)
    if not isinstance(first, Carrier) or any(isinstance(v, ShapeOf) for v in ins):
        f.refuse(node, "it joins the shape of a value that carries the classes")
    axis = _axis(node, first.rank)
    for name, v in zip(node.input, ins):
        if v is None:
            f.refuse(node, f"its input {name} is not part of the class edit but must agree with it on axis {first.axis}", _CUT_FIX + ", or add its layer with --layers")
        if not first.same_classes(v) or v.axis != first.axis or (axis != first.axis and v.groups != first.groups):
            f.refuse(node, f"its input {name} carries the classes in another layout")
    if axis == first.axis:
        return [first.at(axis, first.rank, groups=sum(v.groups for v in ins if isinstance(v, Carrier)))]
    return [first]


def _split(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    n = len(node.output)
    if _axis(node, c.rank) != c.axis:
        return [c] * n
    from_input = len(node.input) > 1 and bool(node.input[1])
    sizes = f.index.ints(node.input[1], node) if from_input else attribute(node, "split", None)
    if sizes is None:  # equal parts
        if c.groups % n:
            f.refuse(node, f"it splits {c.groups} groups of classes into {n} equal parts")
        return [c.at(c.axis, c.rank, groups=c.groups // n)] * n
    sizes = [int(s) for s in sizes]
    outs: list[Flowing] = []
    new_sizes: list[int] = []
    if all(s % c.block == 0 for s in sizes):
        for s in sizes:
            part = c.at(c.axis, c.rank, groups=s // c.block)
            outs.append(part)
            new_sizes.append(part.size(new=True))
    elif c.groups == 1 and c.inner == 1:
        start = 0
        for s in sizes:
            new_start, new_end, part = _class_range(f, node, c, start, start + s)
            outs.append(part)
            new_sizes.append(new_end - new_start)
            start += s
    else:
        f.refuse(node, f"its sizes {sizes} cut through groups of {c.block} on the class axis")
    if new_sizes != sizes:
        f.lines.append(f"Split {node_label(node)}: sizes {sizes} -> {new_sizes}")
        if from_input:
            for e, value in zip(f.elems(i, 1), new_sizes):
                f.set_elem(node, e, value)
        else:
            f.attr_edits.append((i, "split", new_sizes))
    return outs


def _class_range(f: _Follow, node: onnx.NodeProto, c: Carrier, start: int, end: int) -> tuple[int, int, Carrier | None]:
    """A contiguous range of one group's numbers: (new start, new end, what it carries).

    Leading fields only, or everything up to the group's end, can be followed; a range that
    ends inside the classes picks classes by index, which the edit would change.
    """
    fields, old, new = c.fields, c.old, c.new
    if end <= fields:
        return start, end, None
    if end != fields + old:
        f.refuse(node, f"it takes the numbers {start}..{end - 1} of a class axis of {fields + old}, a fixed range of classes")
    if start <= fields:
        return start, fields + new, c.at(c.axis, c.rank, fields=fields - start)
    dropped = start - fields
    if new - dropped <= 0:
        f.refuse(node, f"it keeps the classes from {dropped} on, but the edit leaves {new}")
    return start, fields + new, c.at(c.axis, c.rank, fields=0, old=old - dropped, new=new - dropped)


def _slice(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if isinstance(ins[0], ShapeOf):
        s = ins[0]
        lo, hi = _slice_range(f, i, node, s.carrier.rank - s.start)
        if lo <= s.carrier.axis - s.start < hi:
            f.refuse(node, "it reads the size of the class axis out of a shape")
        return [None]
    c = _data(f, node, ins)
    starts, ends, axes, steps = _slice_args(f, i, node)
    out: Carrier | None = c
    for k, ax in enumerate(axes):
        if _norm(ax.value, c.rank) != c.axis:
            continue
        if steps[k] != 1:
            f.refuse(node, f"it steps by {steps[k]} along the class axis")
        size, new_size = c.size(), c.size(new=True)
        s_raw, e_raw = starts[k].value, ends[k].value
        s = min(max(s_raw + size if s_raw < 0 else s_raw, 0), size)
        e = min(max(e_raw + size if e_raw < 0 else e_raw, 0), size)
        if (s, e) == (0, size):
            if 0 <= e_raw < max(size, new_size):
                f.set_elem(node, ends[k], new_size)
            continue
        if c.groups != 1 or c.inner != 1:
            f.refuse(node, f"it takes the numbers {s}..{e - 1} of a class axis of {size} that holds {c.groups} groups")
        new_s, new_e, out = _class_range(f, node, c, s, e)
        f.set_elem(node, starts[k], new_s - new_size if s_raw < 0 else new_s)
        if not (e == size and e_raw >= max(size, new_size)):
            f.set_elem(node, ends[k], new_e - new_size if e_raw < 0 else new_e)
        f.lines.append(f"Slice {node_label(node)}: class axis [{s}, {e}) -> [{new_s}, {new_e})")
    return [out]


def _slice_args(f: _Follow, i: int, node: onnx.NodeProto) -> tuple[list[_Elem], list[_Elem], list[_Elem], list[int]]:
    if f.index.opset < 10:  # Slice-1: the bounds are attributes
        starts = [_Elem(int(v), _ATTRIBUTE) for v in attribute(node, "starts")]
        ends = [_Elem(int(v), _ATTRIBUTE) for v in attribute(node, "ends")]
        axes = [_Elem(int(v)) for v in attribute(node, "axes", range(len(starts)))]
        return starts, ends, axes, [1] * len(starts)
    for slot in range(1, len(node.input)):
        if node.input[slot]:
            f.index.ints(node.input[slot], node)  # refuses run-time bounds
    starts, ends = f.elems(i, 1), f.elems(i, 2)
    axes = f.elems(i, 3) if len(node.input) > 3 and node.input[3] else [_Elem(k) for k in range(len(starts))]
    steps = [e.value for e in f.elems(i, 4)] if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    return starts, ends, axes, steps  # type: ignore[return-value]


def _slice_range(f: _Follow, i: int, node: onnx.NodeProto, length: int) -> tuple[int, int]:
    starts, ends, _, steps = _slice_args(f, i, node)
    if len(starts) != 1 or steps[0] != 1:
        f.refuse(node, "it slices a shape in a way that cannot be followed")
    lo, hi = starts[0].value, ends[0].value
    lo = min(max(lo + length if lo < 0 else lo, 0), length)
    hi = min(max(hi + length if hi < 0 else hi, 0), length)
    return lo, hi


def _gather(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[1] is not None:
        f.refuse(node, "its indices carry the classes")
    if isinstance(ins[0], ShapeOf):
        s = ins[0]
        length = s.carrier.rank - s.start
        picked = {_norm(v, length) + s.start for v in f.index.ints(node.input[1], node)}
        if s.carrier.axis in picked:
            f.refuse(node, "it reads the size of the class axis out of a shape")
        return [None]
    c = _data(f, node, ins)
    axis = _axis(node, c.rank)
    if axis == c.axis:
        f.refuse(node, f"it gathers fixed indices along the class axis (axis {axis}), which the edit renumbers", "cut the graph before it with `surgery truncate --after VALUE`, or pick the classes in your own code")
    q = f.index.rank(node.input[1])
    if q is None:
        f.refuse(node, f"the rank of its indices {node.input[1]} is unknown")
    return [c.at(c.axis if c.axis < axis else c.axis - 1 + q, c.rank - 1 + q)]


def _shape(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    start = _norm(int(attribute(node, "start", 0)), c.rank)
    end = _norm(int(attribute(node, "end", c.rank)), c.rank)
    return [ShapeOf(c, start) if start <= c.axis < end else None]


def _squeeze_axes(f: _Follow, node: onnx.NodeProto) -> list[int] | None:
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = f.index.ints(node.input[1], node)
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    axes = _squeeze_axes(f, node) or []
    rank = c.rank + len(axes)
    inserted = {_norm(a, rank) for a in axes}
    kept = [p for p in range(rank) if p not in inserted]
    return [c.at(kept[c.axis], rank)]


def _squeeze(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    axes = _squeeze_axes(f, node)
    if axes is None:
        shape = f.index.shapes.get(node.input[0])
        if shape is None or any(not isinstance(d, int) for d in shape):
            f.refuse(node, "it squeezes every axis of size 1, and the input's shape is not known")
        axes = [p for p, d in enumerate(shape) if d == 1]
    removed = {_norm(a, c.rank) for a in axes}
    if c.axis in removed:
        f.refuse(node, "it squeezes the class axis")
    return [c.at(c.axis - sum(a < c.axis for a in removed), c.rank - len(removed))]


def _reduce(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(f, node, ins)
    keep = int(attribute(node, "keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [_axis(node, c.rank)]
    else:
        axes = _squeeze_axes(f, node)
        if not axes:
            if int(attribute(node, "noop_with_empty_axes", 0)):
                return [c]
            return [None]  # reduces everything
    reduced = {_norm(a, c.rank) for a in axes}
    if c.axis in reduced:
        return [None]  # a score or index per position: the class axis is gone
    if keep:
        return [c]
    return [c.at(c.axis - sum(a < c.axis for a in reduced), c.rank - len(reduced))]


def _conv(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """A head node: its weight carries the classes on its output-channel axis."""
    if ins[0] is not None:
        f.refuse(node, "it reads the class scores as input channels, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    want = 0 if node.op_type == "Conv" else 1
    if not isinstance(w, Carrier) or w.axis != want:
        f.refuse(node, "its weight is not edited on its output-channel axis", "choose the layer's weight with --layers")
    group = int(attribute(node, "group", 1))
    if group != 1:
        f.refuse(node, f"it is a grouped convolution (group {group})", "edit this model by hand")
    _check_bias(f, node, ins, 2, w)
    return [w.at(1, f.index.rank(node.output[0]) or w.rank)]


def _check_bias(f: _Follow, node: onnx.NodeProto, ins: Sequence[Flowing], slot: int, w: Carrier) -> None:
    if len(node.input) <= slot or not node.input[slot]:
        return
    b = ins[slot]
    if isinstance(b, Carrier):
        if not b.same_classes(w) or b.groups != w.groups:
            f.refuse(node, f"its bias {node.input[slot]} is edited in another layout than its weight")
        return
    shape = f.index.shapes.get(node.input[slot], [])
    if not shape or shape[-1] != 1:
        f.refuse(node, f"its bias {node.input[slot]} is not part of the edit", "choose the bias's layer with --layers too")


def _gemm(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[0] is not None:
        f.refuse(node, "it reads the class scores as its input features, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    want = 0 if int(attribute(node, "transB", 0)) else 1
    if not isinstance(w, Carrier) or w.axis != want:
        f.refuse(node, f"its weight B is not edited on its output axis {want} (transB={1 - want})", "choose the layer's weight with --layers")
    if len(node.input) > 2 and node.input[2] and isinstance(ins[2], Carrier) and ins[2].axis != ins[2].rank - 1:
        f.refuse(node, f"its bias C {node.input[2]} is edited on a non-output axis")
    _check_bias(f, node, ins, 2, w)
    return [w.at(1, 2)]


def _matmul(f: _Follow, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[0] is not None:
        f.refuse(node, "it reads the class scores as its left operand, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    if not isinstance(w, Carrier) or w.rank != 2 or w.axis != 1:
        f.refuse(node, "its right operand is not a (K, N) weight edited on its last axis", "choose the layer's weight with --layers")
    rank = f.index.rank(node.output[0]) or max(f.index.rank(node.input[0]) or 2, 2)
    return [w.at(rank - 1, rank)]


_UNARY = (
    "Identity Cast CastLike Relu LeakyRelu PRelu Sigmoid HardSigmoid Tanh Exp Log Neg Abs Sqrt Reciprocal Floor Ceil Round "
    "Erf Softplus Softsign Elu Selu Celu Gelu HardSwish Mish Sign Not IsNaN IsInf Dropout Softmax LogSoftmax Hardmax "
    "ThresholdedRelu Clip Sin Cos"
).split()
_BROADCAST = "Add Sub Mul Div Pow Max Min Mean Sum Where Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Mod".split()
_REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax ArgMin".split()
_POOL = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()

Rule = Callable[[_Follow, int, onnx.NodeProto, Sequence[Flowing]], list[Flowing]]
_RULES: dict[str, Rule] = {
    **{op: _same for op in _UNARY},
    **{op: _broadcast for op in _BROADCAST},
    **{op: _reduce for op in _REDUCE},
    **{op: _pool for op in _POOL},
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Shape": _shape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
}
# Clip's min/max and PRelu's slope are extra inputs: scalars or broadcast, checked like Add's.
_RULES["Clip"] = _RULES["PRelu"] = _broadcast


# -- the public step -----------------------------------------------------------------


def follow_classes(graph, before: Tree, after: Tree, plan, report: Report) -> Tree:
    """`after` (the class edit of `before`'s head weights) with `graph` made to agree.

    Raises:
        OperationError: naming the node whose dependence on the class count cannot be followed.
    """
    model = copy.deepcopy(graph.model)
    index = GraphIndex(model, before)
    follow = _Follow(index)
    follow.carried.update(_head_carriers(index, before, after, plan))
    follow.walk()
    _apply_attributes(follow)  # by node index: before any Constant copy is inserted
    _apply_weight_dims(model, after, plan)
    replace_entries, add_entries = _apply_constants(follow, before)
    _apply_declared_shapes(follow)
    _check_shapes(graph.model, model)
    report.notes.extend(f"graph: {line}" for line in follow.lines)
    report.facts["graph_edits"] = list(follow.lines)
    edited = after.derive(replace=replace_entries, add=add_entries)
    from ..graph import GRAPH

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


def _apply_attributes(follow: _Follow) -> None:
    for i, name, values in follow.attr_edits:
        node = follow.index.nodes[i]
        for attr in node.attribute:
            if attr.name == name:
                attr.ints[:] = values


def _apply_constants(follow: _Follow, before: Tree) -> tuple[dict[str, Entry], list[Entry]]:
    """Rewrite each constant the rules asked to change; give a changed copy to its readers when others share it."""
    index = follow.index
    replace_entries: dict[str, Entry] = {}
    add_entries: list[Entry] = []
    taken = _all_names(index.model)
    pending: list[tuple[int, onnx.NodeProto]] = []  # Constant copies, inserted last so node indices stay valid
    for const, wanted in follow.const_edits.items():
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
            inserted = _store_constant(index, before, const, name, value, replace_entries, add_entries)
            if inserted is not None:
                pending.append(inserted)
            if shared:
                follow.lines.append(f"constant {name}: a copy of {const} (which other nodes share) holding {value.reshape(-1).tolist()}")
    for producer, clone in sorted(pending, key=lambda p: -p[0]):
        index.model.graph.node.insert(producer + 1, clone)
    return replace_entries, add_entries


def _store_constant(
    index: GraphIndex, before: Tree, const: str, name: str, value: np.ndarray, replace_entries: dict, add_entries: list
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
    clone = onnx.helper.make_node("Constant", [], [name], name=_fresh(f"{node.name or name}_classes", _all_names(index.model)), value=tensor)
    return producer, clone


def _apply_declared_shapes(follow: _Follow) -> None:
    """Graph outputs' (and value_info's) declared class-axis size follows the edit."""
    graph = follow.index.model.graph
    for info in [*graph.output, *graph.value_info]:
        c = follow.carried.get(info.name)
        if not isinstance(c, Carrier) or not info.type.HasField("tensor_type"):
            continue
        dims = info.type.tensor_type.shape.dim
        if c.axis < len(dims) and dims[c.axis].HasField("dim_value") and dims[c.axis].dim_value == c.size():
            before = _dims([_dim_of(d) for d in dims])
            dims[c.axis].dim_value = c.size(new=True)
            if info in graph.output and c.size() != c.size(new=True):
                follow.lines.append(f"output {info.name}: {before} -> {_dims([_dim_of(d) for d in dims])}")


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


def _dims(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


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
