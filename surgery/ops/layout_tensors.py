"""One tensor across a layout conversion: the axis move (transpose, depthwise regrouping, the
NHWC<->NCHW reorder after a Flatten, PReLU reshapes), computed lazily when the tensor is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..errors import OperationError
from ..report import Report
from ..tree import Entry, LazySource
from .layout_kinds import _Layer
from .layout_tables import _KERNELS


def _keras_entry_to_torch(entry: Entry, name: str, layer: _Layer, param: str, hwc, report: Report) -> Entry:
    kind, rank = layer.kind, len(entry.shape)
    if param in ("kernel", "depthwise_kernel") and kind in _KERNELS and 3 <= rank <= 5:
        if kind == "depthwise":
            return _changed(entry, name, report, _depthwise_to_torch(entry.shape), "depthwise: (h, w, in, mult) -> (in*mult, 1, h, w)")
        perm = (rank - 1, rank - 2, *range(rank - 2))
        return _changed(entry, name, report, _transpose(entry.shape, perm), f"{kind}: transpose{perm}")
    if param == "kernel" and kind == "dense" and rank == 2:
        if hwc is not None:
            return _changed(entry, name, report, _flatten_to_torch(entry, hwc), f"dense after Flatten {tuple(hwc)}: inputs NHWC -> NCHW, then transpose(1, 0)")
        return _changed(entry, name, report, _transpose(entry.shape, (1, 0)), "dense: transpose(1, 0)")
    if param == "alpha" and kind == "prelu":
        return _changed(entry, name, report, _prelu_to_torch(entry), "prelu: (1, .., 1, C) -> (C,)")
    if rank >= 2 and kind not in ("embedding",):
        raise OperationError(
            f"no rule maps {kind} parameter {param!r} {list(entry.shape)} of layer {layer.name!r} to PyTorch",
            entry.name, "drop it first, or convert the layer by hand",
        )
    return _renamed(entry, name, report)


def _torch_entry_to_keras(entry: Entry, name: str, layer: _Layer, param: str, remembered, hwc, mult, report) -> Entry:
    kind, rank = layer.kind, len(entry.shape)
    shape = tuple(remembered[2]) if remembered else None
    if param == "weight" and kind in _KERNELS and 3 <= rank <= 5:
        if kind == "depthwise":
            return _changed(entry, name, report, _depthwise_to_keras(entry, shape, mult, report), "depthwise: (in*mult, 1, h, w) -> (h, w, in, mult)")
        perm = (*range(2, rank), 1, 0)
        return _changed(entry, name, report, _transpose(entry.shape, perm), f"{kind}: transpose{perm}")
    if param == "weight" and kind == "dense" and rank == 2:
        if hwc is not None:
            return _changed(entry, name, report, _flatten_to_keras(entry, hwc), f"dense after Flatten {tuple(hwc)}: inputs NCHW -> NHWC, then transpose(1, 0)")
        return _changed(entry, name, report, _transpose(entry.shape, (1, 0)), "dense: transpose(1, 0)")
    if param == "weight" and kind == "prelu":
        return _changed(entry, name, report, _prelu_to_keras(entry, shape, report), "prelu: (C,) -> (1, .., 1, C)")
    if rank >= 2 and kind != "embedding":
        raise OperationError(
            f"no rule maps {kind} parameter {param!r} {list(entry.shape)} of module {layer.name!r} to Keras",
            entry.name, "drop it first, or convert the module by hand",
        )
    return _renamed(entry, name, report)


@dataclass(frozen=True)
class _Plan:
    """A new shape and a function from the source array to the new array."""

    shape: tuple[int, ...]
    apply: Callable[[np.ndarray], np.ndarray]


def _transpose(shape: tuple[int, ...], perm: tuple[int, ...]) -> _Plan:
    return _Plan(tuple(shape[p] for p in perm), lambda a: np.ascontiguousarray(a.transpose(perm)))


def _depthwise_to_torch(shape: tuple[int, ...]) -> _Plan:
    *spatial, channels, mult = shape
    r = len(spatial)

    def apply(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(*spatial, channels * mult)  # channel c*mult + m, as torch groups order it
        return np.ascontiguousarray(flat.transpose(r, *range(r)).reshape(channels * mult, 1, *spatial))

    return _Plan((channels * mult, 1, *spatial), apply)


def _depthwise_to_keras(entry: Entry, keras_shape, mult_hint: int | None, report: Report) -> _Plan:
    out, one, *spatial = entry.shape
    if one != 1:
        raise OperationError(
            f"depthwise weight {entry.name!r} {list(entry.shape)} has {one} input channels per group, not 1",
            entry.name, "only torch convs with groups == in_channels map to Keras DepthwiseConv",
        )
    if keras_shape and len(keras_shape) == len(entry.shape) and keras_shape[-2] * keras_shape[-1] == out:
        channels, mult = keras_shape[-2], keras_shape[-1]
    elif mult_hint and out % mult_hint == 0:
        channels, mult = out // mult_hint, mult_hint
        report.notes.append(f"{entry.name}: depth_multiplier {mult} ({channels} input channels, from the layer before)")
    else:
        channels, mult = out, 1
        report.notes.append(f"{entry.name}: depth_multiplier 1 assumed ({out} channels); a larger one needs the Keras shape")
    r = len(spatial)

    def apply(a: np.ndarray) -> np.ndarray:
        moved = a.reshape(out, *spatial).transpose(*range(1, r + 1), 0)
        return np.ascontiguousarray(moved.reshape(*spatial, channels, mult))

    return _Plan((*spatial, channels, mult), apply)


def _flatten_check(entry: Entry, hwc: tuple[int, int, int], inputs: int) -> None:
    if math.prod(hwc) != inputs:
        h, w, c = hwc
        raise OperationError(
            f"--flatten-shape {h},{w},{c} gives {h * w * c} inputs but kernel {entry.name!r} {list(entry.shape)} has {inputs}",
            entry.name,
            "give the shape of the Flatten's input, H,W,C in Keras order (model.summary() shows it)",
        )


def _flatten_to_torch(entry: Entry, hwc: tuple[int, int, int]) -> _Plan:
    inputs, out = entry.shape
    _flatten_check(entry, hwc, inputs)
    h, w, c = hwc
    return _Plan((out, inputs), lambda a: np.ascontiguousarray(a.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, inputs)))


def _flatten_to_keras(entry: Entry, hwc: tuple[int, int, int]) -> _Plan:
    out, inputs = entry.shape
    _flatten_check(entry, hwc, inputs)
    h, w, c = hwc
    return _Plan((inputs, out), lambda a: np.ascontiguousarray(a.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(inputs, out)))


def _prelu_to_torch(entry: Entry) -> _Plan:
    shape = entry.shape
    if any(n != 1 for n in shape[:-1]):
        raise OperationError(
            f"PReLU alpha {entry.name!r} {list(shape)} holds a slope per position; torch.nn.PReLU holds one per channel",
            entry.name,
            "build the Keras PReLU with shared_axes over every axis but the channels (e.g. shared_axes=[1, 2])",
        )
    n = shape[-1] if shape else 1
    return _Plan((n,), lambda a: np.ascontiguousarray(a.reshape(n)))


def _prelu_to_keras(entry: Entry, keras_shape, report: Report) -> _Plan:
    (n,) = entry.shape
    if keras_shape and math.prod(keras_shape) == n and all(k == 1 for k in keras_shape[:-1]):
        shape = tuple(keras_shape)
    else:
        shape = (1, 1, n)
        report.notes.append(f"{entry.name}: PReLU slopes given Keras shape (1, 1, {n}), for image inputs with shared_axes=[1, 2]")
    return _Plan(shape, lambda a: np.ascontiguousarray(a.reshape(shape)))


def _changed(entry: Entry, name: str, report: Report, plan: _Plan, detail: str) -> Entry:
    if dtypes.get(entry.dtype).packed:
        raise OperationError(
            f"tensor {entry.name!r} is packed {entry.dtype}; its axes cannot be moved", entry.name, "convert it to float32 first"
        )

    def compute() -> np.ndarray:
        return plan.apply(entry.read())

    if name != entry.name:
        report.add("renamed", entry.name, entry.name, name)
    report.add("transposed", name, str(list(entry.shape)), str(list(plan.shape)), detail)
    source = LazySource(compute, entry.source.paths())
    return Entry(name, plan.shape, entry.dtype, source, _plain_attrs(entry))


def _renamed(entry: Entry, name: str, report: Report) -> Entry:
    if name != entry.name:
        report.add("renamed", entry.name, entry.name, name)
    return Entry(name, entry.shape, entry.dtype, entry.source, _plain_attrs(entry))


def _plain_attrs(entry: Entry) -> dict:
    """Keras file positions no longer apply once a tensor moves; other attrs (HDF5 filters) stay."""
    return {k: v for k, v in entry.attrs.items() if not k.startswith("keras.")}


def _with_keras_attrs(entry: Entry, name: str) -> Entry:
    layer, _, param = name.rpartition("/")
    layer = layer or name
    attrs = {**entry.attrs, "keras.layer": layer, "keras.weight_name": f"{layer}/{param}:0"}
    return Entry(entry.name, entry.shape, entry.dtype, entry.source, attrs)
