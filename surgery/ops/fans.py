"""Fan-in and fan-out of a weight, in Keras and PyTorch layouts.

The fans are what variance-scaling initialisers (Glorot/Xavier, He/Kaiming)
divide by. Both frameworks compute them from the shape alone:

* Keras (`keras.initializers` `compute_fans`): Dense kernels are (in, out);
  conv kernels are (*spatial, in, out), HWIO for 2-D. With
  receptive = prod(spatial): fan_in = receptive * in, fan_out = receptive * out.
* PyTorch (`torch.nn.init._calculate_fan_in_and_fan_out`): Linear weights are
  (out, in); conv weights are (out, in, *spatial), OIHW for 2-D.
  fan_in = in * receptive, fan_out = out * receptive.

Groups are not part of the shape arithmetic in either framework, and we follow
them so that a re-initialised kernel has the distribution a freshly built layer
would have: a torch depthwise weight (C*m, 1, kh, kw) gets fan_in = kh*kw; a
Keras `depthwise_kernel` (kh, kw, C, m) gets fan_in = kh*kw*C, fan_out = kh*kw*m.

Framework-free: no imports beyond the standard library.

    >>> fans((3, 3, 64, 128), "keras")
    (576, 1152)
    >>> fans((128, 64, 3, 3), "torch")
    (576, 1152)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import OperationError

__all__ = ["fans", "LAYOUTS", "input_axis"]

LAYOUTS = ("keras", "torch")


def fans(shape: Sequence[int], layout: str) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape` stored in `layout` ("keras" or "torch").

    Args:
        shape: the weight's shape; rank 2 (dense) or more (1-D, 2-D, 3-D convs).
        layout: "keras" for (..., in, out), "torch" for (out, in, ...).

    Returns:
        The two fans as ints; 0 only when the weight has no elements.

    Raises:
        OperationError: the rank is below 2 (a bias or a scale has no fans), or the layout is unknown.
    """
    shape = tuple(int(d) for d in shape)
    if layout not in LAYOUTS:
        raise OperationError(f"unknown layout {layout!r}", "--layout", f"use one of: {', '.join(LAYOUTS)}")
    if len(shape) < 2:
        raise OperationError(
            f"a tensor of shape {list(shape)} has no fan-in and fan-out (they need rank 2 or more)",
            "fans",
            "use an init that needs no fans: normal:STD, zeros, ones or constant:V",
        )
    if layout == "keras":
        receptive = math.prod(shape[:-2])
        return shape[-2] * receptive, shape[-1] * receptive
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def input_axis(rank: int, layout: str) -> int:
    """The input-channel axis of a kernel: -2 in Keras ((..., in, out), 2 for HWIO), 1 in PyTorch.

    >>> input_axis(4, "keras"), input_axis(4, "torch")
    (2, 1)
    """
    if layout not in LAYOUTS:
        raise OperationError(f"unknown layout {layout!r}", "--layout", f"use one of: {', '.join(LAYOUTS)}")
    return rank - 2 if layout == "keras" else 1
