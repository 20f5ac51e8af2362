"""Compare two trees tensor by tensor, streaming: what is only in one, what changed, by how much.

`diff_trees` walks the names of both trees and yields one `TensorDiff` per name, so a caller
can print as it goes. Data is read two tensors at a time, in aligned chunks of both byte
streams (`Entry.iter_bytes`), so memory stays near two chunks for file-backed tensors, not
two checkpoints. Each chunk pair is first compared as bytes (fast, and exact for every dtype,
packed ones included); only chunks whose bytes differ are decoded and measured in float64
(complex128 for complex dtypes).

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

import numpy as np

from .. import dtypes
from ..tree import CHUNK, Entry, Tree

__all__ = ["STATUSES", "DiffSummary", "TensorDiff", "diff_entries", "diff_trees", "summarize"]

STATUSES = ("identical", "changed", "added", "removed")
_ELEMENTS = 1 << 20  # elements decoded at once inside a differing chunk: float64 temporaries stay small


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


def diff_trees(a: Tree, b: Tree, *, atol: float = 0.0, rtol: float = 0.0) -> Iterator[TensorDiff]:
    """One TensorDiff per name of A (in A's order), then per name only in B (in B's order).

    Example:
        >>> import numpy as np
        >>> t = Tree([Entry.from_array("w", np.ones(3, "float32"))])
        >>> [d.status for d in diff_trees(t, t)]
        ['identical']
    """
    for name, entry in a.items():
        if name in b:
            yield diff_entries(entry, b[name], atol=atol, rtol=rtol)
        else:
            yield TensorDiff(name, "removed", shape_a=entry.shape, dtype_a=entry.dtype)
    for name, entry in b.items():
        if name not in a:
            yield TensorDiff(name, "added", shape_b=entry.shape, dtype_b=entry.dtype)


def summarize(results: Iterator[TensorDiff] | list[TensorDiff]) -> DiffSummary:
    summary = DiffSummary()
    for result in results:
        summary.add(result)
    return summary


def diff_entries(a: Entry, b: Entry, *, atol: float = 0.0, rtol: float = 0.0) -> TensorDiff:
    """Compare two tensors of one name, streaming their bytes in aligned chunks."""
    sides = {"shape_a": a.shape, "shape_b": b.shape, "dtype_a": a.dtype, "dtype_b": b.dtype}
    if a.shape != b.shape:
        return TensorDiff(a.name, "changed", **sides, reasons=("shape",))
    reasons = ("dtype",) if a.dtype != b.dtype else ()
    packed = dtypes.get(a.dtype).packed or dtypes.get(b.dtype).packed
    if packed and reasons:  # packed floats have no array form: nothing to measure across dtypes
        return TensorDiff(a.name, "changed", **sides, reasons=reasons)
    measure = _Measure(a.dtype, b.dtype, atol, rtol, measurable=not packed)
    for chunk_a, chunk_b in _aligned(a, b):
        measure.add(chunk_a, chunk_b)
    if not measure.close:
        reasons += ("values",)
    return TensorDiff(
        a.name,
        "changed" if reasons else "identical",
        **sides,
        bit_equal=measure.bit_equal and a.dtype == b.dtype,
        max_abs=measure.max_abs if not packed else None,
        mean_abs=(measure.sum_abs / a.numel if a.numel else 0.0) if not packed else None,
        rel_max=measure.max_rel if not packed else None,
        reasons=reasons,
    )


class _Measure:
    """Running measures over chunk pairs, all in float64 (complex128 for complex dtypes)."""

    def __init__(self, dtype_a: str, dtype_b: str, atol: float, rtol: float, *, measurable: bool) -> None:
        self.dtype_a, self.dtype_b = (_little(d) if measurable else None for d in (dtype_a, dtype_b))
        self.same_dtype = dtype_a == dtype_b
        self.atol, self.rtol, self.measurable = atol, rtol, measurable
        self.bit_equal, self.close = True, True
        self.max_abs, self.sum_abs, self.max_rel = 0.0, 0.0, 0.0

    def add(self, raw_a: memoryview, raw_b: memoryview) -> None:
        if self.same_dtype and raw_a == raw_b:
            return
        self.bit_equal = False
        if not self.measurable:  # packed: bytes are all we can compare
            self.close = False
            return
        a = np.frombuffer(raw_a, dtype=self.dtype_a)
        b = np.frombuffer(raw_b, dtype=self.dtype_b)
        for start in range(0, a.size, _ELEMENTS):
            self._measure(a[start : start + _ELEMENTS], b[start : start + _ELEMENTS])

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


def _aligned(a: Entry, b: Entry) -> Iterator[tuple[memoryview, memoryview]]:
    """Both byte streams cut at the same element boundaries, whatever chunks each source yields."""
    item_a = max(dtypes.get(a.dtype).bits // 8, 1)
    item_b = max(dtypes.get(b.dtype).bits // 8, 1)
    elements = max(CHUNK // max(item_a, item_b), 1)
    stream_a, stream_b = _Rechunk(a.iter_bytes()), _Rechunk(b.iter_bytes())
    while True:
        chunk_a, chunk_b = stream_a.take(elements * item_a), stream_b.take(elements * item_b)
        if not chunk_a and not chunk_b:
            return
        yield chunk_a, chunk_b


class _Rechunk:
    """Takes exactly n bytes at a time from an iterator of chunks (fewer only at the end)."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        self.chunks, self.pending = chunks, memoryview(b"")

    def take(self, n: int) -> memoryview:
        if len(self.pending) >= n:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        parts, have = [self.pending] if len(self.pending) else [], len(self.pending)
        for chunk in self.chunks:
            chunk = memoryview(chunk).cast("B")
            if have + len(chunk) >= n:
                cut = n - have
                parts.append(chunk[:cut])
                self.pending = chunk[cut:]
                return _joined(parts)
            parts.append(chunk)
            have += len(chunk)
        self.pending = memoryview(b"")
        return _joined(parts)


def _joined(parts: list[memoryview]) -> memoryview:
    return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))


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
