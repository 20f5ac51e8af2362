"""The named tensor tree: an ordered, lazy, immutable mapping of tensor entries.

A tree knows every tensor's name, shape and dtype without reading data.
Data is read on demand through the entry's `source` and is not cached, so
memory stays bounded by the largest tensor an operation touches.
Operations never mutate a tree: `Tree.derive` builds a new tree that shares
every entry it does not replace.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import dtypes
from .errors import CorruptFileError, OperationError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .output_file import OutputFile
# numpy is imported inside the functions that touch data: a tree of names, shapes and dtype
# names is built and listed without it (`surgery inspect` never imports numpy).

__all__ = ["Convention", "KERAS", "TORCH", "UNKNOWN", "Entry", "Tree", "Source", "FileRange", "ArraySource", "LazySource"]

CHUNK = 16 << 20  # bytes moved per step when streaming tensor data


@dataclass(frozen=True)
class Convention:
    """Where a framework puts a weight's output axis.

    Keras stores conv kernels as (h, w, in, out) and Dense kernels as (in, out):
    the output axis is the last. PyTorch stores (out, in, kh, kw) and (out, in):
    the output axis is the first.
    """

    name: str
    out_axis: int | None

    def __str__(self) -> str:
        return self.name


KERAS = Convention("keras", -1)
TORCH = Convention("torch", 0)
UNKNOWN = Convention("unknown", None)
CONVENTIONS = {c.name: c for c in (KERAS, TORCH, UNKNOWN)}

# The format_state key under which a reader says what it left out (e.g. optimizer state).
DROPPED_ON_READ = "dropped_on_read"


# -- where an entry's bytes come from -------------------------------------------------


class Source:
    """Produces one tensor's data on demand. Subclasses override one of the two readers."""

    def read_array(self, entry: Entry) -> np.ndarray:
        import numpy as np

        raw = b"".join(bytes(chunk) for chunk in self.iter_bytes(entry))
        dtype = dtypes.get(entry.dtype).numpy().newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))

    def iter_bytes(self, entry: Entry) -> Iterator[memoryview]:
        """The tensor as little-endian, C-order bytes, in chunks."""
        array = self.read_array(entry)
        yield from _array_chunks(array)

    def read_take(self, entry: Entry, indices: Sequence[int], axis: int) -> np.ndarray:
        """`np.take(tensor, indices, axis)`; sources that can read part of a tensor read only what it keeps."""
        import numpy as np

        return np.take(self.read_array(entry), list(indices), axis=axis)

    def paths(self) -> tuple[Path, ...]:
        """Files this source reads, so writers can refuse to overwrite them."""
        return ()

    def copy_into(self, entry: Entry, out: OutputFile, progress: Callable[[int], None] | None) -> int:
        """Append the tensor's little-endian bytes to `out`; return the count."""
        written = 0
        for chunk in self.iter_bytes(entry):
            out.write(chunk)
            written += len(chunk)
            if progress:
                progress(len(chunk))
        return written


_TAKE_BLOCK = 4 << 20  # bytes read per step when a take streams a tensor: a block stays in cache while numpy gathers from it
_READ_COST = 16 << 10  # one read call costs about as much as copying this many bytes (the cost model's exchange rate)


def checked_picks(indices: Sequence[int], size: int, axis: int) -> np.ndarray:
    """`indices` as non-negative intp, with numpy's IndexError for one outside [-size, size).

    Checked once here, the gathers can use numpy's `mode="wrap"`, which writes straight into a
    given `out` (the default mode buffers it: a second copy of the output).
    """
    import numpy as np

    picks = np.asarray(indices, dtype=np.intp).reshape(-1)
    bad = picks[(picks < -size) | (picks >= size)]
    if bad.size:
        raise IndexError(f"index {int(bad[0])} is out of bounds for axis {axis} with size {size}")
    return np.where(picks < 0, picks + size, picks)


def _runs(picks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output position, first slice, length) of each run of picks that step by one, in the requested order."""
    import numpy as np

    breaks = np.flatnonzero(np.diff(picks) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(picks)]]))
    return starts, picks[starts], lengths


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, as a view to read into."""
    import numpy as np

    return memoryview(array.reshape(-1).view(np.uint8))


_PREADV = hasattr(os, "preadv")


def in_requested_order(kept: np.ndarray, unique: list[int], indices: Sequence[int], axis: int) -> np.ndarray:
    """`kept` holds the slices `unique` (sorted, no repeats) along `axis`; put them in `indices`' order.

    Sorted picks without repeats (`--num-classes`) are already in order: no second copy then.
    """
    if len(unique) == len(indices) and all(a == b for a, b in zip(unique, indices)):
        return kept
    import numpy as np

    position = {row: i for i, row in enumerate(unique)}
    return np.take(kept, [position[int(i)] for i in indices], axis=axis)


def _array_chunks(array: np.ndarray) -> Iterator[memoryview]:
    import numpy as np

    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    flat = np.ascontiguousarray(little).reshape(-1).view(np.uint8)
    for start in range(0, flat.size, CHUNK):
        yield memoryview(flat[start : start + CHUNK])


@dataclass(frozen=True, eq=False)
class FileRange(Source):
    """Raw little-endian bytes at a known place in a file (safetensors, stored npz members)."""

    path: Path
    offset: int
    length: int

    def iter_bytes(self, entry: Entry) -> Iterator[memoryview]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.length
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise self._truncated(entry, left)
                left -= len(chunk)
                yield memoryview(chunk)

    def read_array(self, entry: Entry) -> np.ndarray:
        import numpy as np

        dtype = dtypes.get(entry.dtype).numpy()
        out = np.empty(entry.shape, dtype=dtype.newbyteorder("<"))
        view = out.reshape(-1).view(np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            got = f.readinto(view) if view.size else 0
        if got != self.length:
            raise CorruptFileError(
                f"expected {self.length} bytes for tensor {entry.name!r} but the file gave {got}",
                str(self.path),
                "the file is truncated; copy or download it again",
            )
        return out.astype(dtype, copy=False)

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)

    def read_take(self, entry: Entry, indices: Sequence[int], axis: int) -> np.ndarray:
        # Class surgery keeps a few slices of a large head: read only what is cheapest. Around
        # `axis` the tensor is (outer, size, inner): a kept slice is `inner` contiguous values,
        # once per outer row. Reading each run of neighbouring picks costs a read call per run
        # and outer row; streaming reads every byte in 4 MiB blocks and numpy gathers the picks
        # (a 30,000-of-250,000-column Keras head: 27,000 runs in each of 1,024 rows, so stream).
        # The output is allocated once and filled in place: memory is the output plus one block.
        import numpy as np

        kind = dtypes.get(entry.dtype)
        if entry.numel == 0 or kind.packed or not -len(entry.shape) <= axis < len(entry.shape):
            return super().read_take(entry, indices, axis)  # nothing to read, or numpy's own error
        axis %= len(entry.shape)
        size = entry.shape[axis]
        picks = checked_picks(indices, size, axis)
        shape = (*entry.shape[:axis], len(picks), *entry.shape[axis + 1 :])
        if not len(picks):
            return np.empty(shape, dtype=kind.numpy())
        dtype = kind.numpy().newbyteorder("<")
        if entry.numel * dtype.itemsize != self.length:
            raise CorruptFileError(
                f"tensor {entry.name!r} needs {entry.numel * dtype.itemsize} bytes but its range holds {self.length}",
                str(self.path),
                "the file is inconsistent; re-export it",
            )
        outer, inner = math.prod(entry.shape[:axis]), math.prod(entry.shape[axis + 1 :])
        out = np.empty((outer, len(picks), inner), dtype=dtype)
        slice_bytes = inner * dtype.itemsize
        starts, firsts, lengths = _runs(picks)
        by_runs = outer * (len(starts) * _READ_COST + len(picks) * slice_bytes)
        streamed = self.length + (self.length // _TAKE_BLOCK + 1) * _READ_COST
        with open(self.path, "rb", buffering=0) as f:
            if by_runs <= streamed:
                into = _bytes_of(out)  # slices of one view: a read per run costs no numpy call
                runs = list(zip((starts * slice_bytes).tolist(), (firsts * slice_bytes).tolist(), (lengths * slice_bytes).tolist()))
                for row in range(outer):
                    base, at_row = self.offset + row * size * slice_bytes, row * len(picks) * slice_bytes
                    for at, first, n in runs:
                        self._read_exactly(f, entry, base + first, into[at_row + at : at_row + at + n])
            else:
                self._stream_take(f, entry, picks, out, size, slice_bytes)
        return out.reshape(shape).astype(kind.numpy(), copy=False)

    def _stream_take(self, f, entry: Entry, picks: np.ndarray, out: np.ndarray, size: int, slice_bytes: int) -> None:
        """Fill `out` (outer, picks, inner) by reading the whole tensor in blocks of about 4 MiB."""
        import numpy as np

        outer, _, inner = out.shape
        row_bytes = size * slice_bytes
        if row_bytes <= _TAKE_BLOCK:  # blocks of whole outer rows; numpy gathers each into its place in `out`
            rows = _TAKE_BLOCK // row_bytes
            part = np.empty((min(rows, outer), size, inner), dtype=out.dtype)
            into = _bytes_of(part)
            for first in range(0, outer, rows):
                n = min(rows, outer - first)
                self._read_exactly(f, entry, self.offset + first * row_bytes, into[: n * row_bytes])
                np.take(part[:n], picks, axis=1, out=out[first : first + n], mode="wrap")
            return
        # An outer row larger than a block: blocks of slices; those holding no pick are not read.
        in_order = bool(np.all(picks[1:] >= picks[:-1]))
        order = np.arange(len(picks)) if in_order else np.argsort(picks, kind="stable")
        ordered = picks[order]
        step = max(1, _TAKE_BLOCK // slice_bytes)
        part = np.empty((min(step, size), inner), dtype=out.dtype)
        into = _bytes_of(part)
        for row in range(outer):
            for first in range(0, size, step):
                lo, hi = np.searchsorted(ordered, [first, first + step]).tolist()
                if lo == hi:
                    continue
                n = min(step, size - first)
                self._read_exactly(f, entry, self.offset + row * row_bytes + first * slice_bytes, into[: n * slice_bytes])
                if in_order:  # the picks of this block fill out[row, lo:hi]: gather straight into it
                    np.take(part[:n], ordered[lo:hi] - first, axis=0, out=out[row, lo:hi], mode="wrap")
                else:
                    out[row, order[lo:hi]] = part[ordered[lo:hi] - first]

    def _read_exactly(self, f, entry: Entry, offset: int, view: memoryview) -> None:
        while view:  # a read may return less than asked (Linux caps one read near 2 GiB)
            if _PREADV:  # one call, no seek
                got = os.preadv(f.fileno(), [view], offset)
            else:
                f.seek(offset)
                got = f.readinto(view)
            if not got:
                raise self._truncated(entry, len(view))
            view, offset = view[got:], offset + got

    def _truncated(self, entry: Entry, left: int) -> CorruptFileError:
        return CorruptFileError(
            f"file ended {left} bytes early while reading tensor {entry.name!r}",
            str(self.path),
            "the file is truncated; copy or download it again",
        )

    def copy_into(self, entry: Entry, out: OutputFile, progress: Callable[[int], None] | None) -> int:
        # Unchanged tensors are copied from file to file, never through numpy: in the kernel
        # (copy_file_range, as cp does) or straight into the buffers of a direct write
        # (surgery.output_file), so converting a large checkpoint runs near disk speed.
        copied = out.copy_range(self.path, self.offset, self.length, progress)
        if copied != self.length:
            raise self._truncated(entry, self.length - copied)
        return copied


@dataclass(frozen=True, eq=False)
class ArraySource(Source):
    """Data already in memory (the result of an operation, or a user's array)."""

    array: np.ndarray

    def read_array(self, entry: Entry) -> np.ndarray:
        return self.array.copy()

    def iter_bytes(self, entry: Entry) -> Iterator[memoryview]:
        yield from _array_chunks(self.array)


@dataclass(frozen=True, eq=False)
class LazySource(Source):
    """Data computed on demand by a function, e.g. a cast of another entry."""

    compute: Callable[[], np.ndarray]
    inputs: tuple[Path, ...] = ()

    def read_array(self, entry: Entry) -> np.ndarray:
        return self.compute()

    def paths(self) -> tuple[Path, ...]:
        return self.inputs


# -- entries ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Entry:
    """One tensor: its name, shape and dtype, and where its data comes from.

    `attrs` carries format-specific facts that should survive a round trip
    through the same format (for example HDF5 chunking), as plain values.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: Source
    attrs: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Shapes often arrive as numpy integers or lists; headers need plain ints. (A tuple of
        # ints, the common case, is kept as it is: LLM checkpoints hold tens of thousands of entries.)
        shape = self.shape
        if type(shape) is not tuple or not all(type(d) is int for d in shape):
            object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    @cached_property  # entries are immutable, and writers ask for sizes several times per tensor
    def numel(self) -> int:
        return math.prod(self.shape)

    @cached_property
    def nbytes(self) -> int:
        return dtypes.get(self.dtype).nbytes(self.numel)

    def read(self) -> np.ndarray:
        """The tensor as a new numpy array in native byte order (never cached)."""
        array = self.source.read_array(self)
        if array.shape != self.shape:
            raise CorruptFileError(
                f"tensor {self.name!r} read with shape {list(array.shape)} but is declared {list(self.shape)}",
                self.name,
                "the file is inconsistent; re-export it",
            )
        return array

    def iter_bytes(self) -> Iterator[memoryview]:
        """The tensor as little-endian, C-order bytes, streamed in chunks."""
        return self.source.iter_bytes(self)

    def take(self, indices: Sequence[int], axis: int) -> np.ndarray:
        """`np.take(self.read(), indices, axis)`, reading only the kept slices where the source can."""
        return self.source.read_take(self, indices, axis)

    def copy_into(self, out: OutputFile, progress: Callable[[int], None] | None = None) -> int:
        """Append the tensor's bytes to `out` (surgery.output_file); return how many were written."""
        return self.source.copy_into(self, out, progress)

    def renamed(self, name: str) -> Entry:
        return Entry(name, self.shape, self.dtype, self.source, self.attrs)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, attrs: Mapping[str, object] | None = None) -> Entry:
        import numpy as np

        array = np.asarray(array)
        dtype = dtypes.from_numpy(array.dtype)
        return cls(name, tuple(int(n) for n in array.shape), dtype.name, ArraySource(array), dict(attrs or {}))

    @classmethod
    def computed(
        cls,
        name: str,
        shape: tuple[int, ...],
        dtype: str,
        compute: Callable[[], np.ndarray],
        like: Entry | None = None,
    ) -> Entry:
        """An entry whose data is computed on demand; `like` lends its input paths and attrs."""
        inputs = like.source.paths() if like is not None else ()
        attrs = like.attrs if like is not None else {}
        return cls(name, tuple(shape), dtype, LazySource(compute, inputs), attrs)

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)} {self.dtype}"


# -- the tree -----------------------------------------------------------------------


class Tree(Mapping[str, Entry]):
    """An ordered mapping from names to entries, plus what the checkpoint says about itself.

    Args:
        entries: the tensors, in checkpoint order. Names must be unique.
        format: the format the tree was read from ("safetensors", "npz", ...), or "" if built in memory.
        convention: the framework layout of its weights (KERAS, TORCH or UNKNOWN).
        metadata: free-form string metadata, kept across formats that can store it.
        format_state: what a format needs to write its own layout back (Keras layer order,
            HDF5 group attributes); private to that format, not shown as metadata, and
            dropped when the tree is written in another format. One key is shared by every
            format: DROPPED_ON_READ, what the reader left out of the tree, for reports.
        inputs: the files and folders the tree was read from (set by `surgery.io.load`), kept
            even when it holds no tensors, so that no write can replace its own input.

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("w", np.zeros((2, 3), "float32"))])
        >>> t["w"].shape
        (2, 3)
    """

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        *,
        format: str = "",
        convention: Convention = UNKNOWN,
        metadata: Mapping[str, str] | None = None,
        format_state: Mapping[str, object] | None = None,
        inputs: Iterable[Path] = (),
    ) -> None:
        self._entries: dict[str, Entry] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise OperationError(
                    f"duplicate tensor name {entry.name!r}", entry.name, "every tensor needs its own name"
                )
            self._entries[entry.name] = entry
        self.format = format
        self.convention = convention
        self.metadata: dict[str, str] = dict(metadata or {})
        self.format_state: dict[str, object] = dict(format_state or {})
        self.inputs: tuple[Path, ...] = tuple(Path(p) for p in inputs)

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Tree {self.format or 'in-memory'} {len(self)} tensors {self.total_bytes} bytes>"

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def source_paths(self) -> set[Path]:
        """Every file this tree's data is read from, and every file or folder it was loaded from."""
        return {*self.inputs, *(p for e in self._entries.values() for p in e.source.paths())}

    def derive(
        self,
        *,
        replace: Mapping[str, Entry] | None = None,
        drop: Iterable[str] = (),
        add: Iterable[Entry] = (),
        format: str | None = None,
        convention: Convention | None = None,
        metadata: Mapping[str, str] | None = None,
        format_state: Mapping[str, object] | None = None,
    ) -> Tree:
        """A new tree that shares every entry not replaced or dropped.

        `replace` maps an existing name to its new entry, which takes the old
        one's place in the order (it may carry a new name). `add` appends.
        `metadata` and `format_state`, when given, replace the old ones as a whole.
        """
        replace = dict(replace or {})
        drop = set(drop)
        for name in [*replace, *drop]:
            if name not in self._entries:
                raise OperationError(f"no tensor named {name!r}", "tree", "check the name with `surgery inspect`")
        kept = (replace.get(name, entry) for name, entry in self._entries.items() if name not in drop)
        return Tree(
            [*kept, *add],
            format=self.format if format is None else format,
            convention=self.convention if convention is None else convention,
            metadata=self.metadata if metadata is None else metadata,
            format_state=self.format_state if format_state is None else format_state,
            inputs=self.inputs,
        )


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file (also through links); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))
