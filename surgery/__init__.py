"""surgery: model surgery and weight conversion over a lazy named tensor tree.

    >>> import surgery
    >>> tree = surgery.load("fixtures/tiny.safetensors")       # doctest: +SKIP
    >>> half, report = surgery.ops.cast_floating(tree, "float16")  # doctest: +SKIP
    >>> surgery.save(half, "tiny-fp16.safetensors")             # doctest: +SKIP
"""

from __future__ import annotations

from . import ops
from ._version import __version__
from .errors import CorruptFileError, FormatError, OperationError, OutputError, SurgeryError, UnsafeFileError
from .io import load, save
from .report import Change, Report
from .tree import KERAS, TORCH, UNKNOWN, Convention, Entry, Tree

__all__ = [
    "__version__",
    "load",
    "save",
    "ops",
    "Tree",
    "Entry",
    "Convention",
    "KERAS",
    "TORCH",
    "UNKNOWN",
    "Report",
    "Change",
    "SurgeryError",
    "FormatError",
    "CorruptFileError",
    "UnsafeFileError",
    "OutputError",
    "OperationError",
]
