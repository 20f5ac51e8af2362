"""`surgery convert`: format, dtype, sharding and layout changes."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    FORMAT_NAMES,
    SizeType,
    _apply_layout,
    _apply_name_options,
    _emit_json,
    _name_summary,
    _print_layout_summary,
    _print_name_summary,
    _write,
    json_option,
    layout_options,
    name_options,
    output_options,
    quiet_option,
)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@name_options
@click.option("--to", "to", type=click.Choice(FORMAT_NAMES), help="Output format (default: from OUTPUT's suffix).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Cast floating tensors; integers and bools are kept.")
@click.option("--cast-optimizer", is_flag=True, help="Training checkpoints, with --dtype: cast the optimizer's floating moments (exp_avg, exp_avg_sq, ...) too; step counters are kept.")
@click.option("--shard-size", type=SizeType(), help="Write a sharded safetensors folder, shards of at most SIZE (5GB, 500MB).")
@click.option("--key", metavar="NAME", help="PyTorch checkpoints: the top-level entry that holds the state dict (e.g. model_ema); found by itself otherwise.")
@layout_options
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
    strip_prefix: str | None = None, drop: tuple[str, ...] = (), keep: tuple[str, ...] = (),
    layout: str | None = None, from_layout: str | None = None, flatten_shapes: tuple[str, ...] = (), rules_file: Path | None = None, transposed: tuple[str, ...] = (), depthwise: tuple[str, ...] = (),
    key: str | None = None,
    cast_optimizer: bool = False,
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
      surgery convert model.h5 -o model.safetensors --layout torch --flatten-shape dense=7,7,64
      surgery convert model.safetensors -o model.h5 --layout keras --rules names.json
    """
    from ..io import check_output, load
    from ..ops import cast_floating

    tree = load(src, key=key)
    tree, name_reports = _apply_name_options(tree, strip_prefix, drop, keep)
    tree, layout_report = _apply_layout(tree, layout, from_layout, flatten_shapes, rules_file, transposed, depthwise)
    cast_report = None
    if dtype:
        tree, cast_report = cast_floating(tree, dtype)
        if cast_optimizer:
            from ..ops.optimizer_state import cast_moments

            tree = cast_moments(tree, dtype, cast_report)
    elif cast_optimizer:
        raise click.UsageError("--cast-optimizer casts to the --dtype given; add --dtype")
    fmt = check_output(tree, output, to, force=force, shard_size=shard_size)
    summary = {
        "input": str(src),
        "output": str(output),
        "format": fmt,
        "tensors": len(tree),
        "total_bytes": tree.total_bytes,
        "cast": cast_report.names("cast") if cast_report else [],
        **_name_summary(name_reports),
        "shards": _shard_count(tree, shard_size),
        "dry_run": dry_run,
    }
    if layout_report is not None:
        summary["layout"] = layout_report.to_json()
    _write("converting", tree, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json, shard_size=shard_size)
    if as_json:
        _emit_json(summary)
    elif not quiet:
        _print_name_summary(summary)
        if layout_report is not None:
            _print_layout_summary(layout_report)
        _print_convert_summary(summary, dtype)


def _shard_count(tree, shard_size: int | None) -> int:
    if shard_size is None:
        return 1
    from ..formats.safetensors_io import plan_shards

    return len(plan_shards(tree.entries(), shard_size))


def _print_convert_summary(summary: dict, dtype: str | None) -> None:
    from ..sizes import format_size

    verb = "would write" if summary["dry_run"] else "wrote"
    shards = f", {summary['shards']} shards" if summary["shards"] > 1 else ""
    click.echo(
        f"{verb} {summary['output']} ({summary['format']}, {summary['tensors']} tensors, "
        f"{format_size(summary['total_bytes'])}{shards})"
    )
    if dtype:
        click.echo(f"cast {len(summary['cast'])} floating tensors to {dtype}")
