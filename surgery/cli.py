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
    Formats: safetensors (single or sharded), npz, Keras HDF5 (.h5, .weights.h5),
    PyTorch zip checkpoints (.pt, .pth, .bin; read only, no code runs).
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
    from .tree import DROPPED_ON_READ

    if DROPPED_ON_READ in tree.format_state:
        click.echo(f"not read: {tree.format_state[DROPPED_ON_READ]}")


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
    from .io import check_output, load, save
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
    if not dry_run:
        with _progress(kind, edited.total_bytes, quiet or as_json) as progress:
            save(edited, output, fmt, force=force, progress=progress)
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
# @@ section: names @@

# -- head and layer surgery: strip-head, truncate ------------------------------------
# @@ section: strip @@

# -- re-initialisation: reinit, adapt-input -------------------------------------------
# @@ section: reinit @@

# -- freeze maps ---------------------------------------------------------------------
# @@ section: freeze @@

# -- recipe files: apply ---------------------------------------------------------------
# @@ section: apply @@


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
    from .io import check_output, load, save
    from .recipe import load_recipe, run_recipe

    steps = load_recipe(recipe)
    tree = load(src)
    edited, reports = run_recipe(tree, steps)
    fmt = check_output(edited, output, force=force)
    if not dry_run:
        with _progress("applying", edited.total_bytes, quiet or as_json) as progress:
            save(edited, output, fmt, force=force, progress=progress)
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
    if as_json:
        _emit_json(document)
    elif not quiet:
        _print_recipe(document)


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
