"""Properties of `surgery.torch.load_into`: it loads exactly when names and shapes agree, and its
refusal counts what set arithmetic counts (missing, unexpected, mismatched)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from surgery.errors import OperationError
from surgery.tree import TORCH, Entry, Tree

torch = pytest.importorskip("torch")

from surgery.torch_loading import load_into  # noqa: E402

layer_names = st.sampled_from(["conv1", "conv2", "bn", "fc", "head.cls", "head.box"])
shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)
specs = st.dictionaries(st.builds(lambda layer, p: f"{layer}.{p}", layer_names, st.sampled_from(["weight", "bias"])), shapes, max_size=6)


class Holder(torch.nn.Module):
    """A module whose state dict is exactly the given names and shapes (as buffers)."""

    def __init__(self, spec: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.names = list(spec)
        for i, (_, shape) in enumerate(spec.items()):
            self.register_buffer(f"b{i}", torch.zeros(shape))

    def state_dict(self, *args, **kwargs):  # the spec's names, in order, over the buffers
        return dict(zip(self.names, self._buffers.values()))

    def load_state_dict(self, sd, strict=True):
        for name, buffer in zip(self.names, self._buffers.values()):
            buffer.copy_(sd[name])


@given(specs, specs, st.integers(0, 2**16))
def test_loads_exactly_when_names_and_shapes_agree(module_spec, file_spec, seed):
    rng = np.random.default_rng(seed)
    arrays = {n: rng.standard_normal(s).astype("float32") for n, s in file_spec.items()}
    tree = Tree([Entry.from_array(n, a) for n, a in arrays.items()], convention=TORCH)
    module = Holder(module_spec)
    missing = set(module_spec) - set(file_spec)
    unexpected = set(file_spec) - set(module_spec)
    mismatched = {n for n in set(module_spec) & set(file_spec) if module_spec[n] != file_spec[n]}
    if not (missing or unexpected or mismatched):
        load_into(module, tree)
        for name, buffer in zip(module.names, module._buffers.values()):
            np.testing.assert_array_equal(buffer.numpy(), arrays[name])
        return
    with pytest.raises(OperationError) as refused:
        load_into(module, tree)
    counts = re.match(r"the weights do not fit the module: (\d+) missing, (\d+) unexpected, (\d+) mismatched of (\d+)", refused.value.what)
    assert counts is not None, refused.value.what
    assert tuple(map(int, counts.groups())) == (len(missing), len(unexpected), len(mismatched), len(module_spec))
    assert "\n" not in refused.value.one_line()
