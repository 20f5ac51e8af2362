"""Which layers are class heads, and what their channels hold.

Finds the head layers (the `surgery.heads` table, --layers globs, an ONNX graph's nodes, or the
score layer of a Keras graph), fills in each one's layout, class axis, channel count and the
tensors that move, and works out how many classes and anchors those channels divide into,
with the reason, or the values that would fit when they do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import OperationError
from ..graph import graph_of
from ..heads import CLASS_HEADS, HeadPattern, unwrapped
from ..naming import layer_of, layers, matches
from ..tree import Entry, Tree

if TYPE_CHECKING:
    from .classes import LayerPlan

DEFAULT_FIELDS = 5  # YOLO: x, y, w, h, objectness before the classes of each anchor
DEFAULT_GROUP = 4  # Faster R-CNN box regression: 4 numbers per class
LOC_CHANNELS_PER_ANCHOR = 4  # SSD *_mbox_loc: one box (4 numbers) per anchor


def _classes_in(layout: str, channels: int, anchors: int, fields: int, group: int) -> int | None:
    """How many classes `channels` hold with this many anchors, or None if it does not divide."""
    if layout == "plain":
        return channels
    if layout == "class-major":
        return channels // group if channels % group == 0 else None
    if anchors <= 0 or channels % anchors:
        return None
    per_anchor = channels // anchors - fields
    return per_anchor if per_anchor > 0 else None


def _anchors_for(layout: str, channels: int, K: int, fields: int, group: int) -> int | None:
    if layout == "plain":
        return 1 if channels == K else None
    if layout == "class-major":
        return 1 if channels == K * group else None
    stride = K + fields
    return channels // stride if channels % stride == 0 and channels else None


@dataclass
class _Layer:
    name: str
    row: HeadPattern | None
    why: str
    layout: str = "plain"
    fields: int = 0
    group: int = 1
    channels: int = 0
    axis: int = -1
    tensors: tuple[str, ...] = ()
    members: tuple[str, ...] = ()  # a graph node's weights, when their names hold no layer (onnx::MatMul_14)


def _choose_layers(
    tree: Tree, globs: list[str], layout: str | None, axis: int | None, fields: int | None = None, group: int | None = None
) -> list[_Layer]:
    all_layers = layers(tree)
    chosen: list[_Layer] = []
    if globs:
        graph = graph_of(tree)  # in a graph, a glob may also name the nodes that read a layer's weights
        by_node = graph.layers_of_nodes(globs) if graph is not None else {}
        for g in globs:
            if not any(matches(name, [g]) for name in all_layers) and not by_node.get(g):
                raise OperationError(
                    f"--layers {g} matches no layer",
                    "--layers",
                    "list the layers with `surgery inspect`; globs are case-sensitive and '*' crosses '/' and '.'",
                )
        for name in all_layers:
            hit = next((g for g in globs if matches(name, [g]) or name in by_node.get(g, {})), None)
            if hit is not None:
                row = next((r for r in CLASS_HEADS if matches(name, r.layers)), None)
                chosen.append(_Layer(name, row, f"chosen by --layers {hit}"))
        for g in globs:  # nodes whose weights have anonymous names are layers of their own
            for node, weights in by_node.get(g, {}).items():
                if node not in all_layers and all(c.name != node for c in chosen):
                    chosen.append(_Layer(node, None, f"chosen by --layers {g} (the node's weights {', '.join(weights)})", members=tuple(weights)))
    else:
        for family in dict.fromkeys(r.family for r in CLASS_HEADS):
            rows = [r for r in CLASS_HEADS if r.family == family]
            for name in all_layers:
                row = next((r for r in rows if matches(unwrapped(name), r.layers)), None)
                if row is not None:
                    glob = next(g for g in row.layers if matches(unwrapped(name), [g]))
                    chosen.append(_Layer(name, row, f"{family} head ({row.role}: {glob})"))
            if chosen:
                break
        if not chosen:
            chosen = _score_layer_from_graph(tree)
        if not chosen:
            raise OperationError(
                "no classifier layer found",
                f"{len(all_layers)} layers",
                "name the layers with --layers GLOB (see `surgery inspect`)",
            )
    for c in chosen:
        _describe(tree, c, layout, axis, fields, group)
    return chosen


def _score_layer_from_graph(tree: Tree) -> list[_Layer]:
    """The layer strip-head finds from a Keras model graph (the one making the class scores)."""
    from .strip import score_layer

    found = score_layer(tree)
    return [_Layer(found[0], None, found[1])] if found else []


def _describe(tree: Tree, c: _Layer, layout: str | None, axis: int | None, fields: int | None, group: int | None) -> None:
    """Fill in a layer's layout, class axis, channel count and the tensors that move."""
    c.layout = layout or (c.row.layout if c.row else "plain")
    if c.layout == "anchor-major-fields":
        c.fields = fields if fields is not None else (c.row.fields if c.row and c.row.fields else DEFAULT_FIELDS)
    if c.layout == "class-major":
        c.group = group if group is not None else (c.row.group if c.row and c.row.group > 1 else DEFAULT_GROUP)
    given_axis = axis
    if axis is None:
        from ..conventions import convention_of

        inferred = convention_of(tree)
        axis = inferred.convention.out_axis
        if axis is None:
            raise OperationError(
                f"the checkpoint does not say which axis of a weight is its output axis, and {inferred.why}",
                c.name,
                "pass --axis -1 for Keras layout or --axis 0 for PyTorch layout",
            )
    c.axis = axis
    members, main = _layer_tensors(tree, c.name, c.members)
    if main is None:
        raise OperationError(f"layer {c.name} has no tensors with a class axis", c.name, "choose another layer with --layers")
    graph = graph_of(tree)
    if graph is not None and given_axis is None:  # in a graph, the node reading the kernel says (Gemm transB, MatMul)
        found = graph.class_axis(main.name)
        c.axis = axis = axis if found is None else found
    try:
        c.channels = main.shape[_axis_of(main, axis)]
    except IndexError:
        raise OperationError(f"--axis {axis} does not exist in {main.name} {list(main.shape)}", c.name, "pick an axis the kernel has") from None
    c.tensors = tuple(e.name for e in members if e.shape[_axis_of(e, axis)] == c.channels)


def _layer_tensors(tree: Tree, layer: str, named: tuple[str, ...] = ()) -> tuple[list[Entry], Entry | None]:
    """A layer's tensors that have axes (or the `named` ones), and its kernel (the one of highest rank)."""
    members = [tree[n] for n in named if tree[n].shape] if named else [e for e in tree.values() if layer_of(e.name) == layer and e.shape]
    return members, max(members, key=lambda e: len(e.shape), default=None)


def _axis_of(e: Entry, axis: int) -> int:
    """The class axis of one tensor: `axis` for kernels, the only axis for biases."""
    rank = len(e.shape)
    if rank == 1:
        return 0
    if not -rank <= axis < rank:
        raise IndexError(axis)
    return axis % rank


def _new_shape(e: Entry, lp: LayerPlan) -> tuple[int, ...]:
    shape = list(e.shape)
    shape[_axis_of(e, lp.axis)] = lp.new_channels
    return tuple(shape)


def _source_class_count(
    tree: Tree, chosen: list[_Layer], given: int | None, anchors: int | None, per_layer: Mapping[str, int]
) -> tuple[int, str]:
    if given is not None:
        if given <= 0:
            raise OperationError(f"--source-classes {given} must be positive", "--source-classes", "give the class count the model was trained with")
        return given, "--source-classes"
    candidates: list[tuple[int, str]] = []  # (K, where it came from)
    for c in chosen:
        if c.name in per_layer:
            k = _classes_in(c.layout, c.channels, per_layer[c.name], c.fields, c.group)
            if k is None:
                raise OperationError(
                    f"--anchors {c.name}={per_layer[c.name]} does not divide its {c.channels} channels",
                    c.name,
                    _what_fits(c),
                )
            candidates.append((k, f"{c.name} ({c.channels} channels, --anchors {c.name}={per_layer[c.name]})"))
        elif c.layout in ("plain", "class-major"):
            k = _classes_in(c.layout, c.channels, 1, c.fields, c.group)
            if k is not None:
                candidates.append((k, f"{c.name} ({c.channels} channels, {c.layout})"))
        else:
            loc = _paired_loc_anchors(tree, c)
            if anchors is not None:
                k = _classes_in(c.layout, c.channels, anchors, c.fields, c.group)
                if k is not None:
                    candidates.append((k, f"{c.name} ({c.channels} channels, --anchors {anchors})"))
            elif loc is not None:
                k = _classes_in(c.layout, c.channels, loc[0], c.fields, c.group)
                if k is not None:
                    candidates.append((k, f"{c.name} ({c.channels} channels, {loc[0]} anchors from {loc[1]})"))
    if not candidates and anchors is not None:
        c = chosen[0]
        raise OperationError(
            f"--anchors {anchors} does not divide the channels of any class layer; {c.name} has {c.channels}",
            "--anchors",
            _what_fits(c),
        )
    if not candidates:
        c = chosen[0]
        raise OperationError(
            f"cannot tell how many classes the {c.channels} channels of {c.name} hold",
            c.name,
            "pass --anchors A (boxes per location) or --source-classes K",
        )
    found = {k for k, _ in candidates}
    if len(found) > 1:
        first = candidates[0]
        other = next(x for x in candidates if x[0] != first[0])
        raise OperationError(
            f"layers disagree on the number of classes: {first[1]} gives {first[0]} but {other[1]} gives {other[0]}",
            other[1].split(" ")[0],
            "pass --source-classes K, or --anchors LAYER=A for the layer that differs",
        )
    return candidates[0][0], candidates[0][1]


def _paired_loc_anchors(tree: Tree, c: _Layer) -> tuple[int, str] | None:
    """SSD: the box layer beside a conf layer has 4 channels per anchor."""
    if not (c.row and c.row.loc_suffix):
        return None
    conf, loc = c.row.loc_suffix
    if not c.name.endswith(conf):
        return None
    partner = c.name[: -len(conf)] + loc
    _, main = _layer_tensors(tree, partner)
    if main is None:
        return None
    n = main.shape[_axis_of(main, c.axis)]
    if n % LOC_CHANNELS_PER_ANCHOR:
        return None
    return n // LOC_CHANNELS_PER_ANCHOR, partner


def _anchor_reason(c: _Layer, n_anchors: int, K: int, anchors: int | None, per_layer: Mapping[str, int], k_why: str) -> str:
    shape = f"{c.channels} channels = {n_anchors} anchors × {K + c.fields}" if c.layout.startswith("anchor") else f"{c.channels} channels"
    if c.name in per_layer:
        return f"{shape} (--anchors {c.name}={n_anchors})"
    if anchors is not None and n_anchors != anchors and c.layout.startswith("anchor"):
        return f"{shape}; resolved to {n_anchors} anchors because --anchors {anchors} does not fit {c.channels} channels of {K} classes"
    return f"{shape} (classes from {k_why})"


def _what_fits(c: _Layer) -> str:
    if c.layout == "plain":
        return f"pass --source-classes {c.channels}, or --class-layout if this layer is not a plain classifier"
    if c.layout == "class-major":
        return f"its channel count must be {c.group} × classes; check --class-layout and --source-classes"
    options = [a for a in range(1, min(c.channels, 64) + 1) if _classes_in(c.layout, c.channels, a, c.fields, c.group)]
    pairs = ", ".join(f"{a} anchors × {_classes_in(c.layout, c.channels, a, c.fields, c.group)} classes" for a in options[:8])
    return f"values that fit {c.channels} channels: {pairs}; pass --anchors {c.name}=A or --source-classes K"
