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
    key_option,
    layout_options,
    load_input,
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
@key_option
@click.option("--external-data", "external_data", flag_value="external", default=None, help="ONNX output: write tensors of at least --size-threshold bytes to one data file beside the model.")
@click.option("--inline", "external_data", flag_value="inline", help="ONNX output: keep every tensor inside the model file (refused past protobuf's 2 GB limit).")
@click.option("--size-threshold", type=SizeType(), help="ONNX output with --external-data: the smallest tensor that goes to the data file (default 1KB).")
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
    external_data: str | None = None, size_threshold: int | None = None,
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
      surgery convert model.onnx -o weights.safetensors                 (ONNX weights out)
      surgery convert model.onnx -o big.onnx --external-data --size-threshold 1MB
    """
    from ..io import check_output

    tree = load_input(src, key, quiet or as_json)
    tree, name_reports = _apply_name_options(tree, strip_prefix, drop, keep)
    tree, layout_report = _apply_layout(tree, layout, from_layout, flatten_shapes, rules_file, transposed, depthwise)
    cast_report = None
    if dtype:
        # Only here: importing the operations package costs a plain convert ~50 ms of start-up.
        from ..ops import cast_floating

        tree, cast_report = cast_floating(tree, dtype)
        if cast_optimizer:
            from ..ops.optimizer_state import cast_moments

            tree = cast_moments(tree, dtype, cast_report)
    elif cast_optimizer:
        raise click.UsageError("--cast-optimizer casts to the --dtype given; add --dtype")
    tree = _onnx_write_options(tree, output, to, dtype, external_data, size_threshold, shard_size is not None)
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


def _onnx_write_options(tree, output: Path, to: str | None, dtype: str | None, external_data: str | None, size_threshold: int | None, sharded: bool):
    """--external-data, --inline and --size-threshold go to the ONNX writer; ONNX refuses --dtype."""
    from ..atomic import refuse_stdout
    from ..errors import OperationError
    from ..formats import for_output

    refuse_stdout(output)  # before the suffix is asked for its format: `-o -` has none
    if for_output(output, to, sharded=sharded) != "onnx":
        given = "--external-data" if external_data == "external" else "--inline" if external_data else "--size-threshold" if size_threshold is not None else None
        if given:
            raise OperationError(f"{given} only applies to ONNX output", given, "drop it, or write a .onnx file")
        return tree
    if dtype:
        raise OperationError(
            "--dtype cannot change an ONNX model: its nodes, inputs and outputs are typed too",
            "--dtype",
            "export the model again in the dtype you want, or convert its weights to safetensors with --dtype",
        )
    if size_threshold is not None and external_data != "external":
        raise OperationError("--size-threshold needs --external-data", "--size-threshold", "add --external-data")
    from ..formats.onnx_io import with_write_options

    external = {"external": True, "inline": False}.get(external_data or "")
    if external is None and size_threshold is None:
        return tree
    return with_write_options(tree, external=external, threshold=size_threshold)


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
