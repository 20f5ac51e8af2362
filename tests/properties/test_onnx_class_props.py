"""Properties of class surgery inside an ONNX graph: numpy and onnxruntime are the references.

One head (Conv of anchors x classes, Transpose, Reshape to (1, -1, K), Softmax) with random
weights; any kept class list (reordered, repeated) of any anchor and class count.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx_graph_models import check, conv_head_model, run_model  # noqa: E402

import surgery  # noqa: E402
from surgery.ops.classes import resample_classes  # noqa: E402

pytestmark = pytest.mark.interop


@st.composite
def onnx_heads(draw):
    """(model, anchors, classes K, in channels, spatial size, kept classes)."""
    anchors = draw(st.integers(1, 3))
    K = draw(st.integers(2, 5))
    channels = draw(st.integers(1, 3))
    size = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = rng.standard_normal((anchors * K, channels)).astype(np.float32)
    bias = rng.standard_normal(anchors * K).astype(np.float32)
    kept = draw(st.lists(st.integers(0, K - 1), min_size=1, max_size=6))
    return conv_head_model(anchors, K, weight, bias, channels=channels, size=size), anchors, K, channels, size, kept


@given(onnx_heads(), st.integers(0, 2**16))
def test_subsample_per_anchor_is_numpy_take_and_keeps_logits_exactly(head, seed):
    model, anchors, K, channels, size, kept = head
    with tempfile.TemporaryDirectory() as folder:
        src, out = Path(folder) / "head.onnx", Path(folder) / "kept.onnx"
        onnx.save(model, str(src))
        tree = surgery.load(src)
        edited, _ = resample_classes(tree, kept, layer_globs=["head"], layout="anchor-major", anchors=anchors)
        surgery.save(edited, out)
        check(out)
        rows = [a * K + c for a in range(anchors) for c in kept]
        written = surgery.load(out)
        for name in ("head.weight", "head.bias"):
            assert np.array_equal(written[name].read(), np.take(tree[name].read(), rows, axis=0))
        x = {"x": np.random.default_rng(seed).standard_normal((1, channels, size, size)).astype(np.float32)}
        before, after = run_model(src, x, extra=("logits",)), run_model(out, x, extra=("logits",))
        assert after["logits"].shape == (1, size * size * anchors, len(kept))
        assert np.array_equal(after["logits"], before["logits"][..., kept])
        assert [d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] == [1, size * size * anchors, len(kept)]
