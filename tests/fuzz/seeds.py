"""Small valid seed files of every format surgery reads, written by the fixture generators.

A format is one line in SEEDS: its name, a function that writes the seed into a folder and
returns its path (a file, or a folder for sharded checkpoints and for a model with its data
file), the suffix its own writer takes (None for a sharded safetensors folder), and, for a
folder, the file in it to load when that is not the folder itself (an ONNX model beside its
external data). Every file of a folder seed can be the one a case mutates.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "fixtures"))
sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Seed:
    name: str
    write: Callable[[Path], Path]
    own_suffix: str | None  # the suffix to save back in the seed's own format; None = sharded folder
    load: str = ""  # for a folder seed: the file in it to load; "" = the folder itself


def _tiny_tree():
    import gen_tensors

    return gen_tensors.tiny_tree()


def _safetensors(folder: Path) -> Path:
    from surgery.formats import safetensors_io

    safetensors_io.save(_tiny_tree(), folder / "seed.safetensors")
    return folder / "seed.safetensors"


def _sharded(folder: Path) -> Path:
    from surgery.formats import safetensors_io

    out = folder / "seed-sharded"
    out.mkdir()
    safetensors_io.save(_tiny_tree(), out, shard_size=600)
    return out


def _npz(folder: Path) -> Path:
    # The bundled tiny.npz layout: raw bits for the dtypes numpy lacks and the older side
    # member, which the reader still takes (npz_io no longer writes either, so it cannot seed).
    import gen_tensors

    gen_tensors._npz_with_side_member(_tiny_tree(), folder / "seed.npz")
    return folder / "seed.npz"


def _torch_zip(folder: Path) -> Path:
    from surgery.formats import torch_writer
    from surgery.tree import Tree

    tree = _tiny_tree()
    small = Tree([e for e in tree.values() if e.dtype in ("float32", "int64", "float16")], convention=tree.convention)
    torch_writer.save(small, folder / "seed.pt")
    return folder / "seed.pt"


def _torch_legacy(folder: Path) -> Path:
    import torch

    gen = torch.Generator().manual_seed(13)
    weight = torch.randn(4, 3, generator=gen)
    state = {"fc.weight": weight, "fc.bias": torch.randn(4, generator=gen), "view": weight[:, 1:],
             "steps": torch.tensor(3), "half": torch.randn(2, generator=gen).half()}
    torch.save(state, folder / "seed.pth", _use_new_zipfile_serialization=False)
    return folder / "seed.pth"


def _small_keras_model():
    import gen_keras

    full = gen_keras.layers()
    small = [full[0], full[1], full[2], full[8], full[-1]]  # input, two convs, a head, a weightless layer
    return lambda: small


def _keras_h5(folder: Path) -> Path:
    import gen_keras

    with mock.patch.object(gen_keras, "layers", _small_keras_model()):
        gen_keras.write_keras2(folder / "seed.h5")
    return folder / "seed.h5"


def _keras3_h5(folder: Path) -> Path:
    import gen_keras

    with mock.patch.object(gen_keras, "layers", _small_keras_model()):
        gen_keras.write_keras3(folder / "seed.weights.h5")
    return folder / "seed.weights.h5"


def _keras_zip(folder: Path) -> Path:
    """A `.keras` zip as Keras 3 writes it (every member stored): metadata.json, a Functional
    config naming the seed's layers, the Keras 3 weights of `_keras3_h5`, and an asset."""
    import json
    import zipfile

    import gen_keras

    *small, (last, _, none) = _small_keras_model()()
    small.append((last, "anchor_boxes", none))  # the group key Keras 3 gives the layer in this config
    weights = folder / "model.weights.h5"
    with mock.patch.object(gen_keras, "layers", lambda: small):
        gen_keras.write_keras3(weights)
    classes = {"input_layer": "InputLayer", "conv2d": "Conv2D", "l2_normalization": "L2Normalization", "anchor_boxes": "AnchorBoxes"}
    layers = []
    for name, key, _ in small:
        kind = next(c for prefix, c in classes.items() if key.startswith(prefix))
        inbound = [] if kind == "InputLayer" else [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": [layers[-1]["name"], 0, 0]}}]}]
        layers.append({"module": "keras.layers", "class_name": kind, "name": name, "config": {"name": name}, "inbound_nodes": inbound})
    config = {"module": "keras", "class_name": "Functional", "config": {"name": "ssd300", "layers": layers,
              "input_layers": [small[0][0], 0, 0], "output_layers": [small[-1][0], 0, 0]}, "compile_config": None}
    out = folder / "seed.keras"
    members = [("metadata.json", json.dumps({"keras_version": "3.15.1", "date_saved": "2026-01-01@00:00:00"}).encode()),
               ("config.json", json.dumps(config).encode()), ("model.weights.h5", weights.read_bytes()),
               ("assets/vocabulary.txt", b"background\nperson\n")]  # copied as it is into every .keras written
    with zipfile.ZipFile(out, "w") as z:  # ZIP_STORED, as Keras writes it: the weights are read in place
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    weights.unlink()
    return out


def _onnx_model():
    """Weights in every place the ONNX reader takes them from: raw_data and typed-field initializers
    (float32, float16 in int32_data, int64), weight Constants, and a small int64 Constant that stays
    graph structure."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests import onnx_builders

    rng = np.random.default_rng(13)
    tensors = [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc.bias"),
        helper.make_tensor("half", TensorProto.FLOAT16, [3], rng.standard_normal(3).astype(np.float16)),
        helper.make_tensor("steps", TensorProto.INT64, [1], [3]),
    ]
    constants = [
        numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "scale"),
        helper.make_tensor("offset", TensorProto.FLOAT, [2], [0.5, -0.5]),
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    return onnx_builders.identity_model(tensors, constants=constants)


def _onnx(folder: Path) -> Path:
    from tests import onnx_builders

    return onnx_builders.save(_onnx_model(), folder / "seed.onnx")


def _onnx_external(folder: Path) -> Path:
    """The same model with its larger raw tensors (an initializer and a Constant) in seed.onnx.data."""
    import onnx

    out = folder / "seed-external"
    out.mkdir()
    onnx.save_model(_onnx_model(), str(out / "seed.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="seed.onnx.data", size_threshold=64, convert_attribute=True)
    return out


SEEDS: dict[str, Seed] = {
    s.name: s
    for s in (
        Seed("safetensors", _safetensors, ".safetensors"),
        Seed("sharded", _sharded, None),
        Seed("npz", _npz, ".npz"),
        Seed("torch_zip", _torch_zip, ".pt"),
        Seed("torch_legacy", _torch_legacy, ".pth"),
        Seed("keras_h5", _keras_h5, ".h5"),
        Seed("keras3_h5", _keras3_h5, ".h5"),
        Seed("keras_zip", _keras_zip, ".keras"),
        Seed("onnx", _onnx, ".onnx"),
        Seed("onnx_external", _onnx_external, ".onnx", load="seed.onnx"),
    )
}
