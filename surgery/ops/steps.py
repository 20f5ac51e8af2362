"""The one registry of operations a recipe can name, with recipe-shaped signatures.

Each step takes the tree first and then keyword options named as the command's
flags are (underscores for dashes), with plain JSON/TOML values: lists for
repeatable flags, "0,3,8" or [0, 3, 8] for class lists. Each returns
(tree, report), like every operation. The operation modules are imported only
when a step runs, so listing the registry is free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import OperationError
from ..report import Report
from ..tree import Tree

__all__ = ["STEPS"]

Result = tuple[Tree, Report]


def _classes(value: Any) -> list[int | None] | None:
    """A class list as a recipe writes it: "0,3,8,new" or [0, 3, 8, "new"]."""
    from .classes import parse_classes

    if value is None:
        return None
    if isinstance(value, str):
        return parse_classes(value)
    return parse_classes(",".join(str(v) for v in value))


def _anchors(value: Any) -> tuple[int | None, dict[str, int]]:
    """anchors = 4, or {"fc7_mbox_conf" = 6, ...}, or both as {"*": 4, layer: n}."""
    if value is None or isinstance(value, int):
        return value, {}
    if isinstance(value, dict):
        overall = value.get("*")
        return overall, {k: int(v) for k, v in value.items() if k != "*"}
    raise OperationError(f"anchors {value!r} is not a count or a table", "anchors", "write anchors = 4 or anchors = {fc7_mbox_conf = 6}")


def _resample(kind: str, tree: Tree, classes, num_classes, anchors, layers, layout, source_classes, seed, init) -> Result:
    from .classes import apply_plan, plan_classes

    overall, per_layer = _anchors(anchors)
    plan = plan_classes(
        tree,
        _classes(classes),
        num_classes=num_classes,
        seed=seed,
        layer_globs=_list(layers),
        layout=layout,
        source_classes=source_classes,
        anchors=overall,
        anchors_per_layer=per_layer,
    )
    if kind == "subsample" and plan.adds_classes:
        raise OperationError("subsample cannot add classes", "classes", "use an upsample step to add new classes")
    return apply_plan(tree, plan, init=init, seed=seed)


# `class_layout` is the command's --class-layout; `layout`, its name before, is still read.
def subsample(tree: Tree, *, classes=None, num_classes=None, anchors=None, layers=(), class_layout=None, source_classes=None, seed=None, layout=None) -> Result:
    return _resample("subsample", tree, classes, num_classes, anchors, layers, class_layout or layout, source_classes, seed, "gaussian")


def upsample(tree: Tree, *, classes=None, num_classes=None, anchors=None, layers=(), class_layout=None, source_classes=None, seed=None, init="gaussian", layout=None) -> Result:
    return _resample("upsample", tree, classes, num_classes, anchors, layers, class_layout or layout, source_classes, seed, init)


def cast(tree: Tree, *, dtype: str) -> Result:
    from .cast import cast_floating

    return cast_floating(tree, dtype)


def strip_head(tree: Tree, *, head=(), family=None) -> Result:
    from .strip import strip_head as run

    return run(tree, _list(head), family=family)


def truncate(tree: Tree, *, after: str) -> Result:
    from .strip import truncate as run

    return run(tree, after)


def reinit(tree: Tree, *, layers, init: str, seed: int = 0, bias_init: str = "zeros", layout=None) -> Result:
    from .reinit import reinit as run

    return run(tree, _list(layers), init, seed=seed, bias_init=bias_init, layout=layout)


def adapt_input(tree: Tree, *, channels: int, layer=None, layout=None) -> Result:
    from .reinit import adapt_input as run

    return run(tree, channels, layer=layer, layout=layout)


def rename(tree: Tree, *, map=(), strip_prefix=None, keep=(), drop=()) -> Result:
    """Strip a prefix, keep or drop by glob, then apply the REGEX=REPL rules, as `surgery rename` does."""
    from .names import apply_names, parse_rule

    rules = [parse_rule(r) if isinstance(r, str) else (r[0], r[1]) for r in _list(map)]
    tree, reports = apply_names(tree, strip=strip_prefix, keep=_list(keep), drop=_list(drop), rules=rules)
    report = Report("rename")
    for step in reports:
        report.changes.extend(step.changes)
        report.notes.extend(step.notes)
    return tree, report


def convert_layout(tree: Tree, *, layout: str, flatten_shape=(), rules=(), transposed=(), depthwise=(), from_layout=None) -> Result:
    from .layout import convert_layout as run, parse_flatten_shape

    shapes = dict(parse_flatten_shape(s) for s in _list(flatten_shape))
    pairs = [tuple(r) for r in rules] if rules else None
    return run(tree, layout, flatten_shapes=shapes, rules=pairs, transposed=_list(transposed), depthwise=_list(depthwise), source=from_layout)


def _list(value: Any) -> list[str]:
    """A repeatable flag: one string or a list of them."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _registry(*steps: tuple[str, Callable[..., Result]]) -> dict[str, Callable[..., Result]]:
    registry: dict[str, Callable[..., Result]] = {}
    for name, function in steps:
        if name in registry:
            raise RuntimeError(f"step {name!r} is registered twice")
        registry[name] = function
    return registry


STEPS: dict[str, Callable[..., Result]] = _registry(
    ("subsample", subsample),
    ("upsample", upsample),
    ("cast", cast),
    ("rename", rename),
    ("convert-layout", convert_layout),
    ("strip-head", strip_head),
    ("truncate", truncate),
    ("reinit", reinit),
    ("adapt-input", adapt_input),
)


def names() -> Sequence[str]:
    return list(STEPS)
