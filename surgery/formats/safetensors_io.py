"""safetensors files, single and Hugging Face-sharded.

The header is parsed and checked here rather than by `safetensors.safe_open`
because we need the byte offsets (to stream tensors without loading them),
bfloat16 without torch, duplicate-key detection, and error messages that name
the tensor and both numbers. Tests check every file we write with the
`safetensors` library itself.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .. import dtypes, output_file
from ..durable import fsync
from ..errors import CorruptFileError, FormatError, OutputError
from ..tree import CONVENTIONS, TORCH, UNKNOWN, Entry, FileRange, Tree
from ._json import loads_strict

NAME = "safetensors"
SUFFIXES = (".safetensors",)
INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER = 100 << 20  # the safetensors library's own limit
_FIX = "the file is corrupt or not safetensors; re-export it"

Progress = Callable[[int], None]


# -- detection ----------------------------------------------------------------------


_PAGE = 4096


def sniff(path: Path, head: bytes, size: int) -> bool:
    """A safetensors file starts with a little-endian u64 header length and then '{'."""
    if path.is_dir():
        return _find_index(path) is not None or len(list(path.glob("*.safetensors"))) == 1
    if path.name.endswith(INDEX_SUFFIX):
        return True
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


# -- reading ------------------------------------------------------------------------


def load(path: Path) -> Tree:
    """A lazy tree over a .safetensors file, an index .json, or a folder holding either."""
    path = Path(path)
    if path.is_dir():
        index = _find_index(path)
        if index is not None:
            return _load_sharded(index)
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) != 1:
            raise FormatError(
                f"folder holds {len(singles)} .safetensors files and no *{INDEX_SUFFIX}",
                str(path),
                "point at one file, or add the index that lists the shards",
            )
        path = singles[0]
    if path.name.endswith(".json"):
        return _load_sharded(path)
    entries, metadata = read_header(path)
    return Tree(entries, format=NAME, convention=_convention(metadata), metadata=_public(metadata))


def read_header(path: Path) -> tuple[list[Entry], dict[str, str]]:
    """Parse and check one file's header; return its entries (in data order) and metadata."""
    size = path.stat().st_size
    where = str(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"file is {size} bytes, too short for a safetensors header", where, _FIX)
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise CorruptFileError(
                f"header length {n} runs past the end of the file ({size} bytes)", where, _FIX
            )
        if n > MAX_HEADER:
            raise CorruptFileError(f"header length {n} exceeds the {MAX_HEADER}-byte limit", where, _FIX)
        raw = f.read(n)
    header = loads_strict(raw, where, "header", _FIX)
    if not isinstance(header, dict):
        raise CorruptFileError("header is not a JSON object", where, _FIX)
    metadata = _metadata(header.pop("__metadata__", None), where)
    data_start = 8 + n
    entries = [_entry(name, info, path, data_start) for name, info in header.items()]
    _check_layout(entries, data_start, size - data_start, where)
    return entries, metadata


def _metadata(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CorruptFileError("__metadata__ is not a map of strings to strings", where, _FIX)
    return dict(value)


def _entry(name: str, info: Any, path: Path, data_start: int) -> Entry:
    where = f"{path}, tensor {name!r}"
    if not isinstance(info, dict):
        raise CorruptFileError("tensor entry is not a JSON object", where, _FIX)
    dtype = dtypes.from_safetensors(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise CorruptFileError(f"unknown dtype {info.get('dtype')!r}", where, _FIX)
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptFileError(f"shape {shape!r} is not a list of non-negative integers", where, _FIX)
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CorruptFileError(f"data_offsets {offsets!r} are not two ordered byte offsets", where, _FIX)
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if numel * dtype.bits % 8:
        raise CorruptFileError(
            f"shape {shape} of packed {dtype.name} is {numel * dtype.bits} bits, not whole bytes", where, _FIX
        )
    expected = dtype.nbytes(numel)
    if end - begin != expected:
        raise CorruptFileError(
            f"shape {shape} of {dtype.name} needs {expected} bytes but data_offsets span {end - begin}",
            where,
            _FIX,
        )
    return Entry(name, tuple(shape), dtype.name, FileRange(path, data_start + begin, end - begin))


def _check_layout(entries: list[Entry], data_start: int, data_size: int, where: str) -> None:
    """The tensors must tile the data section exactly: no gap, no overlap, nothing out of bounds."""
    position = 0
    for e in sorted(entries, key=lambda e: (e.source.offset, e.source.length)):
        begin, end = e.source.offset - data_start, e.source.offset - data_start + e.source.length
        if begin < position:
            raise CorruptFileError(f"tensor {e.name!r} overlaps the tensor before it (offset {begin} < {position})", where, _FIX)
        if begin > position:
            raise CorruptFileError(f"gap of {begin - position} bytes before tensor {e.name!r}", where, _FIX)
        if end > data_size:
            raise CorruptFileError(
                f"tensor {e.name!r} ends at byte {end} past the data section's {data_size} bytes", where, _FIX
            )
        position = end
    if position != data_size:
        raise CorruptFileError(
            f"{data_size - position} bytes after the last tensor belong to no tensor", where, _FIX
        )
    entries.sort(key=lambda e: e.source.offset)


CONVENTION_KEY = "surgery.convention"


def _convention(metadata: dict[str, str]):
    # Hugging Face writes format=pt for PyTorch weights; we record any other known layout ourselves.
    if metadata.get(CONVENTION_KEY) in CONVENTIONS:
        return CONVENTIONS[metadata[CONVENTION_KEY]]
    return TORCH if metadata.get("format") == "pt" else UNKNOWN


def _public(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata without our convention record, which the tree carries as its convention."""
    return {k: v for k, v in metadata.items() if k != CONVENTION_KEY}


def _metadata_to_write(tree: Tree) -> dict[str, str]:
    metadata = dict(tree.metadata)
    if tree.convention not in (UNKNOWN, _convention(metadata)):
        metadata[CONVENTION_KEY] = tree.convention.name
    return metadata


def _find_index(folder: Path) -> Path | None:
    found = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(found) > 1:
        raise FormatError(
            f"folder holds {len(found)} index files", str(folder), "point at the index .json you mean"
        )
    return found[0] if found else None


def _load_sharded(index: Path) -> Tree:
    where = str(index)
    if index.stat().st_size > MAX_HEADER:
        raise CorruptFileError(f"index is larger than {MAX_HEADER} bytes", where, _FIX)
    data = loads_strict(index.read_bytes(), where, "index", _FIX)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptFileError("index has no weight_map of tensor names to shard files", where, _FIX)
    shards: dict[str, dict[str, Entry]] = {}
    metadata: dict[str, str] | None = None
    for shard_name in dict.fromkeys(weight_map.values()):
        shard = _shard_path(index.parent, shard_name, where)
        entries, shard_metadata = read_header(shard)
        shards[shard_name] = {e.name: e for e in entries}
        metadata = shard_metadata if metadata is None else metadata
    ordered = []
    for name, shard_name in weight_map.items():
        entry = shards[shard_name].pop(name, None)
        if entry is None:
            raise CorruptFileError(f"index puts tensor {name!r} in {shard_name}, which lacks it", where, _FIX)
        ordered.append(entry)
    for shard_name, left in shards.items():
        if left:
            raise CorruptFileError(
                f"shard {shard_name} holds {len(left)} tensor(s) the index does not list, e.g. {next(iter(left))!r}",
                where,
                _FIX,
            )
    if metadata is None:
        metadata = _metadata_of_empty_checkpoint(index.parent)
    return Tree(ordered, format=NAME, convention=_convention(metadata), metadata=_public(metadata))


def _metadata_of_empty_checkpoint(folder: Path) -> dict[str, str]:
    # An index that lists no tensors still has its (empty) shard beside it, which holds the metadata.
    shards = sorted(folder.glob("*.safetensors"))
    return read_header(shards[0])[1] if len(shards) == 1 else {}


def _shard_path(folder: Path, name: str, where: str) -> Path:
    # A hostile index must not send us outside its folder.
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise CorruptFileError(f"shard name {name!r} is not a plain file name", where, _FIX)
    path = folder / name
    if not path.is_file():
        raise CorruptFileError(f"shard {name} listed in the index is missing", where, "copy every shard beside the index")
    return path


# -- writing ------------------------------------------------------------------------


def save(tree: Tree, path: Path, *, shard_size: int | None = None, progress: Progress | None = None) -> None:
    """Write `tree` to `path`: one file, or with `shard_size` a folder of shards plus an index.

    `path` is the temporary location chosen by the caller (see surgery.io.save).
    """
    if shard_size is None:
        entries = tree.entries()
        write_file(path, entries, build_header(entries, _metadata_to_write(tree)), progress)
    else:
        _write_sharded(path, tree, shard_size, progress)


def build_header(entries: Iterable[Entry], metadata: dict[str, str]) -> bytes:
    """The header bytes, padded with spaces so that tensor data starts 8-byte and page-aligned (see below)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for e in entries:
        if e.name == "__metadata__":
            raise OutputError(
                "a tensor named __metadata__ collides with safetensors' metadata key", e.name, "rename the tensor"
            )
        if e.numel * dtypes.get(e.dtype).bits % 8:
            raise OutputError(
                f"tensor {e.name!r} of packed {e.dtype} holds {e.numel} elements, which do not fill whole bytes",
                e.name,
                "safetensors stores packed dtypes only in whole bytes; pad the tensor",
            )
        header[e.name] = {
            "dtype": dtypes.get(e.dtype).safetensors,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * ((_data_start_residue(entries) - (len(raw) + 8)) % _PAGE)
    return struct.pack("<Q", len(raw)) + raw


def _data_start_residue(entries: Iterable[Entry]) -> int:
    """Where, modulo a page, the data section should start; the header is padded with spaces to get there.

    The kernel copies file to file fastest when source and destination offsets agree modulo
    the page size. Tensors copied from one file keep their relative offsets, so matching the
    first copied tensor's page offset aligns them all; with no file to copy from, data starts
    on a page. Spaces after the JSON are allowed by the format, and 8-byte alignment is kept.
    """
    offset = 0
    for e in entries:
        if isinstance(e.source, FileRange) and e.source.length == e.nbytes:
            residue = (e.source.offset - offset) % _PAGE
            return residue if residue % 8 == 0 else 0
        offset += e.nbytes
    return 0


def write_file(path: Path, entries: list[Entry], header: bytes, progress: Progress | None, after: int = 0) -> None:
    """One safetensors file of `entries` under `header` (build_header's); `after` is the bytes the
    same save writes after this file (later shards)."""
    with output_file.create(path, len(header) + sum(e.nbytes for e in entries) + after) as out:
        out.write(header)
        for run in _copy_runs(entries):
            e = run[0]
            source = FileRange(e.source.path, e.source.offset, sum(r.nbytes for r in run)) if len(run) > 1 else e.source
            expected = sum(r.nbytes for r in run)
            written = source.copy_into(e, out, progress)
            if written != expected:
                raise CorruptFileError(
                    f"tensor {e.name!r} gave {written} bytes but {expected} were expected", e.name, _FIX
                )
        # No fsync here: the atomic-output step fsyncs every file it renames into place, and by
        # then the bytes are on the disk already (direct writes) or mostly (writeback requests).


def _copy_runs(entries: list[Entry]) -> Iterator[list[Entry]]:
    """The entries in order, neighbours that lie back to back in one file grouped into one run.

    A run is copied by one kernel call: a checkpoint of 50,000 small tensors (an LLM's shape)
    then costs a handful of copies, not 50,000 opens and copies.
    """
    run: list[Entry] = []
    for e in entries:
        s = e.source
        contiguous = (
            run
            and isinstance(s, FileRange)
            and s.length == e.nbytes
            and s.path == run[-1].source.path
            and s.offset == run[-1].source.offset + run[-1].source.length
        )
        if run and not contiguous:
            yield run
            run = []
        if isinstance(s, FileRange) and s.length == e.nbytes:
            run.append(e)
        else:
            yield [e]
    if run:
        yield run


def plan_shards(entries: list[Entry], shard_size: int) -> list[list[Entry]]:
    """Greedy, in order: start a new shard when the next tensor would overflow this one.

    A tensor larger than shard_size gets a shard of its own, as Hugging Face does.
    """
    shards: list[list[Entry]] = [[]]
    used = 0
    for e in entries:
        if shards[-1] and used + e.nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(e)
        used += e.nbytes
    return shards


def _write_sharded(folder: Path, tree: Tree, shard_size: int, progress: Progress | None) -> None:
    shards = plan_shards(tree.entries(), shard_size)
    count = len(shards)
    weight_map: dict[str, str] = {}
    metadata = _metadata_to_write(tree)
    headers = [build_header(shard, metadata) for shard in shards]
    sizes = [len(header) + sum(e.nbytes for e in shard) for header, shard in zip(headers, shards)]
    for k, (shard, header) in enumerate(zip(shards, headers), start=1):
        name = f"model-{k:05d}-of-{count:05d}.safetensors"
        # The whole rest of the output decides the page cache or not: 16 shards of 1 GB are 16 GB of dirty pages.
        write_file(folder / name, shard, header, progress, after=sum(sizes[k:]))
        weight_map.update((e.name, name) for e in shard)
    index = {"metadata": {"total_size": tree.total_bytes}, "weight_map": weight_map}
    with open(folder / ("model" + INDEX_SUFFIX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        fsync(f.fileno())
