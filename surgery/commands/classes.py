"""Class-axis surgery: `surgery subsample`, `upsample` and `verify`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .labels import label_options
from .common import (
    Checked,
    _emit_json,
    _printable,
    _warn,
    _write,
    json_option,
    key_option,
    load_input,
    output_options,
    quiet_option,
    usage_error,
)

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


def _check_classes(text: str) -> None:
    """An index list is checked now; names wait for the label space, known only once SRC is read."""
    import re

    from ..ops.classes import parse_classes

    tokens = [t.strip() for t in text.split(",")]
    if all(t == "new" or re.fullmatch(r"-?\d+(\s*-\s*\d+)?", t) for t in tokens if t) or not any(t.strip() for t in tokens):
        parse_classes(text)


def _check_init(text: str) -> None:
    from ..ops.classes import check_init

    check_init(text)


def class_options(f: Callable) -> Callable:
    """Which classes and which layers: shared by subsample, upsample and verify."""
    options = [
        click.option("--classes", type=Checked("LIST", _check_classes), help="Source class indices in their new order, e.g. 0,3,8,1 (0 is background in SSD). A class given twice is refused unless --allow-duplicates; 'new' adds one (upsample)."),
        click.option("--allow-duplicates", is_flag=True, help="Accept a class given twice in --classes: its weights are copied to each place."),
        click.option("--num-classes", type=click.IntRange(min=1), metavar="N", help="Instead of --classes: fewer than the source picks N at random (keeping background, sorted); more keeps all and adds new ones."),
        click.option("--seed", type=int, help="Seed for --num-classes picks and new-class init (default 0; reported)."),
        click.option("--layers", "layer_globs", multiple=True, metavar="GLOB", help="Class layers to edit (repeatable). Default: detect known heads (SSD *_mbox_conf, RetinaNet, YOLO, Faster R-CNN, classifiers)."),
        click.option("--class-layout", type=click.Choice(["anchor-major", "anchor-major-fields", "class-major", "plain"]), help="How classes sit on the output axis (default: from the detected head)."),
        click.option("--source-classes", type=click.IntRange(min=1), metavar="K", help="Classes the source model has, when it cannot be inferred."),
        click.option("--anchors", "anchors", multiple=True, type=AnchorsType(), help="Boxes per location: A for every layer it divides consistently, or LAYER=A for one layer (repeatable)."),
        click.option("--axis", type=int, help="Class axis of kernels (default: last for Keras files, 0 for PyTorch)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _plan(tree, classes, num_classes, seed, layer_globs, class_layout, source_classes, anchors, axis, allow_duplicates=False):
    from ..ops.classes import parse_classes, plan_classes

    overall = [a for layer, a in anchors if layer is None]
    if len(overall) > 1:
        raise usage_error("--anchors A is given twice: give one count, and LAYER=A for layers that differ")
    if classes is not None and num_classes is not None:
        raise usage_error("--classes and --num-classes are both given: pass only one of them")
    picked = parse_classes(classes) if classes is not None else None
    repeated = sorted({c for c in picked or () if c is not None and picked.count(c) > 1})
    if repeated and not allow_duplicates:
        raise usage_error(
            f"--classes gives class {repeated[0]} more than once: drop the repeat, or pass --allow-duplicates to copy its weights to each place"
        )
    return plan_classes(
        tree,
        picked,
        num_classes=num_classes,
        seed=seed,
        layer_globs=layer_globs,
        layout=class_layout,
        source_classes=source_classes,
        anchors=overall[0] if overall else None,
        anchors_per_layer={layer: a for layer, a in anchors if layer is not None},
        axis=axis,
    )


def _class_command(kind: str, src: Path, output: Path, force: bool, dry_run: bool, as_json: bool, quiet: bool, verify_after: bool, init: str, key: str | None = None, **class_args: Any) -> None:
    from ..errors import OperationError
    from ..graph import graph_of
    from ..io import check_output, load
    from ..ops.classes import apply_plan, verify
    from ..tree import DROPPED_ON_READ
    from .labels import check_labels_out, document_part, print_part, resolve_names, write_labels_out

    tree = load_input(src, key, quiet or as_json, left_out=False)  # the report's notes say what was left out
    try:
        named, labels_out, class_args = resolve_names(tree, class_args)  # names -> indices, before planning
    except OperationError as e:
        if e.where == "--classes" and ("is not a class index" in e.what or "carries no labels" in e.what):  # names, but no label space: a bad option value
            raise click.BadParameter(f"{e.what}; {e.fix}", param_hint="'--classes'") from None
        raise
    plan = _plan(tree, **class_args)
    if kind == "subsample" and plan.adds_classes:
        raise OperationError("subsample cannot add classes", "--classes", "use `surgery upsample` to add new classes")
    if kind == "upsample" and class_args["num_classes"] is not None and class_args["num_classes"] < plan.source_classes:
        raise OperationError(
            f"--num-classes {class_args['num_classes']} is fewer than the {plan.source_classes} classes the model has",
            "--num-classes",
            "use `surgery subsample` to drop classes",
        )
    names = named.names(plan)
    _warn_about_selection(plan)  # after every refusal, so that an error stays the only line
    edited, report = apply_plan(tree, plan, init=init, seed=class_args["seed"], labels=names)
    check_labels_out(labels_out, names, tree, force)
    if DROPPED_ON_READ in tree.format_state:
        report.notes.append(f"dropped {tree.format_state[DROPPED_ON_READ]}")
    fmt = check_output(edited, output, force=force)
    _write(kind, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    write_labels_out(labels_out, names, dry_run)
    checks = verify(tree, edited if dry_run else load(output), plan) if verify_after and graph_of(tree) is None else None
    if verify_after and graph_of(tree) is not None:  # a graph: run both models in onnxruntime
        from ..formats.onnx_verify import verify_in_runtime

        checks = verify_in_runtime(src, edited if dry_run else output, plan, seed=class_args["seed"] or 0)
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, **plan.to_json(tree)}
    document["notes"] = report.notes
    document.update(document_part(named, names, labels_out, edited, output))
    if checks is not None:
        document["verify"] = checks
    if as_json:
        _emit_json(document)
    elif not quiet:
        print_part(document)
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
    """Only heads whose class 0 is background (SSD, Faster R-CNN) count it among the classes."""
    return " (background included)" if plan.background_first and plan.classes and plan.classes[0] == 0 else ""


def _warn_about_selection(plan) -> None:
    """Selections that are valid but rarely meant: they draw a warning, not an error."""
    if len(plan.classes) == plan.source_classes and list(plan.classes) == list(range(plan.source_classes)):
        _warn(f"--classes keeps all {plan.source_classes} classes in their order: the heads are copied unchanged")
    elif plan.background_first and list(plan.classes) == [0]:
        _warn("--classes keeps only class 0, the background: the model would detect nothing")


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@class_options
@label_options
@key_option
@click.option("--verify", "verify_after", is_flag=True, help="After writing, prove the kept classes' outputs equal the original's.")
@json_option
@quiet_option
def subsample(src: Path, output: Path, force: bool, dry_run: bool, verify_after: bool, as_json: bool, quiet: bool, **class_args: Any) -> None:
    """Keep only some classes of a classifier head, per anchor, in a new order.

    Every pretrained weight is reused: the kept classes' output channels are
    copied, in the order given, for every anchor of every class layer. The
    rest of the checkpoint is copied unchanged. Run with --dry-run first to
    see each tensor's old and new shape and the channels kept. In an ONNX
    model the graph follows: Reshape shapes, Split sizes, Slice bounds and
    output shapes that carry the class count change too, and a node that
    cannot be proven to agree is refused by name; --verify runs both models
    in onnxruntime.

    \b
    Examples:
      surgery subsample ssd300_coco.h5 -o ssd300_road.h5 --classes 0,3,8,1,2,10,4,6,12 --anchors 4
      surgery subsample model.h5 -o small.h5 --num-classes 10 --seed 1
      surgery subsample model.safetensors -o out.safetensors --layers 'head.cls_logits' --classes 0-9
      surgery subsample ssd300_coco.h5 -o road.h5 --classes person,car,bus --labels coco80+bg --anchors 4
      surgery subsample frcnn.pt -o frcnn81.pt --from-labels coco91 --to-labels coco80+bg
      surgery subsample my-ner/ -o my-ner-small/ --classes O,B-PER,I-PER   # Hugging Face folder
      surgery subsample retinaface.onnx -o faces.onnx --classes 1,0 --layers 'ClassHead*' --source-classes 2 --verify
    """
    _class_command("subsample", src, output, force, dry_run, as_json, quiet, verify_after, "gaussian", **class_args)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@class_options
@label_options
@key_option
@click.option("--init", default="gaussian", show_default=True, type=Checked("NAME", _check_init), help="New classes: gaussian (mean 0, std 0.005), zeros, xavier, mean (of the old classes), or copy:C. New biases are zero unless mean or copy.")
@click.option("--verify", "verify_after", is_flag=True, help="After writing, prove the old classes' outputs are unchanged.")
@json_option
@quiet_option
def upsample(src: Path, output: Path, force: bool, dry_run: bool, init: str, verify_after: bool, as_json: bool, quiet: bool, **class_args: Any) -> None:
    """Add classes to a classifier head, per anchor, keeping the old ones exactly.

    \b
    Examples:
      surgery upsample model.h5 -o more.h5 --num-classes 90 --anchors 4 --seed 7
      surgery upsample model.h5 -o more.h5 --classes 0-80,new,new --init copy:1
      surgery upsample ssd_coco.h5 -o ssd_voc.h5 --from-labels coco80+bg --to-labels voc21 --init mean
      surgery upsample retinaface.onnx -o three.onnx --num-classes 3 --source-classes 2 --init zeros --verify
    """
    _class_command("upsample", src, output, force, dry_run, as_json, quiet, verify_after, init, **class_args)


@click.command()
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("edited", type=click.Path(path_type=Path))
@class_options
@key_option
@json_option
def verify(original: Path, edited: Path, as_json: bool, key: str | None = None, **class_args: Any) -> None:
    """Prove that EDITED's heads give ORIGINAL's outputs at the kept classes.

    The classes are the ones the edit recorded in EDITED (surgery.source_classes),
    unless --classes or --num-classes says otherwise; give the other options
    (--anchors, --layers) as for the edit. Each head kernel is applied, as a
    linear map over its class axis, to random inputs; the largest absolute
    difference at a kept class must be 0. Exits 1 if it is not.

    \b
    Examples:
      surgery verify ssd300_coco.h5 ssd300_road.h5 --anchors 4
      surgery verify ssd300_coco.h5 ssd300_road.h5 --classes 0,3,8,1,2,10,4,6,12 --anchors 4
    """
    from ..errors import OperationError
    from ..io import load
    from ..ops.classes import verify as verify_plan

    tree, after = load(original, key=key), load(edited)  # --key: ORIGINAL's; EDITED is what surgery wrote
    if class_args["classes"] is None and class_args["num_classes"] is None:
        class_args.update(classes=_recorded_classes(after, edited), allow_duplicates=True)  # the edit's own list
    rows = verify_plan(tree, after, _plan(tree, **class_args))
    worst = max((row["max_abs_diff"] for row in rows), default=0.0)
    if as_json:
        _emit_json({"layers": rows, "max_abs_diff": worst, "equal": worst == 0})
    else:
        for row in rows:
            click.echo(f"{row['layer']}: {row['compared']} of {row['channels']} channels compared, largest |difference| {row['max_abs_diff']:g}")
        click.echo("equal at every kept class" if worst == 0 else f"DIFFERENT: largest |difference| {worst:g}")
    if worst != 0:
        raise OperationError(f"the heads differ at kept classes by up to {worst:g}", str(edited), "check that the class options match the edit")


def _recorded_classes(edited, path: Path) -> str:
    """The class list an edit wrote into its output's metadata, as --classes text."""
    import json

    from ..errors import OperationError

    recorded = edited.metadata.get("surgery.source_classes")
    try:
        classes = json.loads(recorded) if recorded else None
    except ValueError:
        classes = None
    if not isinstance(classes, list) or not classes:
        raise OperationError(
            "EDITED does not record which classes it kept (no surgery.source_classes metadata)",
            str(path),
            "pass --classes as given to the edit",
        )
    return ",".join(str(c) for c in classes)
