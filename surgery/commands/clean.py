"""`surgery clean`: remove what interrupted writes left in a folder, and put back hidden outputs."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import OutputError
from .common import _emit_json, _printable, json_option


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print what would be removed or put back, and change nothing.")
@json_option
def clean(folder: Path, dry_run: bool, as_json: bool) -> None:
    """Clean up after killed runs of surgery in FOLDER.

    Removes `.<name>.tmp-<pid>-<hex>` temporaries whose writer (pid) no longer
    runs, removes `.<name>.old-<pid>-<hex>` copies whose replacement completed,
    and puts an `.old-` copy back where a kill left no destination. Nothing
    else is touched, and nothing of a writer that still runs. Every write
    into a folder does the same first; this command does it by hand.

    \b
    Examples:
      surgery clean models/
      surgery clean models/ --dry-run
      surgery clean models/ --json
    """
    from ..atomic import clean_leftovers

    if not folder.is_dir():
        raise OutputError("no such folder", str(folder), "pass the folder that holds the outputs")
    found = clean_leftovers(folder, dry_run=dry_run)
    if as_json:
        _emit_json({"folder": str(folder), "dry_run": dry_run, "leftovers": [f.to_json() for f in found]})
        return
    if not found:
        click.echo(f"nothing to clean in {_printable(str(folder))}")
        return
    would = {"removed": "would remove", "restored": "would restore", "kept": "would keep"}
    for f in found:
        verb = would[f.action] if dry_run else f.action
        click.echo(f"{verb} {_printable(str(f.path))} ({f.reason})")
