"""Corrupt and hostile .npz inputs: refused with one line, and never unpickled."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from helpers import digest, error_line, leftovers, run

FIX = "the file is corrupt or not an .npz archive; re-export it"


class Canary:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz(tmp_path, members: dict[str, bytes]):
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_object_array_is_refused_and_never_unpickled(tmp_path):
    canary = tmp_path / "canary"
    path = _npz(tmp_path, {"evil.npy": _npy(np.array([Canary(str(canary))], dtype=object))})
    before = digest(path)
    result = run("convert", path, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: member holds Python objects, which load by unpickling ({path}, member 'evil.npy'); store numeric arrays only"
    )
    assert not canary.exists()
    assert not (tmp_path / "out.safetensors").exists() and leftovers(tmp_path) == []
    assert digest(path) == before


def test_truncated_member_data(tmp_path):
    raw = _npy(np.arange(10, dtype=np.float32))[:-8]
    path = _npz(tmp_path, {"w.npy": raw})
    assert error_line(run("inspect", path)) == (
        f"error: shape [10] of float32 needs 40 bytes but the member holds 32 ({path}, member 'w.npy'); {FIX}"
    )


def test_corrupt_zip(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, w=np.ones(1000, np.float32))
    path = tmp_path / "cut.npz"
    path.write_bytes(good.read_bytes()[:-100])
    line = error_line(run("inspect", path))
    assert line.startswith("error: ") and (f"({path})" in line or f"({path}," in line)


def test_bad_npy_header(tmp_path):
    path = _npz(tmp_path, {"w.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': nope}  \n"})
    assert error_line(run("inspect", path)).startswith("error: bad .npy header (")


def test_deflate_claim_beyond_any_real_ratio_is_refused(tmp_path):
    """A member whose directory entry claims more than deflate can expand to is a lie (or a bomb)."""
    import struct

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", _npy(np.zeros(1000, np.uint8)))
    raw = bytearray(path.read_bytes())
    claim = 10**9
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, claim)  # uncompressed size in the local header
    struct.pack_into("<I", raw, central + 24, claim)  # and in the central directory
    path.write_bytes(bytes(raw))
    compressed = zipfile.ZipFile(path).getinfo("w.npy").compress_size
    assert error_line(run("inspect", path)) == (
        f"error: member claims {claim} bytes from {compressed} compressed ({path}, member 'w.npy'); {FIX}"
    )


def test_foreign_member_in_npz(tmp_path):
    path = _npz(tmp_path, {"w.npy": _npy(np.ones(2, np.float32))})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", b"hello")
    # With a non-.npy member the archive is not claimed as npz by content, but its suffix says npz.
    assert error_line(run("inspect", path)) == f"error: member is not a .npy array ({path}, member 'notes.txt'); {FIX}"


def test_numpy_written_archives_read_exactly(tmp_path):
    """Archives written by numpy itself, compressed or not, big-endian and Fortran order included."""
    arrays = {
        "a": np.arange(12, dtype=">f4").reshape(3, 4),
        "b": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "c": np.array(True),
        "d": np.zeros((0, 3), np.complex64),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        import surgery

        tree = surgery.load(path)
        assert list(tree) == list(arrays)
        for name, array in arrays.items():
            got = tree[name].read()
            assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
            np.testing.assert_array_equal(got, array)
            assert b"".join(tree[name].iter_bytes()) == np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes()
