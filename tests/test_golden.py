"""Golden fixtures: the committed files equal a fresh run of the generator, and hold exactly what we expect."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO

GOLDEN = ["tiny.safetensors", "tiny.npz", "tiny-sharded/model-00001-of-00002.safetensors",
          "tiny-sharded/model-00002-of-00002.safetensors", "tiny-sharded/model.safetensors.index.json",
          "ssd300_coco_tiny.h5", "ssd300_coco_tiny.weights.h5", "tiny_adam_keras2.h5"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    subprocess.run([sys.executable, str(FIXTURES / "generate.py"), str(out)], check=True, cwd=REPO)
    return out


@pytest.mark.parametrize("name", GOLDEN)
def test_committed_fixture_matches_generator(regenerated, name):
    assert (regenerated / name).read_bytes() == (FIXTURES / name).read_bytes(), (
        f"fixtures/{name} is stale: run `python fixtures/generate.py` and commit the result"
    )


def test_tiny_safetensors_header_field_by_field():
    raw = (FIXTURES / "tiny.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0  # tensor data starts 8-byte aligned
    header = json.loads(raw[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt", "source": "surgery fixtures"}
    assert header == {
        "features.0.weight": {"dtype": "F32", "shape": [8, 3, 3, 3], "data_offsets": [0, 864]},
        "features.0.bias": {"dtype": "F32", "shape": [8], "data_offsets": [864, 896]},
        "features.1.weight": {"dtype": "F16", "shape": [8], "data_offsets": [896, 912]},
        "features.1.running_mean": {"dtype": "BF16", "shape": [8], "data_offsets": [912, 928]},
        "features.1.num_batches_tracked": {"dtype": "I64", "shape": [], "data_offsets": [928, 936]},
        "classifier.weight": {"dtype": "F32", "shape": [10, 8], "data_offsets": [936, 1256]},
        "classifier.bias": {"dtype": "F32", "shape": [10], "data_offsets": [1256, 1296]},
        "mask": {"dtype": "BOOL", "shape": [4], "data_offsets": [1296, 1300]},
        "ids": {"dtype": "U8", "shape": [3], "data_offsets": [1300, 1303]},
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [1303, 1303]},
        "scale.fp8": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [1303, 1307]},
    }
    assert len(raw) == 8 + n + 1307
    assert list(header)[:2] == ["features.0.weight", "features.0.bias"]  # file order is tree order


def test_tiny_sharded_index_field_by_field():
    index = json.loads((FIXTURES / "tiny-sharded" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 1307}
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    assert index["weight_map"] == {
        "features.0.weight": shard1,
        "features.0.bias": shard2,
        "features.1.weight": shard2,
        "features.1.running_mean": shard2,
        "features.1.num_batches_tracked": shard2,
        "classifier.weight": shard2,
        "classifier.bias": shard2,
        "mask": shard2,
        "ids": shard2,
        "empty": shard2,
        "scale.fp8": shard2,
    }


def test_tiny_npz_is_plain_numpy_readable():
    import zipfile

    import numpy as np

    with np.load(FIXTURES / "tiny.npz") as f:
        assert f["classifier.weight"].shape == (10, 8)
        assert f["features.1.running_mean"].dtype == np.uint16  # bf16 bits, real dtype recorded
    side = json.loads(zipfile.ZipFile(FIXTURES / "tiny.npz").read("__surgery__.json"))
    assert side["dtypes"] == {"features.1.running_mean": "bfloat16", "scale.fp8": "float8_e4m3fn"}
    assert side["convention"] == "torch"
