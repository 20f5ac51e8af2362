"""One exception root for everything `surgery` refuses to do.

Every error carries three parts so the CLI can print the house format
``error: <what> (<where>); <how to fix>`` on a single line.
"""

from __future__ import annotations

__all__ = [
    "SurgeryError",
    "FormatError",
    "CorruptFileError",
    "UnsafeFileError",
    "OutputError",
    "OperationError",
]


class SurgeryError(Exception):
    """Root of every error `surgery` raises on purpose.

    Args:
        what: what is wrong, stated as a fact ("header length 900 runs past the end of the file").
        where: the file, tensor or option concerned.
        fix: what the user can do about it.
    """

    exit_code = 1

    def __init__(self, what: str, where: str = "", fix: str = "") -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.what
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f"; {self.fix}"
        # The CLI promises one line: never let a newline in a name split it.
        return " ".join(text.splitlines())


class FormatError(SurgeryError):
    """A file's format is unknown, unsupported, or cannot be detected."""


class CorruptFileError(FormatError):
    """A file claims a structure its bytes do not have (truncated, overlapping, bad JSON, ...)."""


class UnsafeFileError(FormatError):
    """A file asks for something we refuse on principle, such as running code while loading."""


class OutputError(SurgeryError):
    """An output cannot be written where or how it was asked for."""


class OperationError(SurgeryError):
    """An operation's arguments do not fit the tree it was given."""
