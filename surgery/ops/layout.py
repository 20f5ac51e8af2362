"""Convert weights between Keras and PyTorch layouts: axes, names, and the odd extra tensor.

Keras puts a weight's output axis last and names tensors `layer/param`; PyTorch puts it
first and names them `module.path.param`. `convert_layout` moves every kernel's axes and
renames every tensor so the other framework's loader accepts the result as it is:

=====================  ==============================  =================================
layer                  Keras                           PyTorch
=====================  ==============================  =================================
Conv1D/2D/3D           kernel (w, h.., in, out)        weight (out, in, w, h..)
Conv*Transpose         kernel (w, h.., out, in)        weight (in, out, w, h..)
DepthwiseConv1D/2D     (depthwise_)kernel (h, w, in,   Conv2d(groups=in) weight
                       mult)                           (in*mult, 1, h, w); channel c*mult+m
Dense                  kernel (in, out)                Linear weight (out, in)
first Dense after a    kernel (H*W*C, out), inputs     weight (out, C*H*W), inputs in
Flatten                in NHWC order                   NCHW order (needs flatten_shapes)
BatchNormalization     gamma, beta, moving_mean,       weight, bias, running_mean,
                       moving_variance                 running_var, num_batches_tracked
PReLU                  alpha (1, .., 1, C)             weight (C,) or (1,)
LayerNormalization     gamma, beta                     weight, bias
Embedding              embeddings (n, d)               weight (n, d)
=====================  ==============================  =================================

PReLU: only a slope per channel (Keras `shared_axes` over every axis but the last) or one
shared slope maps to torch.nn.PReLU; a slope per position is refused. Going to Keras, a
(C,) weight becomes (1, 1, C), the shape for image inputs, unless the tree remembers the
Keras shape. BatchNorm eps is not a weight: Keras uses 1e-3 and torch 1e-5, so build the
target layer with the source's eps (the report says so).

Which kind a layer is comes, in order, from the `transposed`/`depthwise` globs, the Keras
`model_config` in the tree's metadata (class name per layer), parameter names that decide
it (`depthwise_kernel`, `moving_mean`, `alpha`, ...), Keras's automatic layer names
(`depthwise_conv2d_3`, `conv2d_transpose`; table `KERAS_AUTO_NAMES`), and last the kernel's
rank. A Keras-to-torch result remembers each tensor's Keras name, kind and shape in the
metadata key `surgery.layout`, so converting it back restores the Keras tree exactly.

This module runs the conversion; its parts live beside it: `layout_tables` (the model
knowledge), `layout_kinds` (each layer's kind), `layout_graph` (the Keras model_config),
`layout_flatten` (the first Dense after a Flatten), `layout_names` (names and --rules) and
`layout_tensors` (each tensor's axes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import OperationError
from ..provenance import record
from ..report import Report
from ..tree import KERAS, TORCH, UNKNOWN, Entry, Tree
from .layout_flatten import (
    _before_flatten,
    _check_channels,
    _check_flatten_input,
    _check_flatten_shapes,
    _Feed,
    _flatten_fed,
    _missing_flatten,
)
from .layout_graph import _KerasConfig
from .layout_kinds import _keras_layer, _kernel_of, _Layer, _out_channels, _torch_layer
from .layout_names import (
    _apply_rules,
    _compile_rules,
    _groups,
    _keras_layer_name,
    _keras_name,
    _natural,
    _torch_param,
    parse_rules,
)
from .layout_tables import _KERNELS, KERAS_AUTO_NAMES, KERAS_CLASSES, NO_REORDER, PARAMS
from .layout_tensors import (
    _keras_entry_to_torch,
    _torch_entry_to_keras,
    _with_keras_attrs,
)

__all__ = [
    "convert_layout",
    "parse_flatten_shape",
    "parse_rules",
    "LAYOUTS",
    "KERAS_CLASSES",
    "KERAS_AUTO_NAMES",
    "PARAMS",
    "MAP_KEY",
]

LAYOUTS = ("torch", "keras")
MAP_KEY = "surgery.layout"  # metadata: what a Keras-to-torch conversion needs to go back exactly

_BN_EPS_NOTE = "BatchNorm eps is not stored in weights: Keras defaults to 1e-3, torch to 1e-5; build the {side} layers with eps={eps}"


# -- public API -----------------------------------------------------------------------


def convert_layout(
    tree: Tree,
    to: str,
    *,
    flatten_shapes: Mapping[str, tuple[int, int, int]] | None = None,
    rules: Sequence[tuple[str, str]] | None = None,
    transposed: Sequence[str] = (),
    depthwise: Sequence[str] = (),
    source: str | None = None,
) -> tuple[Tree, Report]:
    """Move every tensor to the other framework's axes and names (lazily).

    Args:
        tree: a tree in Keras or PyTorch layout.
        to: "torch" or "keras".
        flatten_shapes: Keras layer name of the first Dense after a Flatten -> (H, W, C) of the
            Flatten's input, in Keras order, in both directions; or None: that Dense needs no
            reorder (the answer for a Permute between the conv and the Flatten, which is refused
            otherwise).
        rules: (regex, replacement) pairs applied in order to every name after the default
            mapping, e.g. ("^conv2d_1\\\\.", "features.0.").
        transposed: globs over layer names (of `tree`) that are transposed convolutions.
        depthwise: globs over layer names (of `tree`) that are depthwise convolutions.
        source: "keras" or "torch", for a tree whose file does not say its layout.

    Returns:
        The new tree (convention TORCH or KERAS; format "" as its layout no longer matches
        the file it came from) and a report of what was transposed, renamed, added, dropped.

    Raises:
        OperationError: unknown layout, unknown source layout, a layer that cannot be mapped,
            a Flatten-fed Dense without its shape, a bad rule, or two names colliding.

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("fc/kernel", np.zeros((3, 2), "float32"))], convention=KERAS)
        >>> new, report = convert_layout(t, "torch")
        >>> new["fc.weight"].shape, report.names("transposed")
        ((2, 3), ['fc.weight'])
    """
    target = _target(to)
    start = _source(tree, source)
    report = Report("convert-layout")
    report.facts.update({"from": start.name, "to": target.name})
    if tree.convention == UNKNOWN and source is None:
        from ..conventions import infer_convention

        report.notes.append(f"{start} layout inferred: {infer_convention(tree.keys()).why}; pass --from-layout to override")
    if start == target:
        report.notes.append(f"already in {target.name} layout; nothing changed")
        return tree, report
    compiled = _compile_rules(rules or ())
    shapes = {k: None if v is None else tuple(int(n) for n in v) for k, v in (flatten_shapes or {}).items()}
    if target == TORCH:
        entries, memory = _to_torch(tree, report, shapes, compiled, transposed, depthwise)
    else:
        entries, memory = _to_keras(tree, report, shapes, compiled, transposed, depthwise)
    new = _assemble(tree, entries, target, memory)
    arguments = {"to": target.name, "flatten_shapes": {k: None if v is None else list(v) for k, v in shapes.items()} or None,
                 "rules": [list(r) for r in rules] if rules else None, "transposed": list(transposed) or None,
                 "depthwise": list(depthwise) or None, "source": source}
    return record(new, "convert-layout", **arguments), report


def parse_flatten_shape(text: str) -> tuple[str, tuple[int, int, int] | None]:
    """`dense=7,7,64` -> ("dense", (7, 7, 64)): a Keras Dense layer and its Flatten's input H,W,C;
    `fc4=none` -> ("fc4", None): that Dense's inputs need no reorder (a Permute before its Flatten
    already puts them in the torch model's order).

    Raises:
        OperationError: not LAYER=H,W,C with three non-negative integers, nor LAYER=none.
    """
    layer, _, dims = text.rpartition("=")
    if layer and dims.strip().lower() == NO_REORDER:
        return layer, None
    parts = dims.split(",")
    if not layer or len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise OperationError(
            f"--flatten-shape {text!r} is not LAYER=H,W,C or LAYER=none", "--flatten-shape", "write e.g. --flatten-shape dense=7,7,64"
        )
    h, w, c = (int(p) for p in parts)
    return layer, (h, w, c)


# -- steps ------------------------------------------------------------------------------


def _target(to: str):
    if to not in LAYOUTS:
        raise OperationError(f"unknown layout {to!r}", "--layout", "use torch or keras")
    return TORCH if to == "torch" else KERAS


def _source(tree: Tree, source: str | None):
    if source is not None and source not in LAYOUTS:
        raise OperationError(f"unknown layout {source!r}", "--from-layout", "use torch or keras")
    given = None if source is None else (TORCH if source == "torch" else KERAS)
    if tree.convention == UNKNOWN:
        if given is None:
            from ..conventions import infer_convention

            inferred = infer_convention(tree.keys())
            if inferred.convention == UNKNOWN:
                raise OperationError(
                    f"the checkpoint does not say whether its weights are in Keras or PyTorch layout, and {inferred.why}",
                    "--layout",
                    "say which with --from-layout keras or --from-layout torch",
                )
            return inferred.convention
        return given
    if given is not None and given != tree.convention:
        raise OperationError(
            f"--from-layout {source} contradicts the checkpoint, which is in {tree.convention} layout",
            "--from-layout",
            "drop --from-layout",
        )
    return tree.convention


def _assemble(tree: Tree, entries: list[Entry], target, memory: dict | None) -> Tree:
    seen: dict[str, Entry] = {}
    for e in entries:
        if e.name in seen:
            raise OperationError(
                f"two tensors map to the name {e.name!r}", e.name, "change the --rules so every tensor keeps its own name"
            )
        seen[e.name] = e
    metadata = {k: v for k, v in tree.metadata.items() if k != MAP_KEY}
    if memory:
        metadata[MAP_KEY] = json.dumps(memory, ensure_ascii=False)
    # format "": the new layout no longer matches the file the tree was read from.
    return Tree(entries, format="", convention=target, metadata=metadata, format_state=tree.format_state, inputs=tree.inputs)


# -- Keras -> torch -----------------------------------------------------------------------


def _to_torch(tree, report, shapes, rules, transposed, depthwise) -> tuple[list[Entry], dict]:
    config = _KerasConfig.from_metadata(tree.metadata)
    layers = [_keras_layer(name, group, config, transposed, depthwise) for name, group in _groups(tree, "/")]
    _check_flatten_shapes(shapes, {layer.name for layer in layers if layer.kind == "dense"})
    flattened = _flatten_fed(layers, config, "keras")
    before = _before_flatten(layers, config, tree.format_state)
    out: list[Entry] = []
    memory: dict[str, list] = {}
    batchnorms = 0
    for layer in layers:
        hwc = shapes.get(layer.name)
        _check_flatten_input(layer, shapes, before.get(layer.name), report)
        if layer.name in flattened and layer.name not in shapes and not before.get(layer.name, _Feed()).permutes:
            raise _missing_flatten(layer.name, flattened[layer.name])
        module = layer.name.replace("/", ".")
        for entry, param in zip(layer.entries, layer.params):
            torch_param = _torch_param(layer, param)
            name = _apply_rules(f"{module}.{torch_param}" if module else torch_param, rules)
            new = _keras_entry_to_torch(entry, name, layer, param, hwc, report)
            out.append(new)
            memory[name] = [entry.name, layer.kind, list(entry.shape), list(hwc) if hwc and param == "kernel" else None]
        if layer.kind == "batchnorm":
            batchnorms += 1
            out.append(_num_batches_tracked(layer, module, rules, report))
    if batchnorms:
        report.notes.append(_BN_EPS_NOTE.format(side="torch", eps="1e-3"))
    report.facts["layers"] = {layer.name: layer.kind for layer in layers}
    return out, {"keras": memory}


def _num_batches_tracked(layer: _Layer, module: str, rules, report: Report) -> Entry:
    name = _apply_rules(f"{module}.num_batches_tracked", rules)
    entry = Entry.from_array(name, np.zeros((), np.int64))
    report.add("added", name, "", "[] int64", "BatchNorm step counter, 0, so load_state_dict(strict=True) accepts the state dict")
    return entry


# -- torch -> Keras -------------------------------------------------------------------------


def _to_keras(tree, report, shapes, rules, transposed, depthwise) -> tuple[list[Entry], None]:
    memory = _memory(tree)
    config = _KerasConfig.from_metadata(tree.metadata)
    groups = list(_groups(tree, "."))
    if tree.format == "safetensors" and len(groups) > 1:
        # safetensors files keep no module order (they sort by dtype, then name), but Keras's
        # load_weights matches layers by order: natural name order is right for Sequential-style names.
        groups.sort(key=lambda pair: _natural(pair[0]))
        report.notes.append("safetensors keeps no module order: layers are written in natural name order (features.2 before features.10); if the Keras model's order differs, load with by_name=True")
    keras_names = {name: _keras_layer_name(name, group, memory, rules) for name, group in groups}
    layers = [_torch_layer(name, group, keras_names[name], memory, config, transposed, depthwise) for name, group in groups]
    dense = {layer.name for layer in layers if layer.kind == "dense"}
    _check_flatten_shapes(shapes, dense | {keras_names[n] for n in dense})
    flattened = _flatten_fed(layers, config, "torch", memory)
    out: list[Entry] = []
    batchnorms, channels, conv = 0, None, None
    for layer in layers:
        keras_layer = keras_names[layer.name]
        hwc = _flatten_shape_for(layer, keras_layer, shapes, memory)
        if hwc is not None and conv is not None and (keras_layer in shapes or layer.name in shapes):
            _check_channels(layer, "torch", hwc, conv.name, _out_channels(conv, "torch"))
        if layer.name in flattened and hwc is None and not (keras_layer in shapes or layer.name in shapes):
            raise _missing_flatten(keras_layer, flattened[layer.name])
        batchnorms += layer.kind == "batchnorm"
        hint = _depth_multiplier(layer, keras_layer, config, channels)
        out.extend(_torch_layer_to_keras(layer, keras_layer, memory, rules, hwc, hint, report))
        if _kernel_of(layer) is not None:
            channels = _out_channels(layer, "torch")
            conv = layer if layer.kind in _KERNELS else None
    if batchnorms:
        report.notes.append(_BN_EPS_NOTE.format(side="Keras", eps="1e-5"))
    report.facts["layers"] = {layer.name: layer.kind for layer in layers}
    return out, None


def _memory(tree: Tree) -> dict[str, list]:
    try:
        memory = json.loads(tree.metadata.get(MAP_KEY, "{}")).get("keras", {})
    except (ValueError, AttributeError):
        return {}
    return memory if isinstance(memory, dict) else {}


def _depth_multiplier(layer: _Layer, keras_layer: str, config: _KerasConfig, channels: int | None) -> int | None:
    """A torch depthwise weight (in*mult, 1, h, w) does not say `mult`: the Keras config does, or
    else the previous layer's output channels (`in`) do."""
    if layer.kind != "depthwise" or _kernel_of(layer) is None:
        return None
    configured = config.settings_of(keras_layer).get("depth_multiplier")
    if isinstance(configured, int) and configured > 0:
        return configured
    out = _kernel_of(layer).shape[0]
    return out // channels if channels and out % channels == 0 else None


def _flatten_shape_for(layer: _Layer, keras_layer: str, shapes: dict, memory: dict):
    if layer.kind != "dense":
        return None
    for key in (keras_layer, layer.name):
        if key in shapes:
            return shapes[key]
    return next((tuple(memory[e.name][3]) for e in layer.entries if e.name in memory and memory[e.name][3]), None)


def _torch_layer_to_keras(layer: _Layer, keras_layer: str, memory, rules, hwc, mult, report: Report) -> list[Entry]:
    converted: list[tuple[int, Entry]] = []
    order = [k for k, _ in PARAMS.get(layer.kind, ())]
    for entry, param in zip(layer.entries, layer.params):
        if layer.kind == "batchnorm" and param == "num_batches_tracked":
            report.add("dropped", entry.name, entry.describe(), "", "Keras BatchNormalization has no step counter")
            continue
        remembered = memory.get(entry.name)
        keras_param, name = _keras_name(layer, keras_layer, param, remembered, rules)
        new = _torch_entry_to_keras(entry, name, layer, param, remembered, hwc, mult, report)
        rank = order.index(keras_param) if keras_param in order else len(order)
        converted.append((rank, _with_keras_attrs(new, name)))
    converted.sort(key=lambda pair: pair[0])  # stable: Keras's weight order within the layer
    return [e for _, e in converted]
