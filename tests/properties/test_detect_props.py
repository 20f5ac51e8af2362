"""Properties of format detection: whatever a file starts with, `detect` names a format or
refuses with our one error, and the LEADING_BYTES shortcut decides exactly as asking every
format's sniff in turn would (the table may only skip sniffs that would have said no)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from hypothesis import given, strategies as st

from surgery import formats
from surgery.errors import FormatError
from surgery.formats.torch_pt import _MAGIC_PICKLED


def _zip(*members: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for member in members:
            z.writestr(member, b"\x00" * 16)
    return buffer.getvalue()


# Whole small files that some sniff accepts (zips are told apart by their members), cut anywhere.
FILES = [
    _zip(),  # an empty zip is an empty npz
    _zip("a.npy", "b.npy"),
    _zip("archive/data.pkl", "archive/data/0"),
    _zip("config.json", "metadata.json", "model.weights.h5"),
    _zip("notes.txt"),
    b"\x80\x02" + _MAGIC_PICKLED + b"\x2e",  # the legacy torch.save magic
    b"\x80\x04\x95" + b"\x00" * 8 + _MAGIC_PICKLED,
    b"\x08\x07\x12\x04test",  # ONNX: ir_version 7, then producer_name
    (b"\x89HDF\r\n\x1a\n" + b"\x00" * 56),
]

# Leading bytes that reach each sniff (every row of the table, and the real headers' first bytes),
# followed by anything: random bytes alone would almost never get past the table.
LEADS = sorted({lead if at == 0 else b"\x00" * at + lead for rows in formats.LEADING_BYTES.values() for at, lead in rows})
heads = st.one_of(
    st.tuples(st.sampled_from(FILES), st.integers(0, 400)).map(lambda f: f[0][: f[1]] if f[1] < len(f[0]) else f[0]),
    st.binary(max_size=80),
    st.tuples(st.sampled_from(LEADS), st.binary(max_size=80)).map(b"".join),
    st.tuples(st.binary(min_size=1, max_size=1), st.sampled_from([b"\x00" * 7 + b"{", b"\x00" * 7 + b'{"a":1}']), st.binary(max_size=40)).map(b"".join),
)
names = st.sampled_from(["f", "f.safetensors", "f.npz", "f.h5", "f.keras", "f.pt", "f.bin", "f.onnx", "f.json", "f.safetensors.index.json"])


def _by_every_sniff(path: Path) -> str:
    """Detection as it was before LEADING_BYTES: every format's sniff, in order, then the suffix."""
    with open(path, "rb") as f:
        head = f.read(64)
    for name in formats.FORMATS:
        if formats.module(name).sniff(path, head, path.stat().st_size):
            return name
    by_suffix = formats.SUFFIXES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    raise FormatError("cannot tell", str(path), "")


def _outcome(detect, path: Path) -> str:
    try:
        return detect(path)
    except FormatError:
        return "refused"


@given(heads, names)
def test_detection_names_a_format_or_raises_our_error_and_agrees_with_every_sniff(head, name):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(head)
        found = _outcome(formats.detect, path)  # any other exception fails the test
        assert found == "refused" or found in formats.FORMATS
        assert found == _outcome(_by_every_sniff, path)
