"""Replaying a class plan: prove each edited head computes the original's outputs at the
kept classes, exactly, on random inputs (`surgery verify`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import OperationError
from ..tree import Entry, Tree
from .class_heads import _axis_of, _new_shape

if TYPE_CHECKING:
    from .classes import ClassPlan, LayerPlan


def verify(original: Tree, edited: Tree, plan: ClassPlan, *, samples: int = 4, seed: int = 0) -> list[dict[str, object]]:
    """Prove each edited head computes the original's outputs at the kept classes.

    Each kernel is used as a linear map over its class axis (a conv kernel applied to
    one receptive field), on random inputs. Each output column is computed from that
    column alone, in the same order, so kept classes must match exactly.
    Returns one row per layer: compared channels, new channels, largest |difference|.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for lp in plan.layers:
        kernel = max(lp.tensors, key=lambda n: len(original[n].shape))
        for name in lp.tensors:
            if name not in edited:
                raise OperationError(f"the edited file has no tensor {name!r}", "EDITED", "pass the file that subsample wrote")
            want = _new_shape(original[name], lp)
            if edited[name].shape != want:
                raise OperationError(
                    f"{name} is {list(edited[name].shape)} in the edited file but the plan makes it {list(want)}",
                    "EDITED",
                    "pass the same --classes, --anchors and --layers as the edit",
                )
        before = _as_matrix(original[kernel], lp)
        after = _as_matrix(edited[kernel], lp)
        x = rng.standard_normal((samples, before.shape[0]))
        bias = [n for n in lp.tensors if n != kernel and len(original[n].shape) == 1]
        b0 = original[bias[0]].read().astype(np.float64) if bias else 0.0
        b1 = edited[bias[0]].read().astype(np.float64) if bias else 0.0
        kept = [(j, c) for j, c in enumerate(lp.channel_map) if isinstance(c, int)]
        worst = 0.0
        for start in range(0, len(kept), 256):
            block = kept[start : start + 256]
            cols_new = [j for j, _ in block]
            cols_old = [c for _, c in block]
            y0 = _columns(x, before, cols_old) + (b0[cols_old] if bias else 0.0)
            y1 = _columns(x, after, cols_new) + (b1[cols_new] if bias else 0.0)
            worst = max(worst, float(np.abs(y1 - y0).max(initial=0.0)))
        rows.append({"layer": lp.layer, "compared": len(kept), "channels": lp.new_channels, "max_abs_diff": worst})
    return rows


def _as_matrix(e: Entry, lp: LayerPlan) -> np.ndarray:
    array = e.read()
    return np.moveaxis(array, _axis_of(e, lp.axis), -1).reshape(-1, array.shape[_axis_of(e, lp.axis)])


def _columns(x: np.ndarray, w: np.ndarray, cols: list[int]) -> np.ndarray:
    # Elementwise products summed along one axis: each column's result depends on that
    # column's numbers only, unlike BLAS, whose blocking may change with the matrix width.
    return (x[:, :, None] * w[:, cols].astype(np.float64)[None, :, :]).sum(axis=1)
