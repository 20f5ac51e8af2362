"""Operations: pure functions from a tree to a new tree and a report. They never touch files."""

from __future__ import annotations

from .cast import cast_floating

__all__ = ["cast_floating"]
