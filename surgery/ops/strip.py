"""Head and layer surgery: remove a classification top (strip-head), or keep a prefix of layers (truncate).

The head is found, in this order, from:

1. `--head` globs, matched against layer and tensor names;
2. a Keras full model's `model_config`: walk back from the model's output through
   weightless layers (Activation, GlobalAveragePooling, Flatten, Dropout, ...) to the
   weighted layer that produces the class scores, plus the table's named tops before it
   (`fc2`, `fc1`, `flatten` in VGG);
3. the TOPS table of `surgery.heads` (Keras applications, torchvision, timm), whose
   layers must be the checkpoint's last weighted layers.

When the evidence disagrees or is missing, nothing is guessed: the error lists the candidates.

Removing layers from a Keras full model also rewrites its `model_config` without them (and
without every layer that consumed them), so the written file stays a consistent model whose
outputs are the layers that fed the removed ones; `training_config` (losses for the removed
outputs) is dropped. Both are reported.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import OperationError
from ..graph import graph_of
from ..heads import PASS_THROUGH_LAYERS, TOPS, TOPS_ON_REQUEST, unwrapped
from ..keras_config import without_compile_config
from ..naming import layer_of, matches
from ..provenance import record
from ..report import Report
from ..tree import DROPPED_ON_READ, Entry, Tree
from .optimizer_state import drop_optimizer, follow_removed

__all__ = ["HeadMatch", "detect_head", "score_layer", "strip_head", "truncate", "layer_order", "FAMILIES"]

FAMILIES = tuple(dict.fromkeys(p.family for p in TOPS))

# Keras format_state keys (surgery.formats.keras_h5 writes the layer list back from them).
_LAYER_NAMES = "keras.layer_names"
_WEIGHTLESS = "keras.weightless"
_CONFIG_KEYS = ("model_config",)
_TRAINING_KEYS = ("training_config",)


@dataclass(frozen=True)
class HeadMatch:
    """The layers and tensors that make a model's classification head, and why.

    Attributes:
        layers: layer names in checkpoint order, including weightless ones (Keras Flatten, Activation).
        tensors: every tensor of those layers, in checkpoint order.
        why: one line saying how the head was found.
    """

    layers: tuple[str, ...]
    tensors: tuple[str, ...]
    why: str


# -- public operations ---------------------------------------------------------------


def detect_head(tree: Tree, globs: Sequence[str] = (), family: str | None = None) -> HeadMatch:
    """Find the classification head of `tree`: by `globs`, a Keras model graph, or the TOPS table.

    Args:
        tree: the checkpoint.
        globs: layer or tensor globs that name the head; when given, nothing is detected.
        family: a TOPS family ("keras-applications", "torchvision", "timm", "ssd") to use
            instead of detection; "ssd" (its conf/loc layers) is only used when asked.

    Returns:
        The head's layers and tensors, and why they were chosen.

    Raises:
        OperationError: the globs match nothing; no head is found; or several candidates fit
            (the message lists them).

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array(n, np.zeros(2, "float32")) for n in ("conv.weight", "fc.weight", "fc.bias")])
        >>> detect_head(t).tensors
        ('fc.weight', 'fc.bias')
    """
    if globs:
        return _head_from_globs(tree, globs)
    if family is not None and family not in FAMILIES:
        raise OperationError(f"unknown head family {family!r}", "--family", f"use one of: {', '.join(FAMILIES)}")
    order = layer_order(tree)
    by_layer = _tensors_by_layer(tree)
    if family is None:
        found = _head_from_graph(tree, by_layer)
        if found is not None:
            return found
    return _head_from_table(order, by_layer, family)


def strip_head(tree: Tree, globs: Sequence[str] = (), family: str | None = None) -> tuple[Tree, Report]:
    """Remove the classification head (see `detect_head`); every other tensor is shared untouched.

    Returns:
        The headless tree, and a report that lists every removed tensor ("dropped") and
        the head under facts["head"].

    Raises:
        OperationError: as `detect_head`, or when the head is the whole checkpoint.
    """
    graph = graph_of(tree)
    if graph is not None:  # an ONNX graph: cut before the head's first node
        return graph.strip_head(tree, globs, family)
    head = detect_head(tree, globs, family)
    report = Report("strip-head")
    report.facts["head"] = {"layers": list(head.layers), "tensors": list(head.tensors), "why": head.why}
    new = _remove_layers(tree, head.layers, head.tensors, report)
    return record(new, "strip-head", head=list(globs) or None, family=family, layers=list(head.layers)), report


def truncate(tree: Tree, after: str) -> tuple[Tree, Report]:
    """Keep the layers up to and including `after`, in the checkpoint's own layer order.

    The order is the Keras file's `layer_names` (weightless layers included) or the tensors'
    order (PyTorch key order). `after` may also name a module that holds layers
    (`layer3` keeps everything up to the last tensor under `layer3.`).

    Raises:
        OperationError: `after` names no layer (the message suggests the nearest names).

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array(n, np.zeros(1, "float32")) for n in ("a.w", "b.w", "c.w")])
        >>> list(truncate(t, "b")[0])
        ['a.w', 'b.w']
    """
    graph = graph_of(tree)
    if graph is not None:  # an ONNX graph: `after` names a node or value, which becomes the output
        return graph.truncate(tree, after)
    order = layer_order(tree)
    cut = _cut_index(order, after)
    removed = tuple(order[cut + 1 :])
    by_layer = _tensors_by_layer(tree)
    tensors = tuple(t for layer in removed for t in by_layer.get(layer, ()))
    report = Report("truncate")
    report.facts["after"] = order[cut]
    new = _remove_layers(tree, removed, tensors, report)
    return record(new, "truncate", after=after), report


def layer_order(tree: Tree) -> list[str]:
    """The checkpoint's layers in its own order: Keras `layer_names` if the file has them, else tensor order."""
    listed = tree.format_state.get(_LAYER_NAMES)
    tensor_layers = list(_tensors_by_layer(tree))
    if not listed:
        return tensor_layers
    order = json.loads(listed)
    return order + [layer for layer in tensor_layers if layer not in set(order)]


# -- finding the head ----------------------------------------------------------------


def _layer(entry: Entry) -> str:
    return str(entry.attrs.get("keras.layer") or layer_of(entry.name))


def _tensors_by_layer(tree: Tree) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in tree.values():
        out.setdefault(_layer(entry), []).append(entry.name)
    return out


def _head_from_globs(tree: Tree, globs: Sequence[str]) -> HeadMatch:
    tensors = tuple(e.name for e in tree.values() if matches(e.name, globs) or matches(_layer(e), globs))
    weightless = [layer for layer in layer_order(tree) if matches(layer, globs)]
    if not tensors and not weightless:
        raise OperationError(
            f"--head {' '.join(globs)} matches no layer or tensor",
            "--head",
            "list the names with `surgery inspect`; globs are case-sensitive and '*' crosses '/' and '.'",
        )
    touched = {_layer(tree[t]) for t in tensors} | set(weightless)
    layers = tuple(layer for layer in layer_order(tree) if layer in touched)
    return HeadMatch(layers, tensors, f"--head {' '.join(globs)}: {len(layers)} layers, {len(tensors)} tensors")


def _head_from_graph(tree: Tree, by_layer: dict[str, list[str]]) -> HeadMatch | None:
    """A Keras full model's head, read from its model_config; None when the graph does not tell."""
    found = _path_to_scores(tree, by_layer)
    if found is None:
        return None
    graph, path = found
    path = path + _named_tops_before(graph, path[-1])
    layers = tuple(layer for layer in graph.order if layer in set(path))
    tensors = tuple(t for layer in layers for t in by_layer.get(layer, ()))
    return HeadMatch(layers, tensors, _describe_path(graph, path))


def score_layer(tree: Tree) -> tuple[str, str] | None:
    """The weighted layer that makes a Keras full model's class scores, and why; None when the graph does not tell.

    strip-head (`detect_head`) and class surgery (subsample, upsample) find the head with the same walk.
    """
    found = _path_to_scores(tree, _tensors_by_layer(tree))
    if found is None:
        return None
    graph, path = found
    return path[-1], _describe_path(graph, path)


def _path_to_scores(tree: Tree, by_layer: dict[str, list[str]]) -> tuple[_Graph, list[str]] | None:
    graph = _Graph.parse(tree.metadata.get("model_config"))
    if graph is None or len(graph.outputs) != 1:
        return None
    path = _walk_to_scores(graph, graph.outputs[0], by_layer)
    return None if path is None else (graph, path)


def _describe_path(graph: _Graph, path: list[str]) -> str:
    steps = " <- ".join(f"{name} ({graph.classes.get(name, '?')})" for name in path)
    return f"model_config: output {steps}"


def _walk_to_scores(graph: _Graph, output: str, by_layer: dict[str, list[str]]) -> list[str] | None:
    """Output back through weightless pass-through layers to the weighted layer making the scores."""
    path, name = [], output
    while name not in by_layer:
        inbound = graph.inbound.get(name, [])
        if not matches(graph.classes.get(name, ""), PASS_THROUGH_LAYERS) or len(inbound) != 1:
            return None
        path.append(name)
        name = inbound[0]
    return [*path, name]


def _named_tops_before(graph: _Graph, scores: str) -> list[str]:
    """The Keras applications tops before the score layer (VGG: fc2, fc1, flatten), through dropouts."""
    names = next(p.layers for p in TOPS if p.family == "keras-applications")
    walked, kept, inbound = [], [], graph.inbound.get(scores, [])
    while len(inbound) == 1 and (matches(inbound[0], names) or matches(graph.classes.get(inbound[0], ""), PASS_THROUGH_LAYERS)):
        walked.append(inbound[0])
        if matches(inbound[0], names):
            kept = list(walked)
        inbound = graph.inbound.get(inbound[0], [])
    return kept


@dataclass(frozen=True)
class _Candidate:
    families: tuple[str, ...]
    layers: tuple[str, ...]
    at_end: bool

    def describe(self) -> str:
        where = "" if self.at_end else ", not the last layers"
        return f"{', '.join(self.layers)} ({'/'.join(self.families)}{where})"


def _head_from_table(order: list[str], by_layer: dict[str, list[str]], family: str | None) -> HeadMatch:
    candidates = _table_candidates(order, by_layer, family)
    if len(candidates) == 1 and candidates[0].at_end:
        chosen = candidates[0]
        tensors = tuple(t for layer in chosen.layers for t in by_layer.get(layer, ()))
        return HeadMatch(chosen.layers, tensors, f"known {'/'.join(chosen.families)} top: {', '.join(chosen.layers)}")
    if candidates:
        listed = "; ".join(c.describe() for c in candidates)
        raise OperationError(
            f"cannot tell which layers are the head, {len(candidates)} candidates: {listed}",
            "--head",
            "choose with --head GLOB",
        )
    raise OperationError(
        f"no classification head found; the checkpoint ends with {', '.join(order[-3:]) or 'no layers'}",
        "--head",
        _no_head_fix(order, by_layer, family),
    )


def _table_candidates(order: list[str], by_layer: dict[str, list[str]], family: str | None) -> list[_Candidate]:
    found: dict[tuple[str, ...], _Candidate] = {}
    for pattern in TOPS:
        if (family is None and pattern.family in TOPS_ON_REQUEST) or (family is not None and pattern.family != family):
            continue
        candidate = _match_top(pattern.layers, pattern.role == "classifier", order, by_layer)
        if candidate is None:
            continue
        layers, at_end = candidate
        old = found.get(layers)
        families = (old.families if old else ()) + (pattern.family,)
        found[layers] = _Candidate(families, layers, at_end)
    return list(found.values())


def _match_top(globs: tuple[str, ...], at_the_end: bool, order: list[str], by_layer: dict[str, list[str]]):
    """The layers a top's globs name, and whether they are the last weighted layers.

    A classifier top runs from its first matched layer to the end of the order (weightless
    layers in between go with it); it counts only if it carries weights.
    """
    matched = [layer for layer in order if matches(unwrapped(layer), globs)]
    if not any(layer in by_layer for layer in matched):
        return None
    if not at_the_end:
        return tuple(matched), True
    tail = order[order.index(matched[0]) :]
    at_end = all(layer in matched for layer in tail if layer in by_layer)
    return (tuple(tail) if at_end else tuple(matched)), at_end


def _no_head_fix(order: list[str], by_layer: dict[str, list[str]], family: str | None) -> str:
    weighted = [layer for layer in order if layer in by_layer]
    fix = f"name the head with --head GLOB, e.g. --head '{weighted[-1]}'" if weighted else "name the head with --head GLOB"
    if family is None:
        on_request = [f for f in TOPS_ON_REQUEST if _table_candidates(order, by_layer, f)]
        if on_request:
            fix += f", or remove the {'/'.join(on_request)} head with --family {on_request[0]}"
    return fix


# -- removing layers -----------------------------------------------------------------


def _remove_layers(tree: Tree, layers: Iterable[str], tensors: Iterable[str], report: Report) -> Tree:
    """`tree` without `tensors`, with the Keras layer list and model_config made consistent.

    A Keras model_config also loses every layer that consumed a removed one; their tensors go too.
    """
    metadata, removed = _rewrite_config(tree, set(layers), report)
    names = set(tensors) | {e.name for e in tree.values() if _layer(e) in removed - set(layers)}
    dropped = [name for name in tree if name in names]
    if dropped and len(dropped) == len(tree):
        shown = ", ".join(layer_order(tree)[:3])
        raise OperationError(f"removing the layers from {shown} on would leave no tensors", "--head", "choose fewer layers")
    for name in dropped:
        entry = tree[name]
        report.add("dropped", name, before=f"{list(entry.shape)} {entry.dtype}")
    new = tree.derive(drop=dropped, metadata=metadata)
    new = _uncompiled(tree, new, report)  # before follow_removed: state that goes anyway need not be moved
    new = follow_removed(new, dropped, report)  # their optimizer state goes too; param_groups renumbered
    _drop_from_layer_list(new, removed)
    report.facts["removed_layers"] = [layer for layer in layer_order(tree) if layer in removed]
    report.facts["kept_tensors"] = len(new)
    if DROPPED_ON_READ in tree.format_state:
        report.notes.append(f"dropped {tree.format_state[DROPPED_ON_READ]}")
    return new


def _uncompiled(old: Tree, new: Tree, report: Report) -> Tree:
    """A Keras model whose training or compile config went with its outputs loads uncompiled,
    so Keras would not restore its optimizer: the state goes too, said in a note."""
    from ..formats.keras_training import keras_training

    gone = any(k in old.metadata and k not in new.metadata for k in _TRAINING_KEYS) or (_compiled(old) and not _compiled(new))
    if not gone or keras_training(new) is None or not keras_training(new).optimizers:
        return new
    new, dropped = drop_optimizer(new)
    report.notes.append(f"{', '.join(dropped)} dropped with the training config: an uncompiled model has no optimizer to restore")
    return new


def _compiled(tree: Tree) -> bool:
    try:
        document = json.loads(tree.metadata.get("model_config", ""))
    except ValueError:
        return False
    return isinstance(document, dict) and bool(document.get("compile_config"))


def _drop_from_layer_list(new: Tree, removed: set[str]) -> None:
    """Forget removed layers in the Keras layer list of `new` (a fresh tree: its format_state is its own)."""
    for key in (_LAYER_NAMES, _WEIGHTLESS):
        if key in new.format_state:
            kept = [layer for layer in json.loads(new.format_state[key]) if layer not in removed]
            new.format_state[key] = json.dumps(kept, ensure_ascii=False)


def _rewrite_config(tree: Tree, layers: set[str], report: Report) -> tuple[dict[str, str], set[str]]:
    """Metadata with model_config rewritten without `layers` and all that consumed them."""
    metadata = dict(tree.metadata)
    graph = _Graph.parse(metadata.get("model_config"))
    if graph is None:
        return metadata, layers
    removed = graph.downstream(layers)
    if not removed:
        return metadata, layers
    metadata["model_config"], outputs = graph.without(removed)
    also = sorted(removed - layers, key=graph.order.index)
    note = f"model_config rewritten without {len(removed)} layers; the model's outputs are now {', '.join(outputs)}"
    report.notes.append(note + (f" (also removed, they consumed removed layers: {', '.join(also)})" if also else ""))
    metadata["model_config"], compiled = without_compile_config(metadata["model_config"])  # a .keras config.json's
    dropped = [key for key in _TRAINING_KEYS if metadata.pop(key, None) is not None] + (["compile_config"] if compiled else [])
    for key in dropped:
        report.notes.append(f"{key} dropped: its losses and metrics were for the removed outputs")
    return metadata, removed | layers


def _cut_index(order: list[str], after: str) -> int:
    if after in order:
        return order.index(after)
    inside = [i for i, layer in enumerate(order) if layer.startswith((after + ".", after + "/"))]
    if inside:
        return inside[-1]
    close = difflib.get_close_matches(after, _names_and_modules(order), n=3, cutoff=0.5)
    raise OperationError(
        f"no layer named {after!r}",
        "--after",
        f"nearest names: {', '.join(close)}" if close else "list the layers with `surgery inspect`",
    )


def _names_and_modules(order: list[str]) -> list[str]:
    """Layer names and the modules that hold them (`layer1.0.conv1` -> `layer1`, `layer1.0`), once each."""
    names: dict[str, None] = {}
    for layer in order:
        parts = re.split(r"([./])", layer)
        for end in range(1, len(parts) + 1, 2):
            names["".join(parts[:end])] = None
    return list(names)


# -- the Keras model graph -----------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    """The layer graph of a Keras `model_config` (Keras 2 or 3, functional or Sequential)."""

    document: dict[str, Any]
    sequential: bool
    order: list[str]
    classes: dict[str, str]
    inbound: dict[str, list[str]]
    outputs: list[str]

    @classmethod
    def parse(cls, text: str | None) -> _Graph | None:
        """None when there is no config or it is not a model graph we can read."""
        if not text:
            return None
        try:
            document = json.loads(text)
            return cls._from_document(document)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return None

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> _Graph | None:
        config = document["config"]
        sequential = document.get("class_name") == "Sequential"
        layers = config if isinstance(config, list) else config["layers"]
        order = [str(layer.get("name") or layer["config"]["name"]) for layer in layers]
        classes = {name: str(layer.get("class_name", "")) for name, layer in zip(order, layers)}
        if sequential:
            inbound = {name: [order[i - 1]] if i else [] for i, name in enumerate(order)}
            outputs = order[-1:]
        else:
            inbound = {name: _history_names(layer.get("inbound_nodes", [])) for name, layer in zip(order, layers)}
            outputs = _history_names(config["output_layers"])
        return cls(document, sequential, order, classes, inbound, outputs)

    def downstream(self, layers: set[str]) -> set[str]:
        """`layers` (those in the graph) and every layer that consumes them, directly or not."""
        removed = {layer for layer in layers if layer in self.classes}
        for name in self.order:  # config order is topological
            if any(source in removed for source in self.inbound[name]):
                removed.add(name)
        return removed

    def without(self, removed: set[str]) -> tuple[str, list[str]]:
        """The config text without `removed`, and the new output layers."""
        outputs = [n for n in self.outputs if n not in removed]
        outputs += [n for n in self.order if n not in removed and n not in outputs and self._fed_only_removed(n, removed)]
        document = json.loads(json.dumps(self.document))
        config = document["config"]
        layers = config if isinstance(config, list) else config["layers"]
        layers[:] = [layer for layer, name in zip(list(layers), self.order) if name not in removed]
        if not self.sequential:
            config["output_layers"] = [[name, 0, 0] for name in outputs]
        return json.dumps(document), outputs

    def _fed_only_removed(self, name: str, removed: set[str]) -> bool:
        consumers = [c for c, sources in self.inbound.items() if name in sources]
        return bool(consumers) and all(c in removed for c in consumers)


def _history_names(nodes: Any) -> list[str]:
    """Layer names referenced by inbound nodes or output lists, in order, once each.

    Keras 2 writes `[name, node_index, tensor_index, kwargs]`; Keras 3 writes
    `{"class_name": "__keras_tensor__", "config": {"keras_history": [name, node, tensor]}}`.
    """
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get("class_name") == "__keras_tensor__" else None
            if history:
                found.append(str(history[0]))
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int) and isinstance(value[2], int):
                found.append(value[0])
                return
            for item in value:
                walk(item)

    walk(nodes)
    return list(dict.fromkeys(found))
