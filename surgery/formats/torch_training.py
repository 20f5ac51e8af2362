"""Training checkpoints: the optimizer state and the other top-level entries beside a state dict.

A training checkpoint is `{"model": state_dict, "optimizer": optimizer.state_dict(), "epoch": 3, ...}`
(or Lightning's `{"state_dict": ..., "optimizer_states": [...], "global_step": ...}`). The
torch reader keeps the model's tensors as the tree, and hands the rest to `read_training`,
which returns a `TrainingState` stored in `tree.format_state[TRAINING_KEY]`:

- each optimizer's per-parameter tensors as entries named `optimizer/state/<param>/<key>`
  (`optimizer/0/state/...` for Lightning's list), a namespace apart from the model's names, so
  operations can make them follow their edits while model-only writers never see them;
- the top-level entries kept as they are (epoch, schedulers, RNG states), named for reports.

A torch.optim state dict numbers its parameters 0..N-1 in the order they were given to the
optimizer, which for `Optimizer(model.parameters())` is the state dict's order without buffers.
Nothing in the file says which entries are buffers, so the order is taken as proven only when
every check below passes; otherwise the state is kept unmapped, with the reason, and edits that
would have to move it refuse (`--drop-optimizer` is the way out):

1. the param_groups number the parameters 0..N-1, in order, each once;
2. the state dict holds exactly N tensors that are not known buffers (`BUFFER_NAMES`);
3. every per-parameter moment has its parameter's shape.

Reading the optimizer needs nothing beyond the reader's allowlist: its state is tensors, numbers,
strings, tuples and dicts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tree import Entry, Tree

__all__ = ["BUFFER_NAMES", "MOMENT_KEYS", "OPTIMIZER_KEYS", "TRAINING_KEY", "OptimizerState", "TrainingState", "describe", "read_training", "training_state"]

TRAINING_KEY = "torch.training"  # format_state key of the TrainingState
# Set by `--drop-optimizer` (and `without_optimizer()`): the reader leaves optimizer state out.
DROP_OPTIMIZER: ContextVar[bool] = ContextVar("surgery_drop_optimizer", default=False)
KEPT_PREFIX = "\x00kept/"  # names of loose tensors inside kept entries (RNG states), apart from any real name

# Model knowledge, as data.
# Top-level keys that hold one torch.optim state dict, and the one that holds Lightning's list.
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "opt")
LIGHTNING_OPTIMIZERS = "optimizer_states"
# Module buffers torch puts in a state dict (BatchNorm's); they have no optimizer state.
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")
# Per-parameter optimizer tensors shaped like their parameter, and what they tell of the optimizer.
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg", "acc_delta", "sum", "mu_product", "ax", "eta", "prev", "step_size")
_KINDS = (
    ({"exp_avg", "exp_avg_sq"}, "Adam-family (exp_avg, exp_avg_sq)"),
    ({"momentum_buffer"}, "SGD with momentum (momentum_buffer)"),
    ({"square_avg"}, "RMSprop-family (square_avg)"),
    ({"sum"}, "Adagrad (sum)"),
)


@dataclass(frozen=True)
class OptimizerState:
    """One optimizer's state as read.

    `param_names[i]` names parameter i when the order is proven (None otherwise, with `reason`).
    `tensors` holds every tensor of `state`, named `<prefix>/state/<param or index>/<key>`.
    `raw` is the state dict as read, tensors as the reader's references, for writing back.
    """

    where: str
    prefix: str
    kind: str
    param_names: tuple[str, ...] | None
    reason: str
    step: float | None
    tensors: Tree
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def mapped(self) -> bool:
        return self.param_names is not None


@dataclass(frozen=True)
class TrainingState:
    """Everything in a training checkpoint beside the model's state dict."""

    model_key: str
    optimizers: tuple[OptimizerState, ...]
    kept: tuple[str, ...]  # top-level keys written back as they were read
    top: Mapping[str, Any] = field(repr=False)
    kept_tensors: tuple[tuple[Any, Entry], ...] = field(default=(), repr=False)  # (reference, entry) inside kept entries
    dropped: tuple[str, ...] = ()  # optimizers left out on purpose (--drop-optimizer)
    framework: str = "torch"  # whose writer puts it back: "torch", or "keras" (surgery.formats.keras_training)


@contextmanager
def without_optimizer() -> Iterator[None]:
    """Within the block, torch checkpoints are read without their optimizer state.

    Example:
        >>> with without_optimizer():  # doctest: +SKIP
        ...     tree = surgery.load("checkpoint.pt")
    """
    token = DROP_OPTIMIZER.set(True)
    try:
        yield
    finally:
        DROP_OPTIMIZER.reset(token)


def training_state(tree: Tree) -> TrainingState | None:
    """The training state a reader found beside the tree's model tensors, if any (torch, or Keras: see `framework`)."""
    state = tree.format_state.get(TRAINING_KEY)
    return state if isinstance(state, TrainingState) else None


def read_training(obj: Any, model_key: str, path: Path, model: list[Entry], make_entry) -> TrainingState | None:
    """The training state of a checkpoint whose state dict sits under `model_key`, when it holds
    optimizer state; None otherwise (a bare state dict, or one in a container without an optimizer).

    `make_entry(name, ref)` builds an entry for one of the reader's tensor references.
    """
    if not model_key or not isinstance(obj, dict):
        return None
    found = list(_optimizer_dicts(obj))
    if not found:  # a model checkpoint in a container (state_dict + hparams): written back as a bare state dict
        return None
    dropped = tuple(where for where, _, _ in found) if DROP_OPTIMIZER.get() else ()
    optimizers = [] if dropped else [_optimizer(where, prefix, raw, model, make_entry) for where, prefix, raw in found]
    moved = {model_key, *(where.split("[")[0] for where, _, _ in found)}
    kept = tuple(k for k in obj if k not in moved)
    loose: list = []
    for key in kept:
        _walk_refs(obj[key], loose)
    kept_tensors = tuple((ref, make_entry(f"{KEPT_PREFIX}{i}", ref)) for i, ref in enumerate(loose))
    top = {k: v for k, v in obj.items() if not (dropped and k in moved and k != model_key)}
    return TrainingState(model_key, tuple(optimizers), tuple(str(k) for k in kept), top, kept_tensors, dropped)


def describe(state: TrainingState) -> dict[str, Any]:
    """The training state as plain data, for `inspect` (text and --json)."""
    return {
        "model_key": state.model_key,
        "optimizers": [
            {
                "where": o.where,
                "namespace": o.prefix,
                "kind": o.kind,
                "step": o.step,
                "tensors": len(o.tensors),
                "parameters": _count_params(o.raw),
                "mapped": o.mapped,
                "reason": o.reason,
            }
            for o in state.optimizers
        ],
        "kept": list(state.kept),
        "dropped": list(state.dropped),
        "framework": state.framework,
    }


# -- finding and mapping an optimizer ---------------------------------------------------


def _optimizer_dicts(obj: dict):
    for key in OPTIMIZER_KEYS:
        if _is_optimizer(obj.get(key)):
            yield key, "optimizer", obj[key]
            return
    states = obj.get(LIGHTNING_OPTIMIZERS)
    if isinstance(states, list):
        for i, raw in enumerate(states):
            if _is_optimizer(raw):
                yield f"{LIGHTNING_OPTIMIZERS}[{i}]", f"optimizer/{i}", raw


def _is_optimizer(raw: Any) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("state"), dict) and isinstance(raw.get("param_groups"), list)


def _optimizer(where: str, prefix: str, raw: dict, model: list[Entry], make_entry) -> OptimizerState:
    names, reason = _param_order(raw, model, where)
    entries, steps = [], []
    for index, per_param in raw["state"].items():
        if not isinstance(per_param, dict):
            continue
        owner = names[index] if names is not None else str(index)
        for key, value in per_param.items():
            if _is_tensor(value):
                entry = make_entry(f"{prefix}/state/{owner}/{key}", value)
                entries.append(entry)
                if key == "step" and entry.numel == 1 and not steps:  # one read: every parameter shares the count
                    steps.append(float(entry.read().reshape(-1)[0]))
            elif key == "step" and isinstance(value, (int, float)):
                steps.append(float(value))
    kind = _kind({str(k) for p in raw["state"].values() if isinstance(p, dict) for k in p})
    step = steps[0] if steps else None
    return OptimizerState(where, prefix, kind, names, reason, step, Tree(entries, format="torch"), raw)


def _param_order(raw: dict, model: list[Entry], where: str) -> tuple[tuple[str, ...] | None, str]:
    """Parameter names by optimizer index, or None and the reason the order cannot be proven."""
    ids = [i for group in raw["param_groups"] for i in _group_params(group)]
    if ids != list(range(len(ids))):
        return None, f"{where}'s param_groups do not number the parameters 0..{len(ids) - 1} in order"
    params = [e for e in model if e.name.rsplit(".", 1)[-1] not in BUFFER_NAMES]
    if len(params) != len(ids):
        return None, (
            f"{where} holds {len(ids)} parameters but the state dict has {len(params)} tensors that are not known buffers "
            f"({', '.join(BUFFER_NAMES)}); frozen parameters or other buffers hide which tensor is which"
        )
    for index, per_param in raw["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(ids) or not isinstance(per_param, dict):
            return None, f"{where} has state for parameter {str(index)[:20]!r}, which no param_group lists"
        param = params[index]
        for key in MOMENT_KEYS:
            value = per_param.get(key)
            if _is_tensor(value) and tuple(value.shape) != param.shape:
                return None, (
                    f"{where}'s {key} for parameter {index} has shape {list(value.shape)} but parameter {index} in "
                    f"state-dict order (buffers left out), {param.name}, has {list(param.shape)}"
                )
    return tuple(e.name for e in params), ""


def _kind(keys: set[str]) -> str:
    for needed, kind in _KINDS:
        if needed <= keys:
            return kind
    return "plain (no per-parameter moments)" if keys <= {"step"} else f"unknown ({', '.join(sorted(keys))})"


def _count_params(raw: Mapping[str, Any]) -> int:
    if "param_groups" not in raw:  # a Keras optimizer counts its parameters when it maps them
        return int(raw.get("parameters", 0))
    return sum(len(_group_params(g)) for g in raw["param_groups"])


def _group_params(group: Any) -> list:
    # A hostile file may put anything here; what is not a list of indices counts as none.
    params = group.get("params") if isinstance(group, dict) else None
    return params if isinstance(params, list) else []


def _walk_refs(value: Any, found: list) -> None:
    if _is_tensor(value):
        found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _walk_refs(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_refs(v, found)


def _is_tensor(value: Any) -> bool:
    # The reader's tensor references; checked by their fields so this module needs no reader import.
    return hasattr(value, "storage") and hasattr(value, "shape") and hasattr(value, "stride")


# -- writing the checkpoint back ----------------------------------------------------------


def extra_entries(tree: Tree) -> list[Entry]:
    """The tensors a training checkpoint writes beside the model: optimizer state, then kept loose tensors."""
    state = training_state(tree)
    if state is None:
        return []
    return [e for o in state.optimizers for e in o.tensors.values()] + [e for _, e in state.kept_tensors]


@dataclass(frozen=True)
class _Emit:
    """A value the pickle writes with a function (a rebuilt container), not from data as read."""

    write: Callable[[], None]


def pickle_checkpoint(tree: Tree, storages, metadata: dict[str, str]) -> bytes:
    """data.pkl of a whole training checkpoint: the model's state dict under its key, each
    optimizer rebuilt from its (maybe edited) tensors, every other entry as it was read."""
    from .torch_writer import METADATA_KEY, _Pickle, _tensor

    state = training_state(tree)
    views = {e.name: (s, offset, e) for s in storages for e, offset in s.views}
    kept = {id(ref): e.name for ref, e in state.kept_tensors}
    optimizers = {o.where: o for o in state.optimizers}
    p = _Pickle()

    def tensor(name: str) -> _Emit:
        return _Emit(lambda: _tensor(p, *views[name]))

    def value(v: Any) -> None:
        if isinstance(v, _Emit):
            v.write()
        elif _is_tensor(v):
            _tensor(p, *views[kept[id(v)]])
        elif v is None:
            p.op(b"N")
        elif v is True or v is False:
            p.op(b"\x88" if v else b"\x89")  # NEWTRUE, NEWFALSE
        elif isinstance(v, int):
            p.int_(v)
        elif isinstance(v, float):
            p.op(b"G" + struct.pack(">d", v))  # BINFLOAT
        elif isinstance(v, str):
            p.str_(v)
        elif isinstance(v, (tuple, list)):
            p.op(b"(" if isinstance(v, tuple) else b"](")
            for item in v:
                value(item)
            p.op(b"t" if isinstance(v, tuple) else b"e")
        elif isinstance(v, dict):
            mapping(v.items(), ordered=type(v) is not dict)
        elif type(v).__name__ == "_StorageType":  # a torch dtype object kept in the checkpoint
            p.global_("torch", v.dtype)
        else:
            raise _unwritable(v)

    def mapping(pairs, *, ordered: bool = False) -> None:
        if ordered:
            p.global_("collections", "OrderedDict")
            p.op(b")R")
        else:
            p.op(b"}")
        pairs = list(pairs)
        if pairs:
            p.op(b"(")  # MARK
            for k, v in pairs:
                value(k)
                value(v)
            p.op(b"u")  # SETITEMS

    def model() -> None:
        mapping(((name, tensor(name)) for name in tree), ordered=True)
        if metadata:  # as the state-dict writer does: state_dict._metadata["__surgery__"]
            p.op(b"}")
            p.str_("_metadata")
            p.op(b"}")
            p.str_(METADATA_KEY)
            p.str_dict(metadata)
            p.op(b"ssb")

    def optimizer(o: OptimizerState) -> _Emit:
        def per_param(index: int, entries: dict) -> _Emit:
            owner = o.param_names[index] if o.param_names is not None else str(index)
            rebuilt = ((k, tensor(f"{o.prefix}/state/{owner}/{k}") if _is_tensor(v) else v) for k, v in entries.items())
            return _Emit(lambda: mapping(rebuilt))

        state_dict = _Emit(lambda: mapping((i, per_param(i, d)) for i, d in o.raw["state"].items()))
        return _Emit(lambda: mapping((k, state_dict if k == "state" else v) for k, v in o.raw.items()))

    def lightning(states: list) -> _Emit:
        def write() -> None:
            where = [f"{LIGHTNING_OPTIMIZERS}[{i}]" for i in range(len(states))]
            value([optimizer(optimizers[w]) if w in optimizers else raw for w, raw in zip(where, states)])

        return _Emit(write)

    top = []
    for key, v in state.top.items():
        if key == state.model_key:
            top.append((key, _Emit(model)))
        elif key in optimizers:
            top.append((key, optimizer(optimizers[key])))
        elif key == LIGHTNING_OPTIMIZERS and isinstance(v, list):
            top.append((key, lightning(v)))
        else:
            top.append((key, v))
    mapping(top)
    p.op(b".")
    return bytes(p.out)


def _unwritable(v: Any):
    from ..errors import OutputError

    return OutputError(
        f"the checkpoint holds a {type(v).__name__} beside its tensors, which surgery cannot write back",
        "torch",
        "drop that entry in torch first, or write safetensors (model only)",
    )
