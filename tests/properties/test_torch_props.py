"""Properties of the torch writer and the state-dict helpers, with real torch as the reference."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import surgery
import surgery.torch
from surgery.formats.torch_writer import WRITABLE
from surgery.tree import TORCH, Tree

from .strategies import entries, metadata, names, tensor_bytes, trees

torch = pytest.importorskip("torch")

TORCH_DTYPES = tuple(sorted(WRITABLE))  # every surgery dtype torch has
# Each example writes a file and fsyncs it: on tmpfs that costs nothing.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def tensor_of(entry) -> "torch.Tensor":
    """A torch tensor with exactly the entry's bytes: the reference, independent of our converters."""
    raw = b"".join(bytes(c) for c in entry.iter_bytes())
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(getattr(torch, entry.dtype)).reshape(entry.shape)


def raw(t) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_equal_bytes(got: dict, tree: Tree) -> None:
    assert list(got) == list(tree)
    expected = tensor_bytes(tree)
    for name, t in got.items():
        assert str(t.dtype) == f"torch.{tree[name].dtype}", name
        assert tuple(t.shape) == tree[name].shape, name
        assert raw(t) == expected[name], name


torch_trees = trees(dtype_names=TORCH_DTYPES).map(lambda t: Tree(t.values(), convention=TORCH, metadata=t.metadata))


@given(st.lists(entries(dtype_names=TORCH_DTYPES), max_size=6, unique_by=lambda e: e.name))
def test_torch_to_tree_to_torch_is_the_identity(items):
    sd = {e.name: tensor_of(e) for e in items}
    back = surgery.torch.to_state_dict(surgery.torch.from_state_dict(sd))
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and raw(back[name]) == raw(t), name


@given(torch_trees)
def test_tree_to_pt_to_torch_load_is_the_identity(tree):
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        path = Path(d) / "out.pt"
        surgery.save(tree, path)
        got = torch.load(path, weights_only=True)
    assert_equal_bytes(got, tree)
    assert getattr(got, "_metadata", {}).get("__surgery__", {}) == tree.metadata


@given(entries(dtype_names=TORCH_DTYPES), st.lists(names, min_size=2, max_size=4, unique=True), metadata)
def test_tied_weights_stay_tied(entry, aliases, meta):
    shared = tensor_of(entry)
    sd = {name: shared for name in aliases}
    tree = surgery.torch.from_state_dict(sd, metadata=meta)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        path = Path(d) / "out.pt"
        surgery.save(tree, path)
        loaded = torch.load(path, weights_only=True)
    back = surgery.torch.to_state_dict(tree)
    for got in (loaded, back):
        assert list(got) == aliases
        for name in aliases:
            assert raw(got[name]) == raw(shared) and got[name].shape == shared.shape
        if shared.numel():  # a zero-size tensor has no storage to share
            pointers = {got[name].untyped_storage().data_ptr() for name in aliases}
            assert len(pointers) == 1, got
