"""Corrupt and hostile safetensors inputs: one exact error line, exit 1, nothing written, input untouched."""

from __future__ import annotations

import json

import pytest

from helpers import digest, error_line, leftovers, raw_safetensors, run

FIX = "the file is corrupt or not safetensors; re-export it"
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

CASES = {
    "short": (b"\x01\x02", "file is 2 bytes, too short for a safetensors header"),
    "length_past_end": (raw_safetensors({"a": F32}, b"\0" * 8, length=10**6), "header length 1000000 runs past the end of the file (77 bytes)"),
    "bad_utf8": (raw_safetensors(b'{"\xff":1}'), "header is not valid UTF-8 (byte 2)"),
    "bad_json": (raw_safetensors(b'{"a": '), "header is not valid JSON (Expecting value: line 1 column 7 (char 6))"),
    "not_object": (raw_safetensors(b"[1, 2]"), "header is not a JSON object"),
    "duplicate": (raw_safetensors(b'{"a": {}, "a": {}}'), "header names 'a' twice"),
    "deep_nesting": (raw_safetensors(b"[" * 100000 + b"]" * 100000), "header is nested too deeply"),
    "unknown_dtype": (raw_safetensors({"a": {"dtype": "F99", "shape": [], "data_offsets": [0, 0]}}), "unknown dtype 'F99'"),
    "negative_dim": (raw_safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "shape [-1] is not a list of non-negative integers"),
    "float_dim": (raw_safetensors({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}}), "shape [1.5] is not a list of non-negative integers"),
    "bad_offsets": (raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}), "data_offsets [8, 0] are not two ordered byte offsets"),
    "size_mismatch": (raw_safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "shape [3] of float32 needs 12 bytes but data_offsets span 8"),
    "huge_claim": (raw_safetensors({"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, b"\0" * 8), "tensor 'a' ends at byte 4398046511104 past the data section's 8 bytes"),
    "overlap": (raw_safetensors({"a": F32, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "tensor 'b' overlaps the tensor before it (offset 4 < 8)"),
    "gap": (raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "gap of 4 bytes before tensor 'a'"),
    "trailing": (raw_safetensors({"a": F32}, b"\0" * 12), "4 bytes after the last tensor belong to no tensor"),
    "metadata_not_str": (raw_safetensors({"__metadata__": {"k": 1}, "a": F32}, b"\0" * 8), "__metadata__ is not a map of strings to strings"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_gives_one_exact_line(tmp_path, case):
    raw, what = CASES[case]
    src = tmp_path / "bad.safetensors"
    src.write_bytes(raw)
    before = digest(src)
    result = run("convert", src, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: {what} (")
    assert line.endswith(f"; {FIX}")
    assert not (tmp_path / "out.safetensors").exists()
    assert leftovers(tmp_path) == []
    assert digest(src) == before


def test_exact_full_line_for_length_past_end(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(raw_safetensors({"a": F32}, b"\0" * 8, length=999))
    result = run("inspect", src)
    assert error_line(result) == f"error: header length 999 runs past the end of the file (77 bytes) ({src}); {FIX}"


def test_tensor_name_in_where_part(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(raw_safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8))
    assert error_line(run("inspect", src)) == (
        f"error: shape [3] of float32 needs 12 bytes but data_offsets span 8 ({src}, tensor 'w'); {FIX}"
    )


def _sharded(tmp_path, weight_map: dict, shards: dict[str, dict]):

    folder = tmp_path / "shards"
    folder.mkdir()
    for name, tensors in shards.items():
        header = {k: dict(v) for k, v in tensors.items()}
        size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
        (folder / name).write_bytes(raw_safetensors(header, b"\0" * size))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 8}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize(
    "weight_map, shards, what",
    [
        ({"a": "../evil.safetensors"}, {}, "shard name '../evil.safetensors' is not a plain file name"),
        ({"a": "/etc/passwd"}, {}, "shard name '/etc/passwd' is not a plain file name"),
        ({"a": "missing.safetensors"}, {}, "shard missing.safetensors listed in the index is missing"),
        ({"a": "s1.safetensors", "b": "s1.safetensors"}, {"s1.safetensors": {"a": F32}}, "index puts tensor 'b' in s1.safetensors, which lacks it"),
        (
            {"a": "s1.safetensors"},
            {"s1.safetensors": {"a": F32, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}},
            "shard s1.safetensors holds 1 tensor(s) the index does not list, e.g. 'b'",
        ),
    ],
)
def test_hostile_sharded_index(tmp_path, weight_map, shards, what):
    index = _sharded(tmp_path, weight_map, shards)
    result = run("inspect", index)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: {what} ({index})")


def test_index_without_weight_map(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"metadata": {}}')
    assert error_line(run("inspect", index)) == (
        f"error: index has no weight_map of tensor names to shard files ({index}); {FIX}"
    )


def test_huge_claimed_shape_is_refused_without_allocating(tmp_path):
    """A header that claims 16 TiB must be rejected from the header alone, quickly."""
    import resource
    import time

    src = tmp_path / "claim.safetensors"
    src.write_bytes(raw_safetensors({"a": {"dtype": "F32", "shape": [2**42], "data_offsets": [0, 2**44]}}, b"\0" * 8))
    start, rss = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert run("inspect", src).exit_code == 1
    assert time.monotonic() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB: under 100 MB grown
