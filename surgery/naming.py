"""Tensor names and the layers they belong to.

Keras trees name tensors `layer/param` (e.g. `fc7_mbox_conf/kernel`); PyTorch
state dicts name them `module.path.param` (e.g. `roi_heads.box_predictor.cls_score.weight`).
A tensor's layer is its name without the last component.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

__all__ = ["layer_of", "param_of", "layers", "matches"]


def _split(name: str) -> tuple[str, str]:
    sep = "/" if "/" in name else "."
    layer, _, param = name.rpartition(sep)
    return layer, param


def layer_of(name: str) -> str:
    """`conv1/kernel` -> `conv1`; `backbone.conv1.weight` -> `backbone.conv1`; `scale` -> ``."""
    return _split(name)[0]


def param_of(name: str) -> str:
    """`conv1/kernel` -> `kernel`; `backbone.conv1.weight` -> `weight`."""
    return _split(name)[1]


def layers(names: Iterable[str]) -> list[str]:
    """Layer names in first-seen order."""
    return list(dict.fromkeys(layer_of(n) for n in names))


def matches(name: str, globs: Iterable[str]) -> bool:
    """Case-sensitive glob match; '*' crosses '/' and '.'."""
    return any(fnmatch.fnmatchcase(name, g) for g in globs)
