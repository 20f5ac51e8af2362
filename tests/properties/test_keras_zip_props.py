"""`.keras` zips: load then save then load is bit-exact, and the zip keeps its members.

The zips are built here the way Keras 3 lays them out (config.json, metadata.json, and a
ZIP_STORED model.weights.h5 with `layers/<class key>/vars/<i>`), without Keras, so any shape
and float dtype h5py stores can be drawn, zero-size ones included.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import surgery

from .strategies import signature, tensor_bytes

DTYPES = ("float16", "float32", "float64")
shapes = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)


@st.composite
def keras_zips(draw) -> tuple[bytes, list[tuple[str, list[np.ndarray]]]]:
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=4, unique=True))
    layers = []
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        count = draw(st.integers(1, 3))
        layers.append((name, [np.asarray(np.random.default_rng(len(layers)).standard_normal(draw(shapes)), dtype) for _ in range(count)]))
    return _zip(layers), layers


def _zip(layers: list[tuple[str, list[np.ndarray]]]) -> bytes:
    records = [{"class_name": "Dense", "name": name, "config": {"name": name}, "inbound_nodes": []} for name, _ in layers]
    config = {"class_name": "Functional", "config": {"name": "m", "layers": records, "input_layers": [], "output_layers": []}}
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        f.create_group("vars").attrs["name"] = "functional"
        for k, (name, arrays) in enumerate(layers):
            group = f.create_group(f"layers/{'dense' if k == 0 else f'dense_{k}'}/vars")
            group.attrs["name"] = name
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=array)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "today"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", weights.getvalue())
        z.writestr("assets/vocabulary.txt", "a\nb\n")
    return out.getvalue()


@settings(max_examples=min(20, settings.default.max_examples))  # each example writes and reads three HDF5 files
@given(keras_zips())
def test_keras_zip_round_trip_is_bit_exact_and_keeps_the_members(case):
    raw, layers = case
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "m.keras", Path(d) / "out.keras"
        src.write_bytes(raw)
        tree = surgery.load(src)
        assert [(n.rsplit("/", 1)[0]) for n in tree] == [name for name, arrays in layers for _ in arrays]
        for (name, arrays) in layers:
            for i, array in enumerate(arrays):
                assert tree[f"{name}/{i}"].read().tobytes() == array.tobytes()
        surgery.save(tree, out)
        back = surgery.load(out)
        assert signature(back) == signature(tree) and tensor_bytes(back) == tensor_bytes(tree)
        assert back.metadata == tree.metadata
        with zipfile.ZipFile(src) as a, zipfile.ZipFile(out) as b:
            assert sorted(a.namelist()) == sorted(b.namelist())
            for member in ("config.json", "metadata.json", "assets/vocabulary.txt"):
                assert json.loads(a.read(member)) == json.loads(b.read(member)) if member.endswith(".json") else a.read(member) == b.read(member)
