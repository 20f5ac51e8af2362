"""Keep a Keras model's config true to its weights after an edit: JSON in, JSON out, no Keras.

A full-model `.h5` stores its architecture in the `model_config` root attribute (Keras 2
and 3); a Keras 3 `.keras` zip stores it as `config.json`, the same document plus
`build_config` and `compile_config`. surgery keeps either under the tree's metadata key
`model_config`. When an edit changes a weight's shape, every part of the config that
describes that shape must change with it, or `keras.models.load_model` refuses the file:

* class surgery (`follow_class_plan`): the head layer's `filters` or `units`, and every
  layer downstream of a head whose config or recorded shapes carry the class count
  (a Reshape's `target_shape` `(-1, K)`; Keras 3's `build_config` input shapes and the
  tensor shapes recorded in `inbound_nodes`). The class count travels down the graph
  from layer to layer; a layer we cannot follow it through is refused by name;
* adapt-input (`follow_input_channels`): the channel count of the model input that feeds
  the first conv (InputLayer `batch_shape`/`batch_input_shape`, a Sequential's first-layer
  `batch_input_shape` or `build_input_shape`, and the recorded shapes on the way).

What is known about layers (which keep the class axis, which only touch other axes) is data:
the tables below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import OperationError

__all__ = ["CONFIG_KEY", "follow_class_plan", "follow_input_channels", "without_compile_config"]

CONFIG_KEY = "model_config"  # the tree metadata key holding the model's config (h5 attribute or config.json)

# Layers whose output has the input's shape and whose config holds no size.
SHAPE_KEEPING = frozenset((
    "Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Identity",
))
# Layers that change only spatial axes (channels last): the class axis passes unchanged.
SPATIAL_ONLY = frozenset(
    f"{kind}{n}D" for kind in ("MaxPooling", "AveragePooling", "ZeroPadding", "Cropping", "UpSampling") for n in (1, 2, 3)
)
GLOBAL_POOLING = frozenset(f"Global{kind}Pooling{n}D" for kind in ("Average", "Max") for n in (1, 2, 3))
ELEMENTWISE_MERGE = frozenset(("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"))
# Where a head layer's output count lives in its config.
COUNT_FIELDS = {"Dense": "units", **{f"Conv{n}D": "filters" for n in (1, 2, 3)}, **{f"Convolution{n}D": "filters" for n in (1, 2, 3)}}
# Layers adapt-input may find between the model's input and its first conv (they keep the channels).
INPUT_PASSAGE = SHAPE_KEEPING | SPATIAL_ONLY
INPUT_SHAPE_FIELDS = ("batch_shape", "batch_input_shape")

_REFUSE_FIX = "subsample a weights-only file (model.save_weights) and build the new model in Keras, or strip the layers after the head first"


# -- the config document -------------------------------------------------------------


@dataclass
class _Layer:
    record: dict[str, Any]  # the layer's entry in the (copied) document: edits land there
    name: str
    class_name: str
    inbound: list[str]  # source layer names, in order

    @property
    def config(self) -> dict[str, Any]:
        return self.record.setdefault("config", {})


@dataclass
class _Model:
    document: dict[str, Any]
    layers: list[_Layer]
    sequential: bool

    @classmethod
    def parse(cls, text: str, where: str) -> _Model:
        try:
            document = json.loads(text)
            config = document["config"]
            records = config if isinstance(config, list) else config["layers"]
            layers = [_Layer(r, str(r.get("name") or r["config"]["name"]), str(r.get("class_name", "")), []) for r in records]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise OperationError(
                f"the model_config is not a Keras model config surgery can read ({type(e).__name__}: {e})",
                where,
                "edit a weights-only file (model.save_weights) instead",
            ) from e
        sequential = document.get("class_name") == "Sequential"
        for k, layer in enumerate(layers):
            layer.inbound = ([layers[k - 1].name] if k else []) if sequential else list(dict.fromkeys(h for h, _ in _tensor_refs(layer.record.get("inbound_nodes", []))))
        return cls(document, layers, sequential)

    def text(self) -> str:
        return json.dumps(self.document)

    def find(self, name: str, where: str) -> _Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise OperationError(
            f"layer {name} is not a top-level layer of the model_config", where, "edit a weights-only file (model.save_weights) instead"
        )

    def consumers(self, name: str) -> list[_Layer]:
        return [layer for layer in self.layers if name in layer.inbound]

    def model_settings(self) -> dict[str, Any]:
        config = self.document.get("config")
        return config if isinstance(config, dict) else {}


def _tensor_refs(nodes: Any) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(source layer, the tensor's record or None) for every tensor an inbound-nodes value names.

    Keras 2 writes `[name, node_index, tensor_index, kwargs]` (no shape); Keras 3 writes
    `{"class_name": "__keras_tensor__", "config": {"shape": [...], "keras_history": [name, 0, 0]}}`.
    """
    if isinstance(nodes, dict):
        history = nodes.get("config", {}).get("keras_history") if nodes.get("class_name") == "__keras_tensor__" else None
        if history:
            yield str(history[0]), nodes["config"]
            return
        for value in nodes.values():
            yield from _tensor_refs(value)
    elif isinstance(nodes, list):
        if len(nodes) >= 3 and isinstance(nodes[0], str) and isinstance(nodes[1], int) and isinstance(nodes[2], int):
            yield nodes[0], None
            return
        for value in nodes:
            yield from _tensor_refs(value)


def without_compile_config(text: str) -> tuple[str, bool]:
    """A `.keras` config.json without its `compile_config` (losses for outputs that may be gone)."""
    try:
        document = json.loads(text)
    except ValueError:
        return text, False
    if not isinstance(document, dict) or not document.get("compile_config"):
        return text, False
    document["compile_config"] = None
    return json.dumps(document), True


# -- class surgery -------------------------------------------------------------------


@dataclass(frozen=True)
class _Flow:
    """How a class-carrying tensor's last axis changes: sizes that are multiples of `old`
    (one anchor's classes and fields) become the same multiple of `new`. `exact` is set
    instead when other data was joined onto the class axis: then only that size is known."""

    head: str
    old: int
    new: int
    rank: int | None
    exact: tuple[int, int] | None = None
    mixed: bool = False

    def resize(self, size: Any, layer: str) -> Any:
        if not isinstance(size, int) or size < 0:
            return size
        if self.mixed:
            if self.exact and size == self.exact[0]:
                return self.exact[1]
            raise _unfollowable(layer, f"its input joins the class scores of {self.head} with other data on the class axis")
        if size % self.old:
            raise _unfollowable(layer, f"its input size {size} is not a multiple of the {self.old} values per anchor of head {self.head}")
        return size // self.old * self.new

    def with_rank(self, rank: int | None) -> _Flow:
        return _Flow(self.head, self.old, self.new, rank, self.exact, self.mixed)


def _unfollowable(layer: str, why: str) -> OperationError:
    return OperationError(f"cannot tell how the class count of layer {layer} follows the edit: {why}", layer, _REFUSE_FIX)


def follow_class_plan(metadata: dict[str, str], plan: Any) -> list[str]:
    """Rewrite `metadata["model_config"]` (in place) for a class plan; return notes for the report.

    `plan` is a `surgery.ops.classes.ClassPlan`: for each head layer its layout, channels,
    anchors, fields and group, plus the old and new class counts.

    Raises:
        OperationError: a head is not in the config, its count field disagrees with its
            kernel, or a layer downstream carries the class count in a way we cannot follow.
    """
    text = metadata.get(CONFIG_KEY)
    if not text:
        return []
    model = _Model.parse(text, "model_config")
    flows: dict[str, _Flow] = {}
    for lp in plan.layers:
        old, new = _unit(lp, plan.source_classes), _unit(lp, plan.num_classes)
        flows[lp.layer] = _resize_head(model.find(lp.layer, lp.layer), lp, old, new)
    changed = _follow_downstream(model, flows)
    metadata[CONFIG_KEY] = model.text()
    heads = ", ".join(lp.layer for lp in plan.layers)
    also = f"; downstream: {', '.join(changed)}" if changed else ""
    return [f"model_config rewritten for {plan.num_classes} classes: {heads}{also}"]


def _unit(lp: Any, classes: int) -> int:
    """Values per anchor on the class axis: classes (+ leading fields), or classes x group."""
    if lp.layout == "class-major":
        return classes * lp.group
    return classes + lp.fields


def _resize_head(layer: _Layer, lp: Any, old: int, new: int) -> _Flow:
    field = COUNT_FIELDS.get(layer.class_name)
    if field is None or field not in layer.config:
        raise OperationError(
            f"head layer {layer.name} is a {layer.class_name or 'layer'} whose config has no filters or units to change",
            layer.name,
            _REFUSE_FIX,
        )
    if layer.config[field] != lp.channels:
        raise OperationError(
            f"head layer {layer.name}: the model_config says {field} {layer.config[field]} but its kernel has {lp.channels} channels",
            layer.name,
            "the file's config and weights disagree; re-save the model",
        )
    if layer.config.get("data_format") == "channels_first":
        raise _unfollowable(layer.name, "it is channels_first, so its classes are not on the last axis")
    layer.config[field] = lp.new_channels
    shapes = [shape for _, t in _tensor_refs(layer.record.get("inbound_nodes", [])) if t and isinstance(shape := t.get("shape"), list)]
    rank = len(shapes[0]) if shapes else (int(layer.class_name[-2]) + 2 if layer.class_name[-2:-1].isdigit() else None)
    return _Flow(layer.name, old, new, rank)


def _follow_downstream(model: _Model, flows: dict[str, _Flow]) -> list[str]:
    """Walk the layers in config order (topological) and carry each head's flow through them."""
    heads = set(flows)
    changed: list[str] = []
    for layer in model.layers:
        sources = [s for s in layer.inbound if s in flows]
        if not sources:
            continue
        if layer.name in heads:
            raise _unfollowable(layer.name, f"it is a head and also takes the class scores of {sources[0]}")
        before = json.dumps(layer.record, sort_keys=True)
        flows[layer.name] = _through(layer, flows, len(sources) == len(layer.inbound))
        _resize_recorded_shapes(layer, flows)
        if json.dumps(layer.record, sort_keys=True) != before:
            changed.append(layer.name)
    return changed


def _through(layer: _Layer, flows: dict[str, _Flow], all_carry: bool) -> _Flow:
    """The flow of `layer`'s output, given the flows of its class-carrying inputs; refuses what it cannot follow."""
    inputs = [flows[s] for s in layer.inbound if s in flows]
    kind, config, flow = layer.class_name, layer.config, inputs[0]
    if kind in SHAPE_KEEPING and len(inputs) == 1:
        return flow
    if kind in ELEMENTWISE_MERGE:
        if not all_carry or len({(f.old, f.new, f.mixed) for f in inputs}) != 1:
            raise _unfollowable(layer.name, f"it is a {kind} of class scores and a tensor with another class axis")
        return flow
    if flow.mixed and kind not in ("Concatenate",):
        raise _unfollowable(layer.name, f"it is a {kind} after the class scores of {flow.head} were joined with other data")
    if config.get("data_format") == "channels_first" and (kind in SPATIAL_ONLY or kind in GLOBAL_POOLING or kind == "Flatten"):
        raise _unfollowable(layer.name, f"it is a channels_first {kind}, which moves the class axis")
    if kind in SPATIAL_ONLY:
        return flow
    if kind in GLOBAL_POOLING:
        return flow.with_rank(flow.rank if config.get("keepdims") else 2)
    if kind == "Flatten":
        return flow.with_rank(2)  # channels last: the class axis stays innermost
    if kind == "Reshape":
        return _through_reshape(layer, flow)
    if kind == "Permute":
        dims = config.get("dims") or []
        if not dims or dims[-1] != len(dims):
            raise _unfollowable(layer.name, f"Permute {list(dims)} moves the class axis away from the last place")
        return flow
    if kind == "Concatenate":
        return _through_concatenate(layer, flows, inputs, all_carry)
    raise _unfollowable(layer.name, f"it is a {kind or 'layer'} that takes the class scores of {flow.head}; its config or weights would have to change with them")


def _through_reshape(layer: _Layer, flow: _Flow) -> _Flow:
    target = layer.config.get("target_shape")
    if not isinstance(target, list) or not target or not all(isinstance(n, int) for n in target):
        raise _unfollowable(layer.name, f"its target_shape {target!r} is not a list of sizes")
    last = target[-1]
    if last == -1 and len(target) == 1:
        return flow.with_rank(2)  # a flatten: the class axis stays innermost
    if last <= 0 or last % flow.old:
        raise _unfollowable(
            layer.name, f"Reshape target_shape {target} does not end in a multiple of the {flow.old} values per anchor of head {flow.head}"
        )
    layer.config["target_shape"] = [*target[:-1], last // flow.old * flow.new]
    return flow.with_rank(len(target) + 1)


def _through_concatenate(layer: _Layer, flows: dict[str, _Flow], inputs: list[_Flow], all_carry: bool) -> _Flow:
    axis, flow = layer.config.get("axis", -1), inputs[0]
    if not isinstance(axis, int) or (axis >= 0 and flow.rank is None):
        raise _unfollowable(layer.name, f"cannot tell whether Concatenate axis {axis} is the class axis (the input's rank is unknown)")
    on_classes = axis == -1 or (flow.rank is not None and axis == flow.rank - 1)
    same = len({(f.old, f.new) for f in inputs}) == 1 and not any(f.mixed for f in inputs)
    if not on_classes:
        if not all_carry or not same:
            raise _unfollowable(layer.name, "it joins class scores with a tensor that has no class axis of the same count")
        return flow
    if all_carry and same:
        return flow
    return _Flow(flow.head, flow.old, flow.new, flow.rank, _joined_sizes(layer, flows), mixed=True)


def _joined_sizes(layer: _Layer, flows: dict[str, _Flow]) -> tuple[int, int] | None:
    """Old and new size of a class axis joined with other data, when Keras 3 recorded the input shapes."""
    old = new = 0
    for source, tensor in _tensor_refs(layer.record.get("inbound_nodes", [])):
        shape = tensor.get("shape") if tensor else None
        if not isinstance(shape, list) or not shape or not isinstance(shape[-1], int):
            return None
        old += shape[-1]
        new += flows[source].resize(shape[-1], layer.name) if source in flows else shape[-1]
    return (old, new) if old else None


def _resize_recorded_shapes(layer: _Layer, flows: dict[str, _Flow]) -> None:
    """Keras 3 records input shapes twice: in inbound_nodes' tensors and in build_config."""
    refs = list(_tensor_refs(layer.record.get("inbound_nodes", [])))
    for source, tensor in refs:
        if tensor is not None and source in flows and isinstance(tensor.get("shape"), list) and tensor["shape"]:
            tensor["shape"][-1] = flows[source].resize(tensor["shape"][-1], layer.name)
    build = layer.record.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if not isinstance(shape, list) or not shape:
        return
    sources = [s for s, _ in refs] or layer.inbound
    shapes = shape if all(isinstance(s, list) for s in shape) else [shape]
    if len(shapes) != len(sources):
        return
    for source, one in zip(sources, shapes):
        if source in flows and one:
            one[-1] = flows[source].resize(one[-1], layer.name)


# -- adapt-input ---------------------------------------------------------------------


def follow_input_channels(metadata: dict[str, str], conv: str, old: int, new: int) -> list[str]:
    """Rewrite `metadata["model_config"]` (in place) so the model input feeding `conv` has `new` channels.

    Raises:
        OperationError: `conv` is not in the config, is not fed by the model input through
            channel-keeping layers only, or that input also feeds other layers.
    """
    text = metadata.get(CONFIG_KEY)
    if not text or old == new:
        return []
    model = _Model.parse(text, "model_config")
    path = _path_from_input(model, model.find(conv, conv))
    first = path[0]
    axis = 1 if path[-1].config.get("data_format") == "channels_first" else -1
    changed = [layer.name for layer in path if _resize_input_fields(layer, axis, old, new)]
    for k, layer in enumerate(path[1:], 1):
        _resize_channel_shapes(layer, path[k - 1].name, axis, old, new)
    settings = model.model_settings()
    if model.sequential and _set_channels(settings, "build_input_shape", axis, old, new):
        changed.append("build_input_shape")
    build = model.document.get("build_config")
    if isinstance(build, dict) and _set_channels(build, "input_shape", axis, old, new):
        changed.append("build_config")
    if not changed:
        raise OperationError(
            f"the model_config does not record the input shape of {first.name}, so it cannot be given {new} channels",
            conv,
            "edit a weights-only file (model.save_weights) instead",
        )
    metadata[CONFIG_KEY] = model.text()
    return [f"model_config rewritten for {new} input channels: {', '.join(changed)}"]


def _path_from_input(model: _Model, conv: _Layer) -> list[_Layer]:
    """The layers from the model's input to `conv`, each the only consumer of the one before."""
    path = [conv]
    while path[0].inbound:
        if len(path[0].inbound) != 1:
            raise _not_from_input(conv, path[0], "it has several inputs")
        source = model.find(path[0].inbound[0], conv.name)
        users = model.consumers(source.name)
        if len(users) > 1:
            raise _not_from_input(conv, source, f"it also feeds {next(u.name for u in users if u is not path[0])}")
        if source.class_name != "InputLayer" and source.class_name not in INPUT_PASSAGE:
            raise _not_from_input(conv, source, f"it is a {source.class_name}, which may depend on the channel count")
        path.insert(0, source)
    return path


def _not_from_input(conv: _Layer, layer: _Layer, why: str) -> OperationError:
    return OperationError(
        f"cannot give the model {conv.name}'s new input channels: between the input and {conv.name} is {layer.name}, and {why}",
        conv.name,
        "name the first conv with --layer, or edit a weights-only file (model.save_weights)",
    )


def _resize_input_fields(layer: _Layer, axis: int, old: int, new: int) -> bool:
    done = False
    for key in INPUT_SHAPE_FIELDS:
        done |= _set_channels(layer.config, key, axis, old, new)
    build = layer.record.get("build_config")
    if isinstance(build, dict):
        done |= _set_channels(build, "input_shape", axis, old, new)
    return done


def _resize_channel_shapes(layer: _Layer, source: str, axis: int, old: int, new: int) -> None:
    for name, tensor in _tensor_refs(layer.record.get("inbound_nodes", [])):
        if name == source and tensor is not None:
            _set_channels(tensor, "shape", axis, old, new)


def _set_channels(holder: dict[str, Any], key: str, axis: int, old: int, new: int) -> bool:
    shape = holder.get(key)
    if not isinstance(shape, list) or len(shape) < 2:
        return False
    if shape[axis] != old:
        raise OperationError(
            f"the model_config records {key} {shape}, whose channel axis holds {shape[axis]}, not {old}",
            key,
            "the file's config and weights disagree; re-save the model",
        )
    shape[axis] = new
    return True
