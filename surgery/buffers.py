"""Which tensors are buffers (state an optimizer never updates), not parameters.

Its own small module so that `surgery inspect`, which counts parameters, need not import
the operations (and numpy with them); `surgery.ops.freeze` lists buffers apart with it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import dtypes
from .naming import param_of

if TYPE_CHECKING:  # pragma: no cover
    from .tree import Tree

__all__ = ["BUFFER_PARAMS", "KERAS3_BATCHNORM_BUFFERS", "KERAS3_BATCHNORM_GROUP", "is_buffer"]

# Tensors that are state, not parameters: an optimizer never updates them.
BUFFER_PARAMS = frozenset({"running_mean", "running_var", "num_batches_tracked", "moving_mean", "moving_variance"})
# Keras 3 `.weights.h5` names variables by number; in a BatchNormalization group
# (`layers/batch_normalization[_N]/vars/i`) the last two are moving_mean and moving_variance.
KERAS3_BATCHNORM_GROUP = re.compile(r"/batch_normalization(_\d+)?/vars$")
KERAS3_BATCHNORM_BUFFERS = 2


def is_buffer(tree: Tree, name: str) -> bool:
    """True for state that is not a parameter: running statistics, counters, integer tensors.

    An integer or bool tensor can never require a gradient; BatchNorm statistics are
    named `running_mean`/`running_var`/`num_batches_tracked` (torch) or
    `moving_mean`/`moving_variance` (Keras); a Keras 3 BatchNormalization group's
    last two variables are its moving statistics.
    """
    entry = tree[name]
    if not dtypes.get(entry.dtype).is_floating or param_of(name) in BUFFER_PARAMS:
        return True
    return _keras3_batchnorm_buffer(tree, name)


def _keras3_batchnorm_buffer(tree: Tree, name: str) -> bool:
    path = str(tree[name].attrs.get("keras.h5_path", ""))
    group, _, index = path.rpartition("/")
    if not KERAS3_BATCHNORM_GROUP.search(group) or not index.isdigit():
        return False
    count = sum(1 for e in tree.values() if str(e.attrs.get("keras.h5_path", "")).rpartition("/")[0] == group)
    return int(index) >= count - KERAS3_BATCHNORM_BUFFERS
