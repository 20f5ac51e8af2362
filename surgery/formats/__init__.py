"""The one registry of file formats. Each format module is imported only when used.

A format module provides:
    NAME, SUFFIXES
    sniff(path, head, size) -> bool   content detection from the first bytes
    load(path) -> Tree                lazy: reads headers, not tensor data
    save(tree, tmp_path, **options)   writes to the temporary path it is given
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..errors import FormatError

__all__ = ["FORMATS", "module", "detect", "for_output", "names"]

# name -> module. Order matters for detection: the first format that claims a file wins.
FORMATS: dict[str, str] = {
    "safetensors": "surgery.formats.safetensors_io",
    "npz": "surgery.formats.npz_io",
    "keras_h5": "surgery.formats.keras_h5",
    "keras": "surgery.formats.keras_zip",  # before torch: both are zips, told apart by their members
    "torch": "surgery.formats.torch_pt",
    "onnx": "surgery.formats.onnx_io",
}

# Suffixes, so that outputs can be named without --to and inputs can be detected
# without importing every module.
SUFFIXES: dict[str, str] = {
    ".safetensors": "safetensors",
    ".json": "safetensors",  # a sharded checkpoint's index
    ".npz": "npz",
    ".h5": "keras_h5",
    ".hdf5": "keras_h5",
    ".keras": "keras",
    ".pt": "torch",
    ".pth": "torch",
    ".onnx": "onnx",
    # .bin is not listed: it names too many things; torch zip files are found by content.
}
# Suffixes that name an output's format but are never trusted to detect an input's
# (pytorch_model.bin is Hugging Face's name for a torch.save file).
OUTPUT_SUFFIXES: dict[str, str] = {**SUFFIXES, ".bin": "torch"}


def names() -> list[str]:
    return list(FORMATS)


def module(name: str) -> ModuleType:
    try:
        return importlib.import_module(FORMATS[name])
    except KeyError:
        raise FormatError(f"unknown format {name!r}", "--to", f"use one of: {', '.join(FORMATS)}") from None


def detect(path: Path) -> str:
    """The format of an existing file or folder, by its content first and its suffix second."""
    path = Path(path)
    if not path.exists():
        raise FormatError("no such file or folder", str(path), "check the path")
    head, size = b"", 0
    if path.is_file():
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    for name in FORMATS:
        if module(name).sniff(path, head, size):
            return name
    by_suffix = SUFFIXES.get(path.suffix.lower())
    if by_suffix and path.is_file():
        return by_suffix
    raise FormatError(
        "cannot tell the file's format from its content or name",
        str(path),
        f"surgery reads: {', '.join(FORMATS)}",
    )


def for_output(path: Path, to: str | None, sharded: bool) -> str:
    """The format to write: --to if given, else the destination's suffix."""
    if to:
        module(to)  # validates the name
        return to
    suffix = Path(path).suffix.lower()
    by_suffix = OUTPUT_SUFFIXES.get(suffix) if suffix != ".json" else None
    if by_suffix:
        return by_suffix
    if sharded:
        return "safetensors"  # a sharded checkpoint is a folder: its name has no suffix to go by
    raise FormatError(
        "cannot tell which format to write from the output's name",
        str(path),
        f"pass --to ({', '.join(FORMATS)}) or use a known suffix ({', '.join(s for s in SUFFIXES if s != '.json')})",
    )
