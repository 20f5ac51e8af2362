"""Tensor names across a layout conversion: `layer/param` <-> `module.path.param`, then --rules.

Parses and compiles the user's rename rules (regex, replacement pairs), applies them, and
gives each tensor its name on the other side.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import OperationError
from ..tree import Entry, Tree
from .layout_tables import PARAMS

if TYPE_CHECKING:
    from .layout_kinds import _Layer


def parse_rules(text: str, kind: str, where: str = "--rules") -> list[tuple[str, str]]:
    """Rename rules from a JSON or TOML document: a list of [regex, replacement] pairs.

    JSON: ``[["^conv2d_1\\\\.", "features.0."], ...]`` or ``{"rules": [...]}``.
    TOML: ``rules = [["^conv2d_1\\\\.", "features.0."]]``.

    Raises:
        OperationError: the text does not parse, or is not a list of string pairs, or a
            pattern is not a regular expression.
    """
    try:
        document = _parse_document(text, kind)
    except ValueError as e:
        raise OperationError(f"the rules file is not valid {kind.upper()} ({e})", where, "fix the syntax") from e
    pairs = document.get("rules") if isinstance(document, dict) else document
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs
    ):
        raise OperationError(
            "the rules file does not hold a list of [regex, replacement] pairs", where,
            'write e.g. [["^conv2d_1\\\\.", "features.0."]] (JSON) or rules = [["^conv2d_1\\\\.", "features.0."]] (TOML)',
        )
    rules = [(p[0], p[1]) for p in pairs]
    _compile_rules(rules, where)
    return rules


def _parse_document(text: str, kind: str) -> object:
    if kind == "toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(str(e)) from e
    return json.loads(text)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    replacement: str


def _compile_rules(rules: Sequence[tuple[str, str]], where: str = "--rules") -> list[_Rule]:
    out = []
    for k, (pattern, replacement) in enumerate(rules, 1):
        try:
            compiled = re.compile(pattern)
            compiled.sub(replacement, "")  # a bad group reference in the replacement fails here
        except (re.error, IndexError) as e:
            raise OperationError(
                f"rule {k} ({pattern!r} -> {replacement!r}) is invalid: {e}", where,
                "rules are Python regular expressions; replacements may use \\1 or \\g<name>",
            ) from e
        out.append(_Rule(compiled, replacement))
    return out


def _apply_rules(name: str, rules: list[_Rule]) -> str:
    for rule in rules:
        name = rule.pattern.sub(rule.replacement, name)
    return name


def _torch_param(layer: _Layer, param: str) -> str:
    for keras, torch in PARAMS.get(layer.kind, ()):
        if keras == param:
            return torch
    return param


def _keras_layer_name(name: str, group: list[Entry], memory: dict, rules) -> str:
    remembered = next((memory[e.name][0] for e in group if e.name in memory), None)
    if remembered is not None:
        return _apply_rules(remembered, rules).rpartition("/")[0]
    probe = _apply_rules(f"{name}/x", rules)
    return probe.rpartition("/")[0] if "/" in probe else name


def _keras_name(layer: _Layer, keras_layer: str, param: str, remembered, rules) -> tuple[str, str]:
    if remembered:
        name = _apply_rules(remembered[0], rules)
        return _param_of(name, "/"), name
    keras_param = next((k for k, t in PARAMS.get(layer.kind, ()) if t == param), param)
    return keras_param, _apply_rules(f"{layer.name}/{keras_param}" if layer.name else keras_param, rules)


def _groups(tree: Tree, sep: str) -> Iterator[tuple[str, list[Entry]]]:
    """Entries grouped by layer (the name before the last `sep`), in first-seen order."""
    groups: dict[str, list[Entry]] = {}
    for entry in tree.values():
        groups.setdefault(entry.name.rpartition(sep)[0], []).append(entry)
    return iter(groups.items())


def _natural(name: str) -> list[tuple[int, int, str]]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _param_of(name: str, sep: str) -> str:
    return name.rpartition(sep)[2]
