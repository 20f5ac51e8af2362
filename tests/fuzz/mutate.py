"""Structure-aware mutations of one file's bytes.

Generic byte mutations (bit flips, interesting values, truncation, insertion, duplicated
and deleted ranges) plus mutations that know where the formats keep their lengths and
offsets: the safetensors header length and the numbers of its JSON, zip local and
central headers (compression method, flags, versions, sizes, offsets, name bytes), and
HDF5 structures (superblock, object headers, B-trees, heaps, attribute messages).
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable

INTERESTING = [0, 1, 2, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
BAD_NAME_BYTES = [b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x00", b"/", b"..", b"\x80\x81", b"\xf0\x9f"]


def _pos(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data)) if data else 0


def _put_int(data: bytearray, at: int, width: int, value: int) -> None:
    at = max(0, min(at, len(data) - width))
    if at < 0 or len(data) < width:
        return
    data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")


def bit_flip(rng, data):
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        if out:
            out[_pos(rng, out)] ^= 1 << rng.randrange(8)
    return bytes(out), "bit flips"


def interesting(rng, data):
    out = bytearray(data)
    width = rng.choice((1, 2, 4, 8))
    value = rng.choice(INTERESTING + [len(data), len(data) - 1, len(data) + 1, rng.getrandbits(8 * width)])
    at = _pos(rng, out)
    _put_int(out, at, width, value)
    return bytes(out), f"int{8 * width} {value} at {at}"


def truncate(rng, data):
    at = _pos(rng, data)
    return data[:at], f"truncated at {at}"


def insert(rng, data):
    at = _pos(rng, data)
    blob = bytes(rng.getrandbits(8) for _ in range(rng.choice((1, 4, 16, 64))))
    return data[:at] + blob + data[at:], f"{len(blob)} bytes inserted at {at}"


def duplicate(rng, data):
    a = _pos(rng, data)
    b = min(len(data), a + rng.choice((4, 16, 64, 512)))
    at = _pos(rng, data)
    return data[:at] + data[a:b] + data[at:], f"range {a}:{b} copied to {at}"


def delete(rng, data):
    a = _pos(rng, data)
    b = min(len(data), a + rng.choice((1, 8, 64, 512)))
    return data[:a] + data[b:], f"range {a}:{b} deleted"


def json_number(rng, data):
    """A number inside a JSON header or index (shapes, data_offsets, total_size)."""
    numbers = [m for m in re.finditer(rb"\d+", data[:65536])]
    if not numbers:
        return bit_flip(rng, data)
    m = rng.choice(numbers)
    value = str(rng.choice(INTERESTING + [int(m.group()) + rng.choice((-1, 1)), 0])).encode()
    return data[: m.start()] + value + data[m.end() :], f"JSON number {m.group()!r} -> {value!r}"


def length_prefix(rng, data):
    """The first 8 bytes: safetensors' header length (and any format's magic)."""
    out = bytearray(data)
    _put_int(out, 0, 8, rng.choice(INTERESTING + [len(data), len(data) - 8, len(data) - 7]))
    return bytes(out), "u64 prefix"


# zip: field offsets inside local (PK\3\4) and central (PK\1\2) headers and the end record (PK\5\6)
_LOCAL = {"version": (4, 2), "flags": (6, 2), "method": (8, 2), "crc": (14, 4), "csize": (18, 4), "usize": (22, 4), "namelen": (26, 2), "extralen": (28, 2)}
_CENTRAL = {"made_by": (4, 2), "version": (6, 2), "flags": (8, 2), "method": (10, 2), "crc": (16, 4), "csize": (20, 4), "usize": (24, 4),
            "namelen": (28, 2), "extralen": (30, 2), "commentlen": (32, 2), "disk": (34, 2), "offset": (42, 4)}
_END = {"disk": (4, 2), "cd_disk": (6, 2), "entries_here": (8, 2), "entries": (10, 2), "cd_size": (12, 4), "cd_offset": (16, 4), "commentlen": (20, 2)}
_ZIP_VALUES = {"method": [0, 1, 6, 8, 9, 12, 14, 93, 95, 98, 99, 0xFFFF], "flags": [0, 1, 8, 0x800, 0x801, 0x808, 0x40, 0x2000, 0xFFFF],
               "version": [10, 20, 45, 46, 51, 63, 99, 0xFF, 0xFFFF], "made_by": [0x031E, 0x0014, 0xFFFF]}


def zip_field(rng, data):
    spots = [(m.start(), sig) for m in re.finditer(rb"PK(\x01\x02|\x03\x04|\x05\x06|\x06\x06|\x06\x07)", data) for sig in [m.group()]]
    if not spots:
        return interesting(rng, data)
    at, sig = rng.choice(spots)
    table = {b"PK\x03\x04": _LOCAL, b"PK\x01\x02": _CENTRAL, b"PK\x05\x06": _END}.get(sig)
    if table is None:  # zip64 records: hit their size and offset fields
        out = bytearray(data)
        _put_int(out, at + rng.choice((24, 32, 40, 48, 8, 16)), 8, rng.choice(INTERESTING))
        return bytes(out), f"zip64 record at {at}"
    field = rng.choice(list(table))
    offset, width = table[field]
    value = rng.choice(_ZIP_VALUES.get(field, INTERESTING + [len(data)]))
    out = bytearray(data)
    _put_int(out, at + offset, width, value)
    return bytes(out), f"zip {sig!r} {field}={value} at {at}"


def zip_name(rng, data):
    """Bad bytes in a member name (local or central copy); with the UTF-8 flag set, sometimes."""
    spots = [m.start() for m in re.finditer(rb"PK(\x01\x02|\x03\x04)", data)]
    if not spots:
        return insert(rng, data)
    at = rng.choice(spots)
    central = data[at + 2 : at + 4] == b"\x01\x02"
    name_at, namelen_at, flags_at = (at + 46, at + 28, at + 8) if central else (at + 30, at + 26, at + 6)
    if namelen_at + 2 > len(data):
        return truncate(rng, data)
    namelen = struct.unpack_from("<H", data, namelen_at)[0]
    out = bytearray(data)
    bad = rng.choice(BAD_NAME_BYTES)
    if namelen and name_at + namelen <= len(out):
        k = name_at + rng.randrange(namelen)
        out[k : k + len(bad)] = bad[: max(0, min(len(bad), name_at + namelen - k))]
    if rng.random() < 0.5:
        _put_int(out, flags_at, 2, struct.unpack_from("<H", out, flags_at)[0] | 0x800)
    return bytes(out), f"zip name bytes {bad!r} at {at}"


_H5_SIGNATURES = [b"OHDR", b"OCHK", b"TREE", b"HEAP", b"SNOD", b"BTHD", b"BTIN", b"BTLF", b"FRHP", b"FHDB", b"FHIB", b"FSHD", b"GCOL", b"\x89HDF"]
_H5_NAMES = [b"layer_names", b"weight_names", b"name", b"keras_version", b"backend", b"model_config", b"vars", b"layers"]


def h5_structure(rng, data):
    """Bytes just after an HDF5 structure's signature: versions, sizes, addresses, counts."""
    spots = [m.start() for sig in _H5_SIGNATURES for m in re.finditer(re.escape(sig), data)]
    if not spots:
        spots = [0]
    at = rng.choice(spots) + rng.randrange(4, 48)
    out = bytearray(data)
    width = rng.choice((1, 2, 4, 8))
    _put_int(out, at, width, rng.choice(INTERESTING + [len(data), rng.getrandbits(8 * width)]))
    return bytes(out), f"h5 structure int{8 * width} at {at}"


def h5_attribute(rng, data):
    """Around an attribute or link name: the message's datatype, dataspace and size fields."""
    spots = [m.start() for name in _H5_NAMES for m in re.finditer(re.escape(name), data)]
    if not spots:
        return h5_structure(rng, data)
    at = rng.choice(spots) + rng.randrange(-24, 48)
    out = bytearray(data)
    if rng.random() < 0.3:
        if 0 <= at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        return bytes(out), f"h5 attribute bit flip at {at}"
    width = rng.choice((1, 2, 4, 8))
    _put_int(out, at, width, rng.choice(INTERESTING + [rng.getrandbits(8 * width)]))
    return bytes(out), f"h5 attribute int{8 * width} at {at}"


GENERIC: list[Callable] = [bit_flip, interesting, truncate, insert, duplicate, delete]
BY_KIND: dict[str, list[Callable]] = {
    "json": [json_number, length_prefix],
    "zip": [zip_field, zip_field, zip_name],
    "h5": [h5_structure, h5_attribute, h5_attribute],
    "pickle": [interesting, bit_flip],
}


def kind_of(data: bytes) -> str:
    if data[:2] == b"PK":
        return "zip"
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if data[:1] == b"\x80":
        return "pickle"
    return "json"


def mutate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One to three mutations, structure-aware ones about half of the time."""
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        pool = BY_KIND[kind_of(data)] if rng.random() < 0.5 else GENERIC
        data, what = rng.choice(pool)(rng, data)
        steps.append(what)
    return data, "; ".join(steps)
