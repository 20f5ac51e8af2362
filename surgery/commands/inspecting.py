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
    key_option,
)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--filter", "filters", multiple=True, metavar="GLOB", help="Only tensors whose name matches (repeatable).")
@key_option
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
    from ..conventions import convention_of
    from ..io import load
    from ..tree import DROPPED_ON_READ

    tree = load(path, key=key)
    entries = _filtered(tree, filters, path)
    total = sum(e.nbytes for e in entries)
    parameters = _parameter_count(tree, entries)
    convention = convention_of(tree)
    if as_json:
        _emit_json(
            {
                "format": tree.format,
                "convention": convention.convention.name,
                "convention_from": "file" if tree.convention.out_axis is not None else "names",
                "tensor_count": len(entries),
                "parameters": parameters,
                "tensors": [
                    {"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "nbytes": e.nbytes} for e in entries
                ],
                "total_bytes": total,
                "metadata": tree.metadata,
                **({"not_read": tree.format_state[DROPPED_ON_READ]} if DROPPED_ON_READ in tree.format_state else {}),
            }
        )
        return
    _print_table(tree, entries, total, parameters, convention)


def _parameter_count(tree, entries: list) -> int:
    """Elements of the weights, without buffers (BatchNorm statistics, integer tensors)."""
    import math

    from ..ops.freeze import is_buffer

    return sum(math.prod(e.shape) for e in entries if not is_buffer(tree, e.name))


def _count(n: int) -> str:
    """11_689_512 -> 11.7M, as model cards write parameter counts."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


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


def _print_table(tree, entries: list, total: int, parameters: int, convention) -> None:
    from ..sizes import format_size
    from ..tree import DROPPED_ON_READ

    rows = [(_printable(e.name), "[" + ", ".join(map(str, e.shape)) + "]", e.dtype, format_size(e.nbytes)) for e in entries]
    headers = ("name", "shape", "dtype", "size")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
    click.echo(line.format(*headers))
    for row in rows:
        click.echo(line.format(*row))
    inferred = " (from the names)" if tree.convention.out_axis is None and convention.convention.out_axis is not None else ""
    click.echo(
        f"{len(entries)} tensors, {_count(parameters)} parameters, {total:,} bytes ({format_size(total)}); "
        f"format {tree.format}, convention {convention.convention}{inferred}"
    )
    for key, value in tree.metadata.items():
        click.echo(f"metadata {_printable(key)} = {_shortened(_printable(value))}")
    if DROPPED_ON_READ in tree.format_state:
        click.echo(f"not read: {tree.format_state[DROPPED_ON_READ]}")


def _shortened(text: str, limit: int = 100) -> str:
    """Long metadata (a Keras model_config) would flood the table; --json prints it whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters; --json shows all)"
