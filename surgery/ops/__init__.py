"""Operations: pure functions from a tree to a new tree and a report. They never touch files."""

from __future__ import annotations

from .cast import cast_floating
from .classes import plan_classes, resample_classes

__all__ = ["cast_floating", "plan_classes", "resample_classes"]
