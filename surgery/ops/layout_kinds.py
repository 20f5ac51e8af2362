"""Which kind each layer is (conv, transposed, depthwise, dense, batchnorm, ...) and what its
parameters are, from the globs, the Keras model_config, parameter names, automatic layer
names, and last the kernel's rank; a layer with no torch equivalent is refused by name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import OperationError
from ..tree import Entry
from .layout_graph import _KerasConfig
from .layout_names import _param_of
from .layout_tables import (
    _KERNELS,
    KERAS_AUTO_NAMES,
    KERAS_CLASSES,
    KERAS_PARAM_KINDS,
    KERAS_REFUSED,
    PARAMS,
    TORCH_AUTO_NAMES,
)


@dataclass(frozen=True)
class _Layer:
    """One source layer: its name, kind, and its entries with their canonical Keras params."""

    name: str
    kind: str
    entries: tuple[Entry, ...]
    params: tuple[str, ...]  # Keras-side param name per entry (torch name going the other way)


def _keras_layer(name: str, group: list[Entry], config: _KerasConfig, transposed, depthwise) -> _Layer:
    raw = [_param_of(e.name, "/") for e in group]
    kind = _keras_kind(name, raw, group, config, transposed, depthwise)
    params = _keras_params(name, raw, group, kind, config)
    return _Layer(name, kind, tuple(group), tuple(params))


def _keras_kind(name, raw, group, config, transposed, depthwise) -> str:
    if _matches(name, transposed):
        return "transposed"
    if _matches(name, depthwise):
        return "depthwise"
    class_name = config.class_of(name)
    if class_name in KERAS_REFUSED:
        raise _refused(name, class_name, KERAS_REFUSED[class_name])
    if class_name in KERAS_CLASSES:
        return KERAS_CLASSES[class_name]
    if "pointwise_kernel" in raw:
        raise _refused(name, "SeparableConv", KERAS_REFUSED["SeparableConv2D"])
    for param, kind in KERAS_PARAM_KINDS:
        if param in raw:
            return kind
    short = name.rsplit("/", 1)[-1]
    for glob, kind in KERAS_AUTO_NAMES:
        if fnmatch.fnmatchcase(short, glob):
            return kind
    return _kind_from_shapes(name, raw, group)


def _kind_from_shapes(name: str, raw: list[str], group: list[Entry]) -> str:
    ranks = [len(e.shape) for e in group]
    if ranks and ranks[0] == 2 and all(r <= 1 for r in ranks[1:]):
        return "dense"
    if ranks and 3 <= ranks[0] <= 5 and all(r <= 1 for r in ranks[1:]):
        return "conv"
    if all(p.isdigit() for p in raw) and ranks == [1, 1, 1, 1]:
        return "batchnorm"  # a Keras 3 file: four vectors are gamma, beta, moving_mean, moving_variance
    if all(r <= 1 for r in ranks) and not any(p.isdigit() for p in raw):
        return "other"  # vectors and scalars we do not know: renamed, never transposed
    raise OperationError(
        f"cannot tell what kind of layer {name!r} is (tensors {', '.join(e.describe() for e in group)})",
        name,
        "convert a file saved with its model_config (model.save), or name it with --transposed/--rules",
    )


def _keras_params(name, raw, group, kind, config) -> list[str]:
    """Keras param names per entry; Keras 3 files number them (0, 1, ...) instead."""
    if not all(p.isdigit() for p in raw):
        _check_known_params(name, raw, group, kind)
        return raw
    order = _keras3_order(name, kind, config, len(raw))
    if order is None or len(order) < len(raw):
        raise OperationError(
            f"layer {name!r} ({kind}) has {len(raw)} numbered weights, which cannot be told apart",
            name,
            "convert a file saved with model.save (it keeps the model_config), or a legacy .h5 with named weights",
        )
    return [order[int(p)] if int(p) < len(order) else p for p in raw]


def _keras3_order(name: str, kind: str, config: _KerasConfig, count: int) -> list[str] | None:
    if kind in ("conv", "transposed", "dense"):
        return ["kernel", "bias"]
    if kind == "depthwise":
        return ["depthwise_kernel", "bias"]
    if kind in ("batchnorm", "norm"):
        settings = config.settings_of(name)
        scale, center = settings.get("scale", None), settings.get("center", None)
        if scale is None:
            affine = {4: True, 2: False}.get(count) if kind == "batchnorm" else {2: True}.get(count)
            if affine is None:
                return None
            scale = center = affine
        moving = ["moving_mean", "moving_variance"] if kind == "batchnorm" else []
        return [*(["gamma"] if scale else []), *(["beta"] if center else []), *moving]
    if kind == "prelu":
        return ["alpha"]
    if kind == "embedding":
        return ["embeddings"]
    return None


def _check_known_params(name: str, raw: list[str], group: list[Entry], kind: str) -> None:
    known = {k for k, _ in PARAMS.get(kind, ())}
    for param, entry in zip(raw, group):
        if param not in known and len(entry.shape) >= 2:
            raise OperationError(
                f"no rule maps {kind} parameter {param!r} of layer {name!r} {list(entry.shape)} to PyTorch",
                entry.name,
                "drop it first, or convert the layer by hand",
            )
    if kind == "batchnorm" and ("gamma" in raw) != ("beta" in raw):
        raise OperationError(
            f"BatchNorm {name!r} has only one of gamma and beta; torch BatchNorm has both or neither",
            name, "build the Keras layer with center and scale both on or both off",
        )


def _torch_layer(name, group, keras_name, memory, config, transposed, depthwise) -> _Layer:
    params = [_param_of(e.name, ".") for e in group]
    remembered = [memory.get(e.name) for e in group]
    kind = next((m[1] for m in remembered if m), None)
    if kind is None:
        kind = _torch_kind(name, keras_name, params, group, config, transposed, depthwise)
    return _Layer(name, kind, tuple(group), tuple(params))


def _torch_kind(name, keras_name, params, group, config, transposed, depthwise) -> str:
    if _matches(name, transposed):
        return "transposed"
    if _matches(name, depthwise):
        return "depthwise"
    class_name = config.class_of(keras_name) or config.class_of(name)
    if class_name in KERAS_CLASSES:
        return KERAS_CLASSES[class_name]
    if "running_mean" in params:
        return "batchnorm"
    ranks = dict(zip(params, (len(e.shape) for e in group)))
    weight = ranks.get("weight")
    short = keras_name.rsplit("/", 1)[-1]
    named = next((kind for glob, kind in KERAS_AUTO_NAMES if fnmatch.fnmatchcase(short, glob)), None)
    if named in ("depthwise", "transposed") and weight is not None and 3 <= weight <= 5:
        return named  # the rules gave it Keras's automatic name for that class
    if named == "prelu" and weight == 1 and "bias" not in params:
        return named
    if weight == 2:
        return "dense"
    if weight is not None and 3 <= weight <= 5:
        return "conv"
    if weight == 1 and "bias" not in params and any(fnmatch.fnmatchcase(name.lower(), g) for g, _ in TORCH_AUTO_NAMES):
        return "prelu"
    if weight in (None, 0, 1) and all(r <= 1 for r in ranks.values()):
        return "norm" if weight is not None else "other"
    raise OperationError(
        f"cannot tell what kind of module {name!r} is (tensors {', '.join(e.describe() for e in group)})",
        name,
        "drop it first, or convert the module by hand",
    )


def _kernel_of(layer: _Layer) -> Entry | None:
    for entry, param in zip(layer.entries, layer.params):
        if param in ("kernel", "depthwise_kernel", "weight") and len(entry.shape) >= 2 and layer.kind in (*_KERNELS, "dense"):
            return entry
    return None


def _out_channels(layer: _Layer, side: str) -> int:
    shape = _kernel_of(layer).shape
    if side == "torch":
        return shape[1] if layer.kind == "transposed" else shape[0]
    if layer.kind == "depthwise":
        return shape[-2] * shape[-1]
    return shape[-2] if layer.kind == "transposed" else shape[-1]


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _refused(layer: str, class_name: str, why: str) -> OperationError:
    return OperationError(
        f"layer {layer!r} is a Keras {class_name}, which has no PyTorch layout we can map: {why}",
        layer,
        "drop it first, or convert it by hand",
    )
