"""`surgery diff A B`: what differs between two checkpoints, tensor by tensor."""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import OperationError, SurgeryError
from .common import (
    _MAP_HELP,
    _parse_flatten_shapes,
    _parse_rules,
    _printable,
    json_option,
)

# diff(1) and cmp(1) exit 0 for same, 1 for different and 2 for trouble: a script must be able
# to tell "the files differ" from "a file could not be read", so diff's errors exit 2.
EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2


class _Trouble(click.ClickException):
    """A real error (unreadable file, bad --map) during diff: the one-line error, exit 2."""

    exit_code = EXIT_TROUBLE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Absolute tolerance: values with |a-b| <= atol + rtol*|b| count as equal.")
@click.option("--rtol", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Relative tolerance (see --atol; numpy.allclose's rule).")
@click.option("--filter", "filters", multiple=True, metavar="GLOB", help="Compare only names matching GLOB (repeatable; after --map).")
@click.option("--map", "rules", multiple=True, metavar="REGEX=REPL", help=_MAP_HELP + " Applied to A's names before they are matched with B's.")
@click.option("--layout-aware", is_flag=True, help="A Keras file against a PyTorch one: the Keras side is moved to torch layout (axes and names, as `convert --layout torch`) before comparing.")
@click.option("--flatten-shape", "flatten_shapes", multiple=True, metavar="LAYER=H,W,C", help="With --layout-aware: the first Dense after a Flatten and its input shape (see `convert --help`).")
@click.option("--all", "show_all", is_flag=True, help="List identical tensors too (text output).")
@click.option("--key", metavar="NAME", help="PyTorch checkpoints: the top-level entry that holds the state dict, for both files.")
@json_option
def diff(a: Path, b: Path, atol: float, rtol: float, filters: tuple[str, ...], rules: tuple[str, ...], layout_aware: bool, flatten_shapes: tuple[str, ...], show_all: bool, key: str | None, as_json: bool) -> None:
    """Compare two checkpoints of any formats, tensor by tensor.

    Lists names only in A (removed) and only in B (added), shape and dtype
    changes, and for common tensors max |a-b|, mean |a-b|, the relative
    max (largest |a-b| / max(|a|,|b|)) and whether the bytes are equal.
    Data is streamed: two tensors at a time, in chunks. A training
    checkpoint's optimizer tensors are compared too, as
    optimizer/state/<parameter>/<key>.

    Exit status, as diff(1): 0 when every tensor is identical within the
    tolerance, 1 when something differs, 2 on an error (one `error:` line).

    \b
    Examples:
      surgery diff model.safetensors model.pt                 # a lossless conversion: exit 0
      surgery diff ssd300_coco.h5 ssd300_road.h5              # what subsample changed
      surgery diff fp32.safetensors bf16.safetensors --atol 1e-2
      surgery diff model.h5 model.pt --layout-aware           # Keras against its torch export
      surgery diff ddp.pt plain.pt --map '^module\\.='
      surgery diff a.pt b.pt --json | jq '.tensors[] | select(.status != "identical")'
    """
    try:
        tree_a, tree_b = _load_pair(a, b, key, rules, filters, layout_aware, flatten_shapes)
        different = _compare(tree_a, tree_b, a, b, atol, rtol, show_all, as_json)
    except SurgeryError as e:
        raise _Trouble(e.one_line()) from e
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the group stops quietly
    except OSError as e:
        raise _Trouble(f"{e.strerror or e} ({e.filename or 'I/O'}); check the path and permissions") from e
    if different:
        sys.exit(EXIT_DIFFERENT)


def _load_pair(a: Path, b: Path, key, rules, filters, layout_aware: bool, flatten_shapes):
    from ..io import load

    tree_a = _with_optimizer(load(a, key=key) if key is None or _is_torch(a) else load(a))
    tree_b = _with_optimizer(load(b, key=key) if key is None or _is_torch(b) else load(b))
    if layout_aware:
        tree_a, tree_b = _same_layout(tree_a, tree_b, _parse_flatten_shapes(flatten_shapes))
    elif flatten_shapes:
        raise OperationError("--flatten-shape only applies with --layout-aware", "--flatten-shape", "add --layout-aware")
    if rules:
        from ..ops.names import rename

        tree_a, _ = rename(tree_a, _parse_rules(rules), strict=False)
    if filters:
        tree_a, tree_b = (_filtered(t, filters) for t in (tree_a, tree_b))
        if not tree_a and not tree_b:
            raise OperationError(f"no tensor name matches --filter {' '.join(filters)}", "--filter", "list the names with `surgery inspect`; globs are case-sensitive")
    return tree_a, tree_b


def _with_optimizer(tree):
    """A training checkpoint's optimizer tensors are compared too, under their own names."""
    from ..formats.torch_training import training_state

    state = training_state(tree)
    extra = [e for o in state.optimizers for e in o.tensors.values()] if state is not None else []
    return tree.derive(add=extra) if extra else tree


def _is_torch(path: Path) -> bool:
    from .. import formats

    return formats.detect(path) == "torch"


def _same_layout(tree_a, tree_b, flatten_shapes):
    """Move the Keras side to torch layout; trees already in one layout are left alone."""
    from ..ops.layout import convert_layout
    from ..tree import KERAS, TORCH

    conventions = (tree_a.convention, tree_b.convention)
    if conventions == (KERAS, TORCH):
        tree_a, _ = convert_layout(tree_a, "torch", flatten_shapes=flatten_shapes or None)
    elif conventions == (TORCH, KERAS):
        tree_b, _ = convert_layout(tree_b, "torch", flatten_shapes=flatten_shapes or None)
    elif tree_a.convention != tree_b.convention:
        raise OperationError(
            f"--layout-aware compares Keras with PyTorch layouts, but the files are {tree_a.convention} and {tree_b.convention}",
            "--layout-aware",
            "convert the unknown side first with `surgery convert --layout ... --from-layout ...`",
        )
    return tree_a, tree_b


def _filtered(tree, filters: tuple[str, ...]):
    drop = [n for n in tree if not any(fnmatch.fnmatchcase(n, g) for g in filters)]
    return tree.derive(drop=drop)


def _compare(tree_a, tree_b, a: Path, b: Path, atol: float, rtol: float, show_all: bool, as_json: bool) -> bool:
    """Stream the comparison; print each result as it comes (text) or the whole document (JSON)."""
    from ..ops.diff import DiffSummary, diff_trees

    summary, tensors, layers = DiffSummary(), [], set()
    for result in diff_trees(tree_a, tree_b, atol=atol, rtol=rtol):
        summary.add(result)
        if result.status == "changed":
            layers.add(_layer(result.name))
        if as_json:
            tensors.append(result.to_json())
        elif show_all or result.status != "identical":
            click.echo(_line(result))
    if as_json:
        counts = {**summary.counts, "changed_layers": len(layers), "equal": summary.equal}
        document = {"a": str(a), "b": str(b), "atol": atol, "rtol": rtol, "tensors": tensors, "summary": counts}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        in_layers = f" (in {len(layers)} layers)" if layers else ""
        line = summary.line().replace(" changed", f" changed{in_layers}", 1)
        click.echo(f"{line}; {'equal' if summary.equal else 'different'}" + _tolerance(atol, rtol))
    return not summary.equal


def _line(result) -> str:
    name = _printable(result.name)
    if result.status == "removed":
        return f"removed    {name} {_shape(result.shape_a)} {result.dtype_a} (only in A)"
    if result.status == "added":
        return f"added      {name} {_shape(result.shape_b)} {result.dtype_b} (only in B)"
    parts = [f"{result.status:<10} {name}"]
    if result.shape_a != result.shape_b:
        parts.append(f"shape {_shape(result.shape_a)} -> {_shape(result.shape_b)}")
    else:
        parts.append(_shape(result.shape_a))
    if result.dtype_a != result.dtype_b:
        parts.append(f"dtype {result.dtype_a} -> {result.dtype_b}")
    else:
        parts.append(result.dtype_a)
    if result.max_abs is not None and not result.bit_equal:
        parts.append(f"max|diff| {result.max_abs:.3g}  mean|diff| {result.mean_abs:.3g}  rel max {result.rel_max:.3g}")
    if result.bit_equal is not None:
        parts.append("bit-equal" if result.bit_equal else "bits differ")
    return "  ".join(parts)


def _layer(name: str) -> str:
    """The layer a tensor belongs to: its name without the last part (`fc7_mbox_conf/kernel`, `fc.weight`)."""
    cut = max(name.rfind("/"), name.rfind("."))
    return name[:cut] if cut > 0 else name


def _shape(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _tolerance(atol: float, rtol: float) -> str:
    return f" (atol {atol:g}, rtol {rtol:g})" if atol or rtol else ""
