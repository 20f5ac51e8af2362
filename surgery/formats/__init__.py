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

__all__ = ["FORMATS", "LEADING_BYTES", "module", "detect", "for_output", "names"]

# name -> module. Order matters for detection: the first format that claims a file wins.
FORMATS: dict[str, str] = {
    "safetensors": "surgery.formats.safetensors_io",
    "npz": "surgery.formats.npz_io",
    "keras_h5": "surgery.formats.keras_h5",
    "keras": "surgery.formats.keras_zip",  # before torch: both are zips, told apart by their members
    "torch": "surgery.formats.torch_pt",
    "onnx": "surgery.formats.onnx_io",
}

# What a file of each format can start with: (offset, bytes) pairs, any one of which is enough.
# A format's own `sniff` (which may open the archive) is asked only when one matches, so telling
# a file's format imports the one or two modules that could read it, not all six (and not numpy,
# which the HDF5 and npz readers need). Each row must hold whatever its `sniff` accepts.
LEADING_BYTES: dict[str, tuple[tuple[int, bytes], ...]] = {
    "safetensors": ((8, b"{"),),  # a little-endian u64 header length, then the JSON header
    "npz": ((0, b"PK\x03\x04"), (0, b"PK\x05\x06")),  # a zip; an empty one is only its end record
    "keras_h5": ((0, b"\x89HDF\r\n\x1a\n"),),  # the HDF5 signature
    "keras": ((0, b"PK\x03\x04"),),
    "torch": ((0, b"PK\x03\x04"), (0, b"\x80")),  # a zip, or (legacy) a pickle's PROTO opcode
    "onnx": ((0, b"\x08"),),  # a ModelProto's field 1 (ir_version) as a varint
}
# Formats that claim some inputs by their name or as folders, whatever the first bytes say.
NAME_ENDINGS: dict[str, str] = {".safetensors.index.json": "safetensors"}  # a sharded checkpoint's index
FOLDER_FORMATS = ("safetensors",)  # a folder of shards, or holding one .safetensors file

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
    for name in _candidates(path, head):
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


def _candidates(path: Path, head: bytes) -> list[str]:
    """The formats, in detection order, whose sniff could claim `path` (see LEADING_BYTES)."""
    if path.is_dir():
        return [name for name in FORMATS if name in FOLDER_FORMATS]
    by_name = {name for ending, name in NAME_ENDINGS.items() if path.name.endswith(ending)}
    return [
        name
        for name in FORMATS
        if name in by_name or any(head[at : at + len(lead)] == lead for at, lead in LEADING_BYTES[name])
    ]


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
