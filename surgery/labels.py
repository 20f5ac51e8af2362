"""Class names: label tables, label files, resolving names to indices, and moves between label spaces.

A label space is the list of names a classifier head's rows stand for: row i is
class `names[i]`. Built-in spaces (`coco80`, `coco80+bg`, `coco91`, `voc20`,
`voc21`, `imagenet1k`) are data files in `surgery/label_tables/`; a user file is
one name per line, a JSON list, or a JSON object `{id: name}`; a checkpoint
carries its own (a Hugging Face `config.json`'s `id2label`, or the
`surgery.labels` list that every class edit records).

Names resolve exactly first, then ignoring case; an unknown name is refused
with the three nearest names (difflib). Framework-free: standard library only.

    >>> load("coco80+bg")[:3]
    ['background', 'person', 'bicycle']
    >>> resolve(["car", "Bus"], load("coco80+bg"), "coco80+bg")
    [3, 6]
    >>> move(load("coco91"), load("coco80+bg"))[:4]
    [0, 1, 2, 3]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from .errors import FormatError, OperationError
from .tree import Tree

__all__ = [
    "KEY",
    "LabelSpace",
    "Prepared",
    "Resolved",
    "builtin_names",
    "follow",
    "is_background",
    "is_placeholder",
    "load",
    "matches_head",
    "move",
    "move_table",
    "new_names",
    "own",
    "parse_label_text",
    "prepare",
    "record",
    "resolve",
    "resolve_classes",
    "space",
    "split_classes",
]

KEY = "surgery.labels"  # metadata: the JSON list of the head's class names, in row order
MAX_LABEL_FILE = 16 << 20  # a label file is text; anything larger is not one
_TABLES = "label_tables"


@dataclass(frozen=True)
class LabelSpace:
    """Names in row order, and where they came from (a table name, a file, the checkpoint)."""

    names: tuple[str, ...]
    source: str


# -- the built-in tables (data files) -------------------------------------------------


@lru_cache(maxsize=1)
def _index() -> dict:
    from importlib import resources  # here: it imports tempfile, shutil, ...

    return json.loads(resources.files(__package__).joinpath(_TABLES, "index.json").read_text(encoding="utf-8"))


def builtin_names() -> list[str]:
    """The names of the built-in label tables."""
    return list(_index()["tables"])


def is_background(name: str) -> bool:
    """True for the names tables give a background class ('background', '__background__')."""
    return name.lower() in _index()["background"]


def is_placeholder(name: str) -> bool:
    """True for names that mark an unused id ('N/A' in coco91): they never match a name."""
    return name in _index()["placeholders"]


@cache
def _builtin(name: str) -> tuple[str, ...]:
    from importlib import resources

    row = _index()["tables"][name]
    text = resources.files(__package__).joinpath(_TABLES, row["file"]).read_text(encoding="utf-8")
    return tuple(text.splitlines())


# -- loading --------------------------------------------------------------------------


def load(name_or_path: str | Path) -> list[str]:
    """The names of a built-in table or of a label file, in class-index order.

    Args:
        name_or_path: a built-in table name (see `builtin_names()`), or a file: one name per
            line, a JSON list of names, or a JSON object mapping ids to names.

    Raises:
        FormatError: no such table or file, or a file that is not a label list.

    Example:
        >>> len(load("imagenet1k"))
        1000
    """
    return list(space(name_or_path).names)


def space(name_or_path: str | Path) -> LabelSpace:
    """Like `load`, with the source kept for messages."""
    text = str(name_or_path)
    if text in _index()["tables"]:
        return LabelSpace(_builtin(text), text)
    path = Path(name_or_path)
    if not path.is_file():
        raise FormatError(
            f"{text!r} is neither a built-in label table nor a file",
            "--labels",
            f"use one of {', '.join(builtin_names())}, or a file with one name per line",
        )
    if path.stat().st_size > MAX_LABEL_FILE:
        raise FormatError(f"label file is larger than {MAX_LABEL_FILE >> 20} MiB", str(path), "give a file with one name per line")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"label file is not UTF-8 text (byte {e.start})", str(path), "save it as UTF-8") from None
    return LabelSpace(tuple(parse_label_text(raw, str(path))), str(path))


def parse_label_text(text: str, where: str) -> list[str]:
    """Names from a label file's text: a JSON list, a JSON {id: name}, or one name per line."""
    stripped = text.strip()
    if stripped[:1] in "[{" and stripped:
        try:
            data = json.loads(stripped)
        except ValueError as e:
            raise FormatError(f"label file looks like JSON but is not valid JSON ({e})", where, "fix the JSON, or write one name per line") from None
        names = _from_json(data, where)
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()  # a trailing newline is not a class
    if not names:
        raise FormatError("label file holds no names", where, "write one name per line")
    for i, n in enumerate(names):
        if not n:
            raise FormatError(f"class {i} has an empty name", where, "give every class a name (one per line)")
    return names


def _from_json(data: object, where: str) -> list[str]:
    if isinstance(data, list):
        if not all(isinstance(n, str) for n in data):
            raise FormatError("a JSON label list must hold only strings", where, 'write ["background", "person", ...]')
        return list(data)
    if isinstance(data, dict):
        return _from_id_map(data, where)
    raise FormatError("JSON labels must be a list of names or an object {id: name}", where, 'write ["person", ...] or {"0": "person", ...}')


def _from_id_map(mapping: dict, where: str) -> list[str]:
    """{"0": "person", "1": "car"} (JSON keys are strings) -> ["person", "car"]; ids must be 0..N-1."""
    by_id: dict[int, str] = {}
    for key, name in mapping.items():
        if not (isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit())) or not isinstance(name, str):
            raise FormatError(f"label entry {key!r}: {name!r} is not an integer id and a name", where, 'write {"0": "person", "1": "car"}')
        by_id[int(key)] = name
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise FormatError(f"label ids are not 0..{len(by_id) - 1}: id {missing[0]} is missing", where, "number the classes from 0 without gaps")
    return [by_id[i] for i in range(len(by_id))]


def own(tree: Tree) -> LabelSpace | None:
    """The labels a checkpoint carries: its Hugging Face config's, else the ones surgery recorded."""
    from . import hf

    names = hf.labels(tree)
    if names is not None:
        return LabelSpace(tuple(names), "the checkpoint's config.json id2label")
    text = tree.metadata.get(KEY)
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return LabelSpace(tuple(data), f"the checkpoint's recorded labels ({KEY})")
    return None


# -- names to indices -----------------------------------------------------------------


def split_classes(text: str | Sequence[object]) -> tuple[str, list[str]]:
    """Tell a class list's form: ("indices", tokens) or ("names", tokens); mixing is an error.

    'new' (a class to add) belongs to both forms.
    """
    tokens = ["new" if t is None else str(t).strip() for t in (text.split(",") if isinstance(text, str) else text)]
    tokens = [t for t in tokens if t] if isinstance(text, str) else tokens
    kinds = {t: _kind(t) for t in tokens}
    indices = [t for t in tokens if kinds[t] == "index"]
    names = [t for t in tokens if kinds[t] == "name"]
    if indices and names:
        raise OperationError(
            f"--classes mixes names ({names[0]}) and indices ({indices[0]})",
            "--classes",
            "write all classes as names (with --labels) or all as indices",
        )
    return ("names" if names else "indices"), tokens


def _kind(token: str) -> str:
    if token.lower() == "new":
        return "new"
    if token.lstrip("-").isdigit() or ("-" in token and all(p.isdigit() for p in token.split("-", 1))):
        return "index"
    return "name"


def resolve(names: Sequence[str], labels: Sequence[str], source: str, where: str = "--classes") -> list[int]:
    """Each name's index in `labels`: an exact match first, then one ignoring case.

    Raises:
        OperationError: an unknown name (with the three nearest), a name that matches two
            classes when case is ignored, or a placeholder such as 'N/A'.
    """
    exact: dict[str, int] = {}
    folded: dict[str, list[int]] = {}
    for i, n in enumerate(labels):
        if is_placeholder(n):
            continue
        exact.setdefault(n, i)
        folded.setdefault(n.casefold(), []).append(i)
    out = []
    for name in names:
        if name in exact:
            out.append(exact[name])
            continue
        hits = folded.get(name.casefold(), [])
        if not hits and is_background(name):  # 'background' finds '__background__' and back
            hits = [i for i, n in enumerate(labels) if is_background(n)][:1]
        if len(hits) == 1:
            out.append(hits[0])
            continue
        if len(hits) > 1:
            spelled = " and ".join(f"{labels[i]!r} ({i})" for i in hits)
            raise OperationError(f"class name {name!r} matches {spelled} in {source} when case is ignored", where, "write the name exactly")
        if is_placeholder(name):
            raise OperationError(f"{name!r} marks unused ids in {source}, not a class", where, "name the classes to keep")
        raise OperationError(f"unknown class name {name!r} in {source}", where, f"the nearest names are {_nearest(name, labels)}")
    return out


def _nearest(name: str, labels: Sequence[str]) -> str:
    real = list(dict.fromkeys(n for n in labels if not is_placeholder(n)))
    by_folded: dict[str, str] = {}
    for n in real:
        by_folded.setdefault(n.casefold(), n)
    import difflib

    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=3, cutoff=0.0)
    return ", ".join(repr(by_folded[c]) for c in close)


@dataclass(frozen=True)
class Resolved:
    """A class list resolved against a label space."""

    classes: list[int | None]
    names: list[str]  # the new label list: one name per output class
    kept: list[str]  # notes: classes kept automatically (background first, no-object last)


def resolve_classes(
    text: str | Sequence[object], labels: LabelSpace, *, background: bool = True, where: str = "--classes"
) -> Resolved:
    """Names (or 'new') -> indices in `labels`, keeping background first unless `background` is False.

    A label space whose class 0 is a background name ('background', '__background__') keeps
    it first when the list does not name it, as SSD and Faster R-CNN heads need; a trailing
    'no-object' class (DETR, YOLOS) stays last in the same way.
    """
    _, tokens = split_classes(text)
    wanted = [t for t in tokens if t.lower() != "new"]
    found = iter(resolve(wanted, labels.names, labels.source, where))
    classes: list[int | None] = [None if t.lower() == "new" else next(found) for t in tokens]
    kept = []
    names = labels.names
    if background and names and is_background(names[0]) and 0 not in classes:
        classes.insert(0, 0)
        kept.append(f"background {names[0]!r} (0) kept first; pass --no-background to leave it out")
    last = len(names) - 1
    if names and _is_no_object(names[-1]) and last not in classes:
        classes.append(last)
        kept.append(f"{names[-1]!r} ({last}) kept last: the head's no-object class")
    return Resolved(classes, new_names(names, classes), kept)


def _is_no_object(name: str) -> bool:
    return name.lower() in _index()["no_object"]


def new_names(source: Sequence[str], classes: Sequence[int | None], target: Sequence[str] | None = None) -> list[str]:
    """The label list after an edit: the kept classes' names; new ones take `target`'s or LABEL_j."""
    out = []
    for j, c in enumerate(classes):
        if c is not None:
            out.append(source[c])
        elif target is not None:
            out.append(target[j])
        else:
            out.append(f"LABEL_{j}")  # Hugging Face's name for a class nobody named
    return out


# -- moving between label spaces -------------------------------------------------------


def move(source: Sequence[str], target: Sequence[str]) -> list[int | None]:
    """For each target class, the source class of the same name, or None (a new class).

    Names match exactly, then ignoring case; any two background names match each other.
    Placeholders ('N/A') match nothing, so a target's placeholder rows are new.

        >>> move(["background", "cat", "dog"], ["__background__", "dog", "bird"])
        [0, 2, None]
    """
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    background = None
    for i, n in enumerate(source):
        if is_placeholder(n):
            continue
        exact.setdefault(n, i)
        folded.setdefault(n.casefold(), i)
        if background is None and is_background(n):
            background = i
    out: list[int | None] = []
    for n in target:
        if is_placeholder(n):
            out.append(None)
        elif n in exact:
            out.append(exact[n])
        elif n.casefold() in folded:
            out.append(folded[n.casefold()])
        elif is_background(n):
            out.append(background)
        else:
            out.append(None)
    return out


# -- the output knows its labels -------------------------------------------------------


def follow(tree: Tree, classes: Sequence[int | None]) -> list[str] | None:
    """The new label list of an edit by `classes`, from the tree's own labels (None if unknown)."""
    labels = own(tree)
    if labels is None or any(c is not None and not 0 <= c < len(labels.names) for c in classes):
        return None
    return new_names(labels.names, classes)


def record(tree: Tree, names: Sequence[str] | None) -> Tree:
    """`tree` carrying `names` as its labels: metadata `surgery.labels`, and its config.json if any."""
    if names is None:
        return tree
    from . import hf

    metadata = dict(tree.metadata)
    metadata[KEY] = json.dumps(list(names), ensure_ascii=False)
    return hf.follow_labels(tree.derive(metadata=metadata), list(names))


def matches_head(labels: LabelSpace, source_classes: int, where: str) -> None:
    """A label space must have one name per class of the head it names."""
    if len(labels.names) == source_classes:
        return
    fits = [n for n in builtin_names() if len(_builtin(n)) == source_classes]
    hint = f"use {' or '.join(fits)}" if fits else f"give a label list of {source_classes} names"
    raise OperationError(
        f"{labels.source} has {len(labels.names)} names but the head has {source_classes} classes", where, hint
    )


# -- the resolution step before planning -------------------------------------------------


@dataclass
class Prepared:
    """Everything a class edit needs from names, worked out before the planner runs.

    Attributes:
        classes: source indices for `plan_classes` (None when the edit picks by count).
        layer_globs: the class layers (given, or from a Hugging Face config's architecture).
        space: the source label space, if known.
        target: the target label space of a move, if any.
        by_name: whether `classes` were spelled as names (or come from a move).
        explicit: whether the label space was given (else it is the checkpoint's own, if any).
        notes: what was resolved or kept automatically, for the report.
    """

    classes: list[int | None] | None
    layer_globs: list[str]
    space: LabelSpace | None
    target: LabelSpace | None = None
    by_name: bool = False
    explicit: bool = False
    notes: list[str] = field(default_factory=list)

    def names(self, plan) -> list[str] | None:
        """The new label list for a planned edit; checks the label space fits the head."""
        if self.space is None:
            return None
        if len(self.space.names) != plan.source_classes:
            if self.by_name or self.explicit:
                matches_head(self.space, plan.source_classes, "--labels")
            return None  # the checkpoint's recorded labels no longer fit: record none rather than wrong ones
        if self.target is not None:
            return list(self.target.names)  # a move takes the target's spelling of every name
        return new_names(self.space.names, plan.classes)


def prepare(
    tree: Tree,
    classes: str | Sequence[object] | None,
    *,
    labels: str | Path | Sequence[str] | None = None,
    background: bool = True,
    to_labels: str | Path | Sequence[str] | None = None,
    layer_globs: Sequence[str] = (),
) -> Prepared:
    """Resolve names into indices, pick the label space and the head layers; nothing is read.

    Raises:
        OperationError: names without a label space, mixed names and indices, unknown names.
    """
    from . import hf

    source = _given(labels, "--labels") or own(tree)
    prepared = Prepared(None, list(layer_globs), source, explicit=labels is not None)
    if not layer_globs:
        found = hf.head_layers(tree)
        if found is not None:
            prepared.layer_globs = found[0]
            prepared.notes.append(f"class layers {', '.join(found[0])}, from {found[1]}")
    if to_labels is not None:
        return _moved(prepared, classes, _given(to_labels, "--to-labels"))
    if classes is None:
        return prepared
    if not isinstance(classes, str) and all(isinstance(c, int) or c is None for c in classes):
        prepared.classes = list(classes)  # a library caller's index list
        return prepared
    from .ops.classes import parse_classes

    text = classes if isinstance(classes, str) else ",".join("new" if c is None else str(c) for c in classes)
    if source is None and any(_kind(t.strip()) == "index" for t in text.split(",")):
        prepared.classes = parse_classes(text)  # no label space: a name here is simply not an index
        return prepared
    form, _ = split_classes(classes)
    if form == "indices":
        prepared.classes = parse_classes(text)
        return prepared
    if source is None:
        raise OperationError(
            "--classes gives names but the checkpoint carries no labels",
            "--classes",
            f"pass --labels with a table ({', '.join(builtin_names())}) or a file of names",
        )
    resolved = resolve_classes(classes, source, background=background)
    prepared.classes, prepared.by_name = resolved.classes, True
    prepared.notes.extend(resolved.kept)
    return prepared


def _given(value: str | Path | Sequence[str] | None, option: str) -> LabelSpace | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return space(value)
    names = [str(n) for n in value]
    if not names:
        raise OperationError("the label list is empty", option, "give one name per class")
    return LabelSpace(tuple(names), "the given label list")


def _moved(prepared: Prepared, classes: object, target: LabelSpace) -> Prepared:
    if classes is not None:
        raise OperationError("--classes and --to-labels both given", "--to-labels", "a move keeps the target's classes, by name; drop --classes")
    if prepared.space is None:
        raise OperationError("--to-labels needs the source label space", "--to-labels", "pass --from-labels (a table or a file)")
    prepared.classes = move(prepared.space.names, target.names)
    prepared.target, prepared.by_name = target, True
    new = sum(c is None for c in prepared.classes)
    dropped = len(set(range(len(prepared.space.names))) - set(prepared.classes))
    prepared.notes.append(f"{prepared.space.source} -> {target.source}: {len(target.names) - new} classes by name, {new} new, {dropped} dropped")
    return prepared


def move_table(prepared: Prepared) -> list[dict[str, object]]:
    """A move's report: target index, name, and source index or "new"."""
    assert prepared.target is not None and prepared.classes is not None
    return [
        {"index": j, "name": name, "source": "new" if c is None else c}
        for j, (name, c) in enumerate(zip(prepared.target.names, prepared.classes))
    ]
