"""Class names for `subsample` and `upsample`: --labels, --no-background, --from-labels/--to-labels, --labels-out.

The names are resolved into indices here, before the class planner runs, so the
planner only ever sees indices; what was resolved is printed and put in --json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .common import _printable

LABEL_OPTIONS = ("labels", "no_background", "from_labels", "to_labels", "labels_out")


def label_options(f: Callable) -> Callable:
    """--labels, --no-background, --from-labels, --to-labels and --labels-out."""
    options = [
        click.option("--labels", "labels", metavar="FILE|NAME", help="The source label space, for --classes by name: coco80, coco80+bg, coco91, voc20, voc21, imagenet1k, or a file (one name per line, a JSON list, or a JSON {id: name}). Default: the checkpoint's own (config.json id2label, or recorded by an earlier edit)."),
        click.option("--no-background", is_flag=True, help="Do not keep the background class first automatically when --classes names classes of a label space whose class 0 is background."),
        click.option("--from-labels", metavar="FILE|NAME", help="With --to-labels: the label space the head is in (same values as --labels)."),
        click.option("--to-labels", metavar="FILE|NAME", help="Move the head to this label space by name: its classes in its order; names the source lacks become new rows (upsample --init), source classes it lacks are dropped."),
        click.option("--labels-out", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help="Also write the new class names, one per line."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def resolve_names(tree, class_args: dict[str, Any]):
    """Pop the label options from `class_args` and resolve names into an index list.

    Returns (prepared, --labels-out path or None, class_args for the planner).
    """
    from ..errors import OperationError
    from ..labels import prepare

    given = {k: class_args.pop(k, None) for k in LABEL_OPTIONS}
    labels, from_labels = given["labels"], given["from_labels"]
    if labels is not None and from_labels is not None and labels != from_labels:
        raise OperationError("--labels and --from-labels name different label spaces", "--from-labels", "give one of them")
    if from_labels is not None and given["to_labels"] is None:
        raise OperationError("--from-labels only applies with --to-labels", "--from-labels", "add --to-labels, or use --labels")
    if given["to_labels"] is not None and class_args.get("num_classes") is not None:
        raise OperationError("--num-classes and --to-labels both given", "--to-labels", "the target label space sets the classes; drop --num-classes")
    named = prepare(
        tree,
        class_args.get("classes"),
        labels=labels or from_labels,
        background=not given["no_background"],
        to_labels=given["to_labels"],
        layer_globs=class_args.get("layer_globs") or (),
    )
    if named.classes is not None:
        class_args["classes"] = ",".join("new" if c is None else str(c) for c in named.classes)
    class_args["layer_globs"] = tuple(named.layer_globs)
    return named, given["labels_out"], class_args


def check_labels_out(out: Path | None, names: list[str] | None, tree, force: bool) -> None:
    """Refuse a --labels-out that cannot be written, before anything is written."""
    from ..atomic import check_destination
    from ..errors import OperationError

    if out is None:
        return
    if names is None:
        raise OperationError("--labels-out needs class names", "--labels-out", "pass --labels with the source's label space")
    bad = next((n for n in names if "\n" in n or "\r" in n), None)
    if bad is not None:
        raise OperationError(f"class name {bad!r} holds a line break", "--labels-out", "names in a text file are one per line")
    check_destination(out, tree.source_paths(), force=force)


def write_labels_out(out: Path | None, names: list[str] | None, dry_run: bool) -> None:
    """--labels-out: the new names, one per line, written atomically."""
    from ..atomic import atomic_output

    if out is None or dry_run or names is None:
        return
    with atomic_output(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in names))


def document_part(named, names: list[str] | None, out: Path | None, edited, output: Path) -> dict[str, Any]:
    """What names did, for --json and the text summary."""
    from .. import hf
    from ..labels import move_table

    part: dict[str, Any] = {"labels": names}
    if named.space is not None and (named.by_name or named.explicit):
        part["label_space"] = named.space.source
    if named.target is not None:
        part["move"] = move_table(named)
    if named.by_name and named.target is None and named.classes is not None and named.space is not None:
        part["resolved"] = [{"name": named.space.names[c], "index": c} if c is not None else {"name": "new", "index": None} for c in named.classes]
    part["label_notes"] = list(named.notes)
    if hf.STATE in edited.format_state:
        if hf.writes_folder(edited, output):
            part["label_notes"].append("config.json follows the new labels (id2label, label2id and the class-count fields)")
        else:
            part["label_notes"].append("config.json is written only beside a folder output; name a folder (no suffix) to keep it in step")
    if out is not None:
        part["labels_out"] = str(out)
    return part


def print_part(document: dict[str, Any]) -> None:
    """The text form: resolved names, a move's table, the new labels."""
    for note in document.get("label_notes", []):
        click.echo(f"note: {note}")
    if "resolved" in document:
        pairs = ", ".join(f"{_printable(r['name'])}={'new' if r['index'] is None else r['index']}" for r in document["resolved"])
        indices = ",".join("new" if r["index"] is None else str(r["index"]) for r in document["resolved"])
        click.echo(f"classes by name in {document['label_space']}: {pairs}")
        click.echo(f"resolved indices: {indices}")
    if "move" in document:
        click.echo("target  name  source")
        for row in document["move"]:
            click.echo(f"{row['index']:>6}  {_printable(row['name'])}  {row['source']}")
    if document.get("labels") is not None:
        shown = document["labels"] if len(document["labels"]) <= 20 else [*document["labels"][:20], "..."]
        click.echo(f"labels ({len(document['labels'])}): {', '.join(_printable(n) for n in shown)}")
