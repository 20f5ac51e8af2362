"""`surgery inspect`: list a checkpoint's tensors without reading their data."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import click

from ..errors import SurgeryError
from .common import (
    _emit_json,
    _printable,
    json_option,
)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--filter", "filters", multiple=True, metavar="GLOB", help="Only tensors whose name matches (repeatable).")
@click.option("--key", metavar="NAME", help="PyTorch checkpoints: the top-level entry that holds the state dict (e.g. model_ema); found by itself otherwise.")
@json_option
def inspect(path: Path, filters: tuple[str, ...], as_json: bool, key: str | None = None) -> None:
    """List a checkpoint's tensors: name, shape, dtype and size.

    PATH is a file, a sharded checkpoint's index .json, or a folder that
    holds one. No tensor data is read.

    \b
    Examples:
      surgery inspect model.safetensors
      surgery inspect model.safetensors.index.json --filter '*.bias'
      surgery inspect model.npz --json | jq '.total_bytes'
      surgery inspect checkpoint.pth --key model_ema
    """
    from ..io import load

    tree = load(path, key=key)
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
                **_training_json(tree),
            }
        )
        return
    _print_table(tree, entries, total)
    from .training import print_training

    print_training(tree)


def _training_json(tree) -> dict:
    from .training import training_document

    document = training_document(tree)
    return {"training": document} if document is not None else {}


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
    from ..sizes import format_size

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
    from ..tree import DROPPED_ON_READ

    if DROPPED_ON_READ in tree.format_state:
        click.echo(f"not read: {tree.format_state[DROPPED_ON_READ]}")


def _shortened(text: str, limit: int = 100) -> str:
    """Long metadata (a Keras model_config) would flood the table; --json prints it whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters; --json shows all)"
