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
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..errors import OperationError
from ..provenance import record
from ..report import Report
from ..tree import KERAS, TORCH, UNKNOWN, Entry, LazySource, Tree

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

# -- model knowledge, as data ---------------------------------------------------------

# Keras class_name (model_config) -> kind. Kinds decide the axes and the names.
KERAS_CLASSES: dict[str, str] = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D"), "conv"),
    **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D", "Deconvolution3D"), "transposed"),
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), "depthwise"),
    "Dense": "dense",
    **dict.fromkeys(("BatchNormalization", "SyncBatchNormalization"), "batchnorm"),
    "LayerNormalization": "norm",
    "PReLU": "prelu",
    "Embedding": "embedding",
    "Flatten": "flatten",
}
# Keras classes with no one-module torch equivalent: refused by name.
KERAS_REFUSED: dict[str, str] = {
    **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), "it is a depthwise and a pointwise conv; torch needs two modules"),
    **dict.fromkeys(("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "Bidirectional"), "recurrent weights are gated and ordered differently in torch"),
    **dict.fromkeys(("MultiHeadAttention", "EinsumDense"), "einsum weights have no fixed torch layout"),
}
# Layers a Flatten's output can pass through unchanged on its way to a Dense.
KERAS_PASS_THROUGH = frozenset(
    ("Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
)
# Keras's automatic layer names, for files without a model_config. First match wins.
KERAS_AUTO_NAMES: tuple[tuple[str, str], ...] = (
    ("depthwise_conv*", "depthwise"),
    ("conv*d_transpose*", "transposed"),
    ("p_re_lu*", "prelu"),
    ("batch_normalization*", "batchnorm"),
    ("layer_normalization*", "norm"),
    ("embedding*", "embedding"),
)
TORCH_AUTO_NAMES: tuple[tuple[str, str], ...] = (("*prelu*", "prelu"), ("*p_re_lu*", "prelu"))
# A Permute between the last conv and a Flatten changes the flatten order (MTCNN's R-Net and O-Net,
# ported from Caffe: conv3 -> prelu3 -> permute -> flatten3 -> fc4). Files without a model_config
# show it only by its name in layer_names: Keras's automatic name for the class.
KERAS_PERMUTE_NAMES = ("permute*",)
NO_REORDER = "none"  # --flatten-shape LAYER=none: this Dense's inputs are already in the torch order

# kind -> ((Keras param, torch param), ...) in Keras's own weight order. The first pair
# naming a torch param is the one used going back to Keras.
PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "conv": (("kernel", "weight"), ("bias", "bias")),
    "transposed": (("kernel", "weight"), ("bias", "bias")),
    "depthwise": (("depthwise_kernel", "weight"), ("kernel", "weight"), ("bias", "bias")),
    "dense": (("kernel", "weight"), ("bias", "bias")),
    "batchnorm": (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")),
    "norm": (("gamma", "weight"), ("beta", "bias")),
    "prelu": (("alpha", "weight"),),
    "embedding": (("embeddings", "weight"),),
}
# Parameter names that decide a Keras layer's kind by themselves.
KERAS_PARAM_KINDS: tuple[tuple[str, str], ...] = (
    ("moving_mean", "batchnorm"), ("depthwise_kernel", "depthwise"), ("alpha", "prelu"), ("embeddings", "embedding"), ("gamma", "norm"), ("beta", "norm"),
)
_KERNELS = ("conv", "transposed", "depthwise")
_PER_CHANNEL = ("prelu", "batchnorm")  # layers that keep a conv's feature map as it is
_BN_EPS_NOTE = "BatchNorm eps is not stored in weights: Keras defaults to 1e-3, torch to 1e-5; build the {side} layers with eps={eps}"


@dataclass(frozen=True)
class _Layer:
    """One source layer: its name, kind, and its entries with their canonical Keras params."""

    name: str
    kind: str
    entries: tuple[Entry, ...]
    params: tuple[str, ...]  # Keras-side param name per entry (torch name going the other way)


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


def parse_rules(text: str, kind: str, where: str = "--rules") -> list[tuple[str, str]]:
    """Rename rules from a JSON or TOML document: a list of [regex, replacement] pairs.

    JSON: ``[["^conv2d_1\\\\.", "features.0."], ...]`` or ``{"rules": [...]}``.
    TOML: ``rules = [["^conv2d_1\\\\.", "features.0."]]``.

    Raises:
        OperationError: the text does not parse, or is not a list of string pairs, or a
            pattern is not a regular expression.
    """
    try:
        document = _parse_document(text, kind)
    except ValueError as e:
        raise OperationError(f"the rules file is not valid {kind.upper()} ({e})", where, "fix the syntax") from e
    pairs = document.get("rules") if isinstance(document, dict) else document
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs
    ):
        raise OperationError(
            "the rules file does not hold a list of [regex, replacement] pairs", where,
            'write e.g. [["^conv2d_1\\\\.", "features.0."]] (JSON) or rules = [["^conv2d_1\\\\.", "features.0."]] (TOML)',
        )
    rules = [(p[0], p[1]) for p in pairs]
    _compile_rules(rules, where)
    return rules


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


def _parse_document(text: str, kind: str) -> object:
    if kind == "toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(str(e)) from e
    return json.loads(text)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern
    replacement: str


def _compile_rules(rules: Sequence[tuple[str, str]], where: str = "--rules") -> list[_Rule]:
    out = []
    for k, (pattern, replacement) in enumerate(rules, 1):
        try:
            compiled = re.compile(pattern)
            compiled.sub(replacement, "")  # a bad group reference in the replacement fails here
        except (re.error, IndexError) as e:
            raise OperationError(
                f"rule {k} ({pattern!r} -> {replacement!r}) is invalid: {e}", where,
                "rules are Python regular expressions; replacements may use \\1 or \\g<name>",
            ) from e
        out.append(_Rule(compiled, replacement))
    return out


def _apply_rules(name: str, rules: list[_Rule]) -> str:
    for rule in rules:
        name = rule.pattern.sub(rule.replacement, name)
    return name


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


def _torch_param(layer: _Layer, param: str) -> str:
    for keras, torch in PARAMS.get(layer.kind, ()):
        if keras == param:
            return torch
    return param


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


def _keras_layer_name(name: str, group: list[Entry], memory: dict, rules) -> str:
    remembered = next((memory[e.name][0] for e in group if e.name in memory), None)
    if remembered is not None:
        return _apply_rules(remembered, rules).rpartition("/")[0]
    probe = _apply_rules(f"{name}/x", rules)
    return probe.rpartition("/")[0] if "/" in probe else name


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


def _keras_name(layer: _Layer, keras_layer: str, param: str, remembered, rules) -> tuple[str, str]:
    if remembered:
        name = _apply_rules(remembered[0], rules)
        return _param_of(name, "/"), name
    keras_param = next((k for k, t in PARAMS.get(layer.kind, ()) if t == param), param)
    return keras_param, _apply_rules(f"{layer.name}/{keras_param}" if layer.name else keras_param, rules)


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


def _with_keras_attrs(entry: Entry, name: str) -> Entry:
    layer, _, param = name.rpartition("/")
    layer = layer or name
    attrs = {**entry.attrs, "keras.layer": layer, "keras.weight_name": f"{layer}/{param}:0"}
    return Entry(entry.name, entry.shape, entry.dtype, entry.source, attrs)


# -- the first Dense after a Flatten ------------------------------------------------------------


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


# -- the Keras model_config -------------------------------------------------------------------------


@dataclass(frozen=True)
class _KerasConfig:
    """Layer classes and connections from a full-model file's `model_config`, if it has one."""

    layers: tuple[dict, ...] = ()
    sequences: tuple[tuple[dict, ...], ...] = ()  # layer lists in order (Sequential models)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> _KerasConfig:
        try:
            root = json.loads(metadata.get("model_config", ""))
        except ValueError:
            return cls()
        found: list[dict] = []
        sequences: list[tuple[dict, ...]] = []
        _walk_config(root, found, sequences)
        return cls(tuple(found), tuple(sequences))

    def _by_name(self) -> dict[str, dict]:
        return {str(layer.get("config", {}).get("name", layer.get("name", ""))): layer for layer in self.layers}

    def key(self, layer: str) -> str:
        names = self._by_name()
        return layer if layer in names else layer.rsplit("/", 1)[-1]

    def class_of(self, layer: str) -> str | None:
        found = self._by_name().get(self.key(layer))
        return found.get("class_name") if found else None

    def settings_of(self, layer: str) -> dict:
        found = self._by_name().get(self.key(layer))
        return found.get("config", {}) if found else {}

    def flatten_fed_dense(self) -> set[str]:
        names = self._by_name()
        fed = set()
        for name, layer in names.items():
            if layer.get("class_name") != "Dense":
                continue
            for source in self._inputs(layer, names):
                if names.get(source, {}).get("class_name") == "Flatten":
                    fed.add(name)
        return fed

    def _inputs(self, layer: dict, names: dict[str, dict]) -> set[str]:
        """Names of the layers feeding `layer`, looking through Dropout-like layers."""
        direct = _inbound(layer) or self._previous(layer)
        out: set[str] = set()
        for name in direct:
            source = names.get(name, {})
            if source.get("class_name") in KERAS_PASS_THROUGH:
                out |= self._inputs(source, names)
            else:
                out.add(name)
        return out

    def _previous(self, layer: dict) -> set[str]:
        for sequence in self.sequences:
            for k, item in enumerate(sequence):
                if item is layer and k > 0:
                    return {str(sequence[k - 1].get("config", {}).get("name", ""))}
        return set()


def _walk_config(node: object, found: list[dict], sequences: list) -> None:
    if isinstance(node, dict):
        layers = node.get("config", {}).get("layers") if isinstance(node.get("config"), dict) else None
        if isinstance(node.get("config"), list):  # Keras 1-2 Sequential: config is the layer list
            layers = node["config"]
        if isinstance(layers, list):
            items = tuple(item for item in layers if isinstance(item, dict))
            if node.get("class_name") == "Sequential":
                sequences.append(items)
            for item in items:
                if "class_name" in item:
                    found.append(item)
                _walk_config(item, found, sequences)


def _inbound(layer: dict) -> set[str]:
    """Names in `inbound_nodes`: Keras 3 `keras_history` records, or Keras 2 [name, i, j, {}] lists."""
    out: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            history = node.get("keras_history")
            if isinstance(history, list) and history and isinstance(history[0], str):
                out.add(history[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if len(node) in (3, 4) and isinstance(node[0], str) and isinstance(node[1], int):
                out.add(node[0])
            else:
                for value in node:
                    walk(value)

    walk(layer.get("inbound_nodes", []))
    return out


# -- array steps (lazy) ---------------------------------------------------------------------------


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


# -- entries ----------------------------------------------------------------------------------------


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


# -- small helpers -----------------------------------------------------------------------------------


def _groups(tree: Tree, sep: str) -> Iterator[tuple[str, list[Entry]]]:
    """Entries grouped by layer (the name before the last `sep`), in first-seen order."""
    groups: dict[str, list[Entry]] = {}
    for entry in tree.values():
        groups.setdefault(entry.name.rpartition(sep)[0], []).append(entry)
    return iter(groups.items())


def _natural(name: str) -> list[tuple[int, int, str]]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _param_of(name: str, sep: str) -> str:
    return name.rpartition(sep)[2]


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _refused(layer: str, class_name: str, why: str) -> OperationError:
    return OperationError(
        f"layer {layer!r} is a Keras {class_name}, which has no PyTorch layout we can map: {why}",
        layer,
        "drop it first, or convert it by hand",
    )
