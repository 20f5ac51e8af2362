"""Atomic outputs: write beside the destination, fsync, then rename into place.

After any error nothing is left at the destination and the previous file (if
`force` allowed replacing one) is untouched until the final rename.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError
from .tree import same_file

__all__ = ["atomic_output", "check_destination", "refuse_stdout"]


def check_destination(dst: Path, inputs: Iterable[Path], *, force: bool) -> None:
    """Refuse a destination that exists (without force) or that is, or holds, an input."""
    dst = Path(dst)
    refuse_stdout(dst)
    for src in inputs:
        if same_file(dst, src) or _inside(Path(src), dst):
            raise OutputError(
                "the output would overwrite an input",
                str(dst),
                "choose a different output path; inputs are never modified",
            )
    if dst.exists() or dst.is_symlink():
        if not force:
            raise OutputError("output already exists", str(dst), "pass --force to replace it")
        if dst.is_dir() and not dst.is_symlink() and not _looks_like_our_output(dst):
            raise OutputError(
                "output is a folder that holds files other than a sharded checkpoint",
                str(dst),
                "choose an empty or new folder",
            )
    if not dst.parent.exists():
        raise OutputError("the output's folder does not exist", str(dst.parent), "create it first")


def refuse_stdout(dst: Path) -> None:
    """Unix tools read `-o -` as stdout; checkpoints are written to files, never there."""
    if str(dst) == "-":
        raise OutputError("surgery does not write checkpoints to standard output", "-o -", "name an output file, e.g. -o out.safetensors")


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except OSError:
        return False


def _looks_like_our_output(folder: Path) -> bool:
    from .hf import is_model_folder  # a Hugging Face model folder we wrote holds tokenizer files too

    return all(p.suffix in (".safetensors", ".json") for p in folder.iterdir()) or is_model_folder(folder)


@contextmanager
def atomic_output(dst: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `dst`; on success make it durable and rename it to `dst`.

    With `directory=True` the temporary path is a new folder, for outputs of
    several files (sharded checkpoints): the whole folder appears at once.
    """
    dst = Path(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:12]}"
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _replace(tmp, dst)
        _fsync_path(dst.parent)
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, dst: Path) -> None:
    if tmp.is_dir() and dst.is_dir() and not dst.is_symlink():
        # rename(2) cannot replace a non-empty folder: move the old one aside first.
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(tmp, dst)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_path(child)
    _fsync_path(path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
