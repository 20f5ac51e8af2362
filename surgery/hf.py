"""Hugging Face model folders: `config.json` beside the weights, kept in step with class surgery.

A folder holding `config.json` and `model.safetensors` (or a sharded
`*.safetensors.index.json`, or a `pytorch_model.bin` read by our safe reader) is
one checkpoint. Its config travels with the tree (in `format_state`); a class
edit rewrites `id2label`, `label2id` and the fields that an architecture table
(`label_tables/hf_architectures.json`, data) names; writing the tree to a folder
writes the weights, the edited `config.json`, and a verbatim copy of every other
file (tokenizer, preprocessor and generation configs, README) as one atomic unit.

Framework-free: the project never imports `transformers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .durable import fsync
from .errors import FormatError
from .naming import layers, matches
from .tree import Tree

__all__ = ["STATE", "follow_labels", "head_layers", "is_model_folder", "labels", "load", "save_folder", "writes_folder"]

STATE = "hf.folder"  # format_state key: {"folder": the input folder, "config": its (edited) config.json}
CONFIG = "config.json"
MAX_CONFIG = 16 << 20
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth", ".h5", ".msgpack")


@lru_cache(maxsize=1)
def _table() -> dict:
    from importlib import resources  # here: it imports tempfile, shutil, ...

    text = resources.files(__package__).joinpath("label_tables", "hf_architectures.json").read_text(encoding="utf-8")
    return json.loads(text)


# -- reading --------------------------------------------------------------------------


def is_model_folder(path: Path) -> bool:
    """A folder with config.json and weights we read: a Hugging Face model folder."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and _weights(path) is not None


def _weights(folder: Path) -> Path | None:
    """The folder's weights, in the order `from_pretrained` prefers them: safetensors first."""
    if (folder / (TORCH_BIN + ".index.json")).is_file() and not any(folder.glob("*.safetensors")):
        raise FormatError(
            "sharded pytorch_model-*.bin checkpoints are not read",
            str(folder),
            "re-save the model with save_pretrained(..., safe_serialization=True), or point at one shard",
        )
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    singles = sorted(folder.glob("*.safetensors"))
    for candidate in (*indexes[:1], folder / SAFETENSORS, *(singles if len(singles) == 1 else []), folder / TORCH_BIN):
        if candidate.is_file():
            return candidate
    return None


def load(folder: Path, *, key: str | None = None) -> Tree:
    """The folder's weights as a lazy tree that carries its config.json."""
    from . import formats

    folder = Path(folder)
    config = _read_config(folder)
    weights = _weights(folder)
    if weights is None:
        raise FormatError("model folder holds no model.safetensors or pytorch_model.bin", str(folder), "point at the folder that holds the weights")
    name = "torch" if weights.name == TORCH_BIN else "safetensors"
    if key is not None and name != "torch":
        raise FormatError(f"--key chooses an entry of a PyTorch checkpoint, but this folder holds {weights.name}", str(folder), "drop --key")
    tree = formats.module(name).load(weights, **({"key": key} if key is not None else {}))
    state = dict(tree.format_state)
    state[STATE] = {"folder": str(folder), "config": config}
    return tree.derive(format_state=state)


def _read_config(folder: Path) -> dict[str, Any]:
    from .formats._json import loads_strict

    path = folder / CONFIG
    if path.stat().st_size > MAX_CONFIG:
        raise FormatError(f"config.json is larger than {MAX_CONFIG >> 20} MiB", str(path), "check the model folder")
    config = loads_strict(path.read_bytes(), str(path), "config.json", "fix or re-save the model's config.json")
    if not isinstance(config, dict):
        raise FormatError("config.json is not a JSON object", str(path), "fix or re-save the model's config.json")
    return config


def _config(tree: Tree) -> dict[str, Any] | None:
    state = tree.format_state.get(STATE)
    return state["config"] if isinstance(state, dict) else None


def _row(config: dict[str, Any]) -> dict[str, Any] | None:
    names = config.get("architectures") or []
    for row in _table()["rows"]:
        if any(isinstance(n, str) and matches(n, row["architectures"]) for n in names):
            return row
    return None


def _is_timm(config: dict[str, Any]) -> bool:
    return "architecture" in config and "num_classes" in config and "architectures" not in config


# -- labels ---------------------------------------------------------------------------


def labels(tree: Tree) -> list[str] | None:
    """The head's class names from config.json, in row order (a no-object class last), or None."""
    config = _config(tree)
    if config is None:
        return None
    if _is_timm(config):
        names = config.get("label_names")
        count = config.get("num_classes")
        if isinstance(names, list) and len(names) == count:
            return [str(n) for n in names]
        return [f"LABEL_{i}" for i in range(count)] if isinstance(count, int) else None
    names = _id2label(config)
    row = _row(config)
    if row and row.get("no_object"):
        names.append(row["no_object"])
    return names


def _id2label(config: dict[str, Any]) -> list[str]:
    mapping = config.get("id2label")
    if isinstance(mapping, dict) and mapping:
        try:
            by_id = {int(k): str(v) for k, v in mapping.items()}
        except ValueError:
            by_id = {}
        if sorted(by_id) == list(range(len(by_id))):
            return [by_id[i] for i in range(len(by_id))]
    count = config.get("num_labels", 2)  # transformers' default is two labels, LABEL_0 and LABEL_1
    return [f"LABEL_{i}" for i in range(count if isinstance(count, int) and count > 0 else 2)]


def head_layers(tree: Tree) -> tuple[list[str], str] | None:
    """The class layers the config's architecture names (first glob of its row with a hit), and why."""
    config = _config(tree)
    row = _row(config) if config is not None else None
    if row is None:
        return None
    present = layers(tree)
    for glob in row["layers"]:
        if any(matches(layer, [glob]) for layer in present):
            arch = next(n for n in config["architectures"] if matches(n, row["architectures"]))
            return [glob], f"config.json architectures {arch}: {row['why']}"
    return None


def follow_labels(tree: Tree, names: Sequence[str]) -> Tree:
    """The tree with its config.json rewritten for `names` (the head's rows); others pass through."""
    config = _config(tree)
    if config is None:
        return tree
    new = dict(config)
    if _is_timm(config):
        fields = _table()["timm"]["fields"]
    else:
        row = _row(config) or {"fields": {"num_labels": "count"}}
        fields = row["fields"]
        if row.get("no_object") and names and names[-1] == row["no_object"]:
            names = names[:-1]
        new["id2label"] = {str(i): n for i, n in enumerate(names)}
        new["label2id"] = {n: i for i, n in enumerate(names)}
    for field, kind in fields.items():
        new[field] = len(names) if kind == "count" else list(names)
    state = dict(tree.format_state)
    state[STATE] = {**state[STATE], "config": new}
    return tree.derive(format_state=state)


# -- writing --------------------------------------------------------------------------


def writes_folder(tree: Tree, path: Path) -> bool:
    """A tree read from a model folder is written as a folder when the output names none of our suffixes."""
    from .formats import OUTPUT_SUFFIXES

    return STATE in tree.format_state and Path(path).suffix.lower() not in OUTPUT_SUFFIXES


def save_folder(tree: Tree, tmp: Path, *, shard_size: int | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Fill the temporary folder `tmp`: weights, the edited config.json, the input's other files.

    Returns the names of the files copied verbatim. The input's weight files in other
    forms (pytorch_model.bin, tf_model.h5, ...) are not copied: they would be stale.
    """
    from .formats import safetensors_io

    metadata = dict(tree.metadata)
    metadata.setdefault("format", "pt")  # from_pretrained refuses safetensors files without it
    tree = tree.derive(metadata=metadata)
    if shard_size is None:
        safetensors_io.save(tree, tmp / SAFETENSORS, progress=progress)
    else:
        safetensors_io.save(tree, tmp, shard_size=shard_size, progress=progress)
    state = tree.format_state[STATE]
    _write_json(tmp / CONFIG, state["config"])
    return _copy_others(Path(state["folder"]), tmp)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, ensure_ascii=False)  # as save_pretrained writes it
        f.write("\n")
        f.flush()
        fsync(f.fileno())


def _copy_others(folder: Path, tmp: Path) -> list[str]:
    """Every top-level regular file but the weights and config.json, byte for byte."""
    import shutil  # only writing needs it; every load imports this module

    copied = []
    for p in sorted(folder.iterdir()):
        if p.name == CONFIG or p.name.endswith(_WEIGHT_SUFFIXES) or not p.is_file():
            continue
        shutil.copyfile(p, tmp / p.name)
        copied.append(p.name)
    return copied
