"""Class-axis surgery: keep, reorder, repeat or add classes in classifier heads, per anchor.

A detection head's output channels interleave classes with anchors (boxes per
location). SSD lays them out anchor-major, `anchor*K + class`, so keeping
classes [0, 3, 8] of a 4-anchor, 81-class layer keeps channels
[0, 3, 8, 81, 84, 89, 162, ...]. This module works out those channel lists
for every head layout (see `surgery.heads`), checks them against each layer's
shape, and builds a new tree whose head tensors are computed lazily.

Planning (`plan_classes`) and applying (`apply_plan`) are separate so that a dry
run shows exactly what a real run does, and `verify` can replay a plan.
Finding the head layers and what their channels hold is `class_heads`'s; `verify` lives in
`class_verify`. Framework-free: numpy only.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import dtypes
from ..errors import OperationError
from ..graph import graph_of
from ..keras_config import follow_class_plan
from ..labels import follow as follow_labels
from ..labels import prepare as prepare_names
from ..labels import record as record_labels
from ..provenance import record
from ..report import Report
from ..tree import Entry, Tree
from .class_heads import (
    _anchor_reason,
    _anchors_for,
    _axis_of,
    _choose_layers,
    _classes_in,
    _Layer,
    _new_shape,
    _source_class_count,
    _what_fits,
)
from .class_verify import verify
from .optimizer_state import follow_classes

__all__ = [
    "LAYOUTS",
    "INITS",
    "LayerPlan",
    "ClassPlan",
    "parse_classes",
    "channel_map",
    "plan_classes",
    "apply_plan",
    "resample_classes",
    "verify",
]

LAYOUTS = ("anchor-major", "anchor-major-fields", "class-major", "plain")
INITS = ("gaussian", "zeros", "xavier", "mean", "copy:<class>")
GAUSSIAN_STD = 0.005  # the SSD weight-sampling tutorial's default for new classes

# One output channel: an int is the source channel it copies; a tuple marks a new
# class and holds the source channels of every class in its anchor group (so that
# `mean` and `copy:<class>` know where to look).
Channel = int | tuple[int, ...]


@dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer."""

    layer: str
    layout: str
    channels: int
    anchors: int
    fields: int
    group: int
    tensors: tuple[str, ...]
    axis: int
    channel_map: tuple[Channel, ...]
    why: str
    background: str = "none"  # the head's background class: "first", "last" or "none" (surgery.heads)

    @property
    def new_channels(self) -> int:
        return len(self.channel_map)


@dataclass(frozen=True)
class ClassPlan:
    """The whole edit: the source class count, the new class list and each layer's plan."""

    source_classes: int
    classes: tuple[int | None, ...]
    layers: tuple[LayerPlan, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def adds_classes(self) -> bool:
        return None in self.classes  # a C-level scan: plans of 250,000-class heads ask several times

    @property
    def background_first(self) -> bool:
        """The heads are a detection family's whose class 0 is background (SSD, Faster R-CNN)."""
        return any(lp.background == "first" for lp in self.layers)

    def to_json(self, tree: Tree) -> dict[str, object]:
        return {
            "source_classes": self.source_classes,
            "num_classes": self.num_classes,
            "classes": ["new" if c is None else c for c in self.classes],
            "layers": [
                {
                    "layer": lp.layer,
                    "layout": lp.layout,
                    "anchors": lp.anchors,
                    "why": lp.why,
                    "channels": [c if isinstance(c, int) else "new" for c in lp.channel_map],
                    "tensors": [
                        {"name": n, "before": list(tree[n].shape), "after": list(_new_shape(tree[n], lp))}
                        for n in lp.tensors
                    ],
                }
                for lp in self.layers
            ],
            "notes": list(self.notes),
        }


# -- parsing ------------------------------------------------------------------------


def parse_classes(text: str) -> list[int | None]:
    """'0,3,8,new' -> [0, 3, 8, None]. Ranges 'a-b' are inclusive. Order is kept."""
    out: list[int | None] = []
    for token in (t.strip() for t in text.split(",")):
        if token.lower() == "new":
            out.append(None)
        elif token.lstrip("-").isdigit():
            out.append(int(token))
        elif "-" in token and all(p.isdigit() for p in token.split("-", 1)):
            lo, hi = (int(p) for p in token.split("-", 1))
            out.extend(range(lo, hi + 1))
        else:
            raise OperationError(
                f"{token!r} is not a class index", "--classes", "write source indices like 0,3,8 or 1-5, and 'new' to add a class"
            )
    if not out:
        raise OperationError("no classes given", "--classes", "write source indices like 0,3,8")
    return out


# -- channel arithmetic -------------------------------------------------------------


def channel_map(
    layout: str, source_classes: int, anchors: int, classes: Sequence[int | None], *, fields: int = 0, group: int = 1
) -> list[Channel]:
    """The source channel of every output channel, for one layer.

    >>> channel_map("anchor-major", 81, 2, [0, 3])
    [0, 3, 81, 84]
    """
    K = source_classes
    out: list[Channel] = []
    if layout in ("anchor-major", "anchor-major-fields"):
        stride = K + fields
        for a in range(anchors):
            base = a * stride
            out.extend(range(base, base + fields))  # per-anchor fields (YOLO box + objectness) stay
            every = tuple(base + fields + c for c in range(K))
            out.extend(every if c is None else base + fields + c for c in classes)
    elif layout == "class-major":
        for c in classes:
            if c is None:
                out.extend(tuple(k2 * group + k for k2 in range(K)) for k in range(group))
            else:
                out.extend(c * group + k for k in range(group))
    elif layout == "plain":
        every = tuple(range(K))
        out.extend(every if c is None else c for c in classes)
    else:
        raise OperationError(f"unknown layout {layout!r}", "--class-layout", f"use one of: {', '.join(LAYOUTS)}")
    return out


# -- planning -----------------------------------------------------------------------


def plan_classes(
    tree: Tree,
    classes: Sequence[int | None] | None = None,
    *,
    num_classes: int | None = None,
    seed: int | None = None,
    layer_globs: Iterable[str] = (),
    layout: str | None = None,
    source_classes: int | None = None,
    anchors: int | None = None,
    anchors_per_layer: Mapping[str, int] | None = None,
    axis: int | None = None,
    fields: int | None = None,
    group: int | None = None,
) -> ClassPlan:
    """Work out every channel list before any data is read.

    Args:
        tree: the checkpoint.
        classes: source class indices in their new order; None adds a new class.
        num_classes: instead of `classes`: fewer than the source picks at random (keeping
            background), more keeps all and adds new ones.
        seed: for the random pick (default 0, reported).
        layer_globs: which layers; default: detect from `surgery.heads.CLASS_HEADS`.
        layout: force one layout for every layer.
        source_classes: the source class count K, when it cannot be inferred.
        anchors: boxes per location, applied where it divides a layer's channels consistently.
        anchors_per_layer: layer name -> anchors, overriding the above.
        axis: the class axis of multi-dimensional tensors (default: the tree's convention).
        fields: leading per-anchor fields in the anchor-major-fields layout (default: the head's, or 5).
        group: numbers per class in the class-major layout (default: the head's, or 4).

    Raises:
        OperationError: with the layer, its channel count and the values that would fit.
    """
    anchors_per_layer = dict(anchors_per_layer or {})
    if (classes is None) == (num_classes is None):
        raise OperationError("give either the classes to keep or their number", "--classes", "pass --classes 0,3,8 or --num-classes N")
    chosen = _choose_layers(tree, list(layer_globs), layout, axis, fields, group)
    unknown = set(anchors_per_layer) - {c.name for c in chosen}
    if unknown:
        raise OperationError(
            f"--anchors names layer {sorted(unknown)[0]!r}, which is not one of the class layers",
            "--anchors",
            f"name one of: {', '.join(c.name for c in chosen)}",
        )
    K, k_why = _source_class_count(tree, chosen, source_classes, anchors, anchors_per_layer)
    notes: list[str] = []
    if axis is None and tree.convention.out_axis is None:
        from ..conventions import convention_of

        notes.append(f"class axis from the names: {convention_of(tree).why}; pass --axis to override")
    picked = _pick_classes(K, classes, num_classes, seed, chosen, notes)
    for c in picked:
        if c is not None and not 0 <= c < K:
            raise OperationError(
                f"class index {c} is out of range: {chosen[0].name} has {K} classes, so indices run 0..{K - 1}",
                "--classes",
                "use source indices in that range (0 is the background class in SSD heads)",
            )
    repeats = {c: n for c, n in Counter(c for c in picked if c is not None).items() if n > 1}
    for c, n in sorted(repeats.items()):
        notes.append(f"class {c} is kept {n} times; its weights are copied to each place")
    plans = []
    for c in chosen:
        n_anchors = anchors_per_layer.get(c.name)
        if n_anchors is None:
            n_anchors = _anchors_for(c.layout, c.channels, K, c.fields, c.group)
        elif _classes_in(c.layout, c.channels, n_anchors, c.fields, c.group) != K:
            n_anchors = None
        if n_anchors is None:
            raise OperationError(
                f"layer {c.name} has {c.channels} channels, which do not hold {K} classes in the {c.layout} layout",
                c.name,
                _what_fits(c),
            )
        how = _anchor_reason(c, n_anchors, K, anchors, anchors_per_layer, k_why)
        cmap = channel_map(c.layout, K, n_anchors, picked, fields=c.fields, group=c.group)
        plans.append(LayerPlan(c.name, c.layout, c.channels, n_anchors, c.fields, c.group, c.tensors, c.axis, tuple(cmap), f"{c.why}; {how}", c.row.background if c.row else "none"))
    return ClassPlan(K, tuple(picked), tuple(plans), tuple(notes))


def _pick_classes(
    K: int, classes: Sequence[int | None] | None, num_classes: int | None, seed: int | None, chosen: list[_Layer], notes: list[str]
) -> list[int | None]:
    if classes is not None:
        return list(classes)
    assert num_classes is not None
    if num_classes <= 0:
        raise OperationError(f"--num-classes {num_classes} must be positive", "--num-classes", "give the class count you want")
    if num_classes >= K:
        if num_classes > K:
            notes.append(f"all {K} classes kept; {num_classes - K} new classes added at the end")
        return [*range(K), *([None] * (num_classes - K))]
    seed = 0 if seed is None else seed
    background = next((c.row.background for c in chosen if c.row), "none")
    keep = {"first": [0], "last": [K - 1]}.get(background, [])
    pool = np.delete(np.arange(K), keep)  # the same pool as a Python filter, without 250,000 steps in Python
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(pool, num_classes - len(keep), replace=False)).tolist()
    notes.append(f"picked {num_classes} of {K} classes at random with seed {seed}" + (f", keeping background {keep[0]}" if keep else ""))
    return sorted(keep + picked)


# -- applying -----------------------------------------------------------------------


def apply_plan(tree: Tree, plan: ClassPlan, *, init: str = "gaussian", seed: int | None = None, labels: Sequence[str] | None = None) -> tuple[Tree, Report]:
    """The tree with every planned tensor replaced by a lazily computed one; dtypes are kept.

    `labels` are the new class names, one per output class; by default they follow the
    tree's own labels (`surgery.labels.follow`). They are recorded as `surgery.labels`.
    """
    copy_of = _parse_init(init, plan)
    seed = 0 if seed is None else seed
    report = Report("classes")
    replace: dict[str, Entry] = {}
    for lp in plan.layers:
        for name in lp.tensors:
            e = tree[name]
            shape = _new_shape(e, lp)
            replace[name] = Entry.computed(name, shape, e.dtype, _computer(e, lp, init, copy_of, seed), like=e)
            report.add("reshaped", name, str(list(e.shape)), str(list(shape)), f"{lp.anchors} anchors")
    metadata = dict(tree.metadata)
    metadata["surgery.num_classes"] = str(plan.num_classes)
    metadata["surgery.source_classes"] = json.dumps(["new" if c is None else c for c in plan.classes])
    report.notes.extend(follow_class_plan(metadata, plan))  # a Keras model_config follows the new class count
    report.facts.update(num_classes=plan.num_classes, source_classes=plan.source_classes)
    report.notes.extend(plan.notes)
    if plan.adds_classes:
        report.notes.append(f"new classes initialised with {init} (seed {seed})")
    edited = tree.derive(replace=replace, metadata=metadata)
    edited = follow_classes(tree, edited, plan, report)  # the optimizer's moments take the same channels
    graph = graph_of(tree)
    if graph is not None:  # an ONNX graph: its Reshape constants, Splits and outputs follow the edit
        edited = graph.follow_classes(tree, edited, plan, report)
    edited = record_labels(edited, list(labels) if labels is not None else follow_labels(tree, plan.classes))
    step = "upsample" if plan.adds_classes else "subsample"
    return record(edited, step, classes=json.loads(metadata["surgery.source_classes"]), layers=[lp.layer for lp in plan.layers], init=init if plan.adds_classes else None, seed=seed if plan.adds_classes else None), report


def resample_classes(tree: Tree, classes=None, *, init: str = "gaussian", seed: int | None = None, labels=None, to_labels=None, background: bool = True, **options) -> tuple[Tree, Report]:
    """Plan and apply in one call; see `plan_classes` for the options.

    `classes` may be class names, resolved in `labels` (a built-in table name, a label
    file, or a list of names; default: the checkpoint's own labels), with background
    kept first unless `background=False` (see `surgery.labels.resolve_classes`);
    `to_labels` instead moves the head to that label space by name.

    Example:
        >>> new, report = resample_classes(tree, [0, 3, 8, 1, 2, 10, 4, 6, 12], anchors=4)  # doctest: +SKIP
        >>> new, report = resample_classes(tree, ["person", "car"], labels="coco80+bg", anchors=4)  # doctest: +SKIP
    """
    named = prepare_names(tree, classes, labels=labels, background=background, to_labels=to_labels, layer_globs=options.pop("layer_globs", ()))
    plan = plan_classes(tree, named.classes, seed=seed, layer_globs=named.layer_globs, **options)
    edited, report = apply_plan(tree, plan, init=init, seed=seed, labels=named.names(plan))
    report.notes[:0] = named.notes
    return edited, report


def check_init(init: str) -> None:
    """Refuse an init name that no plan accepts (copy:C is checked against the plan later)."""
    if init.startswith("copy:"):
        if not init.split(":", 1)[1].isdigit():
            raise OperationError(f"--init {init} names no source class", "--init", "use copy:C with C a class index")
    elif init not in ("gaussian", "zeros", "xavier", "mean"):
        raise OperationError(f"unknown --init {init!r}", "--init", f"use one of: {', '.join(INITS)}")


def _parse_init(init: str, plan: ClassPlan) -> int | None:
    if init.startswith("copy:"):
        text = init.split(":", 1)[1]
        if not text.isdigit() or int(text) >= plan.source_classes:
            raise OperationError(
                f"--init {init} names no source class", "--init", f"use copy:C with C in 0..{plan.source_classes - 1}"
            )
        return int(text)
    if init not in ("gaussian", "zeros", "xavier", "mean"):
        raise OperationError(f"unknown --init {init!r}", "--init", f"use one of: {', '.join(INITS)}")
    return None


def _computer(e: Entry, lp: LayerPlan, init: str, copy_of: int | None, seed: int):
    def compute() -> np.ndarray:
        ax = _axis_of(e, lp.axis)
        taken = [c if isinstance(c, int) else (c[copy_of] if copy_of is not None else 0) for c in lp.channel_map]
        new = [j for j, c in enumerate(lp.channel_map) if not isinstance(c, int)]
        if new and copy_of is None and init == "mean":  # the mean of old classes needs them all
            source = e.read()
            out = np.take(source, taken, axis=ax)
        else:  # read only the kept classes' slices where the source can: memory stays near the output
            source = None
            out = e.take(taken, ax)
        if new and copy_of is None:
            _fill_new(out, source, ax, new, lp, init, seed, e)
        return out

    return compute


def _fill_new(out: np.ndarray, source: np.ndarray | None, ax: int, new: list[int], lp: LayerPlan, init: str, seed: int, e: Entry) -> None:
    moved = np.moveaxis(out, ax, 0)  # a view: writes land in `out`
    is_bias = out.ndim == 1
    if init == "mean":
        src = np.moveaxis(source, ax, 0)
        for j in new:
            moved[j] = src[list(lp.channel_map[j])].astype(np.float64).mean(axis=0).astype(out.dtype)
        return
    if init == "zeros" or is_bias:  # biases of new classes start at zero (the tutorial's rule)
        moved[new] = 0
        return
    rng = np.random.default_rng([seed, zlib.crc32(e.name.encode("utf-8"))])
    shape = (len(new), *moved.shape[1:])
    if init == "gaussian":
        values = rng.normal(0.0, GAUSSIAN_STD, size=shape)
    else:  # xavier (Glorot) uniform over this kernel's fans
        receptive = math.prod(moved.shape[1:]) // max(_in_channels(e, lp.axis), 1)
        fan_in = math.prod(moved.shape[1:])
        fan_out = receptive * lp.new_channels
        limit = math.sqrt(6.0 / max(fan_in + fan_out, 1))  # zero-size kernels have nothing to fill
        values = rng.uniform(-limit, limit, size=shape)
    target = dtypes.get(e.dtype).numpy()
    moved[new] = values.astype(np.float32).astype(target)


def _in_channels(e: Entry, axis: int) -> int:
    """Input channels of a kernel: Keras (..., in, out) or PyTorch (out, in, ...)."""
    if len(e.shape) < 2:
        return 1
    return e.shape[-2] if axis % len(e.shape) == len(e.shape) - 1 else e.shape[1]
