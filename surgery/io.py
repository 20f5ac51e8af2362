"""Reading and writing trees: format detection, safe destinations and atomic writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from . import formats
from . import hf
from .durable import no_sync
from .errors import CorruptFileError, FormatError, OutputError, SurgeryError
from .graph import GRAPH
from .tree import Tree

__all__ = ["load", "save", "check_output"]


def load(path: str | Path, format: str | None = None, *, key: str | None = None) -> Tree:
    """Open a checkpoint lazily: names, shapes and dtypes now, tensor data only when read.

    Args:
        path: a file, a sharded checkpoint's index .json, or a folder holding one.
        format: force a format name instead of detecting it from the content.
        key: PyTorch checkpoints only: the top-level entry that holds the state dict
            (e.g. "model_ema"); by default the state dict is found by itself.

    Raises:
        SurgeryError: the file is missing, of an unknown format, corrupt, or unsafe.

    Example:
        >>> tree = load("fixtures/tiny.safetensors")  # doctest: +SKIP
        >>> tree["classifier.weight"].shape  # doctest: +SKIP
        (10, 8)
    """
    path = Path(path)
    if format is None and hf.is_model_folder(path):  # config.json + weights: the config travels with the tree
        tree = hf.load(path, key=key)
        tree.inputs = _input_paths(path)
        return tree
    try:
        name = format or formats.detect(path)
        options = _key_option(name, key, path)
        tree = formats.module(name).load(path, **options)
    except SurgeryError:
        raise
    except OSError as e:
        raise SurgeryError(f"cannot read the file ({e.strerror or e})", str(path), "check the path and permissions") from e
    _check_names(tree, path)
    tree.inputs = _input_paths(path)
    return tree


def _check_names(tree: Tree, path: Path) -> None:
    """Refuse, at read time, names no writer could store (lone surrogates from a bad file)."""
    texts = [*tree, *tree.metadata, *tree.metadata.values(), *(v for v in tree.format_state.values() if isinstance(v, str))]
    for text in texts:
        try:
            text.encode("utf-8")
        except (UnicodeEncodeError, AttributeError):
            bad = next((k for k, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF), 0) if isinstance(text, str) else 0
            raise CorruptFileError(
                f"the file holds the name {ascii(text[max(0, bad - 20) : bad + 20])}, which is not valid UTF-8",
                str(path),
                "the file is corrupt; re-export it",
            ) from None


def _input_paths(path: Path) -> tuple[Path, ...]:
    """What a load came from, even when no tensor is read from it: the path, a folder's
    files (index, shards), and the folder that holds an index."""
    found = [path]
    if path.is_dir():
        found += [p for p in sorted(path.iterdir()) if p.is_file()]
    elif path.suffix.lower() == ".json":
        found.append(path.parent)
        found += [p for p in sorted(path.parent.glob("*.safetensors")) if p.is_file()]
    return tuple(found)


def _key_option(name: str, key: str | None, path: Path) -> dict[str, str]:
    if key is None:
        return {}
    if name != "torch":
        raise FormatError(f"--key chooses an entry of a PyTorch checkpoint, but this is a {name} file", str(path), "drop --key")
    return {"key": key}


def save(
    tree: Tree,
    path: str | Path,
    format: str | None = None,
    *,
    force: bool = False,
    shard_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    sync: bool = True,
) -> str:
    """Write `tree` atomically to `path` and return the format written.

    The data goes to a temporary file (or folder, when sharding) beside `path`,
    is flushed and fsynced, and is renamed into place only when complete. An
    existing `path` is refused unless `force`; a `path` that is one of the
    tree's own input files is always refused.

    Args:
        tree: what to write; its tensors are streamed one at a time.
        path: destination file, or destination folder when `shard_size` is given.
        format: a format name; by default taken from the suffix.
        force: replace an existing destination.
        shard_size: split safetensors output into shards of at most this many bytes.
        progress: called with the number of bytes written after each chunk.
        sync: False skips every fsync (the CLI's --no-sync), for scratch outputs: faster,
            and an interrupted process still leaves the old or the complete new output,
            but a power loss or OS crash soon after can leave `path` empty or partial.
            (Inside `surgery.durable.no_sync()` the fsyncs are skipped whatever `sync` says.)
    """
    if not sync:
        with no_sync():
            return save(tree, path, format, force=force, shard_size=shard_size, progress=progress)
    from .atomic import atomic_output  # here: reading (inspect) needs none of it

    path = Path(path)
    name = check_output(tree, path, format, force=force, shard_size=shard_size)
    options = {"shard_size": shard_size} if shard_size is not None else {}
    save_atomically = getattr(formats.module(name), "save_atomically", None)
    folder = hf.writes_folder(tree, path)
    try:
        if save_atomically is not None:  # a format of several files (ONNX model + data) writes them as one unit
            save_atomically(tree, path, progress=progress)
            return name
        with atomic_output(path, directory=shard_size is not None or folder) as tmp:
            if folder:  # weights, the edited config.json and the other files appear together
                hf.save_folder(tree, tmp, progress=progress, **options)
            else:
                formats.module(name).save(tree, tmp, progress=progress, **options)
    except OSError as e:  # named by the destination the user gave, never by our temporary file
        detail = e.strerror or re.sub(re.escape(f".{path.name}.tmp-") + "[0-9]+-[0-9a-f]+", path.name, str(e))
        raise OutputError(f"cannot write the output ({detail})", str(path), "check free space and permissions") from e
    return name


def check_output(
    tree: Tree, path: str | Path, format: str | None = None, *, force: bool = False, shard_size: int | None = None
) -> str:
    """Everything `save` checks before writing, without writing: returns the format name.

    Commands call it first so that a dry run fails exactly where the real run would.
    """
    from .atomic import check_destination, refuse_stdout

    path = Path(path)
    refuse_stdout(path)
    folder = hf.writes_folder(tree, path)
    name = formats.for_output(path, format, sharded=shard_size is not None or folder)
    if folder and name != "safetensors":
        raise OutputError(f"a Hugging Face model folder is written as safetensors, not {name}", str(path), "drop --to, or name a file")
    if not hasattr(formats.module(name), "save"):
        raise OutputError(f"writing {name} files is not available yet", str(path), formats.module(name).CANNOT_WRITE)
    if shard_size is not None and name != "safetensors":
        raise OutputError(f"{name} files cannot be sharded", "--shard-size", "drop --shard-size, or write safetensors")
    if shard_size is not None and path.suffix.lower() in formats.OUTPUT_SUFFIXES:
        raise OutputError(
            "--shard-size writes a folder of shards, but the output is named like a file",
            str(path),
            f"name a folder, e.g. -o {path.with_suffix('')}",
        )
    check_destination(path, _tree_inputs(tree), force=force)
    check_writable = getattr(formats.module(name), "check_writable", None)
    if check_writable is not None:  # what the format cannot hold is refused before anything is written
        check_writable(tree)
    return name


def _tree_inputs(tree: Tree) -> set[Path]:
    """Every file the tree reads, and the file its graph came from (a model whose weights are all external)."""
    graph_paths = getattr(tree.format_state.get(GRAPH), "source_paths", None)
    return tree.source_paths() | set(graph_paths() if callable(graph_paths) else ())
