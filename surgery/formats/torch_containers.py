"""Which dict of an unpickled torch checkpoint is the state dict.

A bare state dict, or one under a container key (`state_dict`, `model`, `model_ema`, ...,
or --key); what is left beside it (other state dicts, entries holding refused globals) is
listed for the report, and a refused global inside the chosen state dict is refused by name.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError
from .torch_unpickler import _refusal, _Refused, _TensorRef

# Containers that wrap a state dict in training checkpoints, in the order we look for them.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "ema", "module", "net")


def _tensors(d: Any) -> dict[str, _TensorRef] | None:
    if not isinstance(d, dict):
        return None
    found = {k: v for k, v in d.items() if isinstance(v, _TensorRef)}
    return found if found or not d else None


def _state_dict(obj: Any, key: str | None, where: str, refused: list[str]) -> tuple[dict, str]:
    """The dict that holds the tensors, and the container key it was under ("" for the top).

    Placeholders for refused globals may sit beside the state dict (a Lightning checkpoint's
    hyper_parameters): with --key they are skipped (and reported), without it the first is
    refused by name, and the fix names the key that reads without it. Anywhere inside the
    chosen state dict they are refused.
    """
    if isinstance(obj, _Refused):
        raise _refusal(obj.name, where)
    if key is None and refused:
        found = [k for k in _containers(obj) if not _refused_in(obj[k])]
        fix = f"surgery never runs a checkpoint's code; its state dict {found[0]!r} reads without it: pass --key {found[0]}" if found else ""
        raise _refusal(refused[0], where, fix)
    if key is not None:
        holder = _keyed(obj, key, where)
    elif preferred := [k for k in _containers(obj) if k in CONTAINER_KEYS]:
        # Known containers first: a training checkpoint may hold a loose tensor beside them (an RNG state).
        key = preferred[0]
        holder = obj[key]
    elif _tensors(obj):
        holder, key = obj, ""
    else:
        found = _containers(obj)
        if not found:
            raise FormatError("no state dict of tensors found in the checkpoint", where, "pass --key NAME for the entry that holds it")
        key = found[0]
        holder = obj[key]
    inside = _refused_in(holder)
    if inside:
        raise _refusal(inside[0], where)
    return holder, key


def _keyed(obj: Any, key: str, where: str) -> dict:
    if _tensors(obj):
        raise FormatError(
            f"--key {key}: the checkpoint is a bare state dict of {len(_tensors(obj))} tensors, with no entries to choose from",
            where,
            "drop --key",
        )
    if isinstance(obj, dict) and key in obj and _tensors(obj[key]) is not None:
        return obj[key]
    found = _containers(obj)
    keys = ", ".join(found) if found else ", ".join(str(k) for k in obj) if isinstance(obj, dict) else "none"
    raise FormatError(f"no state dict under key {key!r}", where, f"choose one of: {keys}")


def _containers(obj: Any) -> list[str]:
    """Top-level keys that hold a state dict, CONTAINER_KEYS first (in their order), then the rest."""
    if not isinstance(obj, dict):
        return []
    holding = [k for k, v in obj.items() if isinstance(k, str) and _tensors(v)]
    return [k for k in CONTAINER_KEYS if k in holding] + [k for k in holding if k not in CONTAINER_KEYS]


def _left_out(obj: dict, chosen: str) -> list[str]:
    """What the reader leaves beside the chosen state dict, for the report: other state dicts, refused entries."""
    left = [f"{k!r} (another state dict, {len(_tensors(obj[k]))} tensors; --key {k} reads it)" for k in _containers(obj) if k != chosen]
    for k, v in obj.items():
        names = _refused_in(v)
        if names and k != chosen:
            left.append(f"{k!r} (holds {', '.join(dict.fromkeys(names))}: skipped, not unpickled)")
    return left


def _refused_in(value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, _Refused):
        return [value.name]
    if depth > 20:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [name for item in items for name in _refused_in(item, depth + 1)]
