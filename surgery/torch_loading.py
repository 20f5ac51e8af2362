"""The user's torch module and its weights: build it from a spec, load a checkpoint into it strictly.

`build_module` imports the user's own code that builds the module: the one place surgery runs
Python it did not write (checkpoints are still read without unpickling code). `load_into`
loads a checkpoint into a module with `load_state_dict(strict=True)`, and says in one line
what does not fit. torch is imported inside the functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OperationError
from .report import Report

__all__ = ["USER_FILE", "build_module", "first_line", "load_into"]

USER_FILE = "surgery_user_model_"  # module names given to the user's files imported by path
_LISTED = 3  # names listed per kind in a load_into error


# -- the user's module ----------------------------------------------------------------


def build_module(spec: str, kwargs: Mapping[str, Any] | None = None):
    """Import `spec` ("package.module:callable" or "path/to/file.py:callable") and call it.

    This runs the user's own code. `callable` may be dotted (`models:Factory.small`).

    Raises:
        OperationError: the module does not import, names no such callable, the call fails,
            or it returns something that is not a `torch.nn.Module`.
    """
    import torch

    where = f"--model {spec}"
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise OperationError(f"{spec!r} names no callable", where, "write package.module:callable or path/to/file.py:callable")
    namespace = _import_target(target, where)
    factory: Any = namespace
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise OperationError(f"{target!r} has no attribute {attribute!r}", where, _callables_hint(namespace))
        factory = getattr(factory, part)
    if not callable(factory):
        raise OperationError(f"{attribute!r} in {target!r} is a {type(factory).__name__}, not a callable", where, _callables_hint(namespace))
    call = f"{attribute}({', '.join(f'{k}={v!r}' for k, v in (kwargs or {}).items())})"
    try:
        module = factory(**(kwargs or {}))
    except Exception as e:  # the user's code: any failure is theirs to read, in one line
        raise OperationError(f"{call} failed: {first_line(e)}", where, "check --model-arg names and values against the callable's signature") from e
    if not isinstance(module, torch.nn.Module):
        raise OperationError(f"{call} returned a {type(module).__name__}, not a torch.nn.Module", where, "name the class or the function that builds the model")
    return module


def _import_target(target: str, where: str):
    if target.endswith(".py") or "/" in target or os.sep in target:
        return _import_file(Path(target), where)
    try:
        return importlib.import_module(target)
    except ImportError as e:
        raise OperationError(f"cannot import {target!r}: {first_line(e)}", where, "install the package, or give path/to/file.py:callable") from e
    except Exception as e:
        raise OperationError(f"importing {target!r} failed: {first_line(e)}", where, "fix the error in that module") from e


def _import_file(path: Path, where: str):
    if not path.is_file():
        raise OperationError("no such Python file", where, "check the path before the ':'")
    name = f"{USER_FILE}{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OperationError("cannot import this file as Python", where, "give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise OperationError(f"importing {str(path)!r} failed: {first_line(e)}", where, "fix the error in that file") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _callables_hint(namespace) -> str:
    import torch

    classes = [n for n, v in vars(namespace).items() if isinstance(v, type) and issubclass(v, torch.nn.Module) and getattr(v, "__module__", "") == namespace.__name__]
    if not classes:
        return "name a class or function defined there"
    return f"modules defined there: {', '.join(classes[:8])}" + (" ..." if len(classes) > 8 else "")


# -- weights into the module ------------------------------------------------------------


def load_into(
    module, tree_or_path, *, key: str | None = None, strip_prefix: str | None = None, keep: Sequence[str] = (), drop: Sequence[str] = (),
    rules: Sequence[tuple[str, str]] = (), where: str | None = None,
) -> Report:
    """Load a checkpoint into `module` with `load_state_dict(strict=True)`.

    Args:
        module: a built torch.nn.Module.
        tree_or_path: a Tree, or the path of anything `surgery.load` reads. A tree in
            Keras layout is moved to torch layout first (`surgery.ops.convert_layout`).
        key, strip_prefix, keep, drop, rules: the name options, as `surgery convert` and
            `rename` apply them (`--key`, `--strip-prefix`, `--keep`, `--drop`, `--map`).
        where: what errors name as the checkpoint (default its path, or "checkpoint" for a tree).

    Returns:
        A Report whose facts give the tensors loaded, the source and the provenance steps.

    Raises:
        OperationError: one line with the counts and the first missing, unexpected and
            mismatched names (both shapes), and the fix.

    Example:
        >>> load_into(model, "ddp.pt", strip_prefix="module.")  # doctest: +SKIP
    """
    from .io import load
    from .ops.names import apply_names
    from .provenance import history
    from .torch import to_state_dict
    from .tree import KERAS, Tree

    where = where or ("checkpoint" if isinstance(tree_or_path, Tree) else str(tree_or_path))
    tree = tree_or_path if isinstance(tree_or_path, Tree) else load(tree_or_path, key=key)
    report = Report("load-into")
    if tree.convention is KERAS:
        from .ops.layout import convert_layout

        tree, layout_report = convert_layout(tree, "torch")
        report.notes.append(f"moved {len(layout_report.names('transposed'))} tensors from Keras to torch layout")
    tree, name_reports = apply_names(tree, strip=strip_prefix, keep=keep, drop=drop, rules=rules)
    report.changes.extend(c for r in name_reports for c in r.changes)
    _check_fit(module, tree, where)
    try:
        module.load_state_dict(to_state_dict(tree), strict=True)
    except RuntimeError as e:  # a module's own _load_from_state_dict may refuse what fits by shape
        raise OperationError(f"load_state_dict refuses the weights: {first_line(e)}", where, "check the checkpoint was saved from this architecture") from e
    report.facts.update(loaded=len(tree), source=where, history=history(tree))
    return report


def _check_fit(module, tree, where: str) -> None:
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = [n for n in expected if n not in tree]
    unexpected = [n for n in tree if n not in expected]
    mismatched = [n for n in expected if n in tree and tuple(tree[n].shape) != expected[n]]
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected", f"{len(mismatched)} mismatched"]
    shown = []
    if missing:
        shown.append("missing " + _names(missing))
    if unexpected:
        shown.append("unexpected " + _names(unexpected))
    if mismatched:
        shown.append("mismatched " + ", ".join(f"{n} {list(tree[n].shape)} in the file, {list(expected[n])} in the module" for n in mismatched[:_LISTED]) + (" ..." if len(mismatched) > _LISTED else ""))
    raise OperationError(
        f"the weights do not fit the module: {', '.join(parts)} of {len(expected)} ({'; '.join(shown)})",
        where,
        "rename with --map REGEX=REPL or --strip-prefix PREFIX, or copy what fits with `surgery transplant`",
    )


def _names(names: list[str]) -> str:
    return ", ".join(names[:_LISTED]) + (" ..." if len(names) > _LISTED else "")


def first_line(error: BaseException) -> str:
    """An exception's message, first line only, without terminal colours (torch's exporter adds them)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
