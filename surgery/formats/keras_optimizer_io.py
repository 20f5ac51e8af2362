"""Where Keras files keep optimizer variables: read as raw entries, mapped, and written back.

* full-model `.h5`: the `optimizer_weights` group, its datasets listed in order by its
  `weight_names` attribute (the order Keras's loader sets them in);
* Keras 3 (`.keras`'s weights member): `optimizer/vars/0..N-1`, loaded by index.

`surgery.formats.keras_h5` calls these while it reads and writes; the mapping of variables to
parameters is `surgery.formats.keras_training`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError
from ..tree import DROPPED_ON_READ, Entry, Tree
from . import keras_h5 as h5
from .h5_files import Place

__all__ = ["OPTIMIZER_SKELETON", "optimizer_state", "read_keras3_optimizer", "read_optimizer_weights", "write_keras3_optimizer", "write_optimizer_weights"]

OPTIMIZER_SKELETON = "keras.optimizer_skeleton"  # format_state: Keras 3 optimizer groups, [[path, {attribute: string}]]
_DEFAULT_SKELETON = [["/optimizer", {}], ["/optimizer/vars", {}]]


def optimizer_state(raw: list[Entry], entries: list[Entry], layout: str, config: str | None, training_config: str = "") -> dict[str, Any]:
    """The training state of the optimizer datasets `raw`, mapped to `entries` where that can be proven."""
    from .keras_training import by_name, by_order, training
    from .torch_training import TRAINING_KEY

    where = "optimizer_weights" if layout == "model" else "optimizer"
    if layout == "model":
        mapped, reason = by_name(where, raw, entries, training_config)
    elif config is not None:
        mapped, reason = by_order(where, raw, entries, config)
    else:
        mapped, reason = None, "a .weights.h5 file has no config.json, which would prove the order of optimizer/vars"
    state = training(where, raw, mapped, reason, training_config)
    out: dict[str, Any] = {TRAINING_KEY: state}
    if state.dropped:
        out[DROPPED_ON_READ] = f"{where} ({len(raw)} tensors): left out by --drop-optimizer"
    return out


def read_optimizer_weights(path: Path, group: Any, state: dict[str, Any]) -> None:
    """A full model's `optimizer_weights`, in the order of its `weight_names` (the order Keras loads them in)."""
    names = h5._attr_list(group, "weight_names") if isinstance(group, h5._h5py().Group) else []
    if not names:
        state[DROPPED_ON_READ] = f"optimizer_weights ({h5._count_datasets(group)} tensors): no weight_names say their order"
        return
    raw, seen = [], set()
    for name in names:
        if name not in group or not isinstance(group[name], h5._h5py().Dataset):
            raise CorruptFileError(f"optimizer weight {name!r} is listed in weight_names but missing", str(path), h5._FIX)
        stored = group[name].name
        if stored != f"{group.name}/{name}" or stored in seen:  # 'a/', '.', a second listing: one dataset, two names
            raise CorruptFileError(f"optimizer weight {name!r} is listed twice in weight_names, or not by its own name", str(path), h5._FIX)
        seen.add(stored)
        raw.append(h5._entry(path, group[name], name, {"keras.opt_name": name}))
    state[h5.OPTIMIZER_RAW] = raw


def read_keras3_optimizer(path: Path, group: Any, state: dict[str, Any], place: Place | None) -> int:
    """`optimizer/vars/0..N-1` as raw entries in index order; returns how many datasets were
    left out instead because the group holds something else."""
    h5py = h5._h5py()
    inner = group.get("vars") if isinstance(group, h5py.Group) else None
    keys = h5._ordered_keys(inner, path) if isinstance(inner, h5py.Group) else []
    if not keys or keys != [str(i) for i in range(len(keys))] or list(group.keys()) != ["vars"]:
        return h5._count_datasets(group) if isinstance(group, h5py.Group) else 1
    raw = []
    for key in keys:
        child = h5._hard_child(inner, key, path)
        if not isinstance(child, h5py.Dataset):
            return h5._count_datasets(group)
        raw.append(h5._entry(path, child, f"vars/{key}", {}, place))
    skeleton = [[g.name, {k: v for k, v in ((k, h5._attr_string(g.attrs, k)) for k in h5._attr_names(g)) if v is not None}] for g in (group, inner)]
    state[OPTIMIZER_SKELETON] = json.dumps(skeleton, ensure_ascii=False)
    state[h5.OPTIMIZER_RAW] = raw
    return 0


# -- writing ---------------------------------------------------------------------------------


def _optimizer(tree: Tree):
    """The Keras optimizer state to write back with `tree`, if it has one."""
    from .keras_training import keras_training

    state = keras_training(tree) if tree.format in (h5.NAME, "keras") else None
    return state.optimizers[0] if state is not None and state.optimizers else None


def write_optimizer_weights(f: Any, tree: Tree, sources: dict) -> None:
    """A full model's `optimizer_weights`: the variables left, in their order, under their names."""
    from .keras_training import h5_names

    optimizer = _optimizer(tree)
    if optimizer is None:
        return
    named = h5_names(optimizer)
    group = f.create_group("optimizer_weights", track_order=True)
    for name, e in named:
        h5._write_dataset(group, name, e, sources, None)
    h5._write_attr_list(group, "weight_names", [name for name, _ in named])


def write_keras3_optimizer(f: Any, tree: Tree, sources: dict) -> None:
    """Keras 3 loads optimizer/vars/0..N-1 by index: the variables left, renumbered in their order."""
    optimizer = _optimizer(tree)
    if optimizer is None:
        return
    for group_path, attrs in json.loads(tree.format_state.get(OPTIMIZER_SKELETON, "null")) or _DEFAULT_SKELETON:
        group = f.require_group(group_path)
        for key, value in attrs.items():
            group.attrs[key] = value
    for i, e in enumerate(optimizer.tensors.values()):
        h5._write_dataset(f, f"optimizer/vars/{i}", e, sources, None)
