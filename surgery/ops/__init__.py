"""Operations: pure functions from a tree to a new tree and a report. They never touch files.

Recipes name them through the one registry in `surgery.ops.steps`.

Each operation's module is imported on first use (PEP 562, as the package root does): a
command that needs one operation, `surgery diff` for instance, does not pay for the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .cast import cast_floating  # noqa: F401
    from .classes import plan_classes, resample_classes  # noqa: F401
    from .freeze import FreezeMap, freeze_map  # noqa: F401
    from .layout import convert_layout  # noqa: F401
    from .names import parse_rule, rename, select, strip_prefix  # noqa: F401
    from .reinit import adapt_input, reinit  # noqa: F401
    from .strip import HeadMatch, detect_head, strip_head, truncate  # noqa: F401
    from .transplant import transplant  # noqa: F401

# name -> the module that defines it; every entry is in __all__ too.
_LAZY = {
    "cast_floating": "surgery.ops.cast",
    "plan_classes": "surgery.ops.classes",
    "resample_classes": "surgery.ops.classes",
    "strip_head": "surgery.ops.strip",
    "truncate": "surgery.ops.strip",
    "detect_head": "surgery.ops.strip",
    "HeadMatch": "surgery.ops.strip",
    "reinit": "surgery.ops.reinit",
    "adapt_input": "surgery.ops.reinit",
    "freeze_map": "surgery.ops.freeze",
    "FreezeMap": "surgery.ops.freeze",
    "rename": "surgery.ops.names",
    "strip_prefix": "surgery.ops.names",
    "select": "surgery.ops.names",
    "parse_rule": "surgery.ops.names",
    "transplant": "surgery.ops.transplant",
    "convert_layout": "surgery.ops.layout",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
