"""The `surgery` command line: parse, call the library, print the report.

Library modules (and numpy, h5py, torch, ...) are imported inside commands so
that `surgery --help` stays fast and works without the optional frameworks.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .errors import SurgeryError
from .formats import names as _format_names

FORMAT_NAMES = _format_names()

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
        except OSError as e:
            where = e.filename or "I/O"
            raise _UserError(f"{e.strerror or e} ({where}); check the path, permissions and free space") from e


# -- shared options and parameter types ---------------------------------------------


class SizeType(click.ParamType):
    """A byte size: 1000000, 500MB, 5GB, 2GiB."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from .sizes import parse_size

        try:
            return parse_size(value, f"--{param.name.replace('_', '-')}" if param else "size")
        except SurgeryError as e:
            self.fail(e.what + "; write e.g. 500MB or 5GB", param, ctx)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON document on stdout instead of text.")(f)


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on stderr.")(f)


def output_options(f: Callable) -> Callable:
    """-o/--output, --force and --dry-run, shared by every command that writes."""
    f = click.option("--dry-run", is_flag=True, help="Print what would be written, and write nothing.")(f)
    f = click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (never an input).")(f)
    f = click.option(
        "-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the result."
    )(f)
    return f


def _progress(label: str, total: int, quiet: bool):
    from .progress import Progress

    return Progress(label, total, enabled=not quiet)


def _emit_json(document: dict) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _printable(name: str) -> str:
    """Names may hold any Unicode; escape control characters so one tensor stays one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in name)


# -- the command group ---------------------------------------------------------------


@click.group(cls=SurgeryGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="surgery")
def main() -> None:
    """Model surgery and weight conversion for fine-tuning.

    Reads a checkpoint lazily (names, shapes and dtypes first, tensor data
    only when needed), edits it, and writes the result atomically. Inputs
    are never modified.

    \b
    Formats: safetensors (single or sharded), npz, Keras HDF5 (.h5, .weights.h5).
    Start with:  surgery inspect MODEL
    """


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--filter", "filters", multiple=True, metavar="GLOB", help="Only tensors whose name matches (repeatable).")
@json_option
def inspect(path: Path, filters: tuple[str, ...], as_json: bool) -> None:
    """List a checkpoint's tensors: name, shape, dtype and size.

    PATH is a file, a sharded checkpoint's index .json, or a folder that
    holds one. No tensor data is read.

    \b
    Examples:
      surgery inspect model.safetensors
      surgery inspect model.safetensors.index.json --filter '*.bias'
      surgery inspect model.npz --json | jq '.total_bytes'
    """
    from .io import load

    tree = load(path)
    entries = _filtered(tree, filters, path)
    total = sum(e.nbytes for e in entries)
    if as_json:
        _emit_json(
            {
                "format": tree.format,
                "tensors": [
                    {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "nbytes": e.nbytes} for e in entries
                ],
                "total_bytes": total,
                "metadata": tree.metadata,
            }
        )
        return
    _print_table(tree, entries, total)


def _filtered(tree, filters: tuple[str, ...], path: Path) -> list:
    if not filters:
        return tree.entries()
    kept = [e for e in tree.values() if any(fnmatch.fnmatchcase(e.name, g) for g in filters)]
    if not kept:
        raise SurgeryError(
            f"no tensor name matches --filter {' '.join(filters)}",
            str(path),
            "list the names without --filter; globs are case-sensitive and '*' crosses '/' and '.'",
        )
    return kept


def _print_table(tree, entries: list, total: int) -> None:
    from .sizes import format_size

    rows = [(_printable(e.name), "[" + ", ".join(map(str, e.shape)) + "]", e.dtype, format_size(e.nbytes)) for e in entries]
    headers = ("name", "shape", "dtype", "size")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
    click.echo(line.format(*headers))
    for row in rows:
        click.echo(line.format(*row))
    click.echo(
        f"{len(entries)} tensors, {total:,} bytes ({format_size(total)}); format {tree.format}, convention {tree.convention}"
    )
    for key, value in tree.metadata.items():
        click.echo(f"metadata {_printable(key)} = {_shortened(_printable(value))}")
    from .formats.keras_h5 import dropped_on_read

    if dropped_on_read(tree):
        click.echo(f"not read: {dropped_on_read(tree)}")


def _shortened(text: str, limit: int = 100) -> str:
    """Long metadata (a Keras model_config) would flood the table; --json prints it whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters; --json shows all)"


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--to", "to", type=click.Choice(FORMAT_NAMES), help="Output format (default: from OUTPUT's suffix).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Cast floating tensors; integers and bools are kept.")
@click.option("--shard-size", type=SizeType(), help="Write a sharded safetensors folder, shards of at most SIZE (5GB, 500MB).")
@json_option
@quiet_option
def convert(
    src: Path,
    output: Path,
    force: bool,
    dry_run: bool,
    to: str | None,
    dtype: str | None,
    shard_size: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Convert SRC to another format, dtype or sharding, and write OUTPUT.

    Tensors are streamed one at a time, so memory stays near the largest
    tensor. With --shard-size, OUTPUT is a folder that receives
    model-0000k-of-0000N.safetensors and model.safetensors.index.json.

    \b
    Examples:
      surgery convert model.npz -o model.safetensors
      surgery convert big/ -o merged.safetensors                  (sharded -> one file)
      surgery convert model.safetensors -o shards/ --shard-size 5GB
      surgery convert model.safetensors -o half.safetensors --dtype bfloat16
    """
    from .io import check_output, load, save
    from .ops import cast_floating

    tree = load(src)
    cast_report = None
    if dtype:
        tree, cast_report = cast_floating(tree, dtype)
    fmt = check_output(tree, output, to, force=force, shard_size=shard_size)
    summary = {
        "input": str(src),
        "output": str(output),
        "format": fmt,
        "tensors": len(tree),
        "total_bytes": tree.total_bytes,
        "cast": cast_report.names("cast") if cast_report else [],
        "shards": _shard_count(tree, shard_size),
        "dry_run": dry_run,
    }
    if not dry_run:
        with _progress("converting", tree.total_bytes, quiet or as_json) as progress:
            save(tree, output, fmt, force=force, shard_size=shard_size, progress=progress)
    if as_json:
        _emit_json(summary)
    elif not quiet:
        _print_convert_summary(summary, dtype)


def _shard_count(tree, shard_size: int | None) -> int:
    if shard_size is None:
        return 1
    from .formats.safetensors_io import plan_shards

    return len(plan_shards(tree.entries(), shard_size))


def _print_convert_summary(summary: dict, dtype: str | None) -> None:
    from .sizes import format_size

    verb = "would write" if summary["dry_run"] else "wrote"
    shards = f", {summary['shards']} shards" if summary["shards"] > 1 else ""
    click.echo(
        f"{verb} {summary['output']} ({summary['format']}, {summary['tensors']} tensors, "
        f"{format_size(summary['total_bytes'])}{shards})"
    )
    if dtype:
        click.echo(f"cast {len(summary['cast'])} floating tensors to {dtype}")


# -- class-axis surgery (subsample, upsample, verify) -------------------------------
# (class-surgery commands go here)

# -- PyTorch, layout conversion, rename, transplant ---------------------------------
# (torch commands go here)

# -- head and layer surgery, freeze maps, recipes -----------------------------------
# (head-surgery commands go here)


if __name__ == "__main__":
    main()
