"""Properties of the ONNX format: ONNX -> tree -> transplant into the same graph is bit-exact,
for every dtype ONNX and surgery share, stored in raw_data, in the typed fields or as external data."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

import surgery  # noqa: E402
from surgery import dtypes  # noqa: E402
from surgery.formats.onnx_io import with_write_options  # noqa: E402
from surgery.formats.onnx_tensors import DTYPE_TO_ONNX  # noqa: E402
from surgery.ops.transplant import transplant  # noqa: E402

from onnx_builders import identity_model  # noqa: E402

from .strategies import entries, tensor_bytes  # noqa: E402

ONNX_DTYPES = tuple(sorted(DTYPE_TO_ONNX))
STORAGE = ("raw_data", "typed", "external")
names = st.text("abcdefghij_.:/", min_size=1, max_size=8).filter(lambda n: not n.endswith("__out"))


def _typed(name: str, dtype: str, shape: tuple[int, ...], raw: bytes):
    """The tensor in its typed field, bit pattern by bit pattern (as older exporters write float16)."""
    code = DTYPE_TO_ONNX[dtype]
    tensor = onnx.TensorProto(name=name, data_type=code, dims=list(shape))
    array = np.frombuffer(raw, dtype=dtypes.get(dtype).numpy().newbyteorder("<")).reshape(-1)
    field = onnx.helper.tensor_dtype_to_field(code)
    if dtype in ("float32", "complex64"):
        values = array.view(np.float32)
    elif dtype == "float64":
        values = array.view(np.float64)
    elif dtypes.get(dtype).bits <= 16 and dtypes.get(dtype).kind in "fb":  # bits of small floats and bools
        values = array.view(f"u{dtypes.get(dtype).bits // 8}").astype(np.int64)
    else:
        values = array.astype(array.dtype.newbyteorder("="))
    getattr(tensor, field).extend(values.tolist())
    return tensor


def _tensor(entry, storage: str):
    raw = b"".join(bytes(c) for c in entry.iter_bytes())
    if storage == "typed":
        return _typed(entry.name, entry.dtype, entry.shape, raw)
    tensor = onnx.TensorProto(name=entry.name, data_type=DTYPE_TO_ONNX[entry.dtype], dims=list(entry.shape))
    tensor.raw_data = raw
    return tensor


@given(
    st.lists(
        st.tuples(entries(name_strategy=names, dtype_names=ONNX_DTYPES), st.sampled_from(STORAGE)),
        min_size=1,
        max_size=5,
        unique_by=lambda pair: pair[0].name,
    ),
    st.sampled_from([None, True, False]),
)
def test_onnx_tree_transplant_into_the_same_graph_is_bit_exact(items, external):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        model = identity_model([_tensor(e, storage) for e, storage in items])
        src = folder / "src.onnx"
        to_external = any(storage == "external" for _, storage in items)
        onnx.save_model(model, str(src), save_as_external_data=to_external, location="src.data", size_threshold=0)
        reference = {t.name: numpy_helper.to_array(t) for t in onnx.load_model(str(src)).graph.initializer}

        tree = surgery.load(src)
        assert {n: (e.shape, e.dtype) for n, e in tree.items()} == {e.name: (e.shape, e.dtype) for e, _ in items}
        moved, _ = transplant(tree, surgery.load(src))
        out = folder / "out.onnx"
        surgery.save(with_write_options(moved, external=external, threshold=1) if external is not None else moved, out)

        onnx.checker.check_model(str(out), full_check=True)
        written = {t.name: numpy_helper.to_array(t) for t in onnx.load_model(str(out)).graph.initializer}
        assert {n: a.tobytes() for n, a in written.items()} == {n: a.tobytes() for n, a in reference.items()}
        assert {n: a.dtype for n, a in written.items()} == {n: a.dtype for n, a in reference.items()}
        assert tensor_bytes(surgery.load(out)) == tensor_bytes(tree)
