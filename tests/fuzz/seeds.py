"""Small valid seed files of every format surgery reads, written by the fixture generators.

A format is one line in SEEDS: its name, a function that writes the seed into a folder and
returns its path (a file, or a folder for sharded checkpoints), and the suffix its own
writer takes (None for a sharded safetensors folder).
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
        # ONNX and .keras: add one line each here when their readers land.
    )
}
