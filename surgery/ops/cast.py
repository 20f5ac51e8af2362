"""Cast floating tensors to another floating dtype; every other tensor is shared untouched."""

from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import OperationError
from ..provenance import record
from ..report import Report
from ..tree import Entry, Tree

__all__ = ["cast_floating", "CAST_TARGETS"]

CAST_TARGETS = ("float16", "bfloat16", "float32")


def cast_floating(tree: Tree, dtype: str) -> tuple[Tree, Report]:
    """Cast every floating tensor to `dtype` (lazily); integers and bools are left as they are.

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("w", np.ones(2, "float32")), Entry.from_array("n", np.ones(1, "int64"))])
        >>> new, report = cast_floating(t, "float16")
        >>> new["w"].dtype, new["n"].dtype, report.names("cast")
        ('float16', 'int64', ['w'])
    """
    if dtype not in CAST_TARGETS:
        raise OperationError(f"cannot cast to {dtype!r}", "--dtype", f"use one of: {', '.join(CAST_TARGETS)}")
    report = Report("cast")
    target = dtypes.get(dtype)
    replace = {}
    for entry in tree.values():
        source = dtypes.get(entry.dtype)
        if not source.is_floating or entry.dtype == dtype:
            continue
        if source.packed:
            raise OperationError(
                f"tensor {entry.name!r} is packed {entry.dtype} and cannot be cast",
                entry.name,
                "convert without --dtype",
            )
        replace[entry.name] = Entry.computed(
            entry.name, entry.shape, target.name, _caster(entry, target), like=entry
        )
        report.add("cast", entry.name, entry.dtype, dtype)
    return record(tree.derive(replace=replace), "cast", dtype=dtype), report


def _caster(entry: Entry, target: dtypes.DType):
    def cast():
        # Values beyond the target's range become ±inf, as numpy and torch define the cast.
        with np.errstate(over="ignore"):
            return entry.read().astype(target.numpy())

    return cast
