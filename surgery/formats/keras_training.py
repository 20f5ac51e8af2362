"""Keras optimizer state: which optimizer variable belongs to which parameter, proven or refused.

The Keras readers (`keras_h5`, `keras_zip`) hand their optimizer datasets here, and get back the
same `TrainingState` / `OptimizerState` the torch reader builds (`surgery.formats.torch_training`),
stored in `tree.format_state[TRAINING_KEY]` with `framework="keras"`. So every edit moves the
moments with `surgery.ops.optimizer_state`, `--drop-optimizer` leaves them out, and `inspect`
shows them, exactly as for a torch checkpoint. Mapped moments are named
`optimizer/state/<parameter>/<slot>`; scalars (the iteration counter, the learning rate) are
`optimizer/<name>` and are written back as they were read.

Two ways the files say which variable is which:

* full-model `.h5` (Keras 2, and Keras 3's legacy `.h5`): the `optimizer_weights` group names
  each variable, and Keras loads them back by order. A name is mapped when it embeds exactly one
  parameter in one of the styles Keras writes (`NAME_STYLES`) and has that parameter's shape.
  Anonymous variables (`training/Adam/Variable_3:0`, written by Keras 2.0-2.2) name nothing:
  their order is the optimizer's, which the file does not record, so they stay unmapped.
* Keras 3 `.keras`: `optimizer/vars/0..N-1`, by order only. The order is Keras 3's own: the
  scalars (`iteration`, then `learning_rate` unless it is a schedule), then for each trainable
  variable in `model.trainable_variables` order its slots interleaved (`momentum`, `velocity`
  for Adam), then the optimizer's later groups (`velocity_hat` with amsgrad). The trainable
  variables come from config.json's layer order and `TRAINABLE_VARS`; the mapping is taken only
  when the count and every shape agree.

What cannot be proven is kept unmapped with its reason: a plain conversion writes it back as it
was read, and edits that would have to move it refuse (`--drop-optimizer` is the way out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..tree import Entry, Tree
from .torch_training import DROP_OPTIMIZER, TRAINING_KEY, OptimizerState, TrainingState

__all__ = ["FRAMEWORK", "NAME_STYLES", "OPTIMIZER_SLOTS", "TRAINABLE_VARS", "by_name", "by_order", "h5_names", "is_moment", "keras_training", "training"]

FRAMEWORK = "keras"
PREFIX = "optimizer"
# Entry attributes of optimizer tensors.
H5_NAME = "keras.opt_name"  # full-model .h5: the dataset's name in optimizer_weights, as read
EMBEDDED = "keras.opt_embedded"  # the parameter's name as it appears inside H5_NAME
OWNER = "keras.opt_owner"  # the parameter (tree name) the variable was read for
MOMENT = "keras.opt_moment"  # True for per-parameter tensors (moments follow edits; scalars stay)

# Model knowledge, as data.
# How Keras names a parameter's slot in optimizer_weights: (style, example).
NAME_STYLES = (
    ("slot-last", "training/Adam/conv1/kernel/m:0 (Keras 2 before 2.11; training/ optional)"),
    ("slot-first", "Adam/m/conv1/kernel:0 (Keras 2.11+)"),
    ("flat", "adam/conv1_kernel_momentum (Keras 3 legacy .h5)"),
)
# Keras 3 optimizers: the slot groups build() adds, in order; a group's slots interleave per variable.
OPTIMIZER_SLOTS = {
    "Adam": lambda c: [("momentum", "velocity")] + ([("velocity_hat",)] if c.get("amsgrad") else []),
    "AdamW": lambda c: [("momentum", "velocity")] + ([("velocity_hat",)] if c.get("amsgrad") else []),
    "SGD": lambda c: [("momentum",)] if c.get("momentum", 0) else [],
    "RMSprop": lambda c: [("velocity",)] + ([("momentum",)] if c.get("momentum", 0) > 0 else []) + ([("average_gradient",)] if c.get("centered") else []),
    "Adagrad": lambda c: [("accumulator",)],
}
# Keras 3 layers: how many of a layer's variables (the first ones) are trainable; None: all of them.
TRAINABLE_VARS = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                     "DepthwiseConv2D", "SeparableConv2D", "Dense", "EinsumDense", "Embedding", "LayerNormalization", "PReLU"), None),
    "BatchNormalization": lambda c: int(c.get("scale", True)) + int(c.get("center", True)),  # gamma, beta; then the moving statistics
}
_COUNTER = re.compile(r"(^|/)(iter|iterations?|iteration)(_\d+)?$")
_STRIP_INDEX = re.compile(r":\d+$")


def training(where: str, raw: Sequence[Entry], mapped: OptimizerState | None, reason: str, training_config: str = "") -> TrainingState | None:
    """The training state for a Keras file's optimizer datasets `raw` (None when there are none);
    `mapped` when the order is proven, otherwise the datasets are kept unmapped with `reason`."""
    if not raw:
        return None
    if DROP_OPTIMIZER.get():
        return TrainingState("", (), (), {}, dropped=(where,), framework=FRAMEWORK)
    state = mapped if mapped is not None else _unmapped(where, raw, reason, training_config)
    return TrainingState("", (state,), (), {}, framework=FRAMEWORK)


def keras_training(tree: Tree) -> TrainingState | None:
    """The Keras training state of `tree`, if it has one."""
    state = tree.format_state.get(TRAINING_KEY)
    return state if isinstance(state, TrainingState) and state.framework == FRAMEWORK else None


def is_moment(entry: Entry) -> bool:
    return bool(entry.attrs.get(MOMENT))


# -- optimizer_weights: by name -------------------------------------------------------------


def by_name(where: str, raw: Sequence[Entry], model: Sequence[Entry], training_config: str = "") -> tuple[OptimizerState | None, str]:
    """Map `optimizer_weights` datasets (named as read) to the model's tensors by the names Keras
    gives them; `training_config` (the file's attribute) names the optimizer's class."""
    keys = _embedded_names(model)
    shapes = {e.name: e.shape for e in model}
    entries, seen, slots, step = [], {}, [], None
    for e in raw:
        found = _candidates(_STRIP_INDEX.sub("", e.name), keys)
        if not found:
            if e.shape == ():  # a counter or hyperparameter: kept as it is
                if step is None and _COUNTER.search(_STRIP_INDEX.sub("", e.name)):
                    step = float(e.read().reshape(-1)[0])
                entries.append(_named(e, _scalar_name(e, entries), moment=False))
                continue
            return None, f"{where} holds {e.name!r}, which names no parameter of the model; the order of such variables is the optimizer's, which the file does not record"
        if len(found) > 1:
            shown = ", ".join(sorted(f"{p} ({s})" for p, s, _ in found))
            return None, f"{where}'s {e.name!r} could be the state of more than one parameter: {shown}"
        (param, slot, embedded), = found
        if shapes[param] != e.shape:
            return None, f"{where}'s {e.name!r} has shape {list(e.shape)} but parameter {param} has {list(shapes[param])}"
        if (param, slot) in seen:
            return None, f"{where} holds two {slot!r} variables for parameter {param}: {seen[param, slot]!r} and {e.name!r}"
        seen[param, slot] = e.name
        slots.append(slot)
        entries.append(_named(e, f"{PREFIX}/state/{param}/{slot}", moment=True, owner=param, embedded=embedded))
    params = tuple(dict.fromkeys(p for p, _ in seen))
    kind = _kind(_optimizer_name(raw, training_config), slots)
    return OptimizerState(where, PREFIX, kind, params, "", step, Tree(entries, format=FRAMEWORK), {"parameters": len(params)}), ""


def _embedded_names(model: Sequence[Entry]) -> dict[str, tuple[str, str]]:
    """How each tensor may appear inside an optimizer variable's name -> (tree name, spelling kind)."""
    keys: dict[str, list[str]] = {}
    for e in model:
        path = _STRIP_INDEX.sub("", str(e.attrs.get("keras.weight_name") or e.name))
        for spelled in {path, e.name}:
            keys.setdefault(spelled, []).append(e.name)
    return {k: tuple(v) for k, v in keys.items()}


def _candidates(name: str, keys: dict[str, tuple[str, ...]]) -> set[tuple[str, str, str]]:
    """(parameter, slot, the parameter's text in `name`) for every style the name fits."""
    found = set()
    head, _, rest = name.partition("/")
    if head == "training":
        head, _, rest = rest.partition("/")
    inner, _, slot = rest.rpartition("/")  # slot-last: Adam/conv1/kernel/m
    for param in keys.get(inner, ()):
        found.add((param, slot, inner))
    slot, _, inner = rest.partition("/")  # slot-first: Adam/m/conv1/kernel
    for param in keys.get(inner, ()):
        found.add((param, slot, inner))
    if "/" not in rest:  # flat: adam/conv1_kernel_momentum
        for spelled, params in keys.items():
            flat = spelled.replace("/", "_")
            if rest.startswith(flat + "_") and len(rest) > len(flat) + 1:
                found.update((param, rest[len(flat) + 1 :], flat) for param in params)
    return found


def _optimizer_name(raw: Sequence[Entry], training_config: str = "") -> str:
    """The optimizer's class as training_config names it, else the one scope its variables share."""
    try:
        name = json.loads(training_config)["optimizer_config"]["class_name"]
        if isinstance(name, str) and name:
            return name
    except (ValueError, TypeError, KeyError):
        pass
    names = [e.name.split("/") for e in raw if "/" in e.name]
    heads = {n[1] if n[0] == "training" and len(n) > 2 else n[0] for n in names}
    return heads.pop() if len(heads) == 1 else "optimizer"


def h5_names(o: OptimizerState) -> list[tuple[str, Entry]]:
    """(dataset name in optimizer_weights, entry) in the order read; a renamed parameter's
    variables take its new name, spelled as the old one was."""
    out = []
    for e in o.tensors.values():
        name = str(e.attrs[H5_NAME])
        owner = str(e.attrs.get(OWNER, ""))
        now = e.name[len(f"{PREFIX}/state/") :].rpartition("/")[0] if is_moment(e) and owner else owner
        if owner and now != owner:
            old, new = owner.split("/")[0], now.split("/")[0]
            embedded = str(e.attrs[EMBEDDED])
            if embedded.startswith(old):
                name = name.replace(embedded, new + embedded[len(old) :], 1)
        out.append((name, e))
    return out


# -- Keras 3: by order ---------------------------------------------------------------------


def by_order(where: str, raw: Sequence[Entry], model: Sequence[Entry], config: str) -> tuple[OptimizerState | None, str]:
    """Map Keras 3 `optimizer/vars/<i>` (in index order) to parameters through config.json."""
    try:
        document = json.loads(config)
        layers = document["config"]["layers"]
        compiled = document["compile_config"]["optimizer"]
        kind, options = compiled["class_name"], compiled["config"]
    except (ValueError, TypeError, KeyError):
        return None, f"config.json does not describe a compiled Functional or Sequential model, so the order of {where} cannot be proven"
    if not isinstance(options, dict) or not isinstance(kind, str):
        return None, f"config.json's compile_config does not describe the optimizer, so the order of {where} cannot be proven"
    if kind not in OPTIMIZER_SLOTS:
        return None, f"{where} belongs to a {kind} optimizer, whose variables surgery does not know (known: {', '.join(OPTIMIZER_SLOTS)})"
    extras = [k for k in ("use_ema", "gradient_accumulation_steps") if options.get(k)]
    if extras:
        return None, f"{where}'s {kind} uses {extras[0]}, whose extra variables surgery does not place"
    try:
        params, why = _trainable(layers, model, document["config"].get("trainable", True))
        groups = OPTIMIZER_SLOTS[kind](options)
    except (TypeError, ValueError, AttributeError):  # a config whose values are not what Keras writes
        return None, f"config.json holds values Keras does not write, so the order of {where} cannot be proven"
    if params is None:
        return None, why
    scalars = ["iteration"] + (["learning_rate"] if isinstance(options.get("learning_rate"), (int, float)) else [])
    expected = [(None, s) for s in scalars] + [(p, slot) for group in groups for p in params for slot in group]
    if len(expected) != len(raw):
        return None, (
            f"{where} holds {len(raw)} variables but {kind} for the {len(params)} trainable variables of config.json's layers "
            f"would hold {len(expected)}"
        )
    entries, step = [], None
    for (param, slot), e in zip(expected, raw):
        want = () if param is None else param.shape
        if e.shape != want:
            what = slot if param is None else f"{slot} of {param.name}"
            return None, f"{where}'s variable {e.name.rsplit('/', 1)[-1]} should be the {what} with shape {list(want)} but has {list(e.shape)}"
        if param is None:
            if slot == "iteration":
                step = float(e.read().reshape(-1)[0])
            entries.append(_named(e, f"{PREFIX}/{slot}", moment=False))
        else:
            entries.append(_named(e, f"{PREFIX}/state/{param.name}/{slot}", moment=True, owner=param.name))
    names = tuple(p.name for p in params)
    state = OptimizerState(where, PREFIX, _kind(kind, [s for g in groups for s in g]), names, "", step, Tree(entries, format=FRAMEWORK), {"parameters": len(names)})
    return state, ""


def _trainable(layers: Any, model: Sequence[Entry], model_trainable: Any) -> tuple[list[Entry] | None, str]:
    """The model's trainable variables in `model.trainable_variables` order: config layer order,
    each layer's variables in index order, the first TRAINABLE_VARS of them."""
    if not isinstance(layers, list) or not model_trainable:
        return ([], "") if not model_trainable else (None, "config.json lists no layers")
    by_layer: dict[str, list[Entry]] = {}
    for e in model:
        layer, _, index = e.name.rpartition("/")
        by_layer.setdefault(layer if index.isdigit() else e.name, []).append(e)
    out: list[Entry] = []
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
            return None, "config.json holds a layer that is not an object"
        cls, options = str(layer.get("class_name")), layer["config"]
        name = str(layer.get("name") or options.get("name"))
        own = sorted(by_layer.get(name, []), key=lambda e: int(e.name.rpartition("/")[2]))
        nested = [e for e in model if e.name.startswith(name + "/") and e not in own]
        if not own and not nested:
            continue
        if nested or cls not in TRAINABLE_VARS:
            return None, f"layer {name} is a {cls}, and surgery does not know which of its variables are trainable"
        if not options.get("trainable", True):
            continue
        count = TRAINABLE_VARS[cls]
        out.extend(own if count is None else own[: count(options)])
    return out, ""


# -- shared steps ---------------------------------------------------------------------------


def _scalar_name(e: Entry, entries: Sequence[Entry]) -> str:
    """`optimizer/Adam/iter` for `Adam/iter:0`; with its position too where that is taken (`iter:0`, `iter:1`)."""
    short = f"{PREFIX}/{_STRIP_INDEX.sub('', e.name)}"
    return short if all(x.name != short for x in entries) else f"{PREFIX}/{e.name}#{len(entries)}"


def _unmapped(where: str, raw: Sequence[Entry], reason: str, training_config: str = "") -> OptimizerState:
    entries: list[Entry] = []
    for e in raw:
        entries.append(_named(e, _scalar_name(e, entries), moment=e.shape != ()))
    counters = [e for e in raw if e.shape == () and _COUNTER.search(_STRIP_INDEX.sub("", e.name))]
    step = float(counters[0].read().reshape(-1)[0]) if counters else None
    return OptimizerState(where, PREFIX, _kind(_optimizer_name(raw, training_config), []), None, reason, step, Tree(entries, format=FRAMEWORK), {"parameters": 0})


def _named(e: Entry, name: str, *, moment: bool, owner: str = "", embedded: str = "") -> Entry:
    attrs = {**e.attrs, H5_NAME: e.attrs.get(H5_NAME, e.name), MOMENT: moment}
    if owner:
        attrs[OWNER] = owner
    if embedded:
        attrs[EMBEDDED] = embedded
    return Entry(name, e.shape, e.dtype, e.source, attrs)


def _kind(optimizer: str, slots: Sequence[str]) -> str:
    shown = ", ".join(dict.fromkeys(slots))
    return f"Keras {optimizer} ({shown})" if shown else f"Keras {optimizer}"
