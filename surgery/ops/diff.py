"""Compare two trees tensor by tensor, streaming: what is only in one, what changed, by how much.

`diff_trees` walks the names of both trees and yields one `TensorDiff` per name, so a caller
can print as it goes. Data is read in aligned chunks of both byte streams, through one
`diff_read.Reader` per diff (each file opened once, two reused buffers), so memory stays near
two chunks for file-backed tensors, not two checkpoints. Tensors that lie back to back in both
files (same dtype and shape) are compared as one byte range. Each chunk pair is first compared
as bytes (memcmp: fast, and exact for every dtype, packed ones included); a tensor is decoded
only from its first differing chunk on, and measured there in float64 (complex128 for complex
dtypes).

Measures, per common tensor of one shape:
- bit_equal: the bytes are the same;
- max_abs and mean_abs: max and mean of |a - b| over the elements;
- rel_max: the largest |a - b| / max(|a|, |b|) over the elements (0 where both are 0), a
  relative difference between 0 and 2 that needs no global scale, so chunks with equal bytes
  are never decoded;
- within tolerance: every element meets |a - b| <= atol + rtol * |b|, numpy.allclose's rule,
  with NaN equal to NaN and infinities equal only to themselves.
A tensor is "identical" when shape and dtype agree and it is within tolerance; otherwise it is
"changed". Names only in A are "removed", only in B "added".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from .. import dtypes
from ..tree import Entry, FileRange, Tree
from .diff_read import CHUNK, Reader, aligned, item_bytes

__all__ = ["STATUSES", "DiffSummary", "TensorDiff", "diff_entries", "diff_trees", "summarize"]

STATUSES = ("identical", "changed", "added", "removed")
_ELEMENTS = 1 << 16  # elements decoded at once inside a differing chunk: float64 buffers stay in cache


@dataclass(frozen=True)
class TensorDiff:
    """How one name compares. Measures are None where they do not apply (added, shape change, packed)."""

    name: str
    status: str
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    bit_equal: bool | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    rel_max: float | None = None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "shape_a": None if self.shape_a is None else list(self.shape_a),
            "shape_b": None if self.shape_b is None else list(self.shape_b),
            "dtype_a": self.dtype_a,
            "dtype_b": self.dtype_b,
            "bit_equal": self.bit_equal,
            "max_abs": _json_float(self.max_abs),
            "mean_abs": _json_float(self.mean_abs),
            "rel_max": _json_float(self.rel_max),
            "reasons": list(self.reasons),
        }


@dataclass
class DiffSummary:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    @property
    def equal(self) -> bool:
        return self.counts["identical"] == sum(self.counts.values())

    def add(self, result: TensorDiff) -> None:
        self.counts[result.status] += 1

    def line(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in self.counts.items())


def diff_trees(a: Tree, b: Tree, *, atol: float = 0.0, rtol: float = 0.0, chunk: int | None = None) -> Iterator[TensorDiff]:
    """One TensorDiff per name of A (in A's order), then per name only in B (in B's order).

    `chunk` is the bytes read per side at a time (default `CHUNK`); tests make it small so
    that chunk boundaries fall inside and between tensors.

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("w", np.ones(3, "float32"))])
        >>> [d.status for d in diff_trees(t, t)]
        ['identical']
    """
    with Reader(chunk or CHUNK) as reader:
        run: list[tuple[Entry, Entry]] = []  # back-to-back file ranges on both sides, compared as one
        for name, entry in a.items():
            other = b.get(name)
            if other is not None and _spannable(entry, other):
                if run and not _follows(run[-1], entry, other):
                    yield from _diff_run(run, reader, atol, rtol)
                    run = []
                run.append((entry, other))
                continue
            if run:
                yield from _diff_run(run, reader, atol, rtol)
                run = []
            if other is None:
                yield TensorDiff(name, "removed", shape_a=entry.shape, dtype_a=entry.dtype)
            else:
                yield _diff_pair(entry, other, reader, atol, rtol)
        if run:
            yield from _diff_run(run, reader, atol, rtol)
    for name, entry in b.items():
        if name not in a:
            yield TensorDiff(name, "added", shape_b=entry.shape, dtype_b=entry.dtype)


def summarize(results: Iterator[TensorDiff] | list[TensorDiff]) -> DiffSummary:
    summary = DiffSummary()
    for result in results:
        summary.add(result)
    return summary


def diff_entries(a: Entry, b: Entry, *, atol: float = 0.0, rtol: float = 0.0, chunk: int | None = None) -> TensorDiff:
    """Compare two tensors of one name, streaming their bytes in aligned chunks."""
    with Reader(chunk or CHUNK) as reader:
        return _diff_pair(a, b, reader, atol, rtol)


def _spannable(a: Entry, b: Entry) -> bool:
    """Both sides raw file bytes of one dtype and shape: byte i of A's range is byte i of B's."""
    return type(a.source) is FileRange and type(b.source) is FileRange and a.dtype == b.dtype and a.shape == b.shape


def _follows(last: tuple[Entry, Entry], a: Entry, b: Entry) -> bool:
    return all(
        now.source.path == before.source.path and now.source.offset == before.source.offset + before.source.length  # type: ignore[attr-defined]
        for before, now in zip(last, (a, b))
    )


def _diff_run(run: list[tuple[Entry, Entry]], reader: Reader, atol: float, rtol: float) -> Iterator[TensorDiff]:
    """Tensors that lie back to back in both files, compared as one byte range.

    Equal chunks need no decoding, so a run of equal tensors costs two reads and a memcmp per
    chunk however many tensors it holds. At a differing chunk, the tensors before the first
    differing one are identical, and that one is measured from the chunk on (its earlier bytes
    are equal, which adds nothing to any measure); the run goes on after it.
    """
    range_a, range_b = run[0][0].source, run[0][1].source
    ends = list(accumulate(a.source.length for a, _ in run))  # type: ignore[attr-defined]
    pos, i = 0, 0
    while i < len(run):
        n = min(reader.chunk, ends[-1] - pos)
        chunk_a = reader.read(0, run[i][0], range_a, range_a.offset + pos, n)  # type: ignore[attr-defined]
        chunk_b = reader.read(1, run[i][1], range_b, range_b.offset + pos, n)  # type: ignore[attr-defined]
        if chunk_a == chunk_b:
            pos += n
            while i < len(run) and ends[i] <= pos:
                yield _identical(*run[i])
                i += 1
            continue
        while True:  # a differing chunk: the first tensor whose part of it differs
            start = ends[i] - run[i][0].source.length  # type: ignore[attr-defined]
            lo, hi = max(start, pos) - pos, min(ends[i], pos + n) - pos
            if chunk_a[lo:hi] != chunk_b[lo:hi]:
                break
            yield _identical(*run[i])
            i += 1
        a, b = run[i]
        yield _diff_pair(a, b, reader, atol, rtol, skip=(pos + lo - start) // item_bytes(a.dtype))
        pos = ends[i]
        i += 1


def _identical(a: Entry, b: Entry) -> TensorDiff:
    return _result(a, b, _Measure(a.dtype, b.dtype, 0.0, 0.0, measurable=not dtypes.get(a.dtype).packed), ())


def _diff_pair(a: Entry, b: Entry, reader: Reader, atol: float, rtol: float, skip: int = 0) -> TensorDiff:
    """Compare two tensors of one name; elements before `skip` are known to be bit-equal."""
    if a.shape != b.shape:
        sides = {"shape_a": a.shape, "shape_b": b.shape, "dtype_a": a.dtype, "dtype_b": b.dtype}
        return TensorDiff(a.name, "changed", **sides, reasons=("shape",))
    reasons = ("dtype",) if a.dtype != b.dtype else ()
    packed = dtypes.get(a.dtype).packed or dtypes.get(b.dtype).packed
    measure = _Measure(a.dtype, b.dtype, atol, rtol, measurable=not packed)
    if not (packed and reasons):  # packed floats have no array form: nothing to measure across dtypes
        for chunk_a, chunk_b in aligned(reader, a, b, skip):
            measure.add(chunk_a, chunk_b)
    return _result(a, b, measure, reasons)


def _result(a: Entry, b: Entry, measure: _Measure, reasons: tuple[str, ...]) -> TensorDiff:
    sides = {"shape_a": a.shape, "shape_b": b.shape, "dtype_a": a.dtype, "dtype_b": b.dtype}
    if reasons and not measure.measurable:
        return TensorDiff(a.name, "changed", **sides, reasons=reasons)
    if not measure.close:
        reasons += ("values",)
    measured = measure.measurable
    return TensorDiff(
        a.name,
        "changed" if reasons else "identical",
        **sides,
        bit_equal=measure.bit_equal and a.dtype == b.dtype,
        max_abs=measure.max_abs if measured else None,
        mean_abs=(measure.sum_abs / a.numel if a.numel else 0.0) if measured else None,
        rel_max=measure.max_rel if measured else None,
        reasons=reasons,
    )


class _Measure:
    """Running measures over chunk pairs, all in float64 (complex128 for complex dtypes)."""

    def __init__(self, dtype_a: str, dtype_b: str, atol: float, rtol: float, *, measurable: bool) -> None:
        self.names = (dtype_a, dtype_b)
        self.same_dtype = dtype_a == dtype_b
        self.atol, self.rtol, self.measurable = atol, rtol, measurable
        self.bit_equal, self.close = True, True
        self.max_abs, self.sum_abs, self.max_rel = 0.0, 0.0, 0.0
        self.floats = measurable and all(dtypes.get(d).is_floating for d in self.names)
        self.buffers: tuple[np.ndarray, ...] = ()
        self.numpy: tuple[np.dtype, np.dtype] | None = None  # looked up at the first difference: no ml_dtypes import for equal bf16

    def add(self, raw_a: bytes | bytearray, raw_b: bytes | bytearray) -> None:
        if self.same_dtype and raw_a == raw_b:  # bytes and bytearrays compare with memcmp
            return
        self.bit_equal = False
        if not self.measurable:  # packed: bytes are all we can compare
            self.close = False
            return
        if self.numpy is None:
            self.numpy = (_little(self.names[0]), _little(self.names[1]))
        a = np.frombuffer(raw_a, dtype=self.numpy[0])
        b = np.frombuffer(raw_b, dtype=self.numpy[1])
        for start in range(0, a.size, _ELEMENTS):
            part_a, part_b = a[start : start + _ELEMENTS], b[start : start + _ELEMENTS]
            if not (self.floats and self._finite_floats(part_a, part_b)):
                self._measure(part_a, part_b)

    def _finite_floats(self, a: np.ndarray, b: np.ndarray) -> bool:
        """The common case in few passes over cache-sized float64 buffers; False if NaN or inf appear."""
        if not self.buffers:
            self.buffers = tuple(np.empty(_ELEMENTS) for _ in range(3))
        delta, wide_b, scale = (buffer[: a.size] for buffer in self.buffers)
        delta[...] = a
        wide_b[...] = b
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the careful path takes over
            np.subtract(delta, wide_b, out=delta)
            np.abs(delta, out=delta)
            total = float(delta.sum())
        if not math.isfinite(total):  # an infinity or NaN somewhere: the careful path decides
            return False
        np.abs(wide_b, out=wide_b)
        if (self.atol or self.rtol) and not np.all(delta <= self.atol + self.rtol * wide_b):
            self.close = False
        top = float(delta.max()) if delta.size else 0.0
        if top and not (self.atol or self.rtol):
            self.close = False
        scale[...] = a
        np.abs(scale, out=scale)
        np.maximum(scale, wide_b, out=scale)
        with np.errstate(invalid="ignore"):  # 0/0 where both are zero: fmax skips the NaN
            np.divide(delta, scale, out=scale)
        relative = float(np.fmax.reduce(scale)) if scale.size else 0.0
        self.max_abs = max(self.max_abs, top)
        self.sum_abs += total
        self.max_rel = max(self.max_rel, 0.0 if math.isnan(relative) else relative)
        return True

    def _measure(self, narrow_a: np.ndarray, narrow_b: np.ndarray) -> None:
        a, b = _wide(narrow_a), _wide(narrow_b)
        if (a.dtype.kind == "c") != (b.dtype.kind == "c"):
            a, b = a.astype(np.complex128), b.astype(np.complex128)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            delta = np.abs(a - b)
            if narrow_a.dtype.kind in "iub" and narrow_b.dtype.kind in "iub":
                same = narrow_a == narrow_b  # exact: float64 cannot tell 2**60 from 2**60 + 1
                delta[~same & (delta == 0)] = 1.0  # distinct integers differ by at least 1
            else:
                same = (a == b) | (np.isnan(a) & np.isnan(b))
            delta[same] = 0.0
            delta[np.isnan(delta)] = math.inf  # NaN against a number, or inf - inf of opposite signs
            magnitude_b = np.abs(b)
            if not np.all(same | (delta <= self.atol + self.rtol * magnitude_b)):
                self.close = False
            scale = np.maximum(np.abs(a), magnitude_b)
            relative = np.where(delta == 0, 0.0, delta / np.where(scale == 0, 1.0, scale))
            relative[np.isnan(relative)] = math.inf  # infinities against finite numbers
        if delta.size:
            self.max_abs = max(self.max_abs, float(delta.max()))
            self.sum_abs += float(delta.sum())
            self.max_rel = max(self.max_rel, float(relative.max()))


def _little(name: str) -> np.dtype:
    dtype = dtypes.get(name).numpy()
    return dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype


def _wide(x: np.ndarray) -> np.ndarray:
    return x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)


def _json_float(x: float | None) -> float | str | None:
    # JSON has no infinity or NaN; say them as strings rather than emit invalid JSON.
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
