"""Freeze maps: which parameters train, and at what learning-rate multiple.

A freeze map covers every *parameter* of a checkpoint exactly once with
`{"trainable": bool, "lr_mult": float}`. Buffers (BatchNorm running statistics,
integer counters) are not parameters: an optimizer never sees them, so the map
lists them apart, under "buffers", and never gives them a trainable flag.

How each parameter is decided, in this order (later layers override earlier):

1. the default: trainable, lr_mult 1;
2. a recipe (`RECIPES`, one row per transfer-learning case), which sets the head
   and the rest of the model (the "body") apart;
3. the user's `--freeze`/`--train` globs and `--lr-mult GLOB=X`.

When several user globs match one parameter, ONE rule decides: the more specific
glob wins, i.e. the one with more literal characters (characters other than `*`,
`?` and `[...]` sets). On a tie, `--train` beats `--freeze`, and the larger
lr_mult beats the smaller. Every such conflict is reported. A glob matches a
parameter when it matches the parameter's full name or its layer name
(`features.0.weight` -> `features.0`; `conv1/kernel` -> `conv1`); '*' crosses
'.' and '/'. A glob that matches no parameter is an error.

    >>> import numpy as np
    >>> from surgery.tree import Entry, Tree
    >>> t = Tree([Entry.from_array(n, np.zeros(2, "float32")) for n in ("body.weight", "fc.weight", "fc.bias")])
    >>> fmap, report = freeze_map(t, recipe="small-similar", head=("fc",))
    >>> [(n, s.trainable) for n, s in fmap.parameters.items()]
    [('body.weight', False), ('fc.weight', True), ('fc.bias', True)]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..buffers import BUFFER_PARAMS, is_buffer  # noqa: F401 (BUFFER_PARAMS stays importable from here, where it used to live)
from ..errors import FormatError, OperationError
from ..freeze_recipes import RECIPES, Recipe, Setting
from ..naming import layer_of, matches
from ..report import Report
from ..tree import Tree

__all__ = ["Setting", "Recipe", "RECIPES", "FreezeMap", "freeze_map", "is_buffer", "specificity", "MAP_VERSION"]

MAP_VERSION = 1

_GLOB_FIX = "list the names with `surgery inspect`; globs are case-sensitive, '*' crosses '.' and '/', and a glob may name a layer"


# -- the map --------------------------------------------------------------------------


@dataclass(frozen=True)
class FreezeMap:
    """Every parameter's Setting, in checkpoint order, plus the buffers listed apart.

    Attributes:
        parameters: parameter name -> Setting, in the checkpoint's order.
        buffers: names of non-parameter tensors (running statistics, counters).
        source: the checkpoint the map was made from ("" if built in memory).
        recipe: the recipe used, or None.
        head: the parameters taken as the head (empty without a recipe).
    """

    parameters: Mapping[str, Setting]
    buffers: tuple[str, ...] = ()
    source: str = ""
    recipe: str | None = None
    head: tuple[str, ...] = field(default=())

    def trainable(self) -> list[str]:
        return [n for n, s in self.parameters.items() if s.trainable]

    def frozen(self) -> list[str]:
        return [n for n, s in self.parameters.items() if not s.trainable]

    def to_json(self) -> dict[str, Any]:
        """The map document: {"version", "source", "recipe", "head", "parameters", "buffers"}."""
        return {
            "version": MAP_VERSION,
            "source": self.source,
            "recipe": self.recipe,
            "head": list(self.head),
            "parameters": {n: s.to_json() for n, s in self.parameters.items()},
            "buffers": list(self.buffers),
        }

    @classmethod
    def from_json(cls, document: Any, where: str = "freeze map") -> FreezeMap:
        """Read a map document (as `to_json` writes it); anything malformed is a FormatError."""
        if not isinstance(document, Mapping) or not isinstance(document.get("parameters"), Mapping):
            raise FormatError("a freeze map is a JSON object with a \"parameters\" object", where, _MAP_FIX)
        if document.get("version", MAP_VERSION) != MAP_VERSION:
            raise FormatError(f"freeze map version {document.get('version')!r} is not {MAP_VERSION}", where, _MAP_FIX)
        parameters = {str(n): _setting(n, s, where) for n, s in document["parameters"].items()}
        buffers = document.get("buffers", [])
        if not isinstance(buffers, list) or not all(isinstance(b, str) for b in buffers):
            raise FormatError("the freeze map's \"buffers\" is not a list of names", where, _MAP_FIX)
        head = document.get("head") or []
        return cls(parameters, tuple(buffers), str(document.get("source") or ""), document.get("recipe"), tuple(head))

    @classmethod
    def read(cls, path: str | Path) -> FreezeMap:
        """Read a map file written by `surgery freeze` (the one place this module touches a file)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
            document = json.loads(text)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"the freeze map is not valid JSON ({e})", str(path), _MAP_FIX) from e
        return cls.from_json(document, str(path))

    @classmethod
    def coerce(cls, value: FreezeMap | Mapping[str, Any] | str | Path) -> FreezeMap:
        """A FreezeMap from a FreezeMap, a map document (dict) or a path to a map file."""
        if isinstance(value, FreezeMap):
            return value
        if isinstance(value, Mapping):
            return cls.from_json(value)
        return cls.read(value)


_MAP_FIX = "make the map with `surgery freeze SRC -o freeze.json`"


def _setting(name: str, value: Any, where: str) -> Setting:
    ok = (
        isinstance(value, Mapping)
        and isinstance(value.get("trainable"), bool)
        and isinstance(value.get("lr_mult", 1.0), (int, float))
        and not isinstance(value.get("lr_mult", 1.0), bool)
    )
    if not ok or not _valid_mult(float(value.get("lr_mult", 1.0))):
        raise FormatError(
            f"parameter {name!r} needs {{\"trainable\": true|false, \"lr_mult\": a positive number}}, not {json.dumps(value)}",
            where,
            _MAP_FIX,
        )
    return Setting(value["trainable"], float(value.get("lr_mult", 1.0)))


def _valid_mult(x: float) -> bool:
    return math.isfinite(x) and x > 0


# -- buffers and glob specificity -------------------------------------------------------


def specificity(glob: str) -> int:
    """How many literal characters a glob has: `fc.*` -> 3, `*` -> 0, `a[bc]d` -> 2."""
    return len(re.sub(r"\[[^\]]*\]|[*?]", "", glob))


def _hit(name: str, glob: str) -> bool:
    return matches(name, (glob,)) or matches(layer_of(name), (glob,))


# -- the operation ----------------------------------------------------------------------


@dataclass
class _Decision:
    setting: Setting
    rule: str  # which rule set `trainable`
    mult_rule: str  # which rule set `lr_mult`


def freeze_map(
    tree: Tree,
    *,
    freeze: Sequence[str] = (),
    train: Sequence[str] = (),
    lr_mult: Mapping[str, float] | None = None,
    recipe: str | None = None,
    head: Sequence[str] = (),
    source: str = "",
) -> tuple[FreezeMap, Report]:
    """Decide, for every parameter of `tree`, whether it trains and at what lr multiple.

    Args:
        tree: the checkpoint (only names, dtypes and attrs are used; no data is read).
        freeze: globs of parameters (or layers) to freeze.
        train: globs of parameters (or layers) to train.
        lr_mult: glob -> learning-rate multiple (a positive number).
        recipe: one of RECIPES ("small-similar", "small-different", "large-similar", "large-different").
        head: globs naming the new head; with a recipe and no head, the head is detected
            (surgery.ops.strip.detect_head).
        source: where the tree came from, recorded in the map.

    Returns:
        (FreezeMap, Report). The report's facts hold "rules" (each rule and the
        parameters it decided), "conflicts", and counts.

    Raises:
        OperationError: an unknown recipe, a bad multiplier, a glob that matches no
            parameter, a head that cannot be found, or a tree without parameters.
    """
    lr_mult = dict(lr_mult or {})
    _check_arguments(recipe, head, lr_mult)
    buffers = [n for n in tree if is_buffer(tree, n)]
    parameters = [n for n in tree if n not in set(buffers)]
    if not parameters:
        raise OperationError("the checkpoint has no parameters (only buffers or nothing)", source or "tree", "check the file with `surgery inspect`")
    _check_globs(parameters, buffers, freeze, train, lr_mult, head, source)
    head_names, why = _head(tree, parameters, recipe, head)
    report = Report("freeze")
    if recipe is not None:
        report.facts["head"] = {"parameters": head_names, "why": why}
    decisions = {n: _decide(n, recipe, head_names, freeze, train, lr_mult, report) for n in parameters}
    fmap = FreezeMap({n: d.setting for n, d in decisions.items()}, tuple(buffers), source, recipe, tuple(head_names))
    _summarise(report, fmap, decisions, recipe)
    return fmap, report


def _check_arguments(recipe: str | None, head: Sequence[str], lr_mult: Mapping[str, float]) -> None:
    if recipe is not None and recipe not in RECIPES:
        raise OperationError(f"unknown recipe {recipe!r}", "--recipe", f"use one of: {', '.join(RECIPES)}")
    if head and recipe is None:
        raise OperationError("--head is only used by a recipe", "--head", "add --recipe, or use --train/--lr-mult on the head")
    for glob, mult in lr_mult.items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not _valid_mult(float(mult)):
            raise OperationError(f"--lr-mult {glob}={mult} is not a positive number", "--lr-mult", "write e.g. --lr-mult 'fc.*=10'")


def _check_globs(parameters, buffers, freeze, train, lr_mult, head, source) -> None:
    options = [("--freeze", g) for g in freeze] + [("--train", g) for g in train]
    options += [("--lr-mult", g) for g in lr_mult] + [("--head", g) for g in head]
    for option, glob in options:
        if any(_hit(n, glob) for n in parameters):
            continue
        only = [n for n in buffers if _hit(n, glob)]
        if only:
            raise OperationError(
                f"{option} {glob!r} matches only buffers ({', '.join(only[:3])}{', ...' if len(only) > 3 else ''}), which never train",
                source or option,
                "buffers have no trainable flag; match the layer's weights instead",
            )
        raise OperationError(f"{option} {glob!r} matches no parameter", source or option, _GLOB_FIX)


def _head(tree: Tree, parameters: list[str], recipe: str | None, head: Sequence[str]) -> tuple[list[str], str]:
    """The head's parameters, and why: from --head globs, else from detect_head."""
    if recipe is None:
        return [], ""
    if head:
        return [n for n in parameters if any(_hit(n, g) for g in head)], f"matched --head {' '.join(head)}"
    try:
        from .strip import detect_head
    except ImportError:
        raise OperationError(f"--recipe {recipe} needs the head", "--head", "name the new classifier with --head GLOB") from None
    match = detect_head(tree)
    names = [n for n in parameters if n in set(match.tensors)]
    if not names:
        raise OperationError("the detected head has no parameters", "--head", "name the new classifier with --head GLOB")
    return names, f"detected: {match.why}"


def _decide(name, recipe, head_names, freeze, train, lr_mult, report) -> _Decision:
    base = _base(name, recipe, head_names)
    trainable, rule = base.trainable, _base_rule(name, recipe, head_names)
    mult, mult_rule = base.lr_mult, rule
    votes = [(specificity(g), 0, False, f"--freeze {g!r}") for g in freeze if _hit(name, g)]
    votes += [(specificity(g), 1, True, f"--train {g!r}") for g in train if _hit(name, g)]
    if votes:
        winner = max(votes)
        trainable, rule = winner[2], winner[3]
        _conflicts(report, name, winner, [v for v in votes if v[2] != winner[2]])
    mults = [(specificity(g), float(x), f"--lr-mult {g}={x:g}") for g, x in lr_mult.items() if _hit(name, g)]
    if mults:
        best = max(mults)
        mult, mult_rule = best[1], best[2]
        _conflicts(report, name, (0, 0, 0, best[2]), [(0, 0, 0, m[2]) for m in mults if m[1] != best[1]])
    return _Decision(Setting(trainable, mult), rule, mult_rule)


def _base(name: str, recipe: str | None, head_names: list[str]) -> Setting:
    if recipe is None:
        return Setting()
    return RECIPES[recipe].head if name in set(head_names) else RECIPES[recipe].body


def _base_rule(name: str, recipe: str | None, head_names: list[str]) -> str:
    if recipe is None:
        return "default"
    return f"recipe {recipe}: {'head' if name in set(head_names) else 'body'}"


def _conflicts(report: Report, name: str, winner: tuple, losers: list[tuple]) -> None:
    conflicts = report.facts.setdefault("conflicts", [])
    for loser in losers:
        conflicts.append({"parameter": name, "winner": winner[-1], "loser": loser[-1]})


def _summarise(report: Report, fmap: FreezeMap, decisions: Mapping[str, _Decision], recipe: str | None) -> None:
    rules: dict[tuple[str, str], list[str]] = {}
    for name, d in decisions.items():
        rules.setdefault((d.rule, "trainable" if d.setting.trainable else "frozen"), []).append(name)
        if d.setting.lr_mult != 1.0 or d.mult_rule.startswith("--lr-mult"):
            rules.setdefault((d.mult_rule, f"lr_mult {d.setting.lr_mult:g}"), []).append(name)
    report.facts["rules"] = [{"rule": r, "sets": s, "parameters": names} for (r, s), names in rules.items()]
    report.facts.setdefault("conflicts", [])
    report.facts.update(parameters=len(fmap.parameters), trainable=len(fmap.trainable()), frozen=len(fmap.frozen()), buffers=len(fmap.buffers))
    pairs: dict[tuple[str, str], int] = {}
    for c in report.facts["conflicts"]:
        pairs[(c["winner"], c["loser"])] = pairs.get((c["winner"], c["loser"]), 0) + 1
    for (winner, loser), count in pairs.items():
        report.notes.append(f"{winner} beats {loser} on {count} parameter(s): the more specific glob wins; ties go to --train and the larger lr_mult")
    if recipe is not None:
        report.notes.append(f"recipe {recipe} ({RECIPES[recipe].case}): {RECIPES[recipe].note}")
    frozen_mult = [n for n, s in fmap.parameters.items() if not s.trainable and s.lr_mult != 1.0]
    if frozen_mult:
        report.notes.append(f"{len(frozen_mult)} frozen parameter(s) have lr_mult != 1, which has no effect while they are frozen")
