"""Our safetensors data section starts where the kernel copies fastest: on the source's page offset, or on a page."""

from __future__ import annotations

import struct

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

import surgery
from surgery.tree import Entry, Tree


def _data_start(path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_copied_tensors_keep_their_source_page_offset_and_the_library_reads_them(tmp_path):
    arrays = {"a.weight": np.arange(3000, dtype=np.float32).reshape(30, 100), "b.bias": np.ones(7, np.float16)}
    save_file(arrays, tmp_path / "src.safetensors")  # the library's header: 8-byte aligned, not page-aligned
    source_start = _data_start(tmp_path / "src.safetensors")
    assert source_start % 4096 != 0
    surgery.save(surgery.load(tmp_path / "src.safetensors"), tmp_path / "out.safetensors")
    assert _data_start(tmp_path / "out.safetensors") % 4096 == source_start % 4096
    with safe_open(tmp_path / "out.safetensors", "np") as f:
        assert {k: f.get_tensor(k).tobytes() for k in f.keys()} == {k: v.tobytes() for k, v in arrays.items()}


def test_computed_tensors_start_on_a_page(tmp_path):
    tree = Tree([Entry.from_array("w", np.zeros((5, 3), np.float32))])
    surgery.save(tree, tmp_path / "out.safetensors")
    assert _data_start(tmp_path / "out.safetensors") % 4096 == 0
    with safe_open(tmp_path / "out.safetensors", "np") as f:
        assert f.get_tensor("w").shape == (5, 3)
