"""The first Dense after a Flatten: which Dense layers read a flattened feature map, what feeds
them (a Permute before the Flatten changes the order), and the checks on --flatten-shape.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import OperationError
from ..report import Report
from .layout_graph import _inbound, _KerasConfig
from .layout_kinds import _kernel_of, _Layer, _matches, _out_channels
from .layout_names import _param_of
from .layout_tables import (
    _KERNELS,
    _PER_CHANNEL,
    KERAS_CLASSES,
    KERAS_PERMUTE_NAMES,
    NO_REORDER,
)


def _check_flatten_shapes(shapes: dict, dense: set[str]) -> None:
    for layer in shapes:
        if layer not in dense:
            raise OperationError(
                f"--flatten-shape names {layer!r}, which is not a Dense layer of this checkpoint",
                "--flatten-shape",
                f"use one of: {', '.join(sorted(dense)) or '(no Dense layers)'}",
            )


def _flatten_fed(layers: list[_Layer], config: _KerasConfig, side: str, memory: dict | None = None) -> dict[str, str]:
    """Dense layers (source names) whose input is a Flattened feature map -> why we think so."""
    if memory and any(e.name in memory for layer in layers for e in layer.entries):
        return {}  # the Keras-to-torch conversion recorded the shapes it used
    if config.layers:
        names = config.flatten_fed_dense()
        return {layer.name: "the model_config shows a Flatten feeding it" for layer in layers if layer.kind == "dense" and config.key(layer.name) in names}
    if side == "keras" and any(_param_of(e.name, "/").isdigit() for layer in layers for e in layer.entries):
        return _flatten_fed_unordered(layers)
    found: dict[str, str] = {}
    previous: _Layer | None = None
    for layer in layers:
        kernel = _kernel_of(layer)
        if kernel is None:
            continue
        if layer.kind == "dense" and previous is not None:
            channels = _out_channels(previous, side)
            inputs = kernel.shape[0] if side == "keras" else kernel.shape[1]
            if channels and inputs % channels == 0 and inputs // channels > 1:
                found[layer.name] = f"its {inputs} inputs are a multiple of the {channels} channels of conv {previous.name!r}"
        if layer.kind not in _PER_CHANNEL:  # a PReLU or BatchNorm after the conv keeps its map
            previous = layer if layer.kind in _KERNELS else None
    return found


def _flatten_fed_unordered(layers: list[_Layer]) -> dict[str, str]:
    """Keras 3 files list layers alphabetically, so "directly after" means nothing: a Dense whose
    inputs no other Dense produces, and are a multiple > 1 of some conv's channels, is suspect."""
    dense = [layer for layer in layers if layer.kind == "dense" and _kernel_of(layer) is not None]
    produced = {_kernel_of(layer).shape[1] for layer in dense}
    convs = [layer for layer in layers if layer.kind in _KERNELS and _kernel_of(layer) is not None]
    found: dict[str, str] = {}
    for layer in dense:
        inputs = _kernel_of(layer).shape[0]
        if inputs in produced:
            continue
        for conv in convs:
            channels = _out_channels(conv, "keras")
            if channels and inputs % channels == 0 and inputs // channels > 1:
                found[layer.name] = f"its {inputs} inputs are a multiple of the {channels} channels of conv {conv.name!r}"
                break
    return found


@dataclass(frozen=True)
class _Feed:
    """What feeds a Dense, walking back to the conv before it: the Permutes before a Flatten."""

    path: tuple[str, ...] = ()  # layer names from the conv (or where the walk stopped) to the Dense
    permutes: tuple[str, ...] = ()  # Permute layers on the way that come before a Flatten
    conv: _Layer | None = None


_LAYER_NAMES = "keras.layer_names"  # format_state: a Keras 2 file's layer order, weightless layers included


def _before_flatten(layers: list[_Layer], config: _KerasConfig, state: Mapping[str, object]) -> dict[str, _Feed]:
    """Each Dense's feed: from the model_config's graph, else the file's layer order, else tensor order."""
    dense = [layer for layer in layers if layer.kind == "dense"]
    if config.layers:
        by_key = {config.key(layer.name): layer for layer in layers}
        return {d.name: _feed_from_config(d, config, by_key) for d in dense}
    try:
        order = [str(n) for n in json.loads(str(state.get(_LAYER_NAMES, "[]")))]
    except ValueError:
        order = []
    by_name = {layer.name: layer for layer in layers}
    order = order if all(d.name in order for d in dense) else list(by_name)
    return {d.name: _feed_from_order(d, order, by_name) for d in dense}


def _feed_from_config(dense: _Layer, config: _KerasConfig, by_key: dict[str, _Layer]) -> _Feed:
    names = config._by_name()
    current, path, permutes, flattened = names.get(config.key(dense.name)), [dense.name], [], False
    for _ in range(len(names)):
        inputs = (_inbound(current) or config._previous(current)) if current else set()
        if len(inputs) != 1:
            break
        (source,) = inputs
        current = names.get(source, {})
        class_name = current.get("class_name")
        path.insert(0, source)
        flattened |= class_name == "Flatten"
        if class_name == "Permute" and flattened:
            permutes.append(source)
        kind = KERAS_CLASSES.get(class_name or "")
        if kind in _KERNELS or kind == "dense":
            return _Feed(tuple(path), tuple(permutes), by_key.get(source) if kind in _KERNELS else None)
    return _Feed(tuple(path), tuple(permutes))


def _feed_from_order(dense: _Layer, order: list[str], by_name: dict[str, _Layer]) -> _Feed:
    path, permutes, flattened = [dense.name], [], False
    for name in reversed(order[: order.index(dense.name)]):
        path.insert(0, name)
        layer = by_name.get(name)
        if layer is not None and layer.kind in (*_KERNELS, "dense"):
            return _Feed(tuple(path), tuple(permutes), layer if layer.kind in _KERNELS else None)
        short = name.rsplit("/", 1)[-1].lower()
        flattened |= fnmatch.fnmatchcase(short, "flatten*")
        if layer is None and flattened and _matches(short, KERAS_PERMUTE_NAMES):
            permutes.append(name)
    return _Feed(tuple(path), tuple(permutes))


def _check_flatten_input(layer: _Layer, shapes: dict, feed: _Feed | None, report: Report) -> None:
    """Refuse a Permute before the Flatten unless told `none`, and a given C that is not the conv's."""
    if feed is None:
        return
    dense = layer.name
    if feed.permutes:
        if dense not in shapes or shapes[dense] is not None:
            raise OperationError(
                f"Dense layer {dense!r} reads a Flatten of Permute layer {feed.permutes[0]!r} ({' -> '.join(feed.path)}): "
                "its inputs are not in NHWC order, so the NHWC->NCHW reorder would be wrong",
                feed.permutes[0],
                f"if the torch model flattens in the order the Permute makes (as MTCNN ports do), pass --flatten-shape {dense}={NO_REORDER}; otherwise convert this layer by hand",
            )
        report.notes.append(f"{dense}: inputs kept in the order Permute {feed.permutes[0]!r} makes them (--flatten-shape {dense}={NO_REORDER})")
        return
    hwc = shapes.get(dense)
    if hwc is not None and feed.conv is not None:
        _check_channels(layer, "keras", hwc, feed.conv.name, _out_channels(feed.conv, "keras"))


def _check_channels(layer: _Layer, side: str, hwc: tuple[int, int, int], conv: str, channels: int) -> None:
    """C of a given flatten shape must be the conv's channels (a wrong H,W,C whose product is
    wrong too is left to the kernel's own check, which names both counts)."""
    h, w, c = hwc
    kernel = _kernel_of(layer)
    inputs = None if kernel is None else kernel.shape[0 if side == "keras" else 1]
    dense = layer.name
    if c != channels and inputs == h * w * c:
        raise OperationError(
            f"--flatten-shape {dense}={h},{w},{c} gives C={c}, but conv {conv!r} before it has {channels} channels",
            "--flatten-shape",
            f"give the Flatten's input shape in Keras order, H,W,{channels}",
        )


def _missing_flatten(layer: str, why: str) -> OperationError:
    return OperationError(
        f"Dense layer {layer!r} follows a Flatten ({why}); its inputs must be reordered from NHWC to NCHW",
        layer,
        f"give the Flatten's input shape in Keras order: --flatten-shape {layer}=H,W,C",
    )
