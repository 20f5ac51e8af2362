"""Every written file says what was done to it, and the history grows across commands and formats."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from safetensors import safe_open

import surgery
from helpers import run
from surgery import provenance
from surgery.tree import Entry, Tree


@pytest.mark.parametrize("suffix", [".h5", ".safetensors"])  # npz keeps no provenance (tests/test_first_hour.py)
def test_history_survives_each_format_and_grows(tmp_path, fixtures_dir, suffix):
    first = tmp_path / f"a{suffix}"
    assert run("subsample", fixtures_dir / "ssd300_coco_tiny.h5", "-o", first, "--classes", "0,3,8", "--anchors", "4", "-q").exit_code == 0
    second = tmp_path / "b.safetensors"
    assert run("convert", first, "-o", second, "--dtype", "bfloat16", "-q").exit_code == 0
    steps = provenance.history(surgery.load(second))
    assert [s["op"] for s in steps] == ["subsample", "cast"]
    assert steps[0]["classes"] == [0, 3, 8] and steps[1]["dtype"] == "bfloat16"
    assert all(s["version"] == surgery.__version__ for s in steps)


def test_where_each_format_keeps_it(tmp_path, fixtures_dir):
    h5, st = tmp_path / "a.h5", tmp_path / "a.safetensors"
    for out in (h5, st):
        assert run("subsample", fixtures_dir / "ssd300_coco_tiny.h5", "-o", out, "--classes", "0,1", "--anchors", "4", "-q").exit_code == 0
    with h5py.File(h5, "r") as f:  # an HDF5 root attribute
        assert json.loads(f.attrs[provenance.KEY])[0]["op"] == "subsample"
    with safe_open(str(st), framework="np") as f:  # safetensors __metadata__
        assert json.loads(f.metadata()[provenance.KEY])[0]["op"] == "subsample"


def test_a_history_that_is_not_ours_is_kept_not_lost():
    tree = Tree([Entry.from_array("w", np.zeros(1, "float32"))], metadata={provenance.KEY: "edited by hand"})
    tree = provenance.record(tree, "cast", dtype="float16", unused=None)
    assert provenance.history(tree)[0] == {"op": "unknown", "recorded": "edited by hand"}
    assert {k: v for k, v in provenance.history(tree)[1].items() if k != "version"} == {"op": "cast", "dtype": "float16"}


def test_recording_never_reads_or_changes_tensors():
    entry = Entry.from_array("w", np.arange(3, dtype="int8"))
    tree = Tree([entry])
    recorded = provenance.record(tree, "noop")
    assert recorded["w"] is entry and provenance.KEY not in tree.metadata
