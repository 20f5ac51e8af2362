"""Hostile and broken ONNX files, generated here: each is one clean error line, and nothing
outside the model's folder is ever read (a canary beside the folder must never show up)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from helpers import error_line, run  # noqa: E402
from onnx_builders import identity_model, save  # noqa: E402

CANARY = b"CANARY-7f3a-never-read"
_UNSAFE = "external data must be a regular file inside the model's folder; surgery never reads elsewhere"
_CORRUPT = "the model is corrupt; export it again"


@pytest.fixture
def folder(tmp_path):
    """model/ is the model's folder; a canary sits beside it, outside."""
    (tmp_path / "canary.bin").write_bytes(CANARY * 4)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.data").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return model_dir


def _external(folder, location: str, *, offset: int | None = None, length: int | None = None, dims=(4,)):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims), data_location=TensorProto.EXTERNAL)
    info = {"location": location, "offset": offset, "length": length}
    for key, value in info.items():
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    return save(identity_model([tensor]), folder / "m.onnx")


def _refused(path, expected: str) -> None:
    """inspect and convert both give exactly `expected`, and neither shows the canary."""
    out = path.parent / "out.safetensors"
    for args in (("inspect", path), ("convert", path, "-o", out)):
        result = run(*args)
        assert result.exit_code == 1
        assert error_line(result) == expected
        assert CANARY.decode() not in result.stdout + result.stderr
    assert not out.exists()


def _where(path, location: str) -> str:
    return f"{path}, tensor 'w', location {location!r}"


def test_absolute_location(folder):
    location = str(folder.parent / "canary.bin")
    path = _external(folder, location, length=16)
    _refused(path, f"error: external data location is an absolute path ({_where(path, location)}); {_UNSAFE}")


def test_dev_zero(folder):
    path = _external(folder, "/dev/zero", length=16)
    _refused(path, f"error: external data location is an absolute path ({_where(path, '/dev/zero')}); {_UNSAFE}")


def test_dot_dot_location(folder):
    path = _external(folder, "../canary.bin", length=16)
    _refused(path, f"error: external data location climbs out of the model's folder with '..' ({_where(path, '../canary.bin')}); {_UNSAFE}")


def test_escape_through_a_symlinked_folder(folder):
    (folder / "sub").symlink_to(folder.parent, target_is_directory=True)
    path = _external(folder, "sub/canary.bin", length=16)
    _refused(path, f"error: external data location leaves the model's folder through a symlink ({_where(path, 'sub/canary.bin')}); {_UNSAFE}")


@pytest.mark.parametrize("target", ["outside", "inside", "device"])
def test_symlink_location(folder, target):
    link = folder / "link.data"
    link.symlink_to({"outside": folder.parent / "canary.bin", "inside": folder / "weights.data", "device": "/dev/zero"}[target])
    path = _external(folder, "link.data", length=16)
    _refused(path, f"error: external data location is a symlink ({_where(path, 'link.data')}); {_UNSAFE}")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_location_that_is_not_a_regular_file(folder, kind):
    special = folder / "special"
    os.mkfifo(special) if kind == "fifo" else special.mkdir()
    path = _external(folder, "special", length=16)
    _refused(path, f"error: external data location is not a regular file ({_where(path, 'special')}); {_UNSAFE}")


def test_missing_data_file(folder):
    path = _external(folder, "gone.data", length=16)
    _refused(
        path,
        f"error: external data file is missing ({_where(path, 'gone.data')}); copy the data file beside the model (the name is its location)",
    )


@pytest.mark.parametrize(
    ("offset", "length", "what"),
    [
        (8, 16, "external data at offset 8 length 16 runs past the end of the 16-byte file"),
        (0, 12, "external data length 12 disagrees with the 16 bytes that dims [4] need"),
        (-4, 16, "external data offset -4 or length 16 is negative"),
    ],
)
def test_offsets_and_lengths(folder, offset, length, what):
    path = _external(folder, "weights.data", offset=offset, length=length)
    _refused(path, f"error: {what} ({_where(path, 'weights.data')}); {_CORRUPT}")


def test_length_past_the_end(folder):
    path = _external(folder, "weights.data", length=400, dims=(100,))
    _refused(path, f"error: external data at offset 0 length 400 runs past the end of the 16-byte file ({_where(path, 'weights.data')}); {_CORRUPT}")


def test_offset_that_is_not_a_number(folder):
    path = _external(folder, "weights.data", offset="12abc", length=16)  # type: ignore[arg-type]
    _refused(path, f"error: external data offset '12abc' or length '16' is not an integer ({_where(path, 'weights.data')}); {_CORRUPT}")


def test_raw_bytes_disagreeing_with_dims(folder):
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    tensor.dims[:] = [5]
    path = save(identity_model([tensor]), folder / "m.onnx")
    _refused(path, f"error: tensor 'w' of shape [5] float32 needs 20 bytes but its raw_data holds 16 ({path}); {_CORRUPT}")


def test_typed_values_disagreeing_with_dims(folder):
    tensor = helper.make_tensor("w", TensorProto.FLOAT16, [3], np.ones(3, np.float16).tolist())
    tensor.dims[:] = [4]
    path = save(identity_model([tensor]), folder / "m.onnx")
    _refused(path, f"error: tensor 'w' of shape [4] needs 4 values but its int32_data holds 3 ({path}); {_CORRUPT}")


def test_truncated_and_garbage_protobuf(folder):
    good = save(identity_model([numpy_helper.from_array(np.ones(64, np.float32), "w")]), folder / "good.onnx")
    truncated = folder / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:-40])
    garbage = folder / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 4)
    for path in (truncated, garbage):
        line = error_line(run("inspect", path))
        assert line.startswith("error: cannot parse the ONNX protobuf (") and line.endswith(
            f") ({path}); the file is corrupt or not an ONNX model; export it again"
        ), line


def _wrap(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, written by hand (onnx's own builders refuse this depth)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def _nested_graph(depth: int) -> bytes:
    """A GraphProto whose single If node holds a graph holding an If node ... `depth` times."""
    graph = b""
    for _ in range(depth):
        attribute = _wrap(1, b"then_branch") + b"\xa0\x01\x05" + _wrap(6, graph)  # name, type=GRAPH, g
        node = _wrap(4, b"If") + _wrap(5, attribute)  # op_type, attribute
        graph = _wrap(1, node)
    return graph


def test_too_deeply_nested_graph(folder):
    deep = folder / "deep.onnx"
    deep.write_bytes(b"\x08\x0a" + _wrap(7, _nested_graph(200)) + _wrap(8, b"\x10\x11"))  # ir_version, graph, opset
    assert error_line(run("inspect", deep)) == (
        f"error: the ONNX protobuf nests messages deeper than protobuf allows ({deep}); the file is corrupt or not an ONNX model; export it again"
    )
    nested = folder / "nested.onnx"
    nested.write_bytes(b"\x08\x0a" + _wrap(7, _nested_graph(20)) + _wrap(8, b"\x10\x11"))
    assert error_line(run("inspect", nested)) == (
        f"error: graphs are nested more than 16 deep ({nested}); the model is hostile or broken; export it again"
    )


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: helper.make_tensor("w", TensorProto.STRING, [1], [b"x"]), "STRING"),
        (lambda: helper.make_tensor("w", TensorProto.INT4, [2], [1, 2]), "INT4"),
        (lambda: helper.make_tensor("w", TensorProto.COMPLEX128, [1], [complex(1, 2)]), "COMPLEX128"),
    ],
)
def test_types_surgery_cannot_hold_are_named(folder, make, kind):
    path = save(identity_model([make()]), folder / "m.onnx")
    line = error_line(run("inspect", path))
    assert line.startswith(f"error: tensor 'w' is {kind}, which surgery cannot hold ({path}); surgery reads these ONNX tensor types: bfloat16, bool, complex64,")


def test_an_external_data_string_that_is_not_utf8(folder):
    path = _external(folder, "weights.data", length=16)
    path.write_bytes(path.read_bytes().replace(b"weights.data", b"weights\xffdata"))  # same length: the protobuf stays whole
    _refused(path, f"error: external data 'location' is b'weights\\xffdata', which is not valid UTF-8 ({path}, tensor 'w'); {_CORRUPT}")


def test_graph_names_that_are_not_utf8_are_shown_escaped(folder):
    """Protobuf hands such a string back as bytes; inspect shows it escaped, in text and in --json."""
    import json

    path = save(identity_model([numpy_helper.from_array(np.ones(2, np.float32), "w")]), folder / "m.onnx")
    path.write_bytes(path.read_bytes().replace(b"w__out", b"w__\xffut").replace(b"tests", b"test\xff"))
    text = run("inspect", path)
    assert text.exit_code == 0, text.stderr
    assert "output b'w__\\xffut' [2] float32" in text.stdout.splitlines()
    facts = json.loads(run("inspect", path, "--json").stdout)["onnx"]
    assert facts["outputs"] == [{"name": "b'w__\\xffut'", "dtype": "float32", "shape": [2]}]
    assert facts["producer"] == {"name": "b'test\\xff'", "version": ""}
