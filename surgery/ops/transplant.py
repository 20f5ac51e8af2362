"""Transplant: load a pretrained checkpoint into another model's checkpoint by name.

This is `model.load_state_dict(pretrained, strict=False)` as a file-to-file tool:
every TARGET tensor whose name and shape match a PRETRAINED tensor takes the
pretrained data; everything else in TARGET stays as initialised. The result is
TARGET with new data: its names, order, format, convention, metadata and
format-specific layout, so it writes as TARGET was written. Nothing is read
until the result is written; a dtype difference is cast then.

    >>> import numpy as np
    >>> from surgery.tree import Entry, Tree
    >>> pre = Tree([Entry.from_array("body.w", np.ones(2, "float32")), Entry.from_array("head.w", np.ones(3, "float32"))])
    >>> tgt = Tree([Entry.from_array("body.w", np.zeros(2, "float16")), Entry.from_array("head.w", np.zeros(5, "float32"))])
    >>> new, report = transplant(pre, tgt)
    >>> new["body.w"].read(), report.names("copied"), report.names("mismatched")
    (array([1., 1.], dtype=float16), ['body.w'], ['head.w'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import dtypes
from ..conventions import infer_convention
from ..errors import OperationError
from ..provenance import record
from ..report import Report
from ..tree import KERAS, TORCH, UNKNOWN, Entry, LazySource, Tree
from .names import rename

__all__ = ["transplant", "name_patterns", "KINDS"]

# The report's change kinds, in the order they are counted and listed.
KINDS = ("copied", "cast", "missing", "unexpected", "mismatched")


def transplant(
    pretrained: Tree,
    target: Tree,
    *,
    rules: Sequence[tuple[str, str]] = (),
    strict: bool = False,
    flatten_shapes: Mapping[str, tuple[int, int, int]] | None = None,
) -> tuple[Tree, Report]:
    """TARGET with every tensor that PRETRAINED has under the same name and shape copied in.

    Args:
        pretrained: where the weights come from.
        target: what they go into (e.g. a freshly initialised model with a new head).
        rules: (regex, replacement) renames applied to PRETRAINED's names first (see `rename`);
            when the layouts differ they see the names after layout conversion.
        strict: fail unless every name matches both ways with equal shapes.
        flatten_shapes: passed to `surgery.ops.layout.convert_layout` when the layouts differ
            (Keras Dense layer after a Flatten -> (H, W, C) of the Flatten's input).

    Returns:
        The new tree and a report: "copied" (and "cast" when the dtype changed),
        "missing" (in TARGET only: kept as initialised), "unexpected" (in PRETRAINED
        only) and "mismatched" (same name, different shape: before is PRETRAINED's shape,
        after is TARGET's). `report.facts` holds the count of each kind.

    Raises:
        OperationError: with `strict`, any missing, unexpected or mismatched tensor;
            layouts that differ and cannot be converted; a bad rule.
    """
    report = Report("transplant")
    pretrained = _same_layout(pretrained, target, report, flatten_shapes)
    if rules:
        pretrained, _ = rename(pretrained, rules)
    replace = _match(pretrained, target, report)
    report.facts.update({kind: len(report.names(kind)) for kind in KINDS})
    if not replace and len(target) and len(pretrained):
        raise _nothing_copied(pretrained, target, report)
    if strict:
        _check_strict(report)
    new = target.derive(replace=replace)
    return record(new, "transplant", rules=[[p, r] for p, r in rules] or None, strict=strict or None, **report.facts), report


def _with_inferred(tree: Tree) -> Tree:
    """A tree whose file does not say its layout, in the layout its names show (if they do)."""
    if tree.convention != UNKNOWN:
        return tree
    found = infer_convention(tree.keys()).convention
    return tree if found == UNKNOWN else tree.derive(convention=found)


def _same_layout(pretrained: Tree, target: Tree, report: Report, flatten_shapes) -> Tree:
    """PRETRAINED in TARGET's convention, when both are known and differ."""
    known = (KERAS, TORCH)
    inferred = _with_inferred(pretrained), _with_inferred(target)
    sides = {t.convention for t in inferred}
    if KERAS in (pretrained.convention, target.convention) and len(sides) == 2 and sides <= set(known):
        for side, tree, found in (("PRETRAINED", pretrained, inferred[0]), ("TARGET", target, inferred[1])):
            if tree.convention != found.convention:
                report.notes.append(f"{side} is taken as {found.convention} layout: {infer_convention(tree.keys()).why}")
        pretrained, target = inferred
    if pretrained.convention == target.convention:
        return pretrained
    if pretrained.convention not in known or target.convention not in known:
        if KERAS not in (pretrained.convention, target.convention):
            return pretrained  # torch and unknown (a safetensors file without format=pt): nothing to convert
        known_side = "PRETRAINED" if pretrained.convention in known else "TARGET"
        report.notes.append(
            f"PRETRAINED is in {pretrained.convention} layout and TARGET in {target.convention} layout: nothing converted; "
            f"if both are one framework's weights, convert {known_side} with `surgery convert --layout` first"
        )
        return pretrained
    from .layout import convert_layout

    converted, layout_report = convert_layout(pretrained, target.convention.name, flatten_shapes=flatten_shapes)
    kinds = [c.kind for c in layout_report.changes]
    counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in dict.fromkeys(kinds)) or "nothing changed"
    report.notes.append(f"converted PRETRAINED from {pretrained.convention} to {target.convention} layout ({counts})")
    report.notes.extend(layout_report.notes)
    return converted


def _match(pretrained: Tree, target: Tree, report: Report) -> dict[str, Entry]:
    replace = {}
    for t in target.values():
        p = pretrained.get(t.name)
        if p is None:
            report.add("missing", t.name, after=_shape(t.shape), detail="kept as initialised")
        elif p.shape != t.shape:
            report.add("mismatched", t.name, before=_shape(p.shape), after=_shape(t.shape))
        else:
            replace[t.name] = _copied(p, t, report)
    for name in pretrained:
        if name not in target:
            report.add("unexpected", name, before=_shape(pretrained[name].shape))
    return replace


def _copied(p: Entry, t: Entry, report: Report) -> Entry:
    """TARGET's entry (name, attrs) with PRETRAINED's data, cast lazily to TARGET's dtype."""
    report.add("copied", t.name, before=p.dtype, after=t.dtype)
    if p.dtype == t.dtype:
        return Entry(t.name, t.shape, t.dtype, p.source, t.attrs)
    if dtypes.get(p.dtype).packed or dtypes.get(t.dtype).packed:
        raise OperationError(
            f"tensor {t.name!r} is {p.dtype} in PRETRAINED and {t.dtype} in TARGET, and packed dtypes cannot be cast",
            t.name,
            "convert one of them to the other's dtype first",
        )
    report.add("cast", t.name, before=p.dtype, after=t.dtype)
    return Entry(t.name, t.shape, t.dtype, LazySource(_caster(p, t.dtype), p.source.paths()), t.attrs)


def _caster(entry: Entry, dtype: str):
    def cast() -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return entry.read().astype(dtypes.get(dtype).numpy())

    return cast


def _nothing_copied(pretrained: Tree, target: Tree, report: Report) -> OperationError:
    """Copying nothing is never what was meant: say why, and guess the rename that fixes it."""
    if report.names("mismatched"):
        first = report.names("mismatched")[0]
        return OperationError(
            f"transplant would copy no tensor: every one of the {len(report.names('mismatched'))} names the two share "
            f"differs in shape (first: {first!r}, {_shape(pretrained[first].shape)} in PRETRAINED, {_shape(target[first].shape)} in TARGET)",
            "PRETRAINED",
            "check that both checkpoints are the same architecture",
        )
    what = (f"transplant would copy no tensor: none of TARGET's {len(target)} names is in PRETRAINED "
            f"(PRETRAINED has {next(iter(pretrained))!r}, TARGET {next(iter(target))!r})")
    return OperationError(what, "PRETRAINED", _rename_guess(list(pretrained), list(target)))


def _rename_guess(pretrained: list[str], target: list[str]) -> str:
    """A prefix one side's names carry and the other's lack (DataParallel's `module.`, a wrapper's `model.`)."""
    wanted = set(target)
    prefix = _common_prefix(pretrained)
    if prefix and any(n[len(prefix) :] in wanted for n in pretrained):
        return f"PRETRAINED's names start with {prefix!r} and TARGET's do not: pass --strip-prefix {prefix}"
    prefix = _common_prefix(target)
    if prefix and any(prefix + n in wanted for n in pretrained):
        return f"TARGET's names start with {prefix!r} and PRETRAINED's do not: pass --map '^={prefix}'"
    return "make the names match with --strip-prefix, --map REGEX=REPL or --rules FILE (see `surgery inspect` for both)"


def _common_prefix(names: list[str]) -> str:
    """The first name component (with its separator) when every name starts with it."""
    first = names[0]
    sep = "/" if "/" in first else "."
    head, found, _ = first.partition(sep)
    prefix = head + sep
    return prefix if found and all(n.startswith(prefix) for n in names) else ""


def name_patterns(names: list[str]) -> list[dict[str, object]]:
    """Names grouped by their first component (`fc.*`, `head/*`), largest group first."""
    counts: dict[str, int] = {}
    for name in names:
        sep = "/" if "/" in name else "."
        head, found, _ = name.partition(sep)
        key = f"{head}{sep}*" if found else name
        counts[key] = counts.get(key, 0) + 1
    return [{"pattern": k, "count": n} for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _check_strict(report: Report) -> None:
    problems = [(kind, report.names(kind)) for kind in ("missing", "unexpected", "mismatched")]
    if any(names for _, names in problems):
        counts = ", ".join(f"{len(names)} {kind}" for kind, names in problems)
        kind, names = next((kind, names) for kind, names in problems if names)
        raise OperationError(
            f"transplant is not exact: {counts} (first {kind}: {names[0]!r})",
            "--strict",
            "add --map rules or --strip-prefix so the names match, or drop --strict to keep what matches",
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
