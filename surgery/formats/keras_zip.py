"""Keras 3 `.keras` files: a zip holding `config.json`, `metadata.json` and `model.weights.h5`.

`model.save("m.keras")` writes this by default. The weights member is a Keras 3
`.weights.h5` (`layers/<key>/vars/<i>`) and goes through `surgery.formats.keras_h5`:

* reading: Keras stores the member uncompressed (ZIP_STORED), so h5py reads it in place
  through a file object over the member's byte range: nothing is extracted, and no read
  can leave the member. A compressed member (not written by Keras) is extracted to a
  temporary file, which a note on stderr names.
* the tree: tensors as `keras_h5` names them (`conv1/0`, `conv1/1`); `config.json` under
  the metadata key `model_config`, so class surgery, strip-head and truncate rewrite it
  with the same code as a full-model `.h5` (`surgery.keras_config`, `surgery.ops.strip`);
  `metadata.json`'s keys (`keras_version`, `date_saved`) as metadata too; surgery's own
  metadata (provenance, class counts) is kept as root attributes of the weights member,
  where Keras does not look.
* writing: the weights go to a temporary `.h5` beside the output, then the new zip is
  written to the temporary path it is given: `metadata.json`, the (rewritten)
  `config.json`, the weights, and every other member of the source (`assets/...`) as it was.

h5py is imported only when a file is read or written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..durable import fsync
from ..errors import CorruptFileError, FormatError, OutputError
from ..keras_config import CONFIG_KEY
from ..tree import KERAS, Entry, Tree
from ._errors import ZIP_ERRORS, describe, is_disk_full
from .h5_files import Place

NAME = "keras"
SUFFIXES = (".keras",)
CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
MEMBERS = (CONFIG, METADATA, WEIGHTS)
_FIX = "the file is corrupt or not a Keras 3 model; re-save it with model.save('model.keras')"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header, before its name and extra field

# format_state keys
SOURCE = "keras.zip"  # the zip the tree was read from (its other members are copied on write)
METADATA_KEYS = "keras.metadata_keys"  # JSON list: the metadata keys that came from metadata.json

Progress = Callable[[int], None]


def sniff(path: Path, head: bytes, size: int) -> bool:
    if not path.is_file() or not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except ZIP_ERRORS:  # a broken zip is not a .keras file: detection never raises
        return False
    return all(m in names for m in MEMBERS)


# -- reading ------------------------------------------------------------------------


def load(path: Path) -> Tree:
    # Imported here: keras_h5 imports numpy, and detection imports this module for every zip.
    from . import keras_h5

    path = Path(path)
    config, metadata_json, weights = _read_members(path)
    inner = keras_h5.load(path, place=_stored_range(path, weights) if _stored(weights) else _extracted(path, weights), config=config)
    if inner.format_state.get(keras_h5.LAYOUT) != "keras3":
        raise FormatError(f"{WEIGHTS} is not a Keras 3 weights file", str(path), _FIX)
    metadata = {k: v for k, v in inner.metadata.items()}
    from_json = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata_json.items()}
    metadata.update(from_json)
    metadata[CONFIG_KEY] = config
    state = {**inner.format_state, SOURCE: str(path), METADATA_KEYS: json.dumps(list(from_json))}
    return Tree(list(inner.values()), format=NAME, convention=KERAS, metadata=metadata, format_state=state)


def _read_members(path: Path) -> tuple[str, dict, zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            missing = [m for m in MEMBERS if m not in infos]
            if missing:
                raise FormatError(f"a zip without {', '.join(missing)}, so not a .keras model", str(path), _FIX)
            config = z.read(CONFIG).decode("utf-8")
            metadata = json.loads(z.read(METADATA).decode("utf-8"))
            json.loads(config)
    except (*ZIP_ERRORS, zipfile.LargeZipFile, KeyError) as e:
        raise CorruptFileError(f"cannot read the .keras zip ({type(e).__name__}: {e})", str(path), _FIX) from e
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{METADATA} is not a JSON object", str(path), _FIX)
    return config, metadata, infos[WEIGHTS]


def _stored(info: zipfile.ZipInfo) -> bool:
    return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1


def _stored_range(path: Path, info: zipfile.ZipInfo) -> Place:
    """The byte range of an uncompressed member, checked against its local header and the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"the local header of {WEIGHTS} is missing or damaged", str(path), _FIX)
    *_, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if info.compress_size != info.file_size or offset + info.file_size > size:
        raise CorruptFileError(
            f"{WEIGHTS} claims {info.file_size} bytes at offset {offset}, past the end of the {size}-byte file", str(path), _FIX
        )
    return Place(offset, info.file_size)


def _extracted(path: Path, info: zipfile.ZipInfo) -> Place:
    """A compressed member (Keras never writes one) cannot be read in place: h5py seeks back and
    forth, and each seek back would decompress from the start. It is copied to a temporary file,
    deleted when no tensor needs it any more, and the copy is said on stderr."""
    import tempfile  # here: detection imports this module for every zip, a .pt too

    fd, name = tempfile.mkstemp(prefix="surgery-", suffix=".weights.h5")
    copy = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(path) as z, z.open(info) as member:
            shutil.copyfileobj(member, out, 1 << 20)
    except ZIP_ERRORS as e:  # zipfile decodes the local header's name here, so a bad name ends up here too
        copy.unlink(missing_ok=True)
        raise CorruptFileError(f"cannot extract {WEIGHTS} ({describe(e)})", str(path), _FIX) from e
    print(f"note: {WEIGHTS} is compressed inside {path}, so it was extracted to {copy} (removed when done)", file=sys.stderr)
    return Place(copy=copy)


# -- writing ------------------------------------------------------------------------


def check_writable(tree: Tree) -> None:
    """A .keras file needs the Keras 3 weights layout and a config; refuse before writing."""
    from . import keras_h5

    state = tree.format_state if tree.format == NAME else {}
    if state.get(keras_h5.LAYOUT) != "keras3" or not tree.metadata.get(CONFIG_KEY):
        raise OutputError(
            "a .keras file needs a model's config and the Keras 3 weights layout it was read with",
            "keras",
            "write .keras only from a .keras file; otherwise write .h5 or .weights.h5",
        )
    keras_h5.check_writable(tree)


def save(tree: Tree, path: Path, *, progress: Progress | None = None) -> None:
    from . import keras_h5

    check_writable(tree)
    path = Path(path)
    from_json = set(json.loads(tree.format_state.get(METADATA_KEYS, "[]")))
    inner = {k: v for k, v in tree.metadata.items() if k != CONFIG_KEY and k not in from_json}
    weights = path.with_name(path.name + ".weights.h5")
    try:
        keras_h5.save(_rekeyed(tree).derive(metadata=inner), weights, progress=progress, durable=False)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(METADATA, json.dumps(_metadata_json(tree, from_json)))
            z.writestr(CONFIG, tree.metadata[CONFIG_KEY])
            z.write(weights, WEIGHTS)
            _copy_other_members(tree, z)
        with open(path, "rb+") as raw:
            fsync(raw.fileno())
    finally:
        weights.unlink(missing_ok=True)


def _rekeyed(tree: Tree) -> Tree:
    """The weights' layer groups keyed as Keras will look for them in the model the config describes.

    Keras 3 keys each top-level layer's group by its class (`conv2d`, `conv2d_1`, ... in layer
    order), so removing a layer (strip-head, truncate) shifts the keys of later layers of its
    class. Groups are matched to layers by the name their `vars` group records; groups of
    layers the config no longer has are left out.
    """
    from . import keras_h5

    keys = _expected_keys(tree.metadata.get(CONFIG_KEY, ""))
    skeleton = json.loads(tree.format_state.get(keras_h5.SKELETON, "[]"))
    names = {path.split("/")[2]: attrs.get("name") for path, attrs in skeleton if path.count("/") == 3 and path.startswith("/layers/") and path.endswith("/vars")}
    if keys is None or not names:
        return tree
    renamed = {old: keys[name] for old, name in names.items() if name in keys}
    gone = {old for old, name in names.items() if name not in keys}

    def move(path: str) -> str | None:
        parts = path.split("/")
        if len(parts) < 3 or parts[1] != "layers":
            return path
        if parts[2] in gone:
            return None
        parts[2] = renamed.get(parts[2], parts[2])
        return "/".join(parts)

    new_skeleton = [[moved, attrs] for path, attrs in skeleton if (moved := move(path)) is not None]
    replace = {}
    for e in tree.values():
        old = str(e.attrs.get("keras.h5_path", ""))
        new = move(old)
        if new is not None and new != old:
            replace[e.name] = Entry(e.name, e.shape, e.dtype, e.source, {**e.attrs, "keras.h5_path": new})
    state = {**tree.format_state, keras_h5.SKELETON: json.dumps(new_skeleton, ensure_ascii=False)}
    return tree.derive(replace=replace, format_state=state)


def _expected_keys(config: str) -> dict[str, str] | None:
    """Layer name -> the group key Keras 3 saves it under (see `_rekeyed`); None for configs we do not know."""
    try:
        document = json.loads(config)
        layers = document["config"]["layers"]
        kind = document["class_name"]
    except (ValueError, TypeError, KeyError):
        return None
    if kind not in ("Functional", "Model", "Sequential") or not isinstance(layers, list):
        return None
    if not all(isinstance(layer, dict) and isinstance(layer.get("config", {}), dict) for layer in layers):
        return None  # a broken config: its groups keep their keys
    keys: dict[str, str] = {}
    used: dict[str, int] = {}
    for layer in layers:
        if kind == "Sequential" and layer.get("class_name") == "InputLayer":
            continue  # a Sequential's layers do not list its input
        key = _snake_case(str(layer.get("class_name", "")))
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys[str(layer.get("name") or layer.get("config", {}).get("name"))] = key
    return keys


def _snake_case(name: str) -> str:
    """Keras's own rule (keras.src.utils.naming.to_snake_case): Conv2D -> conv2d, InputLayer -> input_layer."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _metadata_json(tree: Tree, keys: set[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in keys:
        if key in tree.metadata:
            out[key] = tree.metadata[key]
    return out


def _copy_other_members(tree: Tree, z: zipfile.ZipFile) -> None:
    """Assets and anything else Keras put in the source zip, byte for byte."""
    source = tree.format_state.get(SOURCE)
    if not source:
        return
    try:
        with zipfile.ZipFile(source) as original:
            for info in original.infolist():
                if info.filename not in MEMBERS:
                    with original.open(info) as src, z.open(info.filename, "w") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
    except ZIP_ERRORS as e:
        if isinstance(e, OSError) and is_disk_full(e):  # the output's problem, not the source's
            raise
        raise CorruptFileError(f"cannot copy the other members of the source zip ({describe(e)})", source, _FIX) from e
