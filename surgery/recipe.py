"""Recipe files: a list of operations applied in order to one lazy tree, written once.

A recipe is TOML or JSON. Each step names an operation from `surgery.ops.steps.STEPS`
and gives its options under the same names as the command's flags (dashes or
underscores):

    # ssd_road.toml
    [[steps]]
    op = "subsample"
    classes = [0, 3, 8, 1, 2, 10, 4, 6, 12]
    anchors = 4

    [[steps]]
    op = "reinit"
    layers = ["conv9_2_mbox_conf"]
    init = "xavier_uniform"
    seed = 1

Steps only build lazy trees, so a whole recipe is planned (and every option
checked) before one tensor is read; the data flows through all steps when the
result is written.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OperationError, SurgeryError
from .report import Report
from .tree import Tree

__all__ = ["Step", "load_recipe", "parse_recipe", "run_recipe"]

_FIX = "write a list of steps: [[steps]] op = \"subsample\" ... (TOML) or {\"steps\": [{\"op\": ...}]} (JSON)"


@dataclass(frozen=True)
class Step:
    """One step of a recipe: an operation name and its options, as written in the file."""

    op: str
    options: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, **self.options}


def load_recipe(path: str | Path) -> list[Step]:
    """Read and check a recipe file (.toml or .json); nothing is applied yet.

    Raises:
        OperationError: the file is not a recipe, names an unknown operation, or gives an
            option that operation does not take.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise SurgeryError(f"cannot read the recipe ({e.strerror or e})", str(path), "check the path") from e
    return parse_recipe(_decode(text, path), str(path))


def parse_recipe(document: Any, where: str = "recipe") -> list[Step]:
    """Steps from an already-decoded recipe document ({"steps": [...]} or a bare list)."""
    raw = document.get("steps") if isinstance(document, dict) else document
    if not isinstance(raw, list) or not raw:
        raise OperationError("the recipe has no steps", where, _FIX)
    steps = []
    for number, item in enumerate(raw, start=1):
        at = f"{where}, step {number}"
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise OperationError("a step without an \"op\" name", at, _FIX)
        options = {k.replace("-", "_"): v for k, v in item.items() if k != "op"}
        step = Step(item["op"], options, at)
        _check_options(step)
        steps.append(step)
    return steps


def run_recipe(tree: Tree, steps: Sequence[Step]) -> tuple[Tree, list[Report]]:
    """Apply every step in order; returns the final lazy tree and each step's report."""
    reports = []
    for step in steps:
        function = _function(step)
        try:
            tree, report = function(tree, **step.options)
        except SurgeryError as e:
            # Say which step failed: the same operation may appear more than once.
            raise type(e)(e.what, f"{step.where}: {step.op}" + (f", {e.where}" if e.where else ""), e.fix) from e
        reports.append(report)
    return tree, reports


def _decode(text: bytes, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise OperationError(f"the recipe is not valid JSON ({e})", str(path), _FIX) from e
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise OperationError(f"the recipe is not valid TOML ({e})", str(path), _FIX) from e


def _function(step: Step):
    from .ops.steps import STEPS

    try:
        return STEPS[step.op]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(step.op, list(STEPS), n=1)
        guess = f"did you mean {near[0]!r}? The operations are: " if near else "use one of: "
        raise OperationError(f"unknown operation {step.op!r}", step.where, guess + ", ".join(STEPS)) from None


def _check_options(step: Step) -> None:
    accepted = [
        p.name
        for p in list(inspect.signature(_function(step)).parameters.values())[1:]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for name in step.options:
        if name not in accepted:
            raise OperationError(
                f"{step.op} takes no option {name!r}", step.where, f"its options are: {', '.join(accepted) or 'none'}"
            )
