"""Optimizer state follows the edits of the parameters it belongs to, so training can resume.

A training checkpoint read by the torch reader carries each optimizer's per-parameter tensors
(`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...) in `tree.format_state` (see
`surgery.formats.torch_training`); a full Keras model carries its optimizer variables (`m`, `v`,
`momentum`, `velocity`, ...) the same way (`surgery.formats.keras_training`). Every operation that changes a parameter calls one function
here, after it has built its new tree:

- `follow_classes`: subsample/upsample take the same channels of every moment; new channels start at zero;
- `follow_removed`: strip-head/truncate drop the removed parameters' state and renumber the
  param_groups so they still count 0..N-1 in `model.parameters()` order (Keras: the variables
  left keep their order, which is how Keras loads them);
- `follow_reinit`: a re-initialised parameter (or adapt-input's new kernel) starts with zero moments;
- `follow_renames`: renamed parameters keep their state under the new names;
- `cast_moments`: `convert --dtype D --cast-optimizer` casts the floating moments too (without
  it they keep their dtype; torch's `load_state_dict` casts them to each parameter's dtype).

Scalar `step` counters are kept as they are. Every optimizer tensor changed is listed in the
operation's report. Where the parameter order could not be proven when reading, moving the
state would be a guess: these functions refuse, and `drop_optimizer` (`--drop-optimizer`)
is the explicit way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace as _replace

import numpy as np

from ..errors import OperationError
from ..formats.keras_training import is_moment
from ..formats.torch_training import (
    MOMENT_KEYS,
    TRAINING_KEY,
    OptimizerState,
    training_state,
)
from ..report import Report
from ..tree import Entry, Tree

__all__ = ["cast_moments", "drop_optimizer", "follow_classes", "follow_reinit", "follow_removed", "follow_renames"]


def drop_optimizer(tree: Tree) -> tuple[Tree, list[str]]:
    """The tree without optimizer state (other training entries stay); returns what was dropped."""
    state = training_state(tree)
    if state is None or not state.optimizers:
        return tree, []
    dropped = [o.where for o in state.optimizers]
    kept = tuple(k for k in state.top if k not in {w.split("[")[0] for w in dropped} and k != state.model_key)
    top = {k: v for k, v in state.top.items() if k not in {w.split("[")[0] for w in dropped}}
    lighter = _replace(state, optimizers=(), top=top, kept=tuple(str(k) for k in kept))
    return tree.derive(format_state={**tree.format_state, TRAINING_KEY: lighter}), dropped


def follow_classes(old: Tree, new: Tree, plan, report: Report) -> Tree:
    """Every moment of a resampled parameter takes the plan's channels; new channels are zero."""
    from .classes import _axis_of

    layers = {name: lp for lp in plan.layers for name in lp.tensors}

    def edit(o: OptimizerState, name: str, entry: Entry) -> Entry:
        lp = layers[name]
        axis = _axis_of(old[name], lp.axis)
        shape = list(entry.shape)
        shape[axis] = lp.new_channels
        taken = [c if isinstance(c, int) else -1 for c in lp.channel_map]
        _listed(report, "reshaped", entry.name, f"{list(entry.shape)} -> {shape}" + (", new channels zero" if -1 in taken else ""))
        return Entry.computed(entry.name, tuple(shape), entry.dtype, _take(entry, axis, taken), like=entry)

    return _edit_moments(new, set(layers), edit, "subsample/upsample", report)


def follow_reinit(new: Tree, names: Iterable[str], report: Report) -> Tree:
    """Re-initialised (or re-shaped, as adapt-input does) parameters start training afresh:
    their moments become zero, in the parameter's new shape."""

    def edit(o: OptimizerState, name: str, entry: Entry) -> Entry:
        shape = new[name].shape
        _listed(report, "zeroed", entry.name, f"{list(shape)}")
        return Entry.computed(entry.name, shape, entry.dtype, lambda e=entry: np.zeros(shape, _numpy(e)), like=entry)

    return _edit_moments(new, set(names), edit, "reinit", report)


def cast_moments(new: Tree, dtype: str, report: Report) -> Tree:
    """`--cast-optimizer`: floating moments take the model's new dtype too; `step` counters stay."""
    from .. import dtypes

    target = dtypes.get(dtype)
    state = training_state(new)
    params = {n for o in (state.optimizers if state else ()) for n in (o.param_names or ())} | {
        _owner_and_key(o, e.name)[0] for o in (state.optimizers if state else ()) for e in o.tensors.values()
    }

    def edit(o: OptimizerState, name: str, entry: Entry) -> Entry:
        if not dtypes.get(entry.dtype).is_floating or entry.dtype == dtype:
            return entry
        _listed(report, "cast", entry.name, f"{entry.dtype} -> {dtype}")
        return Entry.computed(entry.name, entry.shape, dtype, lambda e=entry: e.read().astype(target.numpy()), like=entry)

    return _edit_moments(new, params, edit, "cast", report, need_mapping=False)


def follow_renames(new: Tree, mapping: Mapping[str, str], report: Report) -> Tree:
    """Renamed parameters keep their optimizer state, under their new names."""
    state = training_state(new)
    if state is None or not state.optimizers or not mapping:
        return new
    optimizers = []
    for o in state.optimizers:
        _require_mapped(o, "rename")
        names = tuple(mapping.get(n, n) for n in o.param_names)
        entries = []
        for e in o.tensors.values():
            owner, key = _owner_and_key(o, e.name)
            if owner in mapping:
                renamed = f"{o.prefix}/state/{mapping[owner]}/{key}"
                _listed(report, "renamed", renamed, f"from {e.name}")
                e = e.renamed(renamed)
            entries.append(e)
        optimizers.append(_replace(o, param_names=names, tensors=Tree(entries, format=o.tensors.format)))
    return _with(new, state, optimizers)


def follow_removed(new: Tree, removed: Iterable[str], report: Report) -> Tree:
    """Removed parameters lose their state; the rest are renumbered 0..N-1 in their old order."""
    removed = set(removed)
    state = training_state(new)
    if state is None or not state.optimizers:
        return new
    optimizers = []
    for o in state.optimizers:
        gone = {i for i, n in enumerate(_require_mapped(o, "removing parameters").param_names) if n in removed}
        if not gone:
            optimizers.append(o)
            continue
        entries = []
        for e in o.tensors.values():
            if _owner_and_key(o, e.name)[0] in removed:
                _listed(report, "dropped", e.name, f"{list(e.shape)} {e.dtype}")
            else:
                entries.append(e)
        names = tuple(n for i, n in enumerate(o.param_names) if i not in gone)
        if state.framework == "torch":
            raw = _renumbered(o.raw, gone, len(o.param_names))
            report.notes.append(f"{o.where}: {len(gone)} parameters removed, param_groups renumbered 0..{len(names) - 1}")
        else:  # Keras numbers nothing: the writer stores the variables left in their order
            raw = {**o.raw, "parameters": len(names)}
            report.notes.append(f"{o.where}: the variables of {len(gone)} removed parameters dropped, the others kept in their order")
        optimizers.append(_replace(o, param_names=names, tensors=Tree(entries, format=o.tensors.format), raw=raw))
    return _with(new, state, optimizers)


def _renumbered(raw: Mapping, gone: set[int], count: int) -> dict:
    """A torch.optim state dict without the `gone` parameters, the others numbered 0..N-1 in their old order."""
    renumber = {old: new_index for new_index, old in enumerate(i for i in range(count) if i not in gone)}
    groups = [{**g, "params": [renumber[i] for i in g["params"] if i in renumber]} if isinstance(g, dict) else g for g in raw["param_groups"]]
    per_param = {renumber[i]: v for i, v in raw["state"].items() if i in renumber}
    return {**raw, "state": per_param, "param_groups": groups}


# -- shared steps ---------------------------------------------------------------------


def _edit_moments(new: Tree, params: set[str], edit: Callable[[OptimizerState, str, Entry], Entry], op: str, report: Report, *, need_mapping: bool = True) -> Tree:
    """Replace the moments (MOMENT_KEYS) of `params` in every optimizer by `edit`'s entries; `step` stays."""
    state = training_state(new)
    if state is None or not state.optimizers or not params:
        return new
    optimizers = []
    for o in state.optimizers:
        if need_mapping:
            _require_mapped(o, op)
        replace = {}
        for e in o.tensors.values():
            owner, key = _owner_and_key(o, e.name)
            if owner in params and (is_moment(e) if state.framework == "keras" else key in MOMENT_KEYS):
                replace[e.name] = edit(o, owner, e)
        optimizers.append(_replace(o, tensors=o.tensors.derive(replace=replace)) if replace else o)
    return _with(new, state, optimizers)


def _listed(report: Report, change: str, name: str, detail: str) -> None:
    """Optimizer tensors are listed in the report's facts and one note per kind of change, not
    among its changes: those count the model's tensors, which is what commands summarise."""
    changed = report.facts.setdefault("optimizer_tensors", [])
    changed.append({"change": change, "name": name, "detail": detail})
    same = [c["name"] for c in changed if c["change"] == change]
    note = f"optimizer state {change} with its parameters ({len(same)}): {', '.join(same)}"
    prefix = f"optimizer state {change} with its parameters ("
    report.notes[:] = [n for n in report.notes if not n.startswith(prefix)] + [note]


def _with(tree: Tree, state, optimizers: list[OptimizerState]) -> Tree:
    return tree.derive(format_state={**tree.format_state, TRAINING_KEY: _replace(state, optimizers=tuple(optimizers))})


def _require_mapped(o: OptimizerState, op: str) -> OptimizerState:
    if not o.mapped:
        raise OperationError(
            f"{op} would have to move the optimizer state, but {o.reason}",
            o.where,
            "pass --drop-optimizer to write the checkpoint without optimizer state (training then restarts its moments)",
        )
    return o


def _owner_and_key(o: OptimizerState, name: str) -> tuple[str, str]:
    """`<prefix>/state/<param>/<key>` -> (param, key); parameter names may hold '/' themselves."""
    inner = name[len(f"{o.prefix}/state/") :]
    owner, _, key = inner.rpartition("/")
    return owner, key


def _take(entry: Entry, axis: int, taken: list[int]) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        source = entry.read()
        out = np.take(source, [max(t, 0) for t in taken], axis=axis)
        new = [j for j, t in enumerate(taken) if t < 0]
        if new:
            np.moveaxis(out, axis, 0)[new] = 0  # a view: new channels start from zero moments
        return out

    return compute


def _numpy(entry: Entry) -> np.dtype:
    from .. import dtypes

    return dtypes.get(entry.dtype).numpy()
