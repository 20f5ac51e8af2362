"""`surgery apply`: run a recipe file's steps on one lazy tree."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    _printable,
    _report,
    _write,
    json_option,
    output_options,
    quiet_option,
)


# -- recipe files: apply ---------------------------------------------------------------


@click.command()
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
    from ..io import check_output, load
    from ..recipe import load_recipe, run_recipe

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
    from ..sizes import format_size

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
