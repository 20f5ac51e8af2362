"""The stored-zip writer: byte for byte what zipfile writes, Zip64 included, with kernel copies and CRCs beside them."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surgery import output_file
from surgery.errors import CorruptFileError
from surgery.formats import zip_stored
from surgery.formats.zip_stored import (
    StoredZipWriter,
    file_crc32,
    local_header_size,
    stored_member_crc,
)
from surgery.tree import Entry, FileRange

WAYS = ("bytes", "chunks", "range")


def payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def with_zipfile(path: Path, members: list[tuple[str, bytes, bytes]]) -> bytes:
    """The reference: zipfile, each member opened with its size known, as torch_writer used to write them."""
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, extra, data in members:
            info = zipfile.ZipInfo(name)
            info.file_size = len(data)
            info.extra = extra
            with z.open(info, "w") as member:
                member.write(data)
    return path.read_bytes()


def with_ours(path: Path, members: list[tuple[str, bytes, bytes]], ways: list[str], source: Path) -> bytes:
    """The same members through StoredZipWriter, each written the given way (a range: from a copy of its bytes in `source`)."""
    blob = b"".join(data for _, _, data in members)
    source.write_bytes(b"head" + blob)
    at = 4
    with output_file.create(path) as out, StoredZipWriter(out) as z:
        for (name, extra, data), way in zip(members, ways):
            if way == "bytes":
                z.write_bytes(name, data, extra)
            elif way == "chunks":
                assert z.write_chunks(name, (data[i : i + 7] for i in range(0, len(data), 7)), len(data), extra) == len(data)
            else:
                entry = Entry(name, (len(data),), "uint8", FileRange(source, at, len(data)))
                assert z.copy_range(name, entry, entry.source, extra) == len(data)
            at += len(data)
    return path.read_bytes()


def limits(monkeypatch, zip64: int, count: int = zipfile.ZIP_FILECOUNT_LIMIT) -> None:
    """Lower zipfile's Zip64 thresholds (the writer reads zipfile's), so tiny archives take the large-file paths."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", zip64)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", count)


MEMBERS = [("archive/data.pkl", b"", payload(50, 1)), ("archive/data/0", b"FB\x02\x00ZZ", payload(3000, 2)),
           ("archive/empty", b"", b""), ("archive/data/1", b"FB\x00\x00", payload(990, 3)), ("archive/version", b"", b"3\n")]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(
    "zip64, count",
    [
        ((1 << 31) - 1, 0xFFFF),  # none of it
        (1000, 0xFFFF),  # members over the limit (sizes in Zip64 fields) and offsets past it
        (2900, 0xFFFF),  # 3000 bytes: Zip64 local header (size * 1.05 > limit) and central sizes too
        (2960, 0xFFFF),  # 990 bytes... and the 3000-byte member over the limit but offsets below it
        (3100, 0xFFFF),  # 3000 * 1.05 > 3100 >= 3000: a Zip64 local header without Zip64 sizes in the directory
        ((1 << 31) - 1, 3),  # more members than the count limit: the Zip64 end records
    ],
)
def test_same_bytes_as_zipfile(tmp_path, monkeypatch, way, zip64, count):
    limits(monkeypatch, zip64, count)
    theirs = with_zipfile(tmp_path / "theirs.zip", MEMBERS)
    assert with_ours(tmp_path / "ours.zip", MEMBERS, [way] * len(MEMBERS), tmp_path / "src") == theirs
    with zipfile.ZipFile(tmp_path / "ours.zip") as z:
        assert z.testzip() is None
        assert [z.read(name) for name, _, _ in MEMBERS] == [data for _, _, data in MEMBERS]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 2500), min_size=1, max_size=6),
    ways=st.lists(st.sampled_from(WAYS), min_size=6, max_size=6),
    zip64=st.integers(50, 6000),
    pad=st.integers(0, 70),
)
def test_same_bytes_as_zipfile_for_any_sizes_and_limits(tmp_path_factory, sizes, ways, zip64, pad):
    tmp = tmp_path_factory.mktemp("zip")
    members = [(f"archive/data/{i}", b"FB" + struct.pack("<H", pad) + b"Z" * pad, payload(n, i)) for i, n in enumerate(sizes)]
    saved = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = zip64  # hypothesis examples cannot use the monkeypatch fixture
    try:
        theirs = with_zipfile(tmp / "theirs.zip", members)
        ours = with_ours(tmp / "ours.zip", members, ways, tmp / "src")
    finally:
        zipfile.ZIP64_LIMIT = saved
    assert ours == theirs


def test_same_bytes_without_pwrite(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "pwrite")  # as on Windows: the CRCs are patched by seeking there and back
    theirs = with_zipfile(tmp_path / "theirs.zip", MEMBERS)
    assert with_ours(tmp_path / "ours.zip", MEMBERS, ["chunks", "range", "bytes", "range", "chunks"], tmp_path / "src") == theirs


def test_utf8_names_are_flagged_as_zipfile_flags_them(tmp_path):
    members = [("archive/données/é", b"", b"abc")]
    assert with_ours(tmp_path / "ours.zip", members, ["chunks"], tmp_path / "src") == with_zipfile(tmp_path / "theirs.zip", members)


def test_local_header_size_is_where_the_data_starts(tmp_path, monkeypatch):
    limits(monkeypatch, 1000)
    for size in (10, 999, 1000, 3000):
        name, extra = "archive/data/7", b"FB\x01\x00Z"
        with_ours(tmp_path / "ours.zip", [(name, extra, payload(size, 0))], ["bytes"], tmp_path / "src")
        with zipfile.ZipFile(tmp_path / "ours.zip") as z:
            info = z.getinfo(name)
        data = (tmp_path / "ours.zip").read_bytes()
        start = local_header_size(name, len(extra), size)
        assert data[start : start + size] == payload(size, 0) and info.header_offset == 0


# -- CRCs ------------------------------------------------------------------------------


def test_file_crc32_across_windows_and_unaligned_offsets(tmp_path, monkeypatch):
    monkeypatch.setattr(zip_stored, "_WINDOW", 5000)  # many windows, each mapped from an aligned base
    data = payload(100_000, 9)
    (tmp_path / "f").write_bytes(data)
    for offset, length in [(0, 100_000), (1, 99_999), (4095, 12_345), (70_000, 0), (99_999, 1), (4096, 5000)]:
        assert file_crc32(tmp_path / "f", offset, length) == zlib.crc32(data[offset : offset + length]), (offset, length)


def test_file_crc32_of_a_truncated_file_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    with pytest.raises(CorruptFileError, match="file ended before byte 150"):
        file_crc32(tmp_path / "f", 50, 100)


def test_the_fast_crc_agrees_with_zlib():
    data = payload(1 << 20, 4)
    assert zip_stored.crc32(data) == zlib.crc32(data)
    assert zip_stored.crc32(data[500:], zip_stored.crc32(data[:500])) == zlib.crc32(data)


def test_a_zip_members_recorded_crc_is_reused_and_a_plain_files_is_not(tmp_path, monkeypatch):
    theirs = with_zipfile(tmp_path / "src.zip", MEMBERS)
    with zipfile.ZipFile(tmp_path / "src.zip") as z:
        info = z.getinfo("archive/data/0")
    name_len, extra_len = struct.unpack("<HH", theirs[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    assert stored_member_crc(tmp_path / "src.zip", start, 3000) == info.CRC
    assert stored_member_crc(tmp_path / "src.zip", start + 1, 2999) is None  # not a whole member
    (tmp_path / "plain").write_bytes(theirs[start : start + 3000])
    assert stored_member_crc(tmp_path / "plain", 0, 3000) is None

    def never(*args):
        raise AssertionError("the CRC was computed again")

    monkeypatch.setattr(zip_stored, "_file_crc", never)
    with output_file.create(tmp_path / "out.zip") as out, StoredZipWriter(out) as z:
        entry = Entry("t", (3000,), "uint8", FileRange(tmp_path / "src.zip", start, 3000))
        z.copy_range("t", entry, entry.source)
    with zipfile.ZipFile(tmp_path / "out.zip") as z:
        assert z.read("t") == MEMBERS[1][2] and z.testzip() is None


def test_an_error_while_streaming_stops_the_crc_worker_and_writes_no_directory(tmp_path):
    def chunks():
        yield b"x" * 100
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"), output_file.create(tmp_path / "out.zip") as out, StoredZipWriter(out) as z:
        z.write_bytes("a", b"abc")
        z.write_chunks("b", chunks(), 200)
    assert zipfile.stringEndArchive not in (tmp_path / "out.zip").read_bytes()
