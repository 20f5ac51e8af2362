"""`surgery diff`: exact results on conversions, a subsample and a Keras/torch pair; exit codes as diff(1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from helpers import error_line, run

from surgery.ops.diff import diff_entries, diff_trees, summarize
from surgery.tree import Entry, FileRange, Source, Tree

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SSD = FIXTURES / "ssd300_coco_tiny.h5"
CONF_LAYERS = ["conv4_3_norm_mbox_conf", "fc7_mbox_conf", "conv6_2_mbox_conf", "conv7_2_mbox_conf", "conv8_2_mbox_conf", "conv9_2_mbox_conf"]


def diff_json(*args) -> tuple[int, dict]:
    result = run("diff", *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_lossless_conversions_are_identical_exit_0(tmp_path):
    # tiny.safetensors holds bfloat16, which npz cannot (refused since npz keeps only tensors): .pt, then shards
    pt, shards = tmp_path / "t.pt", tmp_path / "shards"
    assert run("convert", FIXTURES / "tiny.safetensors", "-o", pt, "-q").exit_code == 0
    assert run("convert", pt, "-o", shards, "--shard-size", "200B", "-q").exit_code == 0
    for other in (pt, shards):
        code, doc = diff_json(FIXTURES / "tiny.safetensors", other)
        assert code == 0
        assert doc["summary"] == {"identical": 11, "changed": 0, "added": 0, "removed": 0, "changed_layers": 0, "equal": True}
        assert all(t["bit_equal"] and t["max_abs"] == 0 for t in doc["tensors"])
    result = run("diff", FIXTURES / "tiny.safetensors", pt)
    assert result.stdout == "11 identical, 0 changed, 0 added, 0 removed; equal\n"
    assert result.stderr == ""


def test_subsampled_ssd_lists_exactly_the_six_conf_layers_exit_1(tmp_path):
    road = tmp_path / "road.h5"
    assert run("subsample", SSD, "-o", road, "--classes", "0,3,8,1,2,10,4,6,12", "--anchors", "4", "-q").exit_code == 0
    result = run("diff", SSD, road)
    assert result.exit_code == 1
    assert result.stderr == ""  # "different" is a result, not an error
    lines = result.stdout.splitlines()
    assert lines[-1] == "27 identical, 12 changed (in 6 layers), 0 added, 0 removed; different"
    assert lines[0] == "changed    conv4_3_norm_mbox_conf/kernel  shape [3, 3, 4, 324] -> [3, 3, 4, 36]  float32"
    assert lines[3] == "changed    fc7_mbox_conf/bias  shape [486] -> [54]  float32"
    code, doc = diff_json(SSD, road)
    changed = {t["name"]: (t["shape_a"], t["shape_b"]) for t in doc["tensors"] if t["status"] == "changed"}
    assert sorted(changed) == sorted(f"{layer}/{p}" for layer in CONF_LAYERS for p in ("kernel", "bias"))
    anchors = {"conv4_3_norm_mbox_conf": 4, "fc7_mbox_conf": 6, "conv6_2_mbox_conf": 6, "conv7_2_mbox_conf": 6, "conv8_2_mbox_conf": 4, "conv9_2_mbox_conf": 4}
    for layer, n in anchors.items():
        assert changed[f"{layer}/bias"] == ([81 * n], [9 * n])
        assert changed[f"{layer}/kernel"] == ([3, 3, 4, 81 * n], [3, 3, 4, 9 * n])
    assert code == 1 and doc["summary"]["changed_layers"] == 6


def test_keras_against_its_torch_conversion_layout_aware(tmp_path):
    pt = tmp_path / "x.pt"
    assert run("convert", SSD, "-o", pt, "--layout", "torch", "-q").exit_code == 0
    code, doc = diff_json(SSD, pt, "--layout-aware")
    assert code == 0
    assert doc["summary"]["identical"] == 39 and doc["summary"]["equal"]
    assert run("diff", pt, SSD, "--layout-aware").exit_code == 0  # either side may be the Keras one
    plain = run("diff", SSD, pt)  # without the mapping nothing lines up
    assert plain.exit_code == 1
    assert plain.stdout.splitlines()[-1] == "0 identical, 0 changed, 39 added, 39 removed; different"


def tree_of(**arrays) -> Tree:
    return Tree([Entry.from_array(name, np.asarray(a)) for name, a in arrays.items()])


def test_measures_of_a_changed_tensor():
    a = tree_of(w=np.array([1.0, 2.0, 4.0], "float32"), same=np.zeros(2, "int64"))
    b = tree_of(w=np.array([1.0, 2.5, 3.0], "float32"), same=np.zeros(2, "int64"), new=np.ones(1, "float32"))
    results = {r.name: r for r in diff_trees(a, b)}
    w = results["w"]
    assert (w.status, w.bit_equal, w.max_abs, w.mean_abs, w.rel_max, w.reasons) == ("changed", False, 1.0, 0.5, 0.25, ("values",))
    assert results["same"].status == "identical" and results["same"].bit_equal
    assert results["new"].status == "added"
    assert summarize(results.values()).line() == "1 identical, 1 changed, 1 added, 0 removed"
    assert diff_entries(a["w"], b["w"], atol=1.0).status == "identical"  # within tolerance, bits still differ
    assert diff_entries(a["w"], b["w"], atol=0.5, rtol=0.1).status == "changed"  # 1 > 0.5 + 0.1 * 3


def test_zero_size_tensors_and_scalars():
    empty = tree_of(e=np.zeros((0, 4), "float32"), s=np.float64(3.0))
    (e, s) = diff_trees(empty, empty)
    assert (e.status, e.bit_equal, e.max_abs, e.mean_abs, e.rel_max) == ("identical", True, 0.0, 0.0, 0.0)
    assert s.status == "identical"
    other = diff_entries(empty["e"], Entry.from_array("e", np.zeros((0, 5), "float32")))
    assert (other.status, other.reasons, other.max_abs) == ("changed", ("shape",), None)


def test_nan_inf_and_signed_zero():
    a = tree_of(x=np.array([np.nan, np.inf, 0.0, 1.0], "float32"))
    b = tree_of(x=np.array([np.nan, np.inf, -0.0, 1.0], "float32"))
    (x,) = diff_trees(a, b)
    assert (x.status, x.bit_equal, x.max_abs) == ("identical", False, 0.0)  # equal values, other bits
    c = tree_of(x=np.array([1.0, -np.inf, 0.0, 1.0], "float32"))
    (y,) = diff_trees(a, c)
    assert (y.status, y.max_abs, y.rel_max) == ("changed", math.inf, math.inf)
    document = y.to_json()
    assert document["max_abs"] == "inf" and json.loads(json.dumps(document))["rel_max"] == "inf"


def test_large_integers_that_float64_cannot_tell_apart():
    a = tree_of(i=np.array([2**60], "int64"))
    b = tree_of(i=np.array([2**60 + 1], "int64"))
    (i,) = diff_trees(a, b)
    assert (i.status, i.bit_equal, i.max_abs) == ("changed", False, 1.0)


def test_dtype_change_is_measured():
    a = tree_of(w=np.array([1.0, 2.0], "float32"))
    b = tree_of(w=np.array([1.0, 2.0], "float16"))
    (w,) = diff_trees(a, b)
    assert (w.status, w.reasons, w.bit_equal, w.max_abs) == ("changed", ("dtype",), False, 0.0)


class Pieces(Source):
    """Yields the tensor's bytes in odd-sized pieces, to prove chunks are realigned."""

    def __init__(self, array: np.ndarray, piece: int) -> None:
        self.raw, self.piece = array.astype("<f4").tobytes(), piece

    def iter_bytes(self, entry):
        for start in range(0, len(self.raw), self.piece):
            yield memoryview(self.raw[start : start + self.piece])


def test_streams_in_chunks_however_sources_cut_them(monkeypatch):
    import surgery.ops.diff as diff_module

    monkeypatch.setattr(diff_module, "CHUNK", 64)  # 16 float32 per aligned chunk
    data = np.arange(1000, dtype="float32")
    changed = data.copy()
    changed[777] += 3
    a = Entry("w", data.shape, "float32", Pieces(data, 7))
    b = Entry("w", data.shape, "float32", Pieces(changed, 13))
    result = diff_entries(a, b)
    assert (result.status, result.max_abs, result.mean_abs) == ("changed", 3.0, 3.0 / 1000)
    assert diff_entries(a, Entry("w", data.shape, "float32", Pieces(data, 1))).bit_equal
    assert diff_module.CHUNK == 64


def test_filter_and_map(tmp_path):
    code, doc = diff_json(FIXTURES / "tiny.safetensors", FIXTURES / "tiny.safetensors", "--filter", "classifier.*")
    assert code == 0 and [t["name"] for t in doc["tensors"]] == ["classifier.weight", "classifier.bias"]
    code, doc = diff_json(FIXTURES / "tiny.safetensors", FIXTURES / "tiny.safetensors", "--map", "^classifier\\.=head.")
    assert code == 1 and doc["summary"]["added"] == 2 and doc["summary"]["removed"] == 2


def test_errors_are_one_line_and_exit_2(tmp_path):
    result = run("diff", tmp_path / "missing.pt", FIXTURES / "tiny.safetensors")
    assert result.exit_code == 2
    assert error_line(result).startswith("error: ")
    assert str(tmp_path / "missing.pt") in error_line(result)
    bad = run("diff", FIXTURES / "tiny.safetensors", FIXTURES / "tiny.npz", "--filter", "nomatch*")
    assert (bad.exit_code, error_line(bad)) == (2, "error: no tensor name matches --filter nomatch* (--filter); list the names with `surgery inspect`; globs are case-sensitive")
    usage = run("diff", FIXTURES / "tiny.safetensors", FIXTURES / "tiny.npz", "--atol", "-1")
    assert usage.exit_code == 2


def test_help_names_the_exit_codes():
    text = run("diff", "--help").stdout
    assert "0 when every tensor is identical" in text and "2 on an error" in text


def _raw_tree(path: Path, arrays: dict[str, np.ndarray], gap: int = 0) -> Tree:
    """The arrays back to back in one file (after `gap` bytes each), as file-backed entries."""
    entries, at = [], 0
    with open(path, "wb") as f:
        for name, array in arrays.items():
            f.write(b"\0" * gap)
            at += gap
            f.write(array.tobytes())
            entries.append(Entry(name, array.shape, array.dtype.name, FileRange(path, at, array.nbytes)))
            at += array.nbytes
    return Tree(entries)


def test_every_byte_of_a_run_is_compared_whatever_the_chunk(tmp_path):
    # Three float32 tensors back to back on both sides: one run, read in chunks of 5 bytes (not a
    # multiple of 4), so chunk boundaries cut elements and tensors. Flipping any single byte of B
    # is found, in exactly its tensor, with numpy's max |a-b|.
    arrays = {"x": np.arange(3, dtype="<f4"), "y": np.arange(5, dtype="<f4") + 10, "z": np.arange(2, dtype="<f4") - 7}
    tree_a = _raw_tree(tmp_path / "a", arrays)
    flat = np.concatenate(list(arrays.values()))
    owner = [name for name, a in arrays.items() for _ in range(a.nbytes)]
    for at in range(flat.nbytes):
        raw = bytearray(flat.tobytes())
        raw[at] ^= 0x40
        changed = np.frombuffer(bytes(raw), "<f4")
        parts = dict(zip(arrays, np.split(changed, np.cumsum([a.size for a in arrays.values()])[:-1])))
        results = {r.name: r for r in diff_trees(tree_a, _raw_tree(tmp_path / "b", parts, gap=0), chunk=5)}
        assert [n for n, r in results.items() if not r.bit_equal] == [owner[at]], at
        expected = float(np.abs(arrays[owner[at]].astype(np.float64) - parts[owner[at]].astype(np.float64)).max())
        assert results[owner[at]].max_abs == expected
        # with a gap before each tensor of B the ranges no longer line up: compared tensor by tensor
        apart = {r.name: r for r in diff_trees(tree_a, _raw_tree(tmp_path / "c", parts, gap=3), chunk=5)}
        assert apart == results


def test_each_file_is_opened_once_for_the_whole_diff(tmp_path, monkeypatch):
    from surgery.ops import diff_read

    opened = []

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return open(path, *args, **kwargs)  # the Reader closes it

    monkeypatch.setattr(diff_read, "open", counting_open, raising=False)
    arrays = {f"t{i}": np.full(10, i, dtype="<i8") for i in range(50)}
    tree_a = _raw_tree(tmp_path / "a", arrays)
    tree_b = _raw_tree(tmp_path / "b", arrays, gap=1)  # no run: every tensor compared on its own
    assert summarize(diff_trees(tree_a, tree_b, chunk=16)).equal
    assert sorted(opened) == [tmp_path / "a", tmp_path / "b"]


def test_diff_imports_no_other_operation():
    import subprocess
    import sys

    code = "import sys, surgery.ops.diff; print(sorted(m for m in sys.modules if m.startswith('surgery.ops')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "['surgery.ops', 'surgery.ops.diff', 'surgery.ops.diff_read']"
