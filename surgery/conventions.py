"""Which framework's layout a checkpoint is in, read from its tensor names when the file does not say.

Keras names a layer's weights `kernel`, `gamma`, `moving_mean`, `depthwise_kernel`, ...;
PyTorch names them `weight`, `running_mean`, `num_batches_tracked`, .... A checkpoint whose
names use only one vocabulary is in that framework's layout; names that use both, or
neither (`w`, `scale`), do not tell, and then the user is asked. The vocabularies are data
(`KERAS_PARAMS`, `TORCH_PARAMS`); `bias` and `beta`-like names shared by both decide nothing.

Framework-free: used by every operation that needs a convention (reinit, adapt-input,
class surgery's class axis, convert --layout, transplant).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .naming import param_of
from .tree import KERAS, TORCH, UNKNOWN, Convention, Tree

__all__ = ["KERAS_PARAMS", "TORCH_PARAMS", "Inferred", "infer_convention", "convention_of"]

# The last name component (after '/' or '.', without a TensorFlow ':0' suffix) that only
# one framework uses for a layer's weights.
KERAS_PARAMS = frozenset(
    ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "gamma", "moving_mean", "moving_variance", "embeddings")
)
TORCH_PARAMS = frozenset(("weight", "running_mean", "running_var", "num_batches_tracked", "in_proj_weight", "weight_ih_l0", "weight_hh_l0"))
_EXAMPLES = 3  # names quoted as evidence


@dataclass(frozen=True)
class Inferred:
    """A convention and the evidence for it, as one phrase for reports and errors."""

    convention: Convention
    why: str


def infer_convention(names: Iterable[str]) -> Inferred:
    """The convention the names' parameter vocabulary shows, or UNKNOWN with what was seen.

    >>> infer_convention(["conv1.weight", "conv1.bias"]).convention.name
    'torch'
    >>> infer_convention(["fc/kernel", "fc/bias"]).why
    'the names are Keras weight names (fc/kernel)'
    """
    keras, torch = [], []
    for name in names:
        param = param_of(name).split(":")[0]
        if param in KERAS_PARAMS:
            keras.append(name)
        elif param in TORCH_PARAMS:
            torch.append(name)
    if keras and not torch:
        return Inferred(KERAS, f"the names are Keras weight names ({_examples(keras)})")
    if torch and not keras:
        return Inferred(TORCH, f"the names are PyTorch weight names ({_examples(torch)})")
    if keras and torch:
        return Inferred(UNKNOWN, f"the names mix Keras ({_examples(keras, 1)}) and PyTorch ({_examples(torch, 1)}) weight names")
    return Inferred(UNKNOWN, "the names are neither Keras (kernel, gamma, moving_mean) nor PyTorch (weight, running_mean) weight names")


def convention_of(tree: Tree) -> Inferred:
    """The tree's own convention when its file records one, else the one its names show."""
    if tree.convention != UNKNOWN:
        return Inferred(tree.convention, f"the {tree.format or 'checkpoint'} file says {tree.convention}")
    return infer_convention(tree.keys())


def _examples(names: list[str], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … and {len(names) - limit} more" if len(names) > limit else "")
