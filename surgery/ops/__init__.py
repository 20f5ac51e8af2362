"""Operations: pure functions from a tree to a new tree and a report. They never touch files.

Recipes name them through the one registry in `surgery.ops.steps`.
"""

from __future__ import annotations

from .cast import cast_floating
from .classes import plan_classes, resample_classes
from .freeze import FreezeMap, freeze_map
from .layout import convert_layout
from .names import parse_rule, rename, select, strip_prefix
from .reinit import adapt_input, reinit
from .strip import HeadMatch, detect_head, strip_head, truncate
from .transplant import transplant

__all__ = [
    "cast_floating",
    "plan_classes",
    "resample_classes",
    "strip_head",
    "truncate",
    "detect_head",
    "HeadMatch",
    "reinit",
    "adapt_input",
    "freeze_map",
    "FreezeMap",
    "rename",
    "strip_prefix",
    "select",
    "parse_rule",
    "transplant",
    "convert_layout",
]
