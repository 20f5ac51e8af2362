"""Structure-aware mutations of one file's bytes.

Generic byte mutations (bit flips, interesting values, truncation, insertion, duplicated
and deleted ranges) plus mutations that know where the formats keep their lengths and
offsets: the safetensors header length and the numbers of its JSON, zip local and
central headers (compression method, flags, versions, sizes, offsets, name bytes), HDF5
structures (superblock, object headers, B-trees, heaps, attribute messages), ONNX's
protobuf tags, lengths and varints and its tensors' fields (external-data offset, length and
location strings, dims, data types, data sizes), and a zip's members mutated by their own
kind and the zip written again (a `.keras` file's config.json and weights).
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


# -- ONNX: protobuf fields, and the tensors of the parsed model -------------------------


def _varint(data: bytes, at: int, end: int) -> tuple[int | None, int]:
    value, shift = 0, 0
    while at < end and shift < 70:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None, at


def _encode_varint(value: int, width: int | None = None) -> bytes:
    """Protobuf's varint; with `width`, padded with continuation bytes (parsers accept those)."""
    value %= 1 << 64
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value and (width is None or len(out) >= width):
            break
        out[-1] |= 0x80
    return bytes(out)


def _pb_fields(data: bytes, start: int, end: int, depth: int, out: list) -> bool:
    """Collect (kind, at, width) of every tag, length and varint value of the message in
    data[start:end], descending into length-delimited fields that parse as messages too.
    False (nothing collected) when the range is not a message."""
    found, i = [], start
    while i < end:
        tag, j = _varint(data, i, end)
        if tag is None or tag >> 3 == 0:
            return False
        found.append(("tag", i, j - i))
        wire = tag & 7
        if wire == 0:
            value, i = _varint(data, j, end)
            if value is None:
                return False
            found.append(("varint", j, i - j))
        elif wire in (1, 5):
            i = j + (8 if wire == 1 else 4)
        elif wire == 2:
            length, k = _varint(data, j, end)
            if length is None or k + length > end:
                return False
            found.append(("length", j, k - j))
            if length and depth < 12:
                _pb_fields(data, k, k + length, depth + 1, found)
            i = k + length
        else:
            return False
    if i != end:
        return False
    out += found
    return True


def pb_varint(rng, data):
    """A protobuf tag (field number, wire type), length or varint value, replaced: in the same
    number of bytes half of the time (so the enclosing lengths stay right), else canonically."""
    fields: list = []
    _pb_fields(data, 0, len(data), 0, fields)
    if not fields:
        return interesting(rng, data)
    kind, at, width = rng.choice(fields)
    old, _ = _varint(data, at, at + width)
    if kind == "tag":
        value = (old & ~7) | rng.choice((0, 1, 2, 3, 4, 5, 6, 7)) if rng.random() < 0.5 else (rng.choice(INTERESTING[:16]) << 3) | (old & 7)
    elif kind == "length":
        value = rng.choice([0, 1, old - 1, old + 1, old * 2, len(data), len(data) + 1, 0x7FFFFFFF, 2**32, 2**63 - 1, 2**64 - 1])
    else:
        value = rng.choice(INTERESTING + [old - 1, old + 1, 2**64 - old])
    same = rng.random() < 0.5 and max(value, 0) < 1 << (7 * width)
    blob = _encode_varint(value, width if same else None)
    return data[:at] + blob + data[at + width :], f"protobuf {kind} {old} -> {value % (1 << 64)} at {at}"


_EXTERNAL_VALUES = {
    "offset": ["0", "1", "-1", "4294967296", "18446744073709551616", "9" * 40, "", " 8", "0x10", "1e3", "8.0", "nan", "\u0663", "1_6"],
    "length": ["0", "1", "-1", "4294967296", "18446744073709551616", "9" * 40, "", " 4", "0x10", "1e3", "4.0", "\u0663", "1_6"],
    "location": ["", ".", "..", "../seed.onnx.data", "/etc/hostname", "seed.onnx", "missing.data", "sub/seed.onnx.data", "a\x00b", "C:x", "\\\\host\\x"],
}


def _onnx_tensors(model) -> list:
    graphs, tensors = [model.graph], []
    while graphs:
        g = graphs.pop()
        tensors += list(g.initializer)
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                graphs += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
    return tensors


def onnx_tensor(rng, data):
    """One field of one weight of the parsed model: an external-data offset, length or location
    string, dims, data_type, raw_data's size, a typed field's count, data_location, a name."""
    from surgery.formats.onnx_model import proto_module

    model = proto_module().ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 - an earlier mutation broke the protobuf: mutate its bytes instead
        return pb_varint(rng, data)
    tensors = _onnx_tensors(model)
    if not tensors:
        return pb_varint(rng, data)
    t = rng.choice(tensors)
    edit = rng.choice(("external", "external", "external", "dims", "data_type", "raw_data", "typed", "location", "name"))
    if edit == "external" and len(t.external_data):
        item = rng.choice(t.external_data)
        values = _EXTERNAL_VALUES.get(item.key, ["", "x"]) + [str(int(v) + d) for v in [item.value] if v.isdigit() for d in (-1, 1, 7)]
        item.value = rng.choice(values)
        what = f"{item.key}={item.value!r}"
    elif edit == "external":
        t.data_location = 1
        for key in rng.sample(("location", "offset", "length"), rng.randrange(4)):
            item = t.external_data.add()
            item.key, item.value = key, rng.choice(_EXTERNAL_VALUES[key])
        what = f"external data {[(x.key, x.value) for x in t.external_data]}"
    elif edit == "dims":
        if t.dims and rng.random() < 0.7:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, -1, 2, 5, 2**31, 2**62, -(2**63)])
        elif t.dims and rng.random() < 0.5:
            del t.dims[-1]
        else:
            t.dims.append(rng.choice([0, 1, 2, 2**40]))
        what = f"dims {list(t.dims)}"
    elif edit == "data_type":
        t.data_type = rng.choice([*range(30), -1, 2**31 - 1])
        what = f"data_type {t.data_type}"
    elif edit == "raw_data":
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)] if t.raw_data and rng.random() < 0.5 else t.raw_data + bytes(rng.choice((1, 2, 4, 8)))
        what = f"raw_data of {len(t.raw_data)} bytes"
    elif edit == "typed":
        field = rng.choice(("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"))
        values = getattr(t, field)
        if len(values) and rng.random() < 0.5:
            del values[-1]
        else:
            values.append(b"x" if field == "string_data" else 1)
        what = f"{field} of {len(values)}"
    elif edit == "location":
        t.data_location = 1 - t.data_location  # other values of the enum: pb_varint
        what = f"data_location {t.data_location}"
    else:
        t.name = rng.choice([x.name for x in tensors] + ["", "a/../b", "x" * 300])
        what = f"name {t.name[:20]!r}"
    try:
        return model.SerializeToString(), f"onnx tensor {t.name[:40]!r}: {what}"
    except Exception:  # noqa: BLE001
        return pb_varint(rng, data)


# -- zip members, rewritten with a mutated member (so CRCs and sizes agree) -----------------


def json_value(rng, data):
    """A value somewhere in a JSON document replaced by one of another type."""
    import json

    try:
        document = json.loads(data)
    except ValueError:
        return json_number(rng, data)
    spots, todo = [], [document]
    while todo:
        node = todo.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            spots.append((node, k))
            todo.append(node[k])
    if not spots:
        return json_number(rng, data)
    node, key = rng.choice(spots)
    node[key] = rng.choice([None, 0, -1, 2**64, 1.5, "", "x", "\ud800", [], {}, True, [None], {"class_name": None}])
    return json.dumps(document).encode(), f"JSON value at {key!r} -> {node[key]!r}"


def zip_member(rng, data):
    """One member of a zip, mutated by what its own format knows, and the zip written again."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [(info, z.read(info)) for info in z.infolist()]
    except Exception:  # noqa: BLE001 - an earlier mutation broke the zip: mutate its headers instead
        return zip_field(rng, data)
    if not members:
        return zip_field(rng, data)
    k = rng.randrange(len(members))
    name, blob = members[k][0].filename, members[k][1]
    json_member = name.endswith(".json")
    pool = [json_value, json_value, json_number] if json_member else BY_KIND[kind_of(blob)]
    new, what = rng.choice(pool if rng.random() < 0.7 else GENERIC)(rng, blob)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for j, (info, old) in enumerate(members):
            z.writestr(info, new if j == k else old)
    return out.getvalue(), f"member {name!r}: {what}"


GENERIC: list[Callable] = [bit_flip, interesting, truncate, insert, duplicate, delete]
BY_KIND: dict[str, list[Callable]] = {
    "json": [json_number, length_prefix],
    "zip": [zip_field, zip_field, zip_name],
    "h5": [h5_structure, h5_attribute, h5_attribute],
    "pickle": [interesting, bit_flip],
    "onnx": [pb_varint, pb_varint, onnx_tensor, onnx_tensor],
    # a .keras zip stores its weights member uncompressed: HDF5's structures are mutated in place too
    "keras_zip": [zip_field, zip_name, zip_member, zip_member, h5_structure, h5_attribute],
}
_ONNX_FIELDS = {2, 3, 4, 5, 6, 7, 8, 14, 20, 25}  # ModelProto fields that may follow ir_version


def kind_of(data: bytes) -> str:
    if data[:2] == b"PK":
        return "keras_zip" if b"model.weights.h5" in data else "zip"
    if len(data) > 2 and data[0] == 0x08 and 1 <= data[1] <= 64 and data[2] >> 3 in _ONNX_FIELDS:
        return "onnx"
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
