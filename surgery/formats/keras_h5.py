"""Keras HDF5 weight files: Keras 2 `save_weights`, full-model `.h5`, and Keras 3 `.weights.h5`.

Three layouts share one reader:

* Keras 2 weights: root attribute `layer_names`; each layer group lists its
  datasets in a `weight_names` attribute (`conv1/kernel:0`, which may be nested
  under an inner name that differs from the layer's, or not nested at all).
* Full model: the same under `model_weights`, plus `model_config` and
  `training_config` root attributes (kept verbatim) and `optimizer_weights`, each
  variable named (`training/Adam/conv1/kernel/m:0`).
* Keras 3: `layers/<key>/vars/<i>`, where the `vars` group's `name` attribute
  holds the layer's own name; a `.keras` model's optimizer as `optimizer/vars/<i>`.

Optimizer variables are mapped to their parameters by `surgery.formats.keras_training`
(by name, or for Keras 3 by order through config.json) and follow every edit; they are
written back in the same places, under the same names.

Tree names are `layer/weight` (`conv4_3_norm_mbox_conf/kernel`; `a_mbox_conf/0`
for Keras 3, whose files do not name variables). The file's string attributes
(`model_config`, `keras_version`, ...) become the tree's metadata. What is needed
to write the same layout back (layer order, group attributes) travels in the
tree's `format_state` under `keras.*` keys.

Unchanged datasets are copied with HDF5's object copy, so their dtype,
chunking and compression stay as they were; changed ones keep the filters.
h5py is imported only when a Keras file is read or written.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..durable import fsync
from ..errors import CorruptFileError, FormatError, OutputError
from ..guard import run_guarded
from .h5_files import Place, _Opened  # noqa: F401 (Place: keras_zip builds it as keras_h5.Place)
from ..naming import layer_of
from ..tree import DROPPED_ON_READ, KERAS, TORCH, Entry, Source, Tree
from . import h5_take
from ._errors import H5_ERRORS, corrupt_error, corrupt_on, is_disk_full

NAME = "keras_h5"
SUFFIXES = (".h5", ".hdf5")  # Keras 3 names its files .weights.h5
MAGIC = b"\x89HDF\r\n\x1a\n"
_FIX = "the file is corrupt or not a Keras weights file; re-save it with model.save_weights"

# format_state keys. Every metadata key is written back as a root attribute.
LAYOUT = "keras.layout"  # "weights" (Keras 2 save_weights), "model" (full model), "keras3"
LAYER_NAMES = "keras.layer_names"  # JSON list: layer order, including layers without weights
WEIGHTLESS = "keras.weightless"  # JSON list: layers that had no weights in the source file
SKELETON = "keras.skeleton"  # Keras 3: JSON list of [group path, {attribute: string}]
OPTIMIZER_RAW = "keras.optimizer_raw"  # the optimizer's datasets as read, until load() maps them (keras_optimizer_io)

# The last Keras 2 release. Keras' legacy loader treats a file without keras_version as
# Keras 1 and "converts" its kernels, so files we build from other formats must carry one.
_DEFAULT_KERAS_VERSION = "2.15.0"
_ATTR_LIMIT = 64000  # HDF5 object headers hold at most 64 KiB of attributes; Keras splits longer lists
_DATASET_OPTIONS = ("compression", "compression_opts", "shuffle", "fletcher32", "scaleoffset")
# What a string attribute may claim before it is read: Keras' largest (model_config) are a
# few MB. A claim past this, or past the file's size, is corruption that HDF5 could spin on.
_ATTR_MAX_BYTES = 64 << 20
_MAX_DEPTH = 64  # Keras 3 nests layers a few levels deep; links can make a cycle

Progress = Callable[[int], None]


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a core dependency
        raise FormatError("h5py is not installed", "keras_h5", "pip install h5py") from e
    return h5py


def sniff(path: Path, head: bytes, size: int) -> bool:
    return path.is_file() and head.startswith(MAGIC)


# -- reading ------------------------------------------------------------------------


class H5Dataset(Source):
    """One HDF5 dataset, read when asked (from a file, or from a member of a `.keras` zip)."""

    def __init__(self, path: Path, dataset: str, place: Place | None = None) -> None:
        self.path, self.dataset, self.place = Path(path), dataset, place

    def read_array(self, entry: Entry) -> np.ndarray:
        try:
            with _Opened(self.path, self.place) as f:
                array = f[self.dataset][()]
        except (OSError, KeyError) as e:
            raise CorruptFileError(f"cannot read dataset {self.dataset!r} ({e})", str(self.path), _FIX) from e
        except H5_ERRORS as e:  # whatever else HDF5 says about a broken dataset
            raise corrupt_error(e, str(self.path), f"dataset {self.dataset!r}", _FIX) from e
        array = np.asarray(array)
        return array.astype(array.dtype.newbyteorder("="), copy=False)

    def read_take(self, entry: Entry, indices, axis: int) -> np.ndarray:
        # Only the kept slices are read: in place for plain contiguous storage, else by HDF5's own
        # selection (see h5_take for when each pays).
        return h5_take.read_take(self, entry, indices, axis, _FIX)

    def paths(self) -> tuple[Path, ...]:
        return (self.path,)


def load(path: Path, *, place: Place | None = None, config: str | None = None) -> Tree:
    """The tree of a Keras HDF5 file; with `place`, the HDF5 file is a member of `path` (a zip's),
    and `config` is that zip's config.json, which proves the order of a Keras 3 optimizer."""
    path = Path(path)
    # HDF5 can spin on a hostile file while holding the GIL: the metadata is read in a
    # watched child process (surgery.guard), which Ctrl-C and a time limit can stop.
    # h5py is imported here, before the fork: the child inherits it instead of importing it
    # again, and the parent needs it anyway to read the data (the second import took 0.08 s).
    _h5py()
    entries, metadata, state = run_guarded(_read_metadata, path, place, where=str(path), what="reading the HDF5 metadata", fix=_FIX)
    raw = state.pop(OPTIMIZER_RAW, [])
    if place is not None:  # the entries came back from the child with copies: share the one place, whose life keeps a temporary copy
        for e in [*entries, *raw]:
            if isinstance(e.source, H5Dataset):
                e.source.place = place
    if raw:
        from .keras_optimizer_io import optimizer_state

        state.update(optimizer_state(raw, entries, state[LAYOUT], config, metadata.get("training_config", "")))
    return Tree(entries, format=NAME, convention=KERAS, metadata=metadata, format_state=state)


def _read_metadata(path: Path, place: Place | None = None) -> tuple[list[Entry], dict[str, str], dict[str, Any]]:
    _h5py()
    try:
        opened = _Opened(path, place)
    except OSError as e:
        raise CorruptFileError(f"cannot open the HDF5 file ({e})", str(path), _FIX) from e
    with opened as f, corrupt_on(H5_ERRORS, str(path), "the HDF5 file", _FIX):
        metadata = {k: v for k, v in ((k, _attr_string(f.attrs, k)) for k in _attr_names(f)) if v is not None}
        state: dict[str, Any] = {}
        if "model_weights" in f:
            entries = _read_keras2(path, f["model_weights"], state)
            state[LAYOUT] = "model"
            if "optimizer_weights" in f:
                from .keras_optimizer_io import read_optimizer_weights

                read_optimizer_weights(path, f["optimizer_weights"], state)
        elif _has_attr(f, "layer_names"):
            entries = _read_keras2(path, f, state)
            state[LAYOUT] = "weights"
        elif "layers" in f or "vars" in f:
            entries = _read_keras3(path, f, state, place)
            state[LAYOUT] = "keras3"
        else:
            raise FormatError(
                "an HDF5 file without Keras weights (no layer_names, model_weights or layers group)",
                str(path),
                "surgery reads files written by Keras save_weights or model.save",
            )
    return entries, metadata, state


def _read_keras2(path: Path, root: Any, state: dict[str, Any]) -> list[Entry]:
    layer_names = _attr_list(root, "layer_names")
    entries: list[Entry] = []
    weightless = []
    for layer in layer_names:
        if layer not in root:
            raise CorruptFileError(f"layer {layer!r} is listed in layer_names but has no group", str(path), _FIX)
        group = root[layer]
        if not isinstance(group, _h5py().Group):
            raise CorruptFileError(f"layer {layer!r} is listed in layer_names but is not a group", str(path), _FIX)
        weight_names = _attr_list(group, "weight_names")
        if not weight_names:
            weightless.append(layer)
        short = _short_names(layer, weight_names)
        for weight_name, tensor in zip(weight_names, short):
            if weight_name not in group or not isinstance(group[weight_name], _h5py().Dataset):
                raise CorruptFileError(
                    f"weight {weight_name!r} of layer {layer!r} is listed but missing", str(path), _FIX
                )
            entries.append(
                _entry(path, group[weight_name], f"{layer}/{tensor}", {"keras.layer": layer, "keras.weight_name": weight_name})
            )
    state[LAYER_NAMES] = json.dumps(layer_names, ensure_ascii=False)
    state[WEIGHTLESS] = json.dumps(weightless, ensure_ascii=False)
    return entries


def _short_names(layer: str, weight_names: list[str]) -> list[str]:
    """`conv1/kernel:0` -> `kernel`; the longer path only where short names would collide."""
    plain = [re.sub(r":\d+$", "", w) for w in weight_names]
    short = [p.rsplit("/", 1)[-1] for p in plain]
    if len(set(short)) == len(short):
        return short
    return [p[len(layer) + 1 :] if p.startswith(layer + "/") else p for p in plain]


def _read_keras3(path: Path, f: Any, state: dict[str, Any], place: Place | None = None) -> list[Entry]:
    entries: list[Entry] = []
    skeleton: list[list[Any]] = []
    dropped = 0

    def walk(group: Any, prefix: str, depth: int) -> None:
        nonlocal dropped
        if depth > _MAX_DEPTH:
            raise CorruptFileError(f"groups nest deeper than {_MAX_DEPTH} levels at {_escaped(group.name)} (a link cycle?)", str(path), _FIX)
        skeleton.append([group.name, {k: v for k, v in ((k, _attr_string(group.attrs, k)) for k in _attr_names(group)) if v is not None}])
        for key in _ordered_keys(group, path):
            child = _hard_child(group, key, path)
            if group.name == "/" and key == "optimizer":
                from .keras_optimizer_io import read_keras3_optimizer

                dropped += read_keras3_optimizer(path, child, state, place)
                continue
            if isinstance(child, _h5py().Dataset):
                entries.append(_entry(path, child, prefix + key, {"keras.h5_path": child.name}, place))
            elif not isinstance(child, _h5py().Group):
                raise CorruptFileError(f"{_escaped(child.name)} is a stored datatype, not a group or dataset", str(path), _FIX)
            elif key == "vars" or key == "layers":
                walk(child, prefix, depth + 1)
            else:
                walk(child, prefix + _display_name(child, key) + "/", depth + 1)

    walk(f, "", 0)
    state[SKELETON] = json.dumps(skeleton, ensure_ascii=False)
    if dropped:
        state[DROPPED_ON_READ] = f"optimizer ({dropped} tensors): not laid out as optimizer/vars/0..N-1, so its order is unknown"
    return entries


def _display_name(group: Any, key: str) -> str:
    """A Keras 3 layer group is keyed by class (`conv2d_1`); its vars carry the layer's own name."""
    if "vars" in group and isinstance(group["vars"], _h5py().Group):
        name = _attr_string(group["vars"].attrs, "name")
        if name:
            return name
    return key


def _ordered_keys(group: Any, path: Path) -> list[str]:
    # Keras 3 numbers variables 0, 1, ..., 10 and layers conv2d, conv2d_1, ..., conv2d_10 in
    # creation order: sort digit runs as numbers so that order survives.
    keys = [_name(k, f"a link in {_escaped(group.name)}", path) for k in group.keys()]
    return sorted(keys, key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", k)])


def _hard_child(group: Any, key: str, path: Path) -> Any:
    """The object a link names; soft and external links are refused (they can loop, or point outside the file)."""
    link = group.get(key, getlink=True)
    if not isinstance(link, _h5py().HardLink):
        raise CorruptFileError(
            f"{_escaped(group.name.rstrip('/') + '/' + key)} is a {type(link).__name__}; Keras files hold only plain groups and datasets",
            str(path),
            _FIX,
        )
    return group[key]


def _name(value: Any, what: str, path: Path) -> str:
    """A name read from the file, refused (shown escaped) unless every writer can store it."""
    if isinstance(value, bytes):
        raise CorruptFileError(f"{what} is named {_escaped(value)}, which is not valid UTF-8", str(path), _FIX)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptFileError(f"{what} is named {_escaped(value)}, which is not valid UTF-8", str(path), _FIX) from None
    return value


def _escaped(value: Any) -> str:
    """A name as printable ASCII, whatever bytes or lone surrogates it holds."""
    return ascii(value) if isinstance(value, str) else repr(value)


def _entry(path: Path, dataset: Any, name: str, attrs: dict[str, object], place: Place | None = None) -> Entry:
    name = _name(name, "a tensor", path)
    try:
        stored = dataset.dtype  # read once: a broken datatype message raises on every read
    except H5_ERRORS as e:
        raise corrupt_error(e, str(path), f"the datatype of dataset {_escaped(dataset.name)}", _FIX) from e
    try:
        dtype = dtypes.from_numpy(stored.newbyteorder("="))
    except Exception as e:
        raise FormatError(
            f"dataset {_escaped(dataset.name)} has dtype {stored}, which is not a tensor type", str(path), _FIX
        ) from e
    try:
        options = {k: getattr(dataset, k) for k in _DATASET_OPTIONS if getattr(dataset, k, None) not in (None, False)}
        options["chunked"] = dataset.chunks is not None
    except H5_ERRORS as e:  # the filter pipeline message is broken
        raise corrupt_error(e, str(path), f"the compression settings of dataset {_escaped(dataset.name)}", _FIX) from e
    return Entry(name, dataset.shape, dtype.name, H5Dataset(path, dataset.name, place), {**attrs, "h5": options})


def _count_datasets(group: Any) -> int:
    count = 0

    def visit(_: str, obj: Any) -> None:
        nonlocal count
        count += isinstance(obj, _h5py().Dataset)

    group.visititems(visit)
    return count


def _has_attr(group: Any, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _attr_list(group: Any, name: str) -> list[str]:
    """A list-of-strings attribute, as Keras writes it: bytes or str, fixed or variable
    length, and split into name0, name1, ... when it would not fit one object header."""
    if name in group.attrs:
        values = [_read_attr(group.attrs, name)]
    else:
        values, k = [], 0
        while f"{name}{k}" in group.attrs:
            values.append(_read_attr(group.attrs, f"{name}{k}"))
            k += 1
    out: list[str] = []
    where = group.file.filename
    for value in values:
        array = np.atleast_1d(np.asarray(value if value is not _NOT_TEXT else 0))
        if array.size and array.dtype.kind not in "SUO":
            raise CorruptFileError(f"attribute {name!r} of {group.name} is not a list of names", where, _FIX)
        out.extend(_decoded(v, f"a name in attribute {name!r} of {_escaped(group.name)}", where) for v in array.tolist())
    return out


def _decoded(value: Any, what: str, where: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"{what} is {_escaped(value)}, which is not valid UTF-8", where, _FIX) from None
    return _name(str(value), what, Path(where))


_NOT_TEXT = object()  # what _read_attr returns for an attribute that holds no text


def _attr_names(obj: Any) -> list[str]:
    return [_name(k, f"an attribute of {_escaped(obj.name)}", Path(obj.file.filename)) for k in obj.attrs.keys()]


def _read_attr(attrs: Any, name: str) -> Any:
    """An attribute's value, read only after its dataspace and type are checked against the file.

    HDF5 trusts the counts and sizes in the file; a mutated dataspace can make it allocate
    or loop for a very long time inside one call. Only text attributes are read at all.
    """
    if isinstance(attrs, dict):
        return attrs[name]
    h5py = _h5py()
    attr = h5py.h5a.open(attrs._id, name.encode("utf-8"))
    space, kind = attr.get_space(), attr.get_type()
    count = 0 if space.get_simple_extent_type() == h5py.h5s.NULL else space.get_simple_extent_npoints()
    if count == 0:
        return np.zeros(0, "S1")  # Keras 2.0 writes a weightless layer's weight_names as an empty float array
    if kind.get_class() != h5py.h5t.STRING:
        return _NOT_TEXT
    variable = kind.is_variable_str()
    claimed = count * (8 if variable else kind.get_size())  # a variable-length string costs a heap id in the file
    file_size = h5py.h5i.get_file_id(attrs._id).get_filesize()
    if claimed > min(file_size, _ATTR_MAX_BYTES):
        raise CorruptFileError(
            f"attribute {name!r} claims {count} strings ({claimed} bytes), more than the file's {file_size} bytes can hold",
            _file_name(attrs),
            _FIX,
        )
    return attrs[name]


def _excerpt(text: str) -> str:
    """The text around its first character that is not valid UTF-8, escaped."""
    bad = next((k for k, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF), 0)
    return ascii(text[max(0, bad - 20) : bad + 20])


def _file_name(attrs: Any) -> str:
    return "" if isinstance(attrs, dict) else _h5py().h5i.get_file_id(attrs._id).name.decode("utf-8", "replace")


def _attr_string(attrs: Any, name: str) -> str | None:
    """A scalar string attribute as str; None for anything else (arrays, numbers)."""
    value = _read_attr(attrs, name)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # h5py hands undecodable bytes back as lone surrogates
            raise CorruptFileError(f"attribute {name!r} holds {_excerpt(value)}, which is not valid UTF-8", _file_name(attrs), _FIX) from None
        return value
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "SUO":
        return _attr_string({name: value.item()}, name)
    return None


# -- writing ------------------------------------------------------------------------


def save(tree: Tree, path: Path, *, progress: Progress | None = None, durable: bool = True) -> None:
    """Write `tree` to `path`; `durable=False` skips the fsync, for an intermediate file (a
    `.keras` zip's weights, copied into the zip, which is fsynced instead)."""
    h5py = _h5py()
    check_writable(tree)
    layout = _state(tree).get(LAYOUT, "weights")
    sources: dict[tuple[Path, Place | None], _Opened] = {}
    try:
        with h5py.File(path, "w", track_order=True) as f:
            if layout == "keras3":
                _write_keras3(f, tree, sources, progress)
            else:
                _write_keras2(f, tree, layout, sources, progress)
            f.flush()
    except H5_ERRORS as e:
        if is_disk_full(e):  # HDF5 reports a full disk in its own words, from any step (object copy included)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from e
        raise
    finally:
        for handle in sources.values():
            handle.close()
    if durable:
        with open(path, "rb+") as raw:  # h5py has no fsync of its own
            fsync(raw.fileno())


def check_writable(tree: Tree) -> None:
    """Refuse what a Keras file cannot hold before anything is written."""
    if tree.convention == TORCH:
        raise OutputError(
            "the weights are in PyTorch layout (output axis first); Keras files need Keras layout",
            "keras_h5",
            "write safetensors or npz instead",
        )
    for e in tree.values():
        dtype = dtypes.get(e.dtype)
        if not dtype.numpy_native:
            raise OutputError(
                f"tensor {e.name!r} is {e.dtype}, which HDF5 cannot store", e.name, "cast it first with --dtype float32"
            )
    if _state(tree).get(LAYOUT) == "keras3":
        missing = [e.name for e in tree.values() if "keras.h5_path" not in e.attrs]
        if missing:
            raise OutputError(
                f"tensor {missing[0]!r} has no place in the Keras 3 file it came from",
                "keras_h5",
                "write a Keras 2-style .h5 (load it with load_weights(by_name=True)) or safetensors",
            )


def _write_keras2(f: Any, tree: Tree, layout: str, sources: dict, progress: Progress | None) -> None:
    by_layer: dict[str, list[Entry]] = {}
    for e in tree.values():
        layer = str(e.attrs.get("keras.layer") or layer_of(e.name) or e.name)
        by_layer.setdefault(layer, []).append(e)
    listed = json.loads(_state(tree).get(LAYER_NAMES, "[]"))
    weightless = set(json.loads(_state(tree).get(WEIGHTLESS, "[]")))
    order = [n for n in listed if n in by_layer or n in weightless] + [n for n in by_layer if n not in listed]

    version = tree.metadata.get("keras_version", _DEFAULT_KERAS_VERSION)
    backend = tree.metadata.get("backend", "tensorflow")
    for key, value in tree.metadata.items():
        f.attrs[key] = value
    f.attrs["keras_version"], f.attrs["backend"] = version, backend
    root = f if layout == "weights" else f.create_group("model_weights", track_order=True)
    root.attrs["keras_version"], root.attrs["backend"] = version, backend
    _write_attr_list(root, "layer_names", order)
    for layer in order:
        group = root.create_group(layer, track_order=True)
        weight_names = []
        for e in by_layer.get(layer, []):
            weight_name = str(e.attrs.get("keras.weight_name") or f"{layer}/{e.name.rsplit('/', 1)[-1]}:0")
            _write_dataset(group, weight_name, e, sources, progress)
            weight_names.append(weight_name)
        _write_attr_list(group, "weight_names", weight_names)
    if layout == "model":
        from .keras_optimizer_io import write_optimizer_weights

        write_optimizer_weights(f, tree, sources)


def _write_keras3(f: Any, tree: Tree, sources: dict, progress: Progress | None) -> None:
    for group_path, attrs in json.loads(_state(tree).get(SKELETON, "[]")):
        group = f if group_path == "/" else f.require_group(group_path)
        for key, value in attrs.items():
            group.attrs[key] = value
    for key, value in tree.metadata.items():
        if key not in f.attrs:
            f.attrs[key] = value
    for e in tree.values():
        _write_dataset(f, str(e.attrs["keras.h5_path"]), e, sources, progress)
    from .keras_optimizer_io import write_keras3_optimizer

    write_keras3_optimizer(f, tree, sources)


def _state(tree: Tree) -> dict[str, str]:
    """Our layout facts, only when the tree was read from a Keras file (HDF5, or the weights of a `.keras` zip)."""
    return tree.format_state if tree.format in (NAME, "keras") else {}


def _write_dataset(group: Any, name: str, e: Entry, sources: dict, progress: Progress | None) -> None:
    try:
        _copy_or_create(group, name, e, sources, progress)
    except H5_ERRORS as err:
        if is_disk_full(err):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from err
        where = str(e.source.path) if isinstance(e.source, H5Dataset) else e.name
        raise corrupt_error(err, where, f"tensor {e.name!r} while copying it", _FIX) from err


def _copy_or_create(group: Any, name: str, e: Entry, sources: dict, progress: Progress | None) -> None:
    source = e.source
    if isinstance(source, H5Dataset):
        opened = sources.get((source.path, source.place))
        if opened is None:
            opened = sources[(source.path, source.place)] = _Opened(source.path, source.place)
        handle = opened.file
        original = handle[source.dataset]
        if original.shape == e.shape and dtypes.from_numpy(original.dtype.newbyteorder("=")).name == e.dtype:
            # Unchanged: HDF5 copies the stored chunks as they are (no decode, no re-encode).
            parent, _, leaf = name.rpartition("/")
            target = group.require_group(parent) if parent else group
            handle.copy(original, target, name=leaf)
            if progress:
                progress(e.nbytes)
            return
    array = e.read()
    options = dict(e.attrs.get("h5", {}) or {})
    chunked = options.pop("chunked", False) or bool(options)
    if array.size == 0:  # HDF5 cannot chunk or filter an empty dataset
        chunked, options = False, {}
    group.create_dataset(name, data=array, chunks=True if chunked else None, **options)
    if progress:
        progress(e.nbytes)


def _write_attr_list(group: Any, name: str, values: Iterable[str]) -> None:
    """Fixed-length UTF-8 bytes, as Keras 2 writes them, split when too long for one header."""
    encoded = [v.encode("utf-8") for v in values]
    array = np.array(encoded, dtype=f"S{max([len(v) for v in encoded] + [1])}")
    if array.nbytes <= _ATTR_LIMIT:
        group.attrs[name] = array
        return
    parts = int(np.ceil(array.nbytes / _ATTR_LIMIT))
    for k, chunk in enumerate(np.array_split(array, parts)):
        group.attrs[f"{name}{k}"] = chunk
