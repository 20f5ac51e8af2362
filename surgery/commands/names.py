"""Names: `surgery rename` and `transplant`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    _MAP_HELP,
    Checked,
    _capped,
    _check_flatten_shape,
    _first,
    _name_summary,
    _parse_flatten_shapes,
    _parse_rules,
    _printable,
    _report,
    _write,
    json_option,
    key_option,
    load_input,
    name_options,
    output_options,
    quiet_option,
    usage_error,
    verbose_option,
)


def _check_rule(text: str) -> None:
    from ..ops.names import _compile, parse_rule

    _compile(*parse_rule(text))


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--map", "rules", multiple=True, type=Checked("REGEX=REPL", _check_rule), help=_MAP_HELP)
@name_options
@key_option
@json_option
@quiet_option
@verbose_option
def rename(src: Path, output: Path, force: bool, dry_run: bool, rules: tuple[str, ...], strip_prefix: str | None, drop: tuple[str, ...], keep: tuple[str, ...], as_json: bool, quiet: bool, key: str | None = None) -> None:
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
    from ..io import check_output
    from ..ops.names import apply_names

    parsed = _parse_rules(rules)
    if not (parsed or strip_prefix is not None or keep or drop):
        raise usage_error("nothing to rename: give --map REGEX=REPL, --strip-prefix, --keep or --drop")
    tree, reports = apply_names(load_input(src, key, quiet or as_json), strip=strip_prefix, keep=keep, drop=drop, rules=parsed)
    fmt = check_output(tree, output, force=force)
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, "tensors": len(tree),
                **_name_summary(reports), "notes": [n for r in reports for n in r.notes]}
    _write("renaming", tree, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    _report(document, as_json, quiet, _print_rename)


def _print_rename(document: dict) -> None:
    renamed, more = _capped(document["renamed"])
    for change in renamed:
        click.echo(f"{_printable(change['before'])} -> {_printable(change['after'])}")
    if more:
        click.echo(more)
    if document["dropped"]:
        click.echo(f"dropped {len(document['dropped'])} tensors: {_first(document['dropped'])}")
    for note in document["notes"]:
        click.echo(f"note: {note}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']}, {document['tensors']} tensors, {len(document['renamed'])} renamed)")


@click.command()
@click.argument("pretrained", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@output_options
@click.option("--map", "rules", multiple=True, type=Checked("REGEX=REPL", _check_rule), help=_MAP_HELP + " Applied to PRETRAINED's names (after layout conversion).")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help="More rename rules for PRETRAINED's names, after --map: a JSON list of [regex, replacement] pairs, or TOML rules = [[...]] (.toml), as `surgery convert --rules`.")
@click.option("--strip-prefix", metavar="PREFIX", help="Remove PREFIX from PRETRAINED's names first, e.g. 'module.'.")
@click.option("--strict", is_flag=True, help="Fail unless every tensor matches by name and shape, both ways.")
@click.option("--flatten-shape", "flatten_shapes", multiple=True, type=Checked("LAYER=H,W,C", _check_flatten_shape), help="Keras layouts only: the Dense after a Flatten and the Flatten's input shape (see `surgery convert --help`).")
@key_option
@json_option
@quiet_option
@verbose_option
def transplant(pretrained: Path, target: Path, output: Path, force: bool, dry_run: bool, rules: tuple[str, ...], rules_file: Path | None, strip_prefix: str | None, strict: bool, flatten_shapes: tuple[str, ...], as_json: bool, quiet: bool, key: str | None = None) -> None:
    """Load PRETRAINED's weights into TARGET by name, and write OUTPUT.

    Like load_state_dict(strict=False), as a file: every TARGET tensor whose
    name and shape match a PRETRAINED tensor takes the pretrained data (cast to
    TARGET's dtype); the rest of TARGET stays as initialised. OUTPUT keeps
    TARGET's names, order and layout, so give it TARGET's suffix to get TARGET's
    format (the format comes from OUTPUT's suffix, as everywhere). The report
    lists copied, missing (TARGET only), unexpected (PRETRAINED only) and
    mismatched (same name, other shape) tensors. A Keras PRETRAINED and a
    PyTorch TARGET (or the reverse) are converted between layouts first.
    --key chooses the state dict inside PRETRAINED (a training checkpoint).

    \b
    Examples:
      surgery transplant imagenet.pt new_head_init.pt -o start.pt --dry-run
      surgery transplant ddp.pt init.safetensors -o start.safetensors --strip-prefix module.
      surgery transplant old.safetensors init.safetensors -o start.safetensors --map '^encoder\\.=backbone.'
      surgery transplant keras.h5 torch_init.safetensors -o start.safetensors --strict
      surgery transplant finetuned.safetensors model.onnx -o finetuned.onnx   (into an ONNX graph)
      surgery transplant old.pt init.pt -o start.pt --rules names.toml
    """
    from ..atomic import check_destination
    from ..io import check_output
    from ..ops.names import strip_prefix as strip
    from ..ops.transplant import transplant as transplant_trees

    parsed = _parse_rules(rules) + _rules_from_file(rules_file)
    shapes = _parse_flatten_shapes(flatten_shapes)
    source, into = load_input(pretrained, key, quiet or as_json), load_input(target, None, quiet or as_json)  # --key: PRETRAINED's
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


def _rules_from_file(path: Path | None) -> list[tuple[str, str]]:
    if path is None:
        return []
    from ..ops.layout import parse_rules

    kind = "toml" if path.suffix.lower() == ".toml" else "json"
    return list(parse_rules(path.read_text(encoding="utf-8"), kind, str(path)))


def _transplant_summary(report) -> dict:
    from ..ops.transplant import name_patterns

    changes = report.changes
    return {
        "counts": {kind: report.facts[kind] for kind in ("copied", "cast", "missing", "unexpected", "mismatched")},
        "copied": report.names("copied"),
        "cast": [{"name": c.name, "from": c.before, "to": c.after} for c in changes if c.kind == "cast"],
        "missing": report.names("missing"),
        "unexpected": report.names("unexpected"),
        "mismatched": [{"name": c.name, "pretrained": c.before, "target": c.after} for c in changes if c.kind == "mismatched"],
        "patterns": {kind: name_patterns(report.names(kind)) for kind in ("missing", "unexpected", "mismatched")},
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
        kind = label.split()[0]
        groups = document["patterns"].get(kind, [])
        if names and kind != "copied" and counts["copied"] and len(groups) < len(names):
            click.echo("  by name: " + _first([f"{g['pattern']} ({g['count']})" for g in groups]))
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']})")
