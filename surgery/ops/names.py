"""Tensor names: rename by regex, strip a prefix, keep or drop by glob.

Renaming never reads tensor data: each renamed entry shares its source with the
input. A Keras 2 tree (`keras_h5`, layouts "weights" and "model") also carries
each tensor's layer and HDF5 weight name in its attrs, and the layer order in its
format_state; both follow the new names, so the file written holds layer groups
under the new names, in the old order, and Keras' legacy `load_weights` (by name
or by order) reads it into a model built with the new layer names. A Keras 3
`.weights.h5` tree keeps its datasets where they were (`layers/<key>/vars/<i>`):
Keras 3 loads those by model structure, not by name.

    >>> import numpy as np
    >>> from surgery.tree import Entry, Tree
    >>> t = Tree([Entry.from_array("module.fc.weight", np.zeros((2, 3), "float32"))])
    >>> list(strip_prefix(t, "module.")[0])
    ['fc.weight']
    >>> list(rename(t, [(r"^module\\.fc\\.", "head.")])[0])
    ['head.weight']
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

from ..errors import OperationError
from ..naming import layer_of, matches, param_of
from ..provenance import record
from ..report import Report
from ..tree import Entry, Tree
from .optimizer_state import follow_removed, follow_renames

__all__ = ["rename", "strip_prefix", "select", "apply_names", "parse_rule", "apply_rules"]

_INSPECT = "list the names with `surgery inspect`"
_RULE_FIX = "write REGEX=REPL, e.g. 'module\\.(.*)=\\1'; a literal '=' in the regex is written \\="
_KERAS = "keras_h5"
_LAYER_NAMES = "keras.layer_names"  # the Keras writer's layer order (surgery.formats.keras_h5.LAYER_NAMES)
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")


def parse_rule(text: str) -> tuple[str, str]:
    """Split a command-line rule "REGEX=REPL" into (regex, replacement).

    The split is at the first '=' not directly after a backslash, so a literal
    '=' in the regex is written `\\=` (which the regex also reads as '='); the
    replacement may hold any '='. The replacement uses Python's `re.sub`
    syntax: `\\1` or `\\g<name>` for groups.

    Raises:
        OperationError: there is no unescaped '=', or the regex is empty.

    Example:
        >>> parse_rule(r"^module\\.(.*)=\\1")
        ('^module\\\\.(.*)', '\\\\1')
        >>> parse_rule(r"a\\=b=c=d")
        ('a\\\\=b', 'c=d')
    """
    found = _UNESCAPED_EQUALS.search(text)
    if found is None:
        raise OperationError(f"rule {text!r} has no '='", "--map", _RULE_FIX)
    pattern, replacement = text[: found.start()], text[found.end() :]
    if not pattern:
        raise OperationError(f"rule {text!r} has an empty regex", "--map", _RULE_FIX)
    return pattern, replacement


def apply_rules(names: Iterable[str], rules: Sequence[tuple[str, str]], *, strict: bool = True) -> dict[str, str]:
    """Map each name through every rule in order; returns {old: new} for every name.

    Raises:
        OperationError: a regex or replacement is invalid; with `strict`, a rule
            matches no name (each rule is tried on the names as the earlier rules left them).
    """
    compiled = [_compile(pattern, replacement) for pattern, replacement in rules]
    current = {name: name for name in names}
    for (pattern, replacement), regex in zip(rules, compiled):
        hit = False
        for old, name in current.items():
            if regex.search(name):
                hit = True
                current[old] = regex.sub(replacement, name)
        if strict and not hit:
            raise OperationError(
                f"rule {pattern!r} matches no tensor name",
                f"--map {pattern}={replacement}",
                f"{_INSPECT}; regexes are case-sensitive and match anywhere unless anchored with ^ and $",
            )
    return current


def rename(tree: Tree, rules: Sequence[tuple[str, str]], *, strict: bool = True) -> tuple[Tree, Report]:
    """Rename tensors with regex rules, applied in order to every name (`re.sub`, all matches).

    Args:
        tree: the checkpoint.
        rules: (regex, replacement) pairs; replacements use `\\1` / `\\g<name>` for groups.
        strict: a rule that matches no name is an error (the default).

    Returns:
        The renamed tree (same order, data shared) and a report with one "renamed"
        change (before, after) per tensor whose name changed.

    Raises:
        OperationError: a bad regex, a rule that matches nothing, two tensors that
            would share a name, or an empty name.

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("conv1/kernel", np.zeros(1, "float32"))])
        >>> new, report = rename(t, [("^conv1/", "stem/")])
        >>> list(new), [(c.before, c.after) for c in report.changes]
        (['stem/kernel'], [('conv1/kernel', 'stem/kernel')])
    """
    mapping = apply_rules(tree, rules, strict=strict)
    new, report = _renamed(tree, mapping, Report("rename"))
    return record(new, "rename", rules=[[p, r] for p, r in rules]), report


def strip_prefix(tree: Tree, prefix: str) -> tuple[Tree, Report]:
    """Remove `prefix` from every name that starts with it (e.g. "module." of DataParallel).

    Names without the prefix stay as they are.

    Raises:
        OperationError: no name starts with `prefix`, or stripping makes two names equal.
    """
    if not prefix or not any(name.startswith(prefix) for name in tree):
        raise OperationError(f"no tensor name starts with {prefix!r}", "--strip-prefix", _INSPECT)
    mapping = {name: name[len(prefix) :] if name.startswith(prefix) else name for name in tree}
    new, report = _renamed(tree, mapping, Report("strip-prefix"))
    return record(new, "strip-prefix", prefix=prefix), report


def select(tree: Tree, keep: Sequence[str] = (), drop: Sequence[str] = ()) -> tuple[Tree, Report]:
    """Keep the tensors matching any `keep` glob (all, when none is given), then drop those matching any `drop` glob.

    Globs are case-sensitive and '*' crosses '/' and '.' (`surgery.naming.matches`).
    A Keras layer whose tensors are all dropped leaves the written file's layer list.

    Returns:
        The smaller tree and a report with one "dropped" change per tensor removed.

    Raises:
        OperationError: a glob matches no tensor name, or nothing would be left.
    """
    for option, globs in (("--keep", keep), ("--drop", drop)):
        for glob in globs:
            if not any(matches(name, [glob]) for name in tree):
                raise OperationError(
                    f"{option} {glob!r} matches no tensor name",
                    option,
                    f"{_INSPECT}; globs are case-sensitive and '*' crosses '/' and '.'",
                )
    gone = [name for name in tree if (keep and not matches(name, keep)) or matches(name, drop)]
    if gone and len(gone) == len(tree):
        raise OperationError("--keep and --drop leave no tensor", "--keep/--drop", "loosen the globs")
    report = Report("select")
    for name in gone:
        report.add("dropped", name, before=tree[name].describe())
    new = tree.derive(drop=gone)
    new = follow_removed(new, gone, report)
    return record(new, "select", keep=list(keep) or None, drop=list(drop) or None), report


# -- private steps ---------------------------------------------------------------------


def _compile(pattern: str, replacement: str) -> re.Pattern[str]:
    where = f"--map {pattern}={replacement}"
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise OperationError(f"bad regex {pattern!r}: {e.msg}", where, _RULE_FIX) from e
    try:
        regex.sub(replacement, "")  # parses the replacement (group references) even without a match
    except (re.error, IndexError) as e:
        reason = e.msg if isinstance(e, re.error) else str(e)
        raise OperationError(f"bad replacement {replacement!r}: {reason}", where, "refer only to groups the regex has") from e
    return regex


def _renamed(tree: Tree, mapping: Mapping[str, str], report: Report) -> tuple[Tree, Report]:
    """Apply {old: new} to the tree, after checking the new names are non-empty and unique."""
    _check_targets(mapping)
    replace = {}
    for old, new in mapping.items():
        if new != old:
            replace[old] = Entry(new, tree[old].shape, tree[old].dtype, tree[old].source, _attrs(tree[old], new))
            report.add("renamed", old, before=old, after=new)
    result = tree.derive(replace=replace)
    result = follow_renames(result, {old: e.name for old, e in replace.items()}, report)  # optimizer state keeps its links
    if tree.format == _KERAS and replace:
        _follow_keras_layers(tree, result, report)
    return result, report


def _check_targets(mapping: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if not new:
            raise OperationError(f"tensor {old!r} would get an empty name", old, "change the rule so something is left")
        if new in seen:
            first = seen[new]
            raise OperationError(
                f"tensors {first!r} and {old!r} would both be named {new!r}", new, "make the rules keep names apart"
            )
        seen[new] = old


def _attrs(entry: Entry, new: str) -> Mapping[str, object]:
    """A Keras 2 entry's layer and HDF5 weight name, moved to follow its new name."""
    layer = entry.attrs.get("keras.layer")
    if layer is None:
        return entry.attrs
    layer = str(layer)
    tail = entry.name[len(layer) + 1 :] if entry.name.startswith(layer + "/") else param_of(entry.name)
    if new.endswith("/" + tail) and len(new) > len(tail) + 1:
        new_layer = new[: -len(tail) - 1]  # the layer part changed; the weight part did not
    else:
        new_layer = layer_of(new) or new
        tail = new[len(new_layer) + 1 :] if new_layer != new else new
    suffix = re.search(r":\d+$", str(entry.attrs.get("keras.weight_name", "")))
    weight_name = f"{new_layer}/{tail}{suffix.group(0) if suffix else ':0'}"
    return {**entry.attrs, "keras.layer": new_layer, "keras.weight_name": weight_name}


def _follow_keras_layers(old: Tree, new: Tree, report: Report) -> None:
    """Rewrite the Keras layer order so each renamed layer keeps its place."""
    if _LAYER_NAMES in old.format_state:
        new_layers: dict[str, list[str]] = {}
        for before, after in zip(old.values(), new.values()):
            if "keras.layer" in before.attrs:
                targets = new_layers.setdefault(str(before.attrs["keras.layer"]), [])
                if str(after.attrs["keras.layer"]) not in targets:
                    targets.append(str(after.attrs["keras.layer"]))
        order = json.loads(old.format_state[_LAYER_NAMES])
        renamed = [n for layer in order for n in new_layers.get(layer, [layer])]
        new.format_state = {**new.format_state, _LAYER_NAMES: json.dumps(list(dict.fromkeys(renamed)), ensure_ascii=False)}  # new: it holds the renamed optimizer state
        if old.format_state.get("keras.layout") == "model":
            report.notes.append(
                "model_config still names the old layers: load these weights into a model built with "
                "the new names (load_weights), not with load_model"
            )
    elif old.format_state.get("keras.layout") == "keras3":
        report.notes.append(
            "Keras 3 .weights.h5: the datasets keep their places (layers/<key>/vars/<i>); "
            "Keras loads them by model structure, so the new names show in surgery only"
        )


def apply_names(
    tree: Tree,
    *,
    strip: str | None = None,
    keep: Sequence[str] = (),
    drop: Sequence[str] = (),
    rules: Sequence[tuple[str, str]] = (),
) -> tuple[Tree, list[Report]]:
    """The name options in their one order: strip the prefix, then keep/drop, then the rules.

    Globs and rules see the names as the earlier steps left them. Returns one report per
    step that ran, so a command can say what each did.
    """
    reports: list[Report] = []
    if strip is not None:
        tree, report = strip_prefix(tree, strip)
        reports.append(report)
    if keep or drop:
        tree, report = select(tree, keep=keep, drop=drop)
        reports.append(report)
    if rules:
        tree, report = rename(tree, rules)
        reports.append(report)
    return tree, reports
