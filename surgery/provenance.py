"""What was done to a checkpoint, carried in its metadata so every written file can tell.

Each operation appends one step, `{"op": name, ...arguments}`, to a JSON list under
the metadata key `surgery.provenance`. Formats write metadata where they can:
safetensors `__metadata__`, an HDF5 root attribute, npz's side file, and PyTorch's
`state_dict._metadata`. Reading a file brings its history back, so a chain of
edits across several commands and formats stays readable as one list.

    >>> import numpy as np
    >>> from surgery.tree import Entry, Tree
    >>> t = record(Tree([Entry.from_array("w", np.zeros(2, "float32"))]), "cast", dtype="float16")
    >>> [(step["op"], step["dtype"]) for step in history(t)]
    [('cast', 'float16')]
"""

from __future__ import annotations

import json
from typing import Any

from ._version import __version__
from .tree import Tree

__all__ = ["KEY", "record", "history"]

KEY = "surgery.provenance"


def history(tree: Tree) -> list[dict[str, Any]]:
    """The steps recorded so far, oldest first; [] for a file surgery never wrote.

    A history that is not a JSON list (edited by hand, written by someone else) is
    kept as one opaque step rather than lost.
    """
    text = tree.metadata.get(KEY)
    if not text:
        return []
    try:
        steps = json.loads(text)
    except ValueError:
        return [{"op": "unknown", "recorded": text}]
    return steps if isinstance(steps, list) else [{"op": "unknown", "recorded": text}]


def record(tree: Tree, operation: str, **arguments: Any) -> Tree:
    """`tree` with one more step in its history; entries are shared, nothing is read.

    Arguments must be JSON-serialisable (names, numbers, lists); None values are left out
    so the record shows what the user chose.
    """
    step: dict[str, Any] = {"op": operation}
    step.update({k: v for k, v in arguments.items() if v is not None})
    step["version"] = __version__
    metadata = dict(tree.metadata)
    metadata[KEY] = json.dumps([*history(tree), step], ensure_ascii=False, sort_keys=False, default=str)
    return tree.derive(metadata=metadata)
