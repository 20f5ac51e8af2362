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
      surgery inspect model.onnx --json | jq '.onnx.inputs'     (ONNX: opsets, inputs, outputs)
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
                **({"labels": _labels(tree)} if _labels(tree) is not None else {}),  # class names, when known
                **_onnx_facts(tree),
                **({"not_read": tree.format_state[DROPPED_ON_READ]} if DROPPED_ON_READ in tree.format_state else {}),
                **_training_json(tree),
            }
        )
        return
    _print_table(tree, entries, total, parameters, convention)
    _print_onnx_facts(_onnx_facts(tree).get("onnx"))
    from .training import print_training

    print_training(tree)


def _parameter_count(tree, entries: list) -> int:
    """Elements of the weights, without buffers (BatchNorm statistics, integer tensors)."""
    import math

    from ..buffers import is_buffer

    return sum(math.prod(e.shape) for e in entries if not is_buffer(tree, e.name))


def _count(n: int) -> str:
    """11_689_512 -> 11.7M, as model cards write parameter counts."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _onnx_facts(tree) -> dict:
    """An ONNX model's IR version, opsets, producer, inputs and outputs (symbolic dims by name)."""
    if tree.format != "onnx":
        return {}
    from ..formats.onnx_io import describe

    return {"onnx": describe(tree)}


def _print_onnx_facts(facts: dict | None) -> None:
    if not facts:
        return
    opsets = ", ".join(f"{domain} {version}" for domain, version in facts["opsets"].items())
    producer = " ".join(v for v in facts["producer"].values() if v) or "unknown"
    click.echo(f"onnx: ir_version {facts['ir_version']}, opsets {opsets}; producer {_printable(producer)}; {facts['nodes']} nodes")
    for kind in ("inputs", "outputs"):
        for value in facts[kind]:
            shape = "?" if value.get("shape") is None else "[" + ", ".join("?" if d is None else str(d) for d in value["shape"]) + "]"
            click.echo(f"{kind[:-1]} {_printable(value['name'])} {shape} {value.get('dtype', value.get('type'))}")
    if facts["external_data"]:
        click.echo(f"external data: {', '.join(_printable(n) for n in facts['external_data'])}")


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
    labels = _labels(tree)
    if labels is not None:
        shown = ", ".join(_printable(n) for n in labels["names"])
        click.echo(f"labels ({len(labels['names'])}, from {labels['source']}): {_shortened(shown, 300)}")
    if DROPPED_ON_READ in tree.format_state:
        click.echo(f"not read: {tree.format_state[DROPPED_ON_READ]}")


def _labels(tree) -> dict | None:
    """The class names the checkpoint carries (config.json id2label or recorded by surgery)."""
    from ..labels import own

    labels = own(tree)
    return None if labels is None else {"names": list(labels.names), "source": labels.source}


def _shortened(text: str, limit: int = 100) -> str:
    """Long metadata (a Keras model_config) would flood the table; --json prints it whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters; --json shows all)"
