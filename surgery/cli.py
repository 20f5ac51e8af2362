"""The `surgery` command line: parse, call the library, print the report.

Library modules (and numpy, h5py, torch, ...) are imported inside commands so
that `surgery --help` stays fast and works without the optional frameworks.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ._version import __version__
from .errors import SurgeryError

# -- errors: one line on stderr, exit 1; click's usage errors keep exit 2 -------------


class _UserError(click.ClickException):
    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class SurgeryGroup(click.Group):
    """Turns every SurgeryError (and OS-level I/O failures) into the one-line error format."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SurgeryError as e:
            raise _UserError(e.one_line()) from e
        except BrokenPipeError:
            # The reader went away (`surgery inspect big.h5 | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            where = e.filename or "I/O"
            raise _UserError(f"{e.strerror or e} ({where}); check the path, permissions and free space") from e


# -- the command group ---------------------------------------------------------------


@click.group(cls=SurgeryGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="surgery")
def main() -> None:
    """Model surgery and weight conversion for fine-tuning.

    Reads a checkpoint lazily (names, shapes and dtypes first, tensor data
    only when needed), edits it, and writes the result atomically. Inputs
    are never modified.

    \b
    Formats: safetensors (single or sharded), npz, Keras HDF5 (.h5, .weights.h5),
    PyTorch checkpoints (.pt, .pth, .bin; zip and legacy; no code runs).
    Start with:  surgery inspect MODEL
    """


# Commands in the order `surgery --help` lists them.
from .commands.inspecting import inspect  # noqa: E402
from .commands.converting import convert  # noqa: E402
from .commands.classes import subsample, upsample, verify  # noqa: E402
from .commands.names import rename, transplant  # noqa: E402
from .commands.layers import strip_head, truncate, reinit, adapt_input  # noqa: E402
from .commands.freezing import freeze  # noqa: E402
from .commands.recipes import apply  # noqa: E402

for _command in (inspect, convert, subsample, upsample, verify, rename, transplant, strip_head, truncate, reinit, adapt_input, freeze, apply):
    main.add_command(_command)
from .commands.clean import clean  # noqa: E402
main.add_command(clean)


if __name__ == "__main__":
    main()
