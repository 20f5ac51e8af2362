"""surgery: model surgery and weight conversion over a lazy named tensor tree.

    >>> import surgery
    >>> tree = surgery.load("fixtures/tiny.safetensors")       # doctest: +SKIP
    >>> half, report = surgery.ops.cast_floating(tree, "float16")  # doctest: +SKIP
    >>> surgery.save(half, "tiny-fp16.safetensors")             # doctest: +SKIP

The public names below are imported on first use (PEP 562), not with the package:
the command line lives in `surgery.cli`, and importing numpy for `surgery --help`
would cost it most of its start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__
from .errors import CorruptFileError, FormatError, OperationError, OutputError, SurgeryError, UnsafeFileError

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import ops  # noqa: F401
    from .io import load, save  # noqa: F401
    from .report import Change, Report  # noqa: F401
    from .tree import KERAS, TORCH, UNKNOWN, Convention, Entry, Tree  # noqa: F401

# name -> the module that defines it; every entry is listed in __all__ too.
_LAZY = {
    "load": "surgery.io",
    "save": "surgery.io",
    "ops": "surgery.ops",
    "Tree": "surgery.tree",
    "Entry": "surgery.tree",
    "Convention": "surgery.tree",
    "KERAS": "surgery.tree",
    "TORCH": "surgery.tree",
    "UNKNOWN": "surgery.tree",
    "Report": "surgery.report",
    "Change": "surgery.report",
}

__all__ = [
    "__version__",
    *_LAZY,
    "SurgeryError",
    "FormatError",
    "CorruptFileError",
    "UnsafeFileError",
    "OutputError",
    "OperationError",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
