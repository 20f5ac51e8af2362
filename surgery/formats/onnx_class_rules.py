"""One rule per ONNX operator: where the class axis goes through it, or why it cannot follow.

A rule takes the walk state, the node's index, the node and what each of its inputs carries,
and returns what each output carries; it records the constant elements (Reshape shapes, Split
sizes, Slice bounds) and attributes that must change, or refuses, naming the node. `walk`
applies the rules in topological order. An operator without a rule refuses: a graph is never
written that could fail at run time or silently read the wrong class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx

from .onnx_carriers import ATTRIBUTE, CUT_FIX, Carrier, Elem, Flowing, ShapeOf, Walk, format_dims
from .onnx_index import Dim, attribute, node_label, subgraph_names

__all__ = ["walk", "RULES"]


def walk(state: Walk) -> None:
    """Every node in topological order: apply its rule where a value that carries the classes reaches it."""
    for i, node in enumerate(state.index.nodes):
        ins: list[Flowing] = [state.carried.get(n) if n else None for n in node.input]
        captured = sorted(n for n in subgraph_names(node) if n in state.carried)
        if captured:
            state.refuse(node, f"its subgraph reads {captured[0]}, which carries the classes")
        if not any(v is not None for v in ins):
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            state.refuse(node, "surgery has no rule for this operator on the class axis")
        outs = rule(state, i, node, ins)
        for name, value in zip(node.output, outs):
            if name and value is not None:
                state.carried[name] = value


def _axis(node: onnx.NodeProto, rank: int, default: int = 0, name: str = "axis") -> int:
    return _norm(int(attribute(node, name, default)), rank)


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _data(state: Walk, node: onnx.NodeProto, ins: Sequence[Flowing]) -> Carrier:
    """The carrier at input 0; refuses a carrier anywhere else and shape vectors of carriers."""
    c = ins[0]
    if not isinstance(c, Carrier):
        if isinstance(c, ShapeOf):
            state.refuse(node, f"it reads the shape of a value whose axis {c.carrier.axis} carries the classes")
        name = next(n for n, v in zip(node.input, ins) if v is not None)
        state.refuse(node, f"its input {name}, which carries the classes, is not its data input")
    for name, other in zip(node.input[1:], ins[1:]):
        if other is not None:
            state.refuse(node, f"its input {name} carries the classes too")
    return c


def _same(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """Elementwise, one input: the class axis stays where it is (Relu, Sigmoid, Softmax, Cast...)."""
    c = _data(state, node, ins)
    return [c] * len(node.output)


def _pool(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    if c.axis != 1:
        state.refuse(node, f"it pools over axis {c.axis}, which carries the classes")
    if len(node.output) > 1 and node.output[1] and state.index.consumers.get(node.output[1]):
        state.refuse(node, "its Indices output counts positions across the class axis")
    return [c, None]


def _broadcast(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """Elementwise with broadcasting: every carrier on one output axis; the rest of size 1 there."""
    if any(isinstance(v, ShapeOf) for v in ins):
        state.refuse(node, "it computes with the shape of a value that carries the classes")
    ranks = []
    for name, v in zip(node.input, ins):
        if not name:
            continue
        r = v.rank if isinstance(v, Carrier) else state.index.rank(name)
        if r is None:
            state.refuse(node, f"the rank of its input {name} is unknown")
        ranks.append(r)
    out_rank = max(ranks)
    carriers = [(v, out_rank - v.rank + v.axis) for v in ins if isinstance(v, Carrier)]
    first, axis = carriers[0]
    for other, other_axis in carriers[1:]:
        if other_axis != axis or not first.same_classes(other) or first.groups != other.groups:
            state.refuse(node, "its inputs carry the classes on different axes or in different layouts")
    for name, v in zip(node.input, ins):
        if not name or v is not None:
            continue
        shape = state.index.shapes.get(name, [])
        pos = axis - (out_rank - len(shape))
        if pos >= 0 and shape[pos] != 1:
            size = shape[pos] if shape[pos] is not None else "an unknown size"
            state.refuse(node, f"its input {name} has {size} on the class axis and is not part of the edit", _add_maker(state, name))
    return [first.at(axis, out_rank)] + [None] * (len(node.output) - 1)


def _add_maker(state: Walk, name: str) -> str:
    """The fix for a value that should have been edited too: choose the layer (or node) making it."""
    producer = state.index.producer.get(name)
    if producer is None or state.index.is_constant(name):
        return f"add the layer of {name} with --layers"
    return f"add the layer that makes it with --layers (a node name works: --layers '{node_label(state.index.nodes[producer])}')"


def _transpose(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
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


def _reshape(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    in_dims = state.index.shapes.get(node.input[0], [])
    spec = _shape_spec(state, i, node)
    allowzero = int(attribute(node, "allowzero", 0))
    known = state.index.shapes.get(node.output[0], [])
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
        state.refuse(node, f"it reshapes {format_dims(in_dims)} to {format_dims(out_dims)}, splitting or merging the class axis {c.axis} in a way that cannot be followed")
    j, out = landed
    for p, e in enumerate(spec):
        copies_class_axis = e.value == 0 and not allowzero and p == c.axis
        if p == j:
            if e.value is not None and e.value > 0:
                state.set_elem(node, e, out.size(new=True))
                if e.value != out.size(new=True):
                    state.lines.append(f"Reshape {node_label(node)}: shape element {p} {e.value} -> {out.size(new=True)} (constant {e.const})")
            elif e.value == -1 or (copies_class_axis and in_dims[p] == out_dims[p]):
                pass  # inferred (or copied) at run time from the new size
            else:
                state.refuse(node, f"element {p} of its shape, on the class axis, is computed at run time")
        elif copies_class_axis:
            state.refuse(node, f"element {p} of its shape copies the class axis of its input")
    return [out]


def _shape_spec(state: Walk, i: int, node: onnx.NodeProto) -> list[Elem]:
    """A Reshape's shape, element by element: constants (which can be rewritten) or run-time values.

    The shape is a constant, or a Concat of constants and run-time pieces (TorchScript's
    `view(x.shape[0], -1, K)` gives Concat(Unsqueeze(Gather(Shape(x), 0)), [-1], [K])).
    Run-time pieces never depend on the class count: the walk refuses any node that reads the
    class axis's size out of a shape.
    """
    name = node.input[1]
    if state.index.is_constant(name):
        return state.elems(i, 1)
    producer = state.index.producer.get(name)
    part_node = state.index.nodes[producer] if producer is not None else None
    if part_node is not None and part_node.op_type == "Concat" and int(attribute(part_node, "axis", 0)) in (0, -1):
        out: list[Elem] = []
        for slot, part in enumerate(part_node.input):
            if state.index.is_constant(part):
                out.extend(state.elems(producer, slot))
                continue
            out.extend([Elem(None)] * _static_length(state, node, part))
        return out
    return [Elem(None)] * _static_length(state, node, name)


def _static_length(state: Walk, node: onnx.NodeProto, name: str) -> int:
    shape = state.index.shapes.get(name)
    if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
        state.refuse(node, f"the length of its shape piece {name} is unknown")
    return shape[0]


def _resolve_minus_one(spec: Sequence[Elem], in_dims: Sequence[Dim], out_dims: list[Dim]) -> None:
    """Fill a -1 in the output dims when every other size is known."""
    unknown = [p for p, d in enumerate(out_dims) if not isinstance(d, int)]
    if len(unknown) != 1 or spec[unknown[0]].value != -1 or not all(isinstance(d, int) for d in in_dims):
        return
    rest = math.prod(d for d in out_dims if isinstance(d, int))
    if rest:
        out_dims[unknown[0]] = math.prod(in_dims) // rest  # type: ignore[arg-type]


def _flatten(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    in_dims = state.index.shapes.get(node.input[0], [])
    axis = _axis(node, c.rank, 1)
    head, tail = in_dims[:axis], in_dims[axis:]
    out_dims = [_prod(head), _prod(tail)]
    landed = _land(c, in_dims, out_dims)
    if landed is None:
        state.refuse(node, f"it flattens {format_dims(in_dims)} at axis {axis}, merging the class axis in a way that cannot be followed")
    return [landed[1]]


def _prod(dims: Sequence[Dim]) -> Dim:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None  # type: ignore[arg-type]


def _concat(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    first = next(v for v in ins if v is not None)
    if not isinstance(first, Carrier) or any(isinstance(v, ShapeOf) for v in ins):
        state.refuse(node, "it joins the shape of a value that carries the classes")
    axis = _axis(node, first.rank)
    if axis == first.axis and sum(v is not None for v in ins) == 1 and ins[-1] is first:
        return [_fields_before(state, node, first)]
    for name, v in zip(node.input, ins):
        if v is None:
            state.refuse(node, f"its input {name} is not part of the class edit but must agree with it on axis {first.axis}", CUT_FIX + ", or add its layer with --layers")
        if not first.same_classes(v) or v.axis != first.axis or (axis != first.axis and v.groups != first.groups):
            state.refuse(node, f"its input {name} carries the classes in another layout")
    if axis == first.axis:
        return [first.at(axis, first.rank, groups=sum(v.groups for v in ins if isinstance(v, Carrier)))]
    return [first]


def _fields_before(state: Walk, node: onnx.NodeProto, c: Carrier) -> Carrier:
    """Concat(fields..., classes) on the class axis (YOLOv5's cat((xy, wh, conf), -1)): more leading fields."""
    if c.groups != 1 or c.inner != 1:
        state.refuse(node, f"it puts other values before a class axis of {c.groups} groups")
    added = 0
    for name in node.input[:-1]:
        shape = state.index.shapes.get(name)
        if shape is None or len(shape) != c.rank or not isinstance(shape[c.axis], int):
            state.refuse(node, f"the size of its input {name} on the class axis is unknown")
        added += shape[c.axis]
    return c.at(c.axis, c.rank, fields=c.fields + added)


def _split(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    n = len(node.output)
    if _axis(node, c.rank) != c.axis:
        return [c] * n
    from_input = len(node.input) > 1 and bool(node.input[1])
    sizes = state.index.ints(node.input[1], node) if from_input else attribute(node, "split", None)
    if sizes is None:  # equal parts
        if c.groups % n:
            state.refuse(node, f"it splits {c.groups} groups of classes into {n} equal parts")
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
            new_start, new_end, part = _class_range(state, node, c, start, start + s)
            outs.append(part)
            new_sizes.append(new_end - new_start)
            start += s
    else:
        state.refuse(node, f"its sizes {sizes} cut through groups of {c.block} on the class axis")
    if new_sizes != sizes:
        state.lines.append(f"Split {node_label(node)}: sizes {sizes} -> {new_sizes}")
        if from_input:
            for e, value in zip(state.elems(i, 1), new_sizes):
                state.set_elem(node, e, value)
        else:
            state.attr_edits.append((i, "split", new_sizes))
    return outs


def _class_range(state: Walk, node: onnx.NodeProto, c: Carrier, start: int, end: int) -> tuple[int, int, Carrier | None]:
    """A contiguous range of one group's numbers: (new start, new end, what it carries).

    Leading fields only, or everything up to the group's end, can be followed; a range that
    ends inside the classes picks classes by index, which the edit would change.
    """
    fields, old, new = c.fields, c.old, c.new
    if end <= fields:
        return start, end, None
    if end != fields + old:
        state.refuse(node, f"it takes the numbers {start}..{end - 1} of a class axis of {fields + old}, a fixed range of classes")
    if start <= fields:
        return start, fields + new, c.at(c.axis, c.rank, fields=fields - start)
    dropped = start - fields
    if new - dropped <= 0:
        state.refuse(node, f"it keeps the classes from {dropped} on, but the edit leaves {new}")
    return start, fields + new, c.at(c.axis, c.rank, fields=0, old=old - dropped, new=new - dropped)


def _slice(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if isinstance(ins[0], ShapeOf):
        s = ins[0]
        lo, hi = _slice_range(state, i, node, s.carrier.rank - s.start)
        if lo <= s.carrier.axis - s.start < hi:
            state.refuse(node, "it reads the size of the class axis out of a shape")
        return [None]
    c = _data(state, node, ins)
    starts, ends, axes, steps = _slice_args(state, i, node)
    out: Carrier | None = c
    for k, ax in enumerate(axes):
        if _norm(ax.value, c.rank) != c.axis:
            continue
        if steps[k] != 1:
            state.refuse(node, f"it steps by {steps[k]} along the class axis")
        size, new_size = c.size(), c.size(new=True)
        s_raw, e_raw = starts[k].value, ends[k].value
        s = min(max(s_raw + size if s_raw < 0 else s_raw, 0), size)
        e = min(max(e_raw + size if e_raw < 0 else e_raw, 0), size)
        if (s, e) == (0, size):
            if 0 <= e_raw < max(size, new_size):
                state.set_elem(node, ends[k], new_size)
            continue
        if c.groups != 1 or c.inner != 1:
            state.refuse(node, f"it takes the numbers {s}..{e - 1} of a class axis of {size} that holds {c.groups} groups")
        new_s, new_e, out = _class_range(state, node, c, s, e)
        state.set_elem(node, starts[k], new_s - new_size if s_raw < 0 else new_s)
        if not (e == size and e_raw >= max(size, new_size)):
            state.set_elem(node, ends[k], new_e - new_size if e_raw < 0 else new_e)
        state.lines.append(f"Slice {node_label(node)}: class axis [{s}, {e}) -> [{new_s}, {new_e})")
    return [out]


def _slice_args(state: Walk, i: int, node: onnx.NodeProto) -> tuple[list[Elem], list[Elem], list[Elem], list[int]]:
    if state.index.opset < 10:  # Slice-1: the bounds are attributes
        starts = [Elem(int(v), ATTRIBUTE) for v in attribute(node, "starts")]
        ends = [Elem(int(v), ATTRIBUTE) for v in attribute(node, "ends")]
        axes = [Elem(int(v)) for v in attribute(node, "axes", range(len(starts)))]
        return starts, ends, axes, [1] * len(starts)
    for slot in range(1, len(node.input)):
        if node.input[slot]:
            state.index.ints(node.input[slot], node)  # refuses run-time bounds
    starts, ends = state.elems(i, 1), state.elems(i, 2)
    axes = state.elems(i, 3) if len(node.input) > 3 and node.input[3] else [Elem(k) for k in range(len(starts))]
    steps = [e.value for e in state.elems(i, 4)] if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    return starts, ends, axes, steps  # type: ignore[return-value]


def _slice_range(state: Walk, i: int, node: onnx.NodeProto, length: int) -> tuple[int, int]:
    starts, ends, _, steps = _slice_args(state, i, node)
    if len(starts) != 1 or steps[0] != 1:
        state.refuse(node, "it slices a shape in a way that cannot be followed")
    lo, hi = starts[0].value, ends[0].value
    lo = min(max(lo + length if lo < 0 else lo, 0), length)
    hi = min(max(hi + length if hi < 0 else hi, 0), length)
    return lo, hi


def _gather(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[1] is not None:
        state.refuse(node, "its indices carry the classes")
    if isinstance(ins[0], ShapeOf):
        s = ins[0]
        length = s.carrier.rank - s.start
        picked = {_norm(v, length) + s.start for v in state.index.ints(node.input[1], node)}
        if s.carrier.axis in picked:
            state.refuse(node, "it reads the size of the class axis out of a shape")
        return [None]
    c = _data(state, node, ins)
    axis = _axis(node, c.rank)
    if axis == c.axis:
        state.refuse(node, f"it gathers fixed indices along the class axis (axis {axis}), which the edit renumbers", "cut the graph before it with `surgery truncate --after VALUE`, or pick the classes in your own code")
    q = state.index.rank(node.input[1])
    if q is None:
        state.refuse(node, f"the rank of its indices {node.input[1]} is unknown")
    return [c.at(c.axis if c.axis < axis else c.axis - 1 + q, c.rank - 1 + q)]


def _shape(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    start = _norm(int(attribute(node, "start", 0)), c.rank)
    end = _norm(int(attribute(node, "end", c.rank)), c.rank)
    return [ShapeOf(c, start) if start <= c.axis < end else None]


def _squeeze_axes(state: Walk, node: onnx.NodeProto) -> list[int] | None:
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = state.index.ints(node.input[1], node)
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    axes = _squeeze_axes(state, node) or []
    rank = c.rank + len(axes)
    inserted = {_norm(a, rank) for a in axes}
    kept = [p for p in range(rank) if p not in inserted]
    return [c.at(kept[c.axis], rank)]


def _squeeze(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    axes = _squeeze_axes(state, node)
    if axes is None:
        shape = state.index.shapes.get(node.input[0])
        if shape is None or any(not isinstance(d, int) for d in shape):
            state.refuse(node, "it squeezes every axis of size 1, and the input's shape is not known")
        axes = [p for p, d in enumerate(shape) if d == 1]
    removed = {_norm(a, c.rank) for a in axes}
    if c.axis in removed:
        state.refuse(node, "it squeezes the class axis")
    return [c.at(c.axis - sum(a < c.axis for a in removed), c.rank - len(removed))]


def _reduce(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    c = _data(state, node, ins)
    keep = int(attribute(node, "keepdims", 1))
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [_axis(node, c.rank)]
    else:
        axes = _squeeze_axes(state, node)
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


def _conv(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    """A head node: its weight carries the classes on its output-channel axis."""
    if ins[0] is not None:
        state.refuse(node, "it reads the class scores as input channels, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    want = 0 if node.op_type == "Conv" else 1
    if not isinstance(w, Carrier) or w.axis != want:
        state.refuse(node, "its weight is not edited on its output-channel axis", "choose the layer's weight with --layers")
    group = int(attribute(node, "group", 1))
    if group != 1:
        state.refuse(node, f"it is a grouped convolution (group {group})", "edit this model by hand")
    _check_bias(state, node, ins, 2, w)
    return [w.at(1, state.index.rank(node.output[0]) or w.rank)]


def _check_bias(state: Walk, node: onnx.NodeProto, ins: Sequence[Flowing], slot: int, w: Carrier) -> None:
    if len(node.input) <= slot or not node.input[slot]:
        return
    b = ins[slot]
    if isinstance(b, Carrier):
        if not b.same_classes(w) or b.groups != w.groups:
            state.refuse(node, f"its bias {node.input[slot]} is edited in another layout than its weight")
        return
    shape = state.index.shapes.get(node.input[slot], [])
    if not shape or shape[-1] != 1:
        state.refuse(node, f"its bias {node.input[slot]} is not part of the edit", "choose the bias's layer with --layers too")


def _gemm(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[0] is not None:
        state.refuse(node, "it reads the class scores as its input features, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    want = 0 if int(attribute(node, "transB", 0)) else 1
    if not isinstance(w, Carrier) or w.axis != want:
        state.refuse(node, f"its weight B is not edited on its output axis {want} (transB={1 - want})", "choose the layer's weight with --layers")
    if len(node.input) > 2 and node.input[2] and isinstance(ins[2], Carrier) and ins[2].axis != ins[2].rank - 1:
        state.refuse(node, f"its bias C {node.input[2]} is edited on a non-output axis")
    _check_bias(state, node, ins, 2, w)
    return [w.at(1, 2)]


def _matmul(state: Walk, i: int, node: onnx.NodeProto, ins: Sequence[Flowing]) -> list[Flowing]:
    if ins[0] is not None:
        state.refuse(node, "it reads the class scores as its left operand, so its own weights would have to change", "cut the graph before it, or edit that layer too")
    w = ins[1]
    if not isinstance(w, Carrier) or w.rank != 2 or w.axis != 1:
        state.refuse(node, "its right operand is not a (K, N) weight edited on its last axis", "choose the layer's weight with --layers")
    rank = state.index.rank(node.output[0]) or max(state.index.rank(node.input[0]) or 2, 2)
    return [w.at(rank - 1, rank)]


_UNARY = (
    "Identity Cast CastLike Relu LeakyRelu PRelu Sigmoid HardSigmoid Tanh Exp Log Neg Abs Sqrt Reciprocal Floor Ceil Round "
    "Erf Softplus Softsign Elu Selu Celu Gelu HardSwish Mish Sign Not IsNaN IsInf Dropout Softmax LogSoftmax Hardmax "
    "ThresholdedRelu Clip Sin Cos"
).split()
_BROADCAST = "Add Sub Mul Div Pow Max Min Mean Sum Where Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Mod".split()
_REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax ArgMin".split()
_POOL = "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split()

Rule = Callable[[Walk, int, onnx.NodeProto, Sequence[Flowing]], list[Flowing]]
RULES: dict[str, Rule] = {
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
RULES["Clip"] = RULES["PRelu"] = _broadcast
