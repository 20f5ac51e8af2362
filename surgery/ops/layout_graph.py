"""The Keras `model_config` of a full-model file, read as a graph: each layer's class, its
settings, and the layers that feed it (looking through Dropout-like layers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from .layout_tables import KERAS_PASS_THROUGH


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
