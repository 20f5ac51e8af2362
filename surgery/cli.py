"""The `surgery` command line: parse, call the library, print the report.

Library modules (and numpy, h5py, torch, ...) are imported inside commands so
that `surgery --help` stays fast and works without the optional frameworks.
"""

from __future__ import annotations

import fnmatch
import json
import os
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
        except BrokenPipeError:
            # The reader went away (`surgery inspect big.h5 | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
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


def name_options(f: Callable) -> Callable:
    """--strip-prefix, --keep and --drop: rename and select tensors after loading (section names)."""
    f = click.option("--drop", multiple=True, metavar="GLOB", help="Leave out tensors matching GLOB (repeatable; after --keep).")(f)
    f = click.option("--keep", multiple=True, metavar="GLOB", help="Keep only tensors matching GLOB (repeatable).")(f)
    f = click.option("--strip-prefix", metavar="PREFIX", help="Remove PREFIX from names that start with it, e.g. 'module.' (DataParallel).")(f)
    return f


def _apply_name_options(tree, strip_prefix: str | None, drop: tuple[str, ...], keep: tuple[str, ...]) -> tuple[Any, list]:
    """--strip-prefix first, then --keep and --drop (globs see the stripped names); returns (tree, reports)."""
    from .ops.names import apply_names

    return apply_names(tree, strip=strip_prefix, keep=keep, drop=drop)


def _progress(label: str, total: int, quiet: bool):
    from .progress import Progress

    return Progress(label, total, enabled=not quiet)


def _write(label: str, tree, output: Path, fmt: str, *, force: bool, dry_run: bool, quiet: bool, shard_size: int | None = None) -> None:
    """Save `tree` atomically with a progress bar, unless this is a dry run."""
    if dry_run:
        return
    from .io import save

    with _progress(label, tree.total_bytes, quiet) as progress:
        save(tree, output, fmt, force=force, shard_size=shard_size, progress=progress)


def _report(document: dict, as_json: bool, quiet: bool, printer: Callable[[dict], None]) -> None:
    """A command's result: the JSON document, or its text form, or nothing with --quiet."""
    if as_json:
        _emit_json(document)
    elif not quiet:
        printer(document)


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
    Formats: safetensors (single or sharded), npz, Keras HDF5 (.h5, .weights.h5),
    PyTorch checkpoints (.pt, .pth, .bin; zip and legacy; no code runs).
    Start with:  surgery inspect MODEL
    """


@main.command()
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
    from .io import load

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
    from .tree import DROPPED_ON_READ

    if DROPPED_ON_READ in tree.format_state:
        click.echo(f"not read: {tree.format_state[DROPPED_ON_READ]}")


def _shortened(text: str, limit: int = 100) -> str:
    """Long metadata (a Keras model_config) would flood the table; --json prints it whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters; --json shows all)"


def layout_options(f: Callable) -> Callable:
    """--layout and what it needs: --from-layout, --flatten-shape, --rules, --transposed, --depthwise."""
    options = [
        click.option("--layout", type=click.Choice(["torch", "keras"]), help="Move the weights to PyTorch (torch) or Keras (keras) layout: conv kernels HWIO<->OIHW (1-3 D, depthwise, transposed), Dense (in,out)<->(out,in), names layer/kernel<->layer.weight, BatchNorm gamma/beta/moving_*<->weight/bias/running_* (+num_batches_tracked), PReLU alpha<->weight."),
        click.option("--from-layout", type=click.Choice(["torch", "keras"]), help="The layout SRC is in, when the file does not say (a safetensors file without format=pt)."),
        click.option("--flatten-shape", "flatten_shapes", multiple=True, metavar="LAYER=H,W,C", help="The first Dense after a Flatten: its Keras layer name and the Flatten's input shape in Keras order (e.g. dense=7,7,64), in both directions; its inputs are reordered NHWC<->NCHW (repeatable)."),
        click.option("--rules", "rules_file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help='Rename rules applied in order after the default mapping: a JSON list of [regex, replacement] pairs, [["^conv2d_1\\\\.", "features.0."]], or TOML: rules = [["^conv2d_1\\\\.", "features.0."]] (.toml).'),
        click.option("--transposed", multiple=True, metavar="GLOB", help="Layers of SRC that are transposed convs (Conv2DTranspose/ConvTranspose2d), when no Keras model_config says so (repeatable)."),
        click.option("--depthwise", multiple=True, metavar="GLOB", help="Layers of SRC that are depthwise convs (torch Conv2d with groups=in), when nothing else says so (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@name_options
@click.option("--to", "to", type=click.Choice(FORMAT_NAMES), help="Output format (default: from OUTPUT's suffix).")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Cast floating tensors; integers and bools are kept.")
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
    from .io import check_output, load
    from .ops import cast_floating

    tree = load(src, key=key)
    tree, name_reports = _apply_name_options(tree, strip_prefix, drop, keep)
    tree, layout_report = _apply_layout(tree, layout, from_layout, flatten_shapes, rules_file, transposed, depthwise)
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


# -- convert --layout: Keras <-> PyTorch axes and names --------------------------------


def _apply_layout(tree, layout: str | None, from_layout: str | None, flatten_shapes: tuple[str, ...], rules_file: Path | None, transposed: tuple[str, ...], depthwise: tuple[str, ...]):
    """The tree in the asked layout and the report, or the tree unchanged and None without --layout."""
    from .errors import OperationError
    from .ops.layout import convert_layout, parse_flatten_shape, parse_rules

    if layout is None:
        given = [n for n, v in (("--flatten-shape", flatten_shapes), ("--rules", rules_file), ("--transposed", transposed), ("--depthwise", depthwise), ("--from-layout", from_layout)) if v]
        if given:
            raise OperationError(f"{given[0]} only applies with --layout", given[0], "add --layout torch or --layout keras")
        return tree, None
    rules = None
    if rules_file is not None:
        kind = "toml" if rules_file.suffix.lower() == ".toml" else "json"
        rules = parse_rules(rules_file.read_text(encoding="utf-8"), kind, str(rules_file))
    shapes = dict(parse_flatten_shape(text) for text in flatten_shapes)
    return convert_layout(tree, layout, flatten_shapes=shapes, rules=rules, transposed=transposed, depthwise=depthwise, source=from_layout)


def _print_layout_summary(report) -> None:
    counts = {kind: len(report.names(kind)) for kind in ("transposed", "renamed", "added", "dropped")}
    click.echo(f"layout {report.facts['from']} -> {report.facts['to']}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    for c in report.changes:
        if c.kind == "renamed":
            click.echo(f"  renamed {_printable(c.before)} -> {_printable(c.after)}")
        elif c.kind == "transposed":
            click.echo(f"  transposed {_printable(c.name)} {c.before} -> {c.after} ({c.detail})")
        elif c.kind == "added":
            click.echo(f"  added {_printable(c.name)} {c.after} ({c.detail})")
        elif c.kind == "dropped":
            click.echo(f"  dropped {_printable(c.name)} ({c.detail})")
    for note in report.notes:
        click.echo(f"note: {note}")


# -- class-axis surgery (subsample, upsample, verify) -------------------------------


class AnchorsType(click.ParamType):
    """--anchors 4 (every layer it fits) or --anchors fc7_mbox_conf=6 (one layer)."""

    name = "A|LAYER=A"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str | None, int]:
        if isinstance(value, tuple):
            return value
        layer, _, count = str(value).rpartition("=")
        if not count.isdigit() or int(count) <= 0:
            self.fail(f"{value!r} is not a positive anchor count; write 4 or LAYER=4", param, ctx)
        return (layer or None, int(count))


def class_options(f: Callable) -> Callable:
    """Which classes and which layers: shared by subsample, upsample and verify."""
    options = [
        click.option("--classes", metavar="LIST", help="Source class indices in their new order, e.g. 0,3,8,1 (0 is background in SSD). Duplicates copy a class; 'new' adds one (upsample)."),
        click.option("--num-classes", type=click.IntRange(min=1), metavar="N", help="Instead of --classes: fewer than the source picks N at random (keeping background, sorted); more keeps all and adds new ones."),
        click.option("--seed", type=int, help="Seed for --num-classes picks and new-class init (default 0; reported)."),
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB", help="Class layers to edit (repeatable). Default: detect known heads (SSD *_mbox_conf, RetinaNet, YOLO, Faster R-CNN, classifiers)."),
        click.option("--layout", type=click.Choice(["anchor-major", "anchor-major-fields", "class-major", "plain"]), help="How classes sit on the output axis (default: from the detected head)."),
        click.option("--source-classes", type=click.IntRange(min=1), metavar="K", help="Classes the source model has, when it cannot be inferred."),
        click.option("--anchors", "anchors", multiple=True, type=AnchorsType(), help="Boxes per location: A for every layer it divides consistently, or LAYER=A for one layer (repeatable)."),
        click.option("--axis", type=int, help="Class axis of kernels (default: last for Keras files, 0 for PyTorch)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _plan(tree, classes, num_classes, seed, layer_globs, layout, source_classes, anchors, axis):
    from .errors import OperationError
    from .ops.classes import parse_classes, plan_classes

    overall = [a for layer, a in anchors if layer is None]
    if len(overall) > 1:
        raise OperationError("--anchors A is given twice", "--anchors", "give one count, and LAYER=A for layers that differ")
    if classes is not None and num_classes is not None:
        raise OperationError("--classes and --num-classes both given", "--classes", "pass only one of them")
    return plan_classes(
        tree,
        parse_classes(classes) if classes is not None else None,
        num_classes=num_classes,
        seed=seed,
        layer_globs=layer_globs,
        layout=layout,
        source_classes=source_classes,
        anchors=overall[0] if overall else None,
        anchors_per_layer={layer: a for layer, a in anchors if layer is not None},
        axis=axis,
    )


def _class_command(kind: str, src: Path, output: Path, force: bool, dry_run: bool, as_json: bool, quiet: bool, verify_after: bool, init: str, **class_args: Any) -> None:
    from .errors import OperationError
    from .io import check_output, load
    from .ops.classes import apply_plan, verify
    from .tree import DROPPED_ON_READ

    tree = load(src)
    plan = _plan(tree, **class_args)
    if kind == "subsample" and plan.adds_classes:
        raise OperationError("subsample cannot add classes", "--classes", "use `surgery upsample` to add new classes")
    if kind == "upsample" and class_args["num_classes"] is not None and class_args["num_classes"] < plan.source_classes:
        raise OperationError(
            f"--num-classes {class_args['num_classes']} is fewer than the {plan.source_classes} classes the model has",
            "--num-classes",
            "use `surgery subsample` to drop classes",
        )
    edited, report = apply_plan(tree, plan, init=init, seed=class_args["seed"])
    if DROPPED_ON_READ in tree.format_state:
        report.notes.append(f"dropped {tree.format_state[DROPPED_ON_READ]}")
    fmt = check_output(edited, output, force=force)
    _write(kind, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    checks = verify(tree, edited if dry_run else load(output), plan) if verify_after else None
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, **plan.to_json(tree)}
    document["notes"] = report.notes
    if checks is not None:
        document["verify"] = checks
    if as_json:
        _emit_json(document)
    elif not quiet:
        _print_class_plan(document, plan)
    if checks is not None and any(row["max_abs_diff"] != 0 for row in checks) and kind == "subsample":
        raise OperationError("verification found a difference at a kept class", str(output), "report this as a bug, with the command")


def _print_class_plan(document: dict, plan) -> None:
    classes = ",".join(str(c) for c in document["classes"])
    click.echo(f"{document['num_classes']} of {document['source_classes']} classes, in this order: {classes}")
    for layer in document["layers"]:
        click.echo(f"{layer['layer']}: {layer['why']}")
        for t in layer["tensors"]:
            click.echo(f"  {_printable(t['name'])}  {t['before']} -> {t['after']}")
        shown = layer["channels"] if len(layer["channels"]) <= 40 else [*layer["channels"][:40], "..."]
        click.echo(f"  channels kept: {','.join(map(str, shown))}")
    for note in document["notes"]:
        click.echo(f"note: {note}")
    if "verify" in document:
        worst = max((row["max_abs_diff"] for row in document["verify"]), default=0.0)
        compared = sum(row["compared"] for row in document["verify"])
        click.echo(f"verified: {compared} kept channels in {len(document['verify'])} layers, largest |difference| {worst:g}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']})")
    click.echo(f"Build the model with {document['num_classes']} classes{_background_hint(plan)}.")


def _background_hint(plan) -> str:
    return " (background included)" if plan.classes and plan.classes[0] == 0 else ""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@class_options
@click.option("--verify", "verify_after", is_flag=True, help="After writing, prove the kept classes' outputs equal the original's.")
@json_option
@quiet_option
def subsample(src: Path, output: Path, force: bool, dry_run: bool, verify_after: bool, as_json: bool, quiet: bool, **class_args: Any) -> None:
    """Keep only some classes of a classifier head, per anchor, in a new order.

    Every pretrained weight is reused: the kept classes' output channels are
    copied, in the order given, for every anchor of every class layer. The
    rest of the checkpoint is copied unchanged. Run with --dry-run first to
    see each tensor's old and new shape and the channels kept.

    \b
    Examples:
      surgery subsample ssd300_coco.h5 -o ssd300_road.h5 --classes 0,3,8,1,2,10,4,6,12 --anchors 4
      surgery subsample model.h5 -o small.h5 --num-classes 10 --seed 1
      surgery subsample model.safetensors -o out.safetensors --layers 'head.cls_logits' --classes 0-9
    """
    _class_command("subsample", src, output, force, dry_run, as_json, quiet, verify_after, "gaussian", **class_args)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@class_options
@click.option("--init", default="gaussian", show_default=True, metavar="NAME", help="New classes: gaussian (mean 0, std 0.005), zeros, xavier, mean (of the old classes), or copy:C. New biases are zero unless mean or copy.")
@click.option("--verify", "verify_after", is_flag=True, help="After writing, prove the old classes' outputs are unchanged.")
@json_option
@quiet_option
def upsample(src: Path, output: Path, force: bool, dry_run: bool, init: str, verify_after: bool, as_json: bool, quiet: bool, **class_args: Any) -> None:
    """Add classes to a classifier head, per anchor, keeping the old ones exactly.

    \b
    Examples:
      surgery upsample model.h5 -o more.h5 --num-classes 90 --anchors 4 --seed 7
      surgery upsample model.h5 -o more.h5 --classes 0-80,new,new --init copy:1
    """
    _class_command("upsample", src, output, force, dry_run, as_json, quiet, verify_after, init, **class_args)


@main.command()
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("edited", type=click.Path(path_type=Path))
@class_options
@json_option
def verify(original: Path, edited: Path, as_json: bool, **class_args: Any) -> None:
    """Prove that EDITED's heads give ORIGINAL's outputs at the kept classes.

    Pass the same class options as the edit. Each head kernel is applied, as a
    linear map over its class axis, to random inputs; the largest absolute
    difference at a kept class must be 0. Exits 1 if it is not.

    \b
    Example:
      surgery verify ssd300_coco.h5 ssd300_road.h5 --classes 0,3,8,1,2,10,4,6,12 --anchors 4
    """
    from .errors import OperationError
    from .io import load
    from .ops.classes import verify as verify_plan

    tree = load(original)
    rows = verify_plan(tree, load(edited), _plan(tree, **class_args))
    worst = max((row["max_abs_diff"] for row in rows), default=0.0)
    if as_json:
        _emit_json({"layers": rows, "max_abs_diff": worst, "equal": worst == 0})
    else:
        for row in rows:
            click.echo(f"{row['layer']}: {row['compared']} of {row['channels']} channels compared, largest |difference| {row['max_abs_diff']:g}")
        click.echo("equal at every kept class" if worst == 0 else f"DIFFERENT: largest |difference| {worst:g}")
    if worst != 0:
        raise OperationError(f"the heads differ at kept classes by up to {worst:g}", str(edited), "check that the class options match the edit")


# -- names: rename, transplant ------------------------------------------------------

_LISTED = 20  # names listed per kind in text output; --json lists all


def _name_summary(reports: list) -> dict:
    """What --strip-prefix, --keep and --drop (and --map) did, for a command's summary."""
    changes = [c for report in reports for c in report.changes]
    return {
        "renamed": [{"before": c.before, "after": c.after} for c in changes if c.kind == "renamed"],
        "dropped": [c.name for c in changes if c.kind == "dropped"],
    }


def _print_name_summary(summary: dict) -> None:
    if summary.get("renamed"):
        click.echo(f"renamed {len(summary['renamed'])} tensors")
    if summary.get("dropped"):
        click.echo(f"dropped {len(summary['dropped'])} tensors: {_first(summary['dropped'])}")


def _first(names: list[str]) -> str:
    shown = ", ".join(_printable(n) for n in names[:_LISTED])
    return shown + (f", ... and {len(names) - _LISTED} more (--json lists all)" if len(names) > _LISTED else "")


def _parse_rules(rules: tuple[str, ...]) -> list[tuple[str, str]]:
    from .ops.names import parse_rule

    return [parse_rule(rule) for rule in rules]


_MAP_HELP = (
    "Rename by regex: REGEX=REPL, Python re.sub over the whole name, \\1 for groups (repeatable, applied in order). "
    "The split is at the first '=' not after a backslash: write a literal '=' in REGEX as \\=."
)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--map", "rules", multiple=True, metavar="REGEX=REPL", help=_MAP_HELP)
@name_options
@json_option
@quiet_option
def rename(src: Path, output: Path, force: bool, dry_run: bool, rules: tuple[str, ...], strip_prefix: str | None, drop: tuple[str, ...], keep: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Rename, strip a prefix from, keep or drop tensors, and write OUTPUT.

    Steps run in this order: --strip-prefix, then --keep and --drop (globs,
    '*' crosses '/' and '.'), then every --map rule in the order given. A rule
    or glob that matches no name is an error, and so are two tensors that would
    end up with one name. No tensor data is changed. Keras 2 .h5 files keep
    their layer order with the layer groups renamed, so Keras' load_weights
    finds them under the new layer names.

    \b
    Examples:
      surgery rename ddp.pt -o model.safetensors --strip-prefix module.
      surgery rename model.safetensors -o out.safetensors --map '^backbone\\.=encoder.' --dry-run
      surgery rename model.h5 -o renamed.h5 --map '^conv(\\d+)_=block\\1_conv_'
      surgery rename model.safetensors -o body.safetensors --drop 'head.*' --drop '*.num_batches_tracked'
    """
    from .errors import OperationError
    from .io import check_output, load
    from .ops.names import apply_names

    parsed = _parse_rules(rules)
    if not (parsed or strip_prefix is not None or keep or drop):
        raise OperationError("nothing to rename", "rename", "give --map REGEX=REPL, --strip-prefix, --keep or --drop")
    tree, reports = apply_names(load(src), strip=strip_prefix, keep=keep, drop=drop, rules=parsed)
    fmt = check_output(tree, output, force=force)
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, "tensors": len(tree),
                **_name_summary(reports), "notes": [n for r in reports for n in r.notes]}
    _write("renaming", tree, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    _report(document, as_json, quiet, _print_rename)


def _print_rename(document: dict) -> None:
    for change in document["renamed"]:
        click.echo(f"{_printable(change['before'])} -> {_printable(change['after'])}")
    if document["dropped"]:
        click.echo(f"dropped {len(document['dropped'])} tensors: {_first(document['dropped'])}")
    for note in document["notes"]:
        click.echo(f"note: {note}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']}, {document['tensors']} tensors, {len(document['renamed'])} renamed)")


@main.command()
@click.argument("pretrained", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@output_options
@click.option("--map", "rules", multiple=True, metavar="REGEX=REPL", help=_MAP_HELP + " Applied to PRETRAINED's names (after layout conversion).")
@click.option("--strip-prefix", metavar="PREFIX", help="Remove PREFIX from PRETRAINED's names first, e.g. 'module.'.")
@click.option("--strict", is_flag=True, help="Fail unless every tensor matches by name and shape, both ways.")
@click.option("--flatten-shape", "flatten_shapes", multiple=True, metavar="LAYER=H,W,C", help="Keras layouts only: the Dense after a Flatten and the Flatten's input shape (see `surgery convert --help`).")
@json_option
@quiet_option
def transplant(pretrained: Path, target: Path, output: Path, force: bool, dry_run: bool, rules: tuple[str, ...], strip_prefix: str | None, strict: bool, flatten_shapes: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Load PRETRAINED's weights into TARGET by name, and write OUTPUT.

    Like load_state_dict(strict=False), as a file: every TARGET tensor whose
    name and shape match a PRETRAINED tensor takes the pretrained data (cast to
    TARGET's dtype); the rest of TARGET stays as initialised. OUTPUT keeps
    TARGET's names, order and layout, so give it TARGET's suffix to get TARGET's
    format (the format comes from OUTPUT's suffix, as everywhere). The report
    lists copied, missing (TARGET only), unexpected (PRETRAINED only) and
    mismatched (same name, other shape) tensors. A Keras PRETRAINED and a
    PyTorch TARGET (or the reverse) are converted between layouts first.

    \b
    Examples:
      surgery transplant imagenet.pt new_head_init.pt -o start.pt --dry-run
      surgery transplant ddp.pt init.safetensors -o start.safetensors --strip-prefix module.
      surgery transplant old.safetensors init.safetensors -o start.safetensors --map '^encoder\\.=backbone.'
      surgery transplant keras.h5 torch_init.safetensors -o start.safetensors --strict
    """
    from .atomic import check_destination
    from .io import check_output, load
    from .ops.names import strip_prefix as strip
    from .ops.transplant import transplant as transplant_trees

    parsed = _parse_rules(rules)
    shapes = _parse_flatten_shapes(flatten_shapes)
    source, into = load(pretrained), load(target)
    stripped = None
    if strip_prefix is not None:
        source, stripped = strip(source, strip_prefix)
    tree, report = transplant_trees(source, into, rules=parsed, strict=strict, flatten_shapes=shapes)
    if stripped is not None:
        report.notes.insert(0, f"stripped {strip_prefix!r} from {len(stripped.changes)} PRETRAINED names")
    check_destination(output, {*source.source_paths(), *into.source_paths()}, force=force)  # never over an input
    fmt = check_output(tree, output, force=force)
    document = {"pretrained": str(pretrained), "target": str(target), "output": str(output), "format": fmt,
                "dry_run": dry_run, **_transplant_summary(report)}
    _write("transplanting", tree, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    _report(document, as_json, quiet, _print_transplant)


def _parse_flatten_shapes(texts: tuple[str, ...]) -> dict | None:
    if not texts:
        return None
    from .ops.layout import parse_flatten_shape

    return dict(parse_flatten_shape(text) for text in texts)


def _transplant_summary(report) -> dict:
    changes = report.changes
    return {
        "counts": {kind: report.facts[kind] for kind in ("copied", "cast", "missing", "unexpected", "mismatched")},
        "copied": report.names("copied"),
        "cast": [{"name": c.name, "from": c.before, "to": c.after} for c in changes if c.kind == "cast"],
        "missing": report.names("missing"),
        "unexpected": report.names("unexpected"),
        "mismatched": [{"name": c.name, "pretrained": c.before, "target": c.after} for c in changes if c.kind == "mismatched"],
        "notes": list(report.notes),
    }


def _print_transplant(document: dict) -> None:
    counts = document["counts"]
    for note in document["notes"]:
        click.echo(f"note: {note}")
    cast = f" ({counts['cast']} cast to TARGET's dtype)" if counts["cast"] else ""
    mismatched = [f"{m['name']} {m['pretrained']} -> {m['target']}" for m in document["mismatched"]]
    for label, names in (
        (f"copied {counts['copied']}{cast}", document["copied"]),
        (f"missing {counts['missing']} (kept as initialised)", document["missing"]),
        (f"unexpected {counts['unexpected']} (not in TARGET)", document["unexpected"]),
        (f"mismatched {counts['mismatched']} (shape differs, kept as initialised)", mismatched),
    ):
        click.echo(f"{label}: {_first(names)}" if names else label)
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']})")

# -- head and layer surgery: strip-head, truncate ------------------------------------


def _layer_command(kind: str, src: Path, output: Path, force: bool, dry_run: bool, as_json: bool, quiet: bool, edit: Callable) -> None:
    """Shared by strip-head and truncate: load, edit, check the output, write unless --dry-run, report."""
    from .io import check_output, load

    tree = load(src)
    edited, report = edit(tree)
    fmt = check_output(edited, output, force=force)
    _write(kind, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    removed = [{"name": c.name, "was": c.before} for c in report.changes if c.kind == "dropped"]
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, **report.facts}
    document.update({"removed_tensors": removed, "notes": report.notes})
    _report(document, as_json, quiet, _print_layer_edit)


def _print_layer_edit(document: dict) -> None:
    if "head" in document:
        click.echo(f"head: {_printable(document['head']['why'])}")
    if "after" in document:
        click.echo(f"keeping the layers up to and including {_printable(document['after'])}")
    layers = document["removed_layers"]
    click.echo(f"removed {len(layers)} layers: {_printable(', '.join(layers)) or '-'}")
    for row in document["removed_tensors"]:
        click.echo(f"  {_printable(row['name'])}  {row['was']}")
    for note in document["notes"]:
        click.echo(f"note: {_printable(note)}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']}, {document['kept_tensors']} tensors kept, {len(document['removed_tensors'])} removed)")


@main.command("strip-head")
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--head", "globs", multiple=True, metavar="GLOB", help="Layers or tensors to remove (repeatable). Default: detect the classification top.")
@click.option("--family", type=click.Choice(["keras-applications", "torchvision", "timm", "ssd"]), help="Use this family's top from the head table instead of detecting (ssd: its *_mbox_conf/*_mbox_loc layers).")
@json_option
@quiet_option
def strip_head(src: Path, output: Path, force: bool, dry_run: bool, globs: tuple[str, ...], family: str | None, as_json: bool, quiet: bool) -> None:
    """Remove the classification head, keeping every other weight unchanged.

    The head is found from a Keras full model's graph (walking back from the
    output through Activation, pooling, Flatten and Dropout to the layer that
    makes the class scores), or from the table of known tops: Keras
    applications predictions/fc1/fc2/flatten, torchvision fc/classifier.*/head,
    timm head/fc/classifier. When it is unsure it lists the candidates and
    writes nothing. Every removed tensor is listed; try --dry-run first.

    \b
    Examples:
      surgery strip-head vgg16.h5 -o vgg16_notop.h5 --dry-run
      surgery strip-head resnet18.pth -o backbone.safetensors
      surgery strip-head model.safetensors -o out.safetensors --head 'head.*'
      surgery strip-head ssd300.h5 -o ssd300_base.h5 --family ssd
    """
    from .ops.strip import strip_head as strip

    _layer_command("strip-head", src, output, force, dry_run, as_json, quiet, lambda tree: strip(tree, globs, family))


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--after", required=True, metavar="LAYER", help="The last layer to keep (a PyTorch module name such as layer3 keeps all of it).")
@json_option
@quiet_option
def truncate(src: Path, output: Path, force: bool, dry_run: bool, after: str, as_json: bool, quiet: bool) -> None:
    """Keep the layers up to and including LAYER, in the checkpoint's own order.

    The order is a Keras file's layer list (layer_names) or the PyTorch key
    order. A Keras full model's model_config is rewritten to match, with the
    layers that fed removed ones as its outputs.

    \b
    Examples:
      surgery truncate vgg16.h5 -o vgg16_block4.h5 --after block4_pool
      surgery truncate resnet50.pth -o resnet50_c4.safetensors --after layer3
    """
    from .ops.strip import truncate as cut

    _layer_command("truncate", src, output, force, dry_run, as_json, quiet, lambda tree: cut(tree, after))

# -- re-initialisation: reinit, adapt-input -------------------------------------------


def _write_reinit(label: str, src: Path, edited, report, output: Path, force: bool, dry_run: bool, quiet: bool) -> dict:
    """check_output, then save unless dry-running; the shared start of reinit and adapt-input's document."""
    from .io import check_output

    fmt = check_output(edited, output, force=force)
    _write(label, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet)
    return {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, "notes": list(report.notes)}


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--layers", "layer_globs", multiple=True, required=True, metavar="GLOB", help="Layers (or tensors) to re-initialise (repeatable); '*' crosses '/' and '.'.")
@click.option("--init", required=True, metavar="NAME", help="Kernels: xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, normal:STD, zeros, ones or constant:V.")
@click.option("--bias-init", default="zeros", show_default=True, metavar="NAME", help="Biases: zeros, ones, constant:V or normal:STD.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; each tensor draws from its own generator seeded by (seed, its name).")
@click.option("--layout", type=click.Choice(["keras", "torch"]), help="Kernel layout, when the file does not say: keras (..., in, out) or torch (out, in, ...).")
@json_option
@quiet_option
def reinit(src: Path, output: Path, force: bool, dry_run: bool, layer_globs: tuple[str, ...], init: str, bias_init: str, seed: int, layout: str | None, as_json: bool, quiet: bool) -> None:
    """Re-initialise the tensors of some layers; everything else is copied unchanged.

    \b
    Kernels get --init, with fans from the layout (torch's formulas):
      Keras conv (h, w, in, out):  fan_in = h*w*in,  fan_out = h*w*out  (1-D/3-D alike)
      torch conv (out, in, h, w):  fan_in = in*h*w,  fan_out = out*h*w
      dense: Keras (in, out), torch (out, in)
      depthwise kernels: from the shape, as each framework computes them
      xavier_uniform   U(-b, b), b = sqrt(6 / (fan_in + fan_out))      (gain 1)
      xavier_normal    N(0, s),  s = sqrt(2 / (fan_in + fan_out))      (gain 1)
      kaiming_uniform  U(-b, b), b = sqrt(2) * sqrt(3 / fan_in)        (torch default: fan_in, relu)
      kaiming_normal   N(0, s),  s = sqrt(2) / sqrt(fan_in)
      normal:STD  N(0, STD);  zeros;  ones;  constant:V
    Biases get --bias-init (zeros). Normalisation layers, known by their names
    (gamma/beta/moving_mean/moving_variance; weight/bias beside running_mean/running_var),
    get gamma 1, beta 0, mean 0, variance 1, num_batches_tracked 0, whatever --init says.
    Dtypes are kept; integer buffers (e.g. position_ids) are left unchanged and listed.

    \b
    Examples:
      surgery reinit resnet50.pt -o fresh_fc.safetensors --layers fc --init kaiming_uniform
      surgery reinit vgg16.h5 -o vgg16_new_top.h5 --layers 'fc*' --layers predictions --init xavier_uniform --seed 1
      surgery reinit model.safetensors -o out.safetensors --layers 'head.*' --init normal:0.01 --layout torch
    """
    from .io import load
    from .ops.reinit import reinit as reinit_op

    edited, report = reinit_op(load(src), layer_globs, init, seed=seed, bias_init=bias_init, layout=layout)
    document = _write_reinit("reinit", src, edited, report, output, force, dry_run, quiet or as_json)
    document.update(seed=seed, tensors=report.facts["tensors"])
    if as_json:
        _emit_json(document)
    elif not quiet:
        for change in report.changes:
            click.echo(f"{_printable(change.name)}  {change.before}  {change.detail}")
        for note in document["notes"]:
            click.echo(f"note: {_printable(note)}")
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{verb} {output} ({document['format']}): {len(report.changes)} tensors re-initialised, seed {seed}")


@main.command("adapt-input")
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--channels", type=int, required=True, metavar="N", help="Input channels the new model takes (1 for grayscale).")
@click.option("--layer", metavar="NAME", help="The conv layer (or kernel tensor) to adapt; default: the first conv with 3 input channels.")
@click.option("--layout", type=click.Choice(["keras", "torch"]), help="Kernel layout, when the file does not say: keras (HWIO) or torch (OIHW).")
@json_option
@quiet_option
def adapt_input(src: Path, output: Path, force: bool, dry_run: bool, channels: int, layer: str | None, layout: str | None, as_json: bool, quiet: bool) -> None:
    """Change the input channels of a model's first conv from RGB to N channels.

    The rule is timm's adapt_input_conv, on the input axis (2 in Keras HWIO,
    1 in torch OIHW): for N = 1 the three RGB weights are summed, so a gray
    image gives what the RGB model gives for that image repeated 3 times; for
    other N the RGB weights are repeated ceil(N/3) times, cut to N, and
    scaled by 3/N. Without --layer the first rank-4 conv kernel in file order
    with 3 input channels is chosen. Only that kernel changes.

    \b
    Examples:
      surgery adapt-input resnet50.pt -o resnet50_gray.safetensors --channels 1
      surgery adapt-input model.weights.h5 -o rgbn.weights.h5 --channels 4 --layer conv1
    """
    from .io import load
    from .ops.reinit import adapt_input as adapt_op

    edited, report = adapt_op(load(src), channels, layer=layer, layout=layout)
    document = _write_reinit("adapt-input", src, edited, report, output, force, dry_run, quiet or as_json)
    document.update(report.facts)
    if as_json:
        _emit_json(document)
    elif not quiet:
        facts = report.facts
        click.echo(f"{_printable(str(facts['tensor']))}: {facts['why']}")
        click.echo(f"  {facts['before']} -> {facts['after']}: {facts['rule']}")
        for note in document["notes"]:
            click.echo(f"note: {_printable(note)}")
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{verb} {output} ({document['format']}). Build the model with {channels} input channel{'s' if channels != 1 else ''}.")

# -- freeze maps ---------------------------------------------------------------------


class LrMultType(click.ParamType):
    """--lr-mult GLOB=X: parameters matching GLOB train at X times the base learning rate."""

    name = "GLOB=X"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, float]:
        if isinstance(value, tuple):
            return value
        glob, _, number = str(value).rpartition("=")
        try:
            mult = float(number)
        except ValueError:
            mult = float("nan")
        if not glob or not (0 < mult < float("inf")):
            self.fail(f"{value!r} is not GLOB=X with X a positive number; write e.g. 'fc.*=10'", param, ctx)
        return (glob, mult)


def _recipe_names() -> list[str]:
    from .ops.freeze import RECIPES

    return list(RECIPES)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--recipe", type=click.Choice(_recipe_names()), help="A transfer-learning case (see above); --freeze/--train/--lr-mult override it.")
@click.option("--head", "head_globs", multiple=True, metavar="GLOB", help="The new head's layers or parameters, for --recipe (repeatable). Default: detected.")
@click.option("--freeze", "freeze_globs", multiple=True, metavar="GLOB", help="Freeze matching parameters or layers (repeatable).")
@click.option("--train", "train_globs", multiple=True, metavar="GLOB", help="Train matching parameters or layers (repeatable).")
@click.option("--lr-mult", "lr_mults", multiple=True, type=LrMultType(), help="Learning-rate multiple for matching parameters, e.g. 'fc.*=10' (repeatable).")
@json_option
@quiet_option
def freeze(src: Path, output: Path, force: bool, dry_run: bool, recipe: str | None, head_globs: tuple[str, ...], freeze_globs: tuple[str, ...], train_globs: tuple[str, ...], lr_mults: tuple[tuple[str, float], ...], as_json: bool, quiet: bool) -> None:
    """Write a freeze map: which parameters train, and at what learning-rate multiple.

    OUTPUT is JSON, every parameter of SRC once, in checkpoint order:

    \b
      {"version": 1, "source": "SRC", "recipe": "small-similar", "head": [...],
       "parameters": {"features.0.weight": {"trainable": false, "lr_mult": 1.0}, ...},
       "buffers": ["bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]}

    Buffers (BatchNorm running_mean/running_var/num_batches_tracked, Keras
    moving_mean/moving_variance, integer tensors) are not parameters: they are
    listed apart and never trainable. Apply the map with
    surgery.torch.apply_freeze_map(model, "freeze.json", lr), which sets
    requires_grad and returns optimizer parameter groups, or with
    surgery.keras.apply_freeze_map(model, "freeze.json"), which sets
    layer.trainable.

    \b
    Recipes (dataset size, similarity to the pretraining data):
      small-similar    freeze everything but the head; train the head
      small-different  freeze the kept early layers; train the head. Cutting
                       the later layers off is `surgery truncate`, not this command
      large-similar    train everything; the head at lr_mult 10
      large-different  retrain everything; the head at lr_mult 10
    The head is --head GLOB, or detected (a known classifier such as fc,
    classifier, predictions).

    Every parameter starts trainable at lr_mult 1; a recipe sets head and body;
    --freeze, --train and --lr-mult override it. A glob matches a parameter's
    name or its layer ('*' crosses '.' and '/'). When globs disagree on a
    parameter, the more specific glob (more characters other than * ? [...])
    wins; on a tie --train beats --freeze, and the larger lr_mult wins. Each
    conflict is reported. A glob that matches no parameter is an error.

    \b
    Examples:
      surgery freeze resnet18.pth -o freeze.json --recipe small-similar --head fc
      surgery freeze vgg16.h5 -o freeze.json --recipe large-similar      (head detected)
      surgery freeze ssd300.h5 -o freeze.json --freeze 'conv[1-3]_*' --lr-mult '*_mbox_conf=10'
      surgery freeze model.safetensors -o freeze.json --freeze '*' --train 'head.*' --dry-run
    """
    from .atomic import atomic_output, check_destination
    from .errors import OperationError
    from .io import load
    from .ops.freeze import freeze_map

    mults: dict[str, float] = {}
    for glob, mult in lr_mults:
        if mults.setdefault(glob, mult) != mult:
            raise OperationError(f"--lr-mult {glob!r} is given twice with different values", "--lr-mult", "give each glob once")
    tree = load(src)
    fmap, report = freeze_map(tree, freeze=freeze_globs, train=train_globs, lr_mult=mults, recipe=recipe, head=head_globs, source=str(src))
    check_destination(output, {Path(src), *tree.source_paths()}, force=force)
    document = fmap.to_json()
    if not dry_run:
        with atomic_output(output) as tmp:
            tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        _emit_json(document)
    elif not quiet:
        _print_freeze(report, output, dry_run)


def _print_freeze(report, output: Path, dry_run: bool) -> None:
    facts = report.facts
    if "head" in facts:
        click.echo(f"head: {_printable(', '.join(facts['head']['parameters']))} ({_printable(facts['head']['why'])})")
    for rule in facts["rules"]:
        names = _printable(", ".join(rule["parameters"]))
        click.echo(f"{_printable(rule['rule'])} -> {rule['sets']}: {len(rule['parameters'])} parameter(s): {names}")
    for note in report.notes:
        click.echo(f"note: {_printable(note)}")
    click.echo(
        f"{facts['parameters']} parameters: {facts['trainable']} trainable, {facts['frozen']} frozen; "
        f"{facts['buffers']} buffers listed apart (not parameters)"
    )
    click.echo(f"{'would write' if dry_run else 'wrote'} {output}")

# -- recipe files: apply ---------------------------------------------------------------


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@json_option
@quiet_option
def apply(recipe: Path, src: Path, output: Path, force: bool, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Apply the steps of a RECIPE file (TOML or JSON) to SRC, and write OUTPUT once.

    Steps run in order on the lazy tree, so every step is checked before any
    tensor is read, and the data is computed once, while OUTPUT is written.
    Each step is {op = NAME, options...}; options are named as the command's
    flags (dashes or underscores). Operations: subsample, upsample, cast,
    rename, strip-prefix, select, convert-layout, strip-head, truncate,
    reinit, adapt-input. OUTPUT's suffix chooses its format.

    \b
    Example recipe (road.toml):
      [[steps]]
      op = "subsample"
      classes = [0, 3, 8, 1, 2, 10, 4, 6, 12]
      anchors = 4
    \b
      [[steps]]
      op = "reinit"
      layers = ["conv9_2_mbox_conf"]
      init = "xavier_uniform"
    \b
    Examples:
      surgery apply road.toml ssd300_coco.h5 -o ssd300_road.h5 --dry-run
      surgery apply road.toml ssd300_coco.h5 -o ssd300_road.h5
    """
    from .io import check_output, load
    from .recipe import load_recipe, run_recipe

    steps = load_recipe(recipe)
    tree = load(src)
    edited, reports = run_recipe(tree, steps)
    fmt = check_output(edited, output, force=force)
    _write("applying", edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    document = {
        "recipe": str(recipe),
        "input": str(src),
        "output": str(output),
        "format": fmt,
        "dry_run": dry_run,
        "steps": [{**step.to_json(), "report": report.to_json()} for step, report in zip(steps, reports)],
        "tensors": len(edited),
        "total_bytes": edited.total_bytes,
    }
    _report(document, as_json, quiet, _print_recipe)


def _print_recipe(document: dict) -> None:
    from .sizes import format_size

    for number, step in enumerate(document["steps"], start=1):
        changes = step["report"]["changes"]
        kinds = ", ".join(f"{n} {kind}" for kind, n in _count_kinds(changes).items()) or "no tensor changed"
        click.echo(f"step {number}: {step['op']}: {kinds}")
        for change in changes[:20]:
            after = f" -> {change['after']}" if change["after"] else ""
            click.echo(f"  {change['kind']} {_printable(change['name'])} {change['before']}{after}".rstrip())
        if len(changes) > 20:
            click.echo(f"  ... {len(changes) - 20} more (--json lists all)")
        for note in step["report"]["notes"]:
            click.echo(f"  note: {note}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']}, {document['tensors']} tensors, {format_size(document['total_bytes'])})")


def _count_kinds(changes: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change["kind"]] = counts.get(change["kind"], 0) + 1
    return counts


if __name__ == "__main__":
    main()
