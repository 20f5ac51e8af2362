"""Writing PyTorch checkpoints in torch.save's zip format, without importing torch.

The archive holds what torch 2.13's own writer puts there, in the same order:

    archive/data.pkl               the state dict, pickled (protocol 2)
    archive/.format_version        "1"
    archive/.storage_alignment     "64"
    archive/byteorder              "little"
    archive/data/<key>             one member per storage, stored uncompressed, data 64-byte aligned
    archive/version                "3\\n"
    archive/.data/serialization_id 40 digits

The pickle is emitted opcode by opcode here, because the standard Pickler can only name a
global by importing it, and we do not import torch. It is an `OrderedDict` of
`torch._utils._rebuild_tensor_v2(<storage>, offset, shape, stride, False, OrderedDict())`
calls, or `_rebuild_tensor_v3(..., dtype)` over an untyped byte storage for the dtypes
torch saves that way (float8, uint16/32/64), exactly as `torch.save` pickles them. The
tree's metadata rides in the dict's `_metadata` attribute as `{"__surgery__": {...}}`,
which `torch.load(weights_only=True)` restores and `load_state_dict` ignores.

The archive is the one the standard library's `zipfile` writes for these members, byte for
byte, Zip64 included (surgery/formats/zip_stored.py); the 64-byte alignment is made, as torch
makes it, with a padding field in each local header. Tensors read from a file are copied
file to file by the kernel, as `cp` copies, with their CRC-32 computed beside the copy on a
second thread; other tensors move one chunk at a time: memory stays near one chunk.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import dtypes, output_file
from ..errors import CorruptFileError, OutputError
from ..tree import KERAS, ArraySource, Entry, FileRange, Tree
from .zip_stored import StoredZipWriter, local_header_size

__all__ = ["save", "check_writable", "plan_storages", "Storage", "pickle_state_dict", "ARCHIVE", "ALIGNMENT"]

Progress = Callable[[int], None]

ARCHIVE = "archive"  # the member prefix torch.save uses when writing to a file object
ALIGNMENT = 64  # torch's default storage alignment (torch.utils.serialization.config)
METADATA_KEY = "__surgery__"  # our key inside state_dict._metadata
STORAGE_ATTR = "torch.storage"  # entry attr: the storage key a tensor was read from

# Dtypes torch pickles as typed storages through _rebuild_tensor_v2.
_TYPED_STORAGES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
    "uint8": "ByteStorage", "bool": "BoolStorage", "complex64": "ComplexFloatStorage",
}
# Dtypes torch pickles as untyped byte storages plus a dtype, through _rebuild_tensor_v3
# (torch.storage._new_dtypes()).
_UNTYPED_DTYPES = {
    "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
}
WRITABLE = frozenset(_TYPED_STORAGES) | frozenset(_UNTYPED_DTYPES)


# -- checks -------------------------------------------------------------------------


def check_writable(tree: Tree) -> None:
    """Refuse what a torch.save checkpoint cannot hold, before anything is written.

    Raises:
        OutputError: the tree is in Keras layout, or a tensor's dtype has no torch form
            (packed fp4/fp6).
    """
    if tree.convention == KERAS:
        raise OutputError(
            "the weights are in Keras layout (output axis last); PyTorch modules expect the output axis first",
            "torch",
            "add --layout torch",
        )
    for e in tree.values():
        if e.dtype not in WRITABLE:
            dtype = dtypes.get(e.dtype)
            kind = f"packed at {dtype.bits} bits per element" if dtype.packed else "not a torch dtype"
            raise OutputError(
                f"tensor {e.name!r} is {e.dtype} ({kind}), which torch.save files cannot hold",
                e.name,
                "write .safetensors instead, which keeps it, or cast it with --dtype float16",
            )


# -- which entries share a storage --------------------------------------------------


@dataclass
class Storage:
    """One `data/<key>` member: the bytes to write and the tensors that view them.

    `source` is an entry whose bytes are the whole storage; `views` pairs each tensor
    with its element offset into the storage.
    """

    key: str
    dtype: str
    numel: int
    source: Entry
    views: list[tuple[Entry, int]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return dtypes.get(self.dtype).nbytes(self.numel)


def plan_storages(tree: Tree) -> list[Storage]:
    """The storages to write, keyed "0", "1", ... in the order tensors first use them.

    Entries are written as views of one storage only when they provably share bytes:
    the same `torch.storage` key read unchanged from the same file (their byte ranges
    then lie in one storage member), or the very same in-memory array. Everything else
    gets a storage of its own.
    """
    groups: dict[object, list[Entry]] = {}
    for e in tree.values():
        groups.setdefault(_tie_key(e) or ("alone", e.name), []).append(e)
    storages: list[Storage] = []
    for members in groups.values():
        for source, numel, views in _split_group(members):
            storages.append(Storage(str(len(storages)), source.dtype, numel, source, views))
    return storages


def _tie_key(e: Entry) -> tuple | None:
    key = e.attrs.get(STORAGE_ATTR)
    if key is None:
        return None
    if type(e.source) is FileRange:
        return ("file", str(e.source.path), str(key), e.dtype)
    if type(e.source) is ArraySource:
        return ("array", id(e.source.array), str(key), e.dtype)
    return None


def _split_group(members: list[Entry]) -> Iterator[tuple[Entry, int, list[tuple[Entry, int]]]]:
    first = members[0]
    if len(members) == 1:
        yield first, first.numel, [(first, 0)]
    elif type(first.source) is ArraySource:  # one array object: identical views
        yield first, first.numel, [(e, 0) for e in members]
    else:
        yield from _file_span(members)


def _file_span(members: list[Entry]) -> Iterator[tuple[Entry, int, list[tuple[Entry, int]]]]:
    """Byte ranges of one storage member in one file: write their union once, offsets into it."""
    first = members[0]
    size = dtypes.get(first.dtype).nbytes(1)
    start = min(e.source.offset for e in members)  # type: ignore[attr-defined]
    end = max(e.source.offset + e.source.length for e in members)  # type: ignore[attr-defined]
    if any((e.source.offset - start) % size for e in members):  # type: ignore[attr-defined]
        for e in members:  # not views of one typed storage after all
            yield e, e.numel, [(e, 0)]
        return
    numel = (end - start) // size
    span = Entry(first.name, (numel,), first.dtype, FileRange(first.source.path, start, end - start), first.attrs)  # type: ignore[attr-defined]
    yield span, numel, [(e, (e.source.offset - start) // size) for e in members]  # type: ignore[attr-defined]


# -- the pickle ---------------------------------------------------------------------


class _Pickle:
    """A protocol-2 opcode emitter for exactly the objects a state dict holds."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo: dict[tuple[str, str], int] = {}

    def op(self, code: bytes) -> None:
        self.out += code

    def global_(self, module: str, name: str) -> None:
        index = self.memo.get((module, name))
        if index is not None:
            self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)  # BINGET
            return
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")  # GLOBAL
        index = self.memo[(module, name)] = len(self.memo)
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)  # BINPUT

    def str_(self, text: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE

    def int_(self, n: int) -> None:
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])  # BININT1
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)  # BININT2
        elif -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)  # BININT
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw  # LONG1

    def tuple_(self, items: Iterable[int]) -> None:
        items = list(items)
        if len(items) > 3:
            self.out += b"("  # MARK
        for n in items:
            self.int_(n)
        self.out += (b")", b"\x85", b"\x86", b"\x87")[len(items)] if len(items) <= 3 else b"t"

    def str_dict(self, mapping: dict[str, str]) -> None:
        self.out += b"}"  # EMPTY_DICT
        if mapping:
            self.out += b"("  # MARK
            for k, v in mapping.items():
                self.str_(k)
                self.str_(v)
            self.out += b"u"  # SETITEMS


def pickle_state_dict(storages: list[Storage], order: list[str], metadata: dict[str, str]) -> bytes:
    """data.pkl: an OrderedDict of tensor rebuild calls, in `order`, with metadata in `_metadata`."""
    p = _Pickle()
    p.global_("collections", "OrderedDict")
    p.op(b")R")  # EMPTY_TUPLE, REDUCE
    views = {e.name: (s, offset, e) for s in storages for e, offset in s.views}
    for batch in range(0, len(order), 1000):  # SETITEMS in batches of 1000, as pickle does
        p.op(b"(")
        for name in order[batch : batch + 1000]:
            p.str_(name)
            _tensor(p, *views[name])
        p.op(b"u")
    if metadata:
        p.op(b"}")  # the BUILD state: {"_metadata": {"__surgery__": {...}}}
        p.str_("_metadata")
        p.op(b"}")
        p.str_(METADATA_KEY)
        p.str_dict(metadata)
        p.op(b"ssb")  # SETITEM, SETITEM, BUILD
    p.op(b".")
    return bytes(p.out)


def _tensor(p: _Pickle, storage: Storage, offset: int, e: Entry) -> None:
    untyped = e.dtype in _UNTYPED_DTYPES
    p.global_("torch._utils", "_rebuild_tensor_v3" if untyped else "_rebuild_tensor_v2")
    p.op(b"((")  # MARK args, MARK persistent id
    p.str_("storage")
    if untyped:
        p.global_("torch.storage", "UntypedStorage")
    else:
        p.global_("torch", _TYPED_STORAGES[e.dtype])
    p.str_(storage.key)
    p.str_("cpu")
    p.int_(storage.nbytes if untyped else storage.numel)
    p.op(b"tQ")  # TUPLE, BINPERSID
    p.int_(offset)
    p.tuple_(e.shape)
    p.tuple_(contiguous_stride(e.shape))
    p.op(b"\x89")  # NEWFALSE: requires_grad
    p.global_("collections", "OrderedDict")  # backward hooks
    p.op(b")R")
    if untyped:
        p.global_("torch", e.dtype)
    p.op(b"tR")  # TUPLE, REDUCE


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides as torch computes them (a zero-size axis counts as one)."""
    stride, step = [], 1
    for n in reversed(shape):
        stride.append(step)
        step *= max(n, 1)
    return tuple(reversed(stride))


# -- the archive --------------------------------------------------------------------


def save(tree: Tree, path: Path, *, progress: Progress | None = None) -> None:
    """Write `tree` to `path` as a torch.save checkpoint that `torch.load(weights_only=True)` reads.

    `path` is the temporary location chosen by the caller (see surgery.io.save).

    Args:
        tree: the tensors, streamed one chunk at a time; entries sharing a storage stay tied.
        path: the file to create.
        progress: called with the number of tensor bytes written after each chunk.

    Raises:
        OutputError: the tree cannot be stored (see `check_writable`).
        CorruptFileError: a tensor's source gave a different number of bytes than declared.
    """
    check_writable(tree)
    storages, data_pkl = _training_checkpoint(tree) or _state_dict(tree)
    expected = sum(s.nbytes for s in storages)  # the zip's own records add a few KiB
    with output_file.create(path, expected) as out, StoredZipWriter(out) as z:
        archive = _Archive(z)
        archive.small("data.pkl", data_pkl)
        archive.small(".format_version", b"1")
        archive.small(".storage_alignment", str(ALIGNMENT).encode())
        archive.small("byteorder", b"little")
        for s in storages:
            archive.storage(s, progress)
        archive.small("version", b"3\n")
        archive.small(".data/serialization_id", archive.serialization_id())
    # No fsync here: the atomic-output step fsyncs the file it renames into place.


def _state_dict(tree: Tree) -> tuple[list[Storage], bytes]:
    storages = plan_storages(tree)
    return storages, pickle_state_dict(storages, list(tree), dict(tree.metadata))


def _training_checkpoint(tree: Tree) -> tuple[list[Storage], bytes] | None:
    """A training checkpoint's optimizer state and other entries go back around the state dict (torch_training)."""
    from .torch_training import extra_entries, pickle_checkpoint, training_state

    state = training_state(tree)
    if state is None or state.framework != "torch":  # a Keras optimizer has no torch.optim state dict
        return None
    storages = plan_storages(Tree([*tree.values(), *extra_entries(tree)]))
    return storages, pickle_checkpoint(tree, storages, dict(tree.metadata))


class _Archive:
    """Names members as torch does and puts each one's data on torch's alignment."""

    def __init__(self, z: StoredZipWriter) -> None:
        self.z = z

    def small(self, name: str, data: bytes) -> None:
        full = f"{ARCHIVE}/{name}"
        self.z.write_bytes(full, data, _padding(self.z.offset, full, len(data)))

    def storage(self, s: Storage, progress: Progress | None) -> None:
        full = f"{ARCHIVE}/data/{s.key}"
        extra = _padding(self.z.offset, full, s.nbytes)
        source = s.source.source
        if isinstance(source, FileRange) and source.length == s.nbytes:
            written = self.z.copy_range(full, s.source, source, extra, progress)
        else:
            written = self.z.write_chunks(full, s.source.iter_bytes(), s.nbytes, extra, progress)
        if written != s.nbytes:
            tensor = s.source.name
            raise CorruptFileError(
                f"tensor {tensor!r} gave {written} bytes but {s.nbytes} were expected", tensor, "the source file changed or is truncated"
            )

    def serialization_id(self) -> bytes:
        """40 digits, like torch's: here a hash of the member names and of their CRCs, so equal inputs give equal files."""
        names, crcs = hashlib.sha256(), 0
        for member, crc in zip(self.z.members, self.z.crcs()):
            names.update(member.name + b"\0")
            crcs = zlib.crc32(struct.pack("<I", crc), crcs)
        return f"{int.from_bytes(names.digest()[:8], 'little'):020d}{crcs:020d}".encode("ascii")


def _padding(offset: int, name: str, size: int) -> bytes:
    """A local-header extra field ("FB" + "Z"s, as torch writes it) that puts the data on a 64-byte boundary."""
    pad = -(offset + local_header_size(name, 4, size)) % ALIGNMENT  # 4: our field's own header
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad
