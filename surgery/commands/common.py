"""Options, parameter types and printing shared by the commands.

Library modules are imported inside functions so that `surgery --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import SurgeryError
from ..formats import names as _format_names

FORMAT_NAMES = _format_names()
_LISTED = 20  # names listed per kind in text output; --verbose and --json list all
_VERBOSE = "surgery.verbose"  # click context meta: --verbose was given


# -- shared options and parameter types ---------------------------------------------


class SizeType(click.ParamType):
    """A byte size: 1000000, 500MB, 5GB, 2GiB."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from ..sizes import parse_size

        try:
            return parse_size(value, f"--{param.name.replace('_', '-')}" if param else "size")
        except SurgeryError as e:
            self.fail(e.what + "; write e.g. 500MB or 5GB", param, ctx)


class Checked(click.ParamType):
    """A text option the library parses: its refusal becomes a usage error (exit 2), the text is kept.

    `check` is the library's own parser (e.g. `parse_classes`), so the CLI and the library
    accept exactly the same values and say the same thing about the rest.
    """

    def __init__(self, metavar: str, check: Callable[[str], Any]) -> None:
        self.name, self.check = metavar, check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            self.check(value)
        except SurgeryError as e:
            self.fail(f"{e.what}; {e.fix}" if e.fix else e.what, param, ctx)
        return value


def usage_error(message: str) -> click.UsageError:
    """Options that do not fit together: a usage error (one line, exit 2) of the running command."""
    return click.UsageError(message, click.get_current_context(silent=True))


def key_option(f: Callable) -> Callable:
    return click.option("--key", metavar="NAME", help="PyTorch checkpoints: the top-level entry that holds the state dict (e.g. model_ema); found by itself otherwise.")(f)


def verbose_option(f: Callable) -> Callable:
    """--verbose: list every name instead of the first few (`_first`)."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.meta[_VERBOSE] = value
        return value

    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=remember, help=f"List every name; without it, long lists show the first {_LISTED}.")(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON document on stdout instead of text.")(f)


def quiet_option(f: Callable) -> Callable:
    return click.option("-q", "--quiet", is_flag=True, help="Print only errors and warnings (stderr): no progress bar (stderr) and no summary (stdout).")(f)


def output_options(f: Callable) -> Callable:
    """-o/--output, --force, --dry-run and --no-sync, shared by every command that writes."""
    f = click.option("--no-sync", is_flag=True, expose_value=False, callback=_no_sync, help=NO_SYNC_HELP)(f)
    f = click.option("--dry-run", is_flag=True, help="Print what would be written, and write nothing.")(f)
    f = click.option("--drop-optimizer", is_flag=True, expose_value=False, callback=_drop_optimizer, help="Training checkpoints: leave the optimizer state out (the way out when its parameter order cannot be proven).")(f)
    f = click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (never an input).")(f)
    f = click.option(
        "-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the result."
    )(f)
    return f


def _drop_optimizer(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--drop-optimizer: the torch reader leaves optimizer state out while this command runs."""
    if value:
        from ..formats.torch_training import DROP_OPTIMIZER

        token = DROP_OPTIMIZER.set(True)
        ctx.call_on_close(lambda: DROP_OPTIMIZER.reset(token))


NO_SYNC_HELP = (
    "Skip the fsyncs: faster for scratch outputs, but a power loss or OS crash soon after can leave "
    "OUTPUT empty or partial (an interrupted surgery still never can)."
)


def _no_sync(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--no-sync: every write of this command skips its fsyncs (surgery.durable); the renames stay atomic."""
    if value:
        from ..durable import no_sync

        ctx.with_resource(no_sync())  # left when the command's context closes


def name_options(f: Callable) -> Callable:
    """--strip-prefix, --keep and --drop: rename and select tensors after loading (section names)."""
    f = click.option("--drop", multiple=True, metavar="GLOB", help="Leave out tensors matching GLOB (repeatable; after --keep).")(f)
    f = click.option("--keep", multiple=True, metavar="GLOB", help="Keep only tensors matching GLOB (repeatable).")(f)
    f = click.option("--strip-prefix", metavar="PREFIX", help="Remove PREFIX from names that start with it, e.g. 'module.' (DataParallel).")(f)
    return f


def _apply_name_options(tree, strip_prefix: str | None, drop: tuple[str, ...], keep: tuple[str, ...]) -> tuple[Any, list]:
    """--strip-prefix first, then --keep and --drop (globs see the stripped names); returns (tree, reports)."""
    if strip_prefix is None and not keep and not drop:
        return tree, []  # as apply_names gives, without importing the operations package (start-up)
    from ..ops.names import apply_names

    return apply_names(tree, strip=strip_prefix, keep=keep, drop=drop)


def _progress(label: str, total: int, quiet: bool):
    from ..progress import Progress

    return Progress(label, total, enabled=not quiet)


def _write(label: str, tree, output: Path, fmt: str, *, force: bool, dry_run: bool, quiet: bool, shard_size: int | None = None) -> None:
    """Save `tree` atomically with a progress bar, unless this is a dry run."""
    if fmt == "npz" and tree.metadata and not quiet:
        click.echo(f"note: npz keeps no metadata or provenance ({len(tree.metadata)} keys not written); write .safetensors to keep them", err=True)
    if dry_run:
        return
    from ..io import save

    with _progress(label, tree.total_bytes, quiet) as progress:
        save(tree, output, fmt, force=force, shard_size=shard_size, progress=progress)
    from .training import note_training_not_written

    note_training_not_written(tree, fmt, quiet)


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


def _check_flatten_shape(text: str) -> None:
    from ..ops.layout import parse_flatten_shape

    parse_flatten_shape(text)


def layout_options(f: Callable) -> Callable:
    """--layout and what it needs: --from-layout, --flatten-shape, --rules, --transposed, --depthwise."""
    options = [
        click.option("--layout", type=click.Choice(["torch", "keras"]), help="Move the weights to PyTorch (torch) or Keras (keras) layout: conv kernels HWIO<->OIHW (1-3 D, depthwise, transposed), Dense (in,out)<->(out,in), names layer/kernel<->layer.weight, BatchNorm gamma/beta/moving_*<->weight/bias/running_* (+num_batches_tracked), PReLU alpha<->weight."),
        click.option("--from-layout", type=click.Choice(["torch", "keras"]), help="The layout SRC is in, when the file does not say (a safetensors file without format=pt)."),
        click.option("--flatten-shape", "flatten_shapes", multiple=True, type=Checked("LAYER=H,W,C", _check_flatten_shape), help="The first Dense after a Flatten: its Keras layer name and the Flatten's input shape in Keras order (e.g. dense=7,7,64), in both directions; its inputs are reordered NHWC<->NCHW. LAYER=none: no reorder, for a Permute before the Flatten that already makes the torch order (MTCNN: fc4=none). Repeatable."),
        click.option("--rules", "rules_file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE", help='Rename rules applied in order after the default mapping: a JSON list of [regex, replacement] pairs, [["^conv2d_1\\\\.", "features.0."]], or TOML: rules = [["^conv2d_1\\\\.", "features.0."]] (.toml).'),
        click.option("--transposed", multiple=True, metavar="GLOB", help="Layers of SRC that are transposed convs (Conv2DTranspose/ConvTranspose2d), when no Keras model_config says so (repeatable)."),
        click.option("--depthwise", multiple=True, metavar="GLOB", help="Layers of SRC that are depthwise convs (torch Conv2d with groups=in), when nothing else says so (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# -- convert --layout: Keras <-> PyTorch axes and names --------------------------------


def _apply_layout(tree, layout: str | None, from_layout: str | None, flatten_shapes: tuple[str, ...], rules_file: Path | None, transposed: tuple[str, ...], depthwise: tuple[str, ...]):
    """The tree in the asked layout and the report, or the tree unchanged and None without --layout."""
    if layout is None:
        given = [n for n, v in (("--flatten-shape", flatten_shapes), ("--rules", rules_file), ("--transposed", transposed), ("--depthwise", depthwise), ("--from-layout", from_layout)) if v]
        if given:
            raise usage_error(f"{given[0]} only applies with --layout: add --layout torch or --layout keras")
        return tree, None
    # Imported here, after the early return: a plain convert then never loads the operations package.
    from ..ops.layout import convert_layout, parse_flatten_shape, parse_rules

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


# -- names: rename, transplant ------------------------------------------------------


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
    """The first names of a long list, then how many more: the one way every command shortens a list."""
    ctx = click.get_current_context(silent=True)
    limit = None if ctx is not None and ctx.meta.get(_VERBOSE) else _LISTED
    if limit is None or len(names) <= limit:
        return ", ".join(_printable(n) for n in names)
    return ", ".join(_printable(n) for n in names[:limit]) + f", … and {len(names) - limit} more (--verbose lists all)"


def _capped(items: list) -> tuple[list, str]:
    """A long list printed one per line: the first items, and the same "… and M more" line as `_first`."""
    ctx = click.get_current_context(silent=True)
    if (ctx is not None and ctx.meta.get(_VERBOSE)) or len(items) <= _LISTED:
        return list(items), ""
    return list(items[:_LISTED]), f"… and {len(items) - _LISTED} more (--verbose lists all)"


def load_input(path: Path, key: str | None = None, quiet: bool = False, *, left_out: bool = True):
    """`surgery.io.load`, saying on stderr which state dict a container gave and (unless the
    command reports it itself: `left_out=False`) what the reader left out."""
    from ..io import load
    from ..tree import DROPPED_ON_READ

    tree = load(path, key=key)
    chosen = tree.metadata.get("surgery.torch_key")
    if not quiet and chosen and key is None and tree.format == "torch":  # outputs keep the key as metadata
        click.echo(f"note: {path}: read the state dict under {chosen!r} (--key chooses another)", err=True)
    if not quiet and left_out and DROPPED_ON_READ in tree.format_state:
        click.echo(f"note: {path}: not read: {tree.format_state[DROPPED_ON_READ]}", err=True)
    return tree


def _warn(message: str) -> None:
    """A warning: stderr, one line, shown even with --quiet (it is not part of the summary)."""
    click.echo(f"warning: {message}", err=True)


def _parse_rules(rules: tuple[str, ...]) -> list[tuple[str, str]]:
    from ..ops.names import parse_rule

    return [parse_rule(rule) for rule in rules]


_MAP_HELP = (
    "Rename by regex: REGEX=REPL, Python re.sub over the whole name, \\1 for groups (repeatable, applied in order). "
    "The split is at the first '=' not after a backslash: write a literal '=' in REGEX as \\=."
)


def _parse_flatten_shapes(texts: tuple[str, ...]) -> dict | None:
    if not texts:
        return None
    from ..ops.layout import parse_flatten_shape

    return dict(parse_flatten_shape(text) for text in texts)


