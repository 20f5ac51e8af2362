"""The `surgery` command line: parse, call the library, print the report.

Library modules (and numpy, h5py, torch, ...) are imported inside commands so
that `surgery --help` stays fast and works without the optional frameworks.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from ._version import __version__
from .errors import SurgeryError

# -- errors: one line on stderr; exit 1 for user errors, 2 for usage errors, 130 for Ctrl-C ---

INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


class _UserError(click.ClickException):
    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _Interrupted(click.ClickException):
    exit_code = INTERRUPTED
    LINE = "error: interrupted (Ctrl-C); nothing was written, and no temporary file is left"

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: Any = None) -> None:
        click.echo(self.LINE, err=True)


def usage_line(e: click.UsageError) -> str:
    """Click's usage error as our one line: what, then where to read the command's help."""
    message = " ".join(e.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    command, ctx = [], e.ctx
    while ctx is not None and ctx.parent is not None:  # the root's name is how it was started (python -m ...)
        command.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return f"error: {message}; see '{' '.join(['surgery', *command, '--help'])}'"


class SurgeryGroup(click.Group):
    """Turns every SurgeryError (and OS-level I/O failures) into the one-line error format."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Click's main, with its usage block replaced by our one-line errors."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(usage_line(e), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(_Interrupted.LINE, err=True)
            sys.exit(INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        """An unknown command gets the nearest names, on the same one line; list options take @FILE."""
        try:
            name, command, rest = super().resolve_command(ctx, args)
        except click.UsageError as e:
            import difflib

            near = difflib.get_close_matches(args[0], self.list_commands(ctx), n=3) if args else []
            hint = f"; did you mean {' or '.join(near)}" if near else ""
            raise click.UsageError(f"no such command {args[0]!r}{hint}" if args else str(e), ctx) from None
        if command is not None:
            from .commands.at_files import expand

            rest = expand(command, rest)  # --classes @FILE and friends (see surgery.commands.at_files)
        return name, command, rest

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        """The command called `name`, its module imported the first time it is asked for (see COMMANDS)."""
        if name not in self.commands and name in COMMANDS:
            module, function = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"surgery.commands.{module}"), function), name)
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SurgeryError as e:
            raise _UserError(e.one_line()) from e
        except KeyboardInterrupt:
            # Caught here, before click prints its blank line and `Aborted!`.
            raise _Interrupted() from None
        except BrokenPipeError:
            # The reader went away (`surgery inspect big.h5 | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:
            where = e.filename or "I/O"
            raise _UserError(f"{e.strerror or e} ({where}); check the path, permissions and free space") from e


# -- the command group ---------------------------------------------------------------

# Every command: its name -> (module in surgery.commands, function). A command's module is
# imported when that command runs or `--help` lists it, not at start: `surgery inspect` then
# skips importing the other fifteen (about 12 ms of a 0.1 s run). `--help` lists them sorted.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspecting", "inspect"),
    "convert": ("converting", "convert"),
    "subsample": ("classes", "subsample"),
    "upsample": ("classes", "upsample"),
    "verify": ("classes", "verify"),
    "rename": ("names", "rename"),
    "transplant": ("names", "transplant"),
    "strip-head": ("layers", "strip_head"),
    "truncate": ("layers", "truncate"),
    "reinit": ("layers", "reinit"),
    "adapt-input": ("layers", "adapt_input"),
    "freeze": ("freezing", "freeze"),
    "apply": ("recipes", "apply"),
    "diff": ("diff", "diff"),
    "export-onnx": ("export", "export_onnx"),
    "clean": ("clean", "clean"),
}


@click.group("surgery", cls=SurgeryGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="surgery")
def main() -> None:
    """Model surgery and weight conversion for fine-tuning.

    Reads a checkpoint lazily (names, shapes and dtypes first, tensor data
    only when needed), edits it, and writes the result atomically. Inputs
    are never modified.

    \b
    Formats: safetensors (single or sharded), npz, Keras HDF5 (.h5, .weights.h5),
    PyTorch checkpoints (.pt, .pth, .bin; zip and legacy; no code runs),
    ONNX models (.onnx, inline or external data).
    Start with:  surgery inspect MODEL
    """


if __name__ == "__main__":
    main()
