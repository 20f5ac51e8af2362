"""Atomic outputs: write beside the destination, fsync, then swap it into place.

The guarantee: after any interruption (an error, Ctrl-C, SIGTERM, SIGKILL, a power cut
after the fsyncs) the destination is either the old one or the complete new one.
With syncing off (`--no-sync`, surgery.durable) the fsyncs are skipped and the renames are
the same: an interrupted process still leaves old-or-new, but a power cut or OS crash soon
after may leave the new name on a file whose data never reached the disk.

* The new output is written under `.<name>.tmp-<pid>-<hex>` beside the destination.
* A file replacing a file is one rename(2). Anything involving a folder (a folder
  replacing a folder, a file replacing a folder, a folder replacing a file) is swapped
  with renameat2(RENAME_EXCHANGE) where the kernel and filesystem offer it: one atomic
  step, after which the old output sits under the temporary name and is removed.
* Elsewhere the old output is first renamed to `.<name>.old-<pid>-<hex>`; a kill between
  that rename and the next leaves no destination for a moment, and the next run that
  writes into the folder (or `surgery clean`) puts the old one back.
* SIGINT and SIGTERM are held back during the swap, and a failure inside it rolls back.

Leftovers of killed runs (temporary names whose pid no longer runs, `.old-` copies whose
swap completed) are removed by the next write into the same folder, which says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .durable import fsync_path, syncing
from .errors import OutputError
from .tree import same_file

__all__ = ["Leftover", "atomic_output", "check_destination", "clean_leftovers", "notify", "refuse_stdout"]

# Test hooks: SURGERY_TEST_KILL_AT names a step of the replace path at which the process
# SIGKILLs itself (tests/test_kill.py); SURGERY_TEST_NO_EXCHANGE forces the rename fallback.
KILL_AT = "SURGERY_TEST_KILL_AT"
NO_EXCHANGE = "SURGERY_TEST_NO_EXCHANGE"
STEPS = ("written", "exchanged", "aside", "renamed", "removed")

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{12})$")


def _note_to_stderr(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# Where this module says what it cleaned up or put back; tests and library users may replace it.
notify: Callable[[str], None] = _note_to_stderr


# -- the destination check ----------------------------------------------------------


def check_destination(dst: Path, inputs: Iterable[Path], *, force: bool) -> None:
    """Refuse a destination that exists (without force) or that is, or holds, an input.

    `inputs` are every file and folder the tree came from; each is compared by resolved
    path and by (device, inode), so links and other spellings of an input are refused too.
    """
    dst = Path(dst)
    refuse_stdout(dst)
    for src in inputs:
        if same_file(dst, src) or _same_resolved(dst, Path(src)) or _inside(Path(src), dst):
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


def _same_resolved(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except OSError:
        return False


def _looks_like_our_output(folder: Path) -> bool:
    from .hf import is_model_folder  # a Hugging Face model folder we wrote holds tokenizer files too

    return all(p.suffix in (".safetensors", ".json") for p in folder.iterdir()) or is_model_folder(folder)


# -- writing ------------------------------------------------------------------------


def temp_path(dst: Path, kind: str = "tmp") -> Path:
    """`.<name>.<kind>-<pid>-<hex>` beside `dst`: the pid tells a later run whether its writer still runs."""
    return dst.parent / f".{dst.name}.{kind}-{os.getpid()}-{secrets.token_hex(6)}"


@contextmanager
def atomic_output(dst: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `dst`; on success make it durable and swap it into `dst`.

    With `directory=True` the temporary path is a new folder, for outputs of
    several files (sharded checkpoints): the whole folder appears at once.
    Leftovers of killed runs in the same folder are cleaned first (see `clean_leftovers`).
    """
    dst = Path(dst)
    clean_leftovers(dst.parent, report=True)
    tmp = temp_path(dst)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _test_kill("written")
        with _signals_held():
            _replace(tmp, dst)
        fsync_path(dst.parent)
    except BaseException:
        _remove(tmp)  # the unfinished new output, or after an exchange the old one
        raise


def _replace(tmp: Path, dst: Path) -> None:
    dst_exists = dst.exists() or dst.is_symlink()
    dst_is_dir = dst.is_dir() and not dst.is_symlink()
    if not dst_exists or (not dst_is_dir and not tmp.is_dir()):
        os.replace(tmp, dst)  # over nothing, or a file over a file: rename(2) is atomic
        _test_kill("renamed")
        return
    if _exchange(tmp, dst):
        _test_kill("exchanged")
        _remove(tmp)  # tmp now names the old output
        _test_kill("removed")
        return
    old = temp_path(dst, "old")
    os.rename(dst, old)
    try:
        _test_kill("aside")
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)  # put the old one back before anything else happens
        raise
    _test_kill("renamed")
    _remove(old)
    _test_kill("removed")


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the few renames of a swap; they take effect right after.

    A handler that only takes note, rather than a blocked signal mask: the kernel may hand
    a process signal to any thread (numpy's BLAS threads among them), whose mask we do
    not control.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives Python signal handlers, and may set them
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            signal.raise_signal(s)


# -- renameat2(RENAME_EXCHANGE) -----------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276}
_EXCHANGE_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV}


def _exchange_function() -> Callable[[bytes, bytes], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda a, b: renameat2(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    number = _SYSCALL_RENAMEAT2.get(platform.machine().lower())
    if number is None:
        return None
    syscall = libc.syscall
    return lambda a, b: syscall(
        ctypes.c_long(number), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )


_EXCHANGE = _exchange_function()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False when this system cannot (then the caller falls back)."""
    if _EXCHANGE is None or os.environ.get(NO_EXCHANGE):
        return False
    if _EXCHANGE(os.fsencode(a), os.fsencode(b)) == 0:
        return True
    code = ctypes.get_errno()
    if code in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


# -- leftovers of killed runs -------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """One leftover of an interrupted write and what was (or would be) done with it."""

    path: Path
    action: str  # "removed", "restored", "kept"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "action": self.action, "reason": self.reason}


def clean_leftovers(folder: Path, *, dry_run: bool = False, report: bool = False) -> list[Leftover]:
    """Remove what killed runs of surgery left in `folder`; put back an output a kill hid.

    Only names of the form `.<name>.tmp-<pid>-<hex>` and `.<name>.old-<pid>-<hex>` are
    looked at, and only when that pid no longer runs: a temporary is removed; an `.old-`
    copy is removed when its destination exists (the swap completed), else renamed back
    to its destination. Anything else in the folder is never touched.
    """
    found: list[Leftover] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        match = _LEFTOVER.match(name)
        if match is None:
            continue
        leftover = _handle(Path(folder), name, match, dry_run)
        found.append(leftover)
        if report and leftover.action != "kept":
            notify(f"{leftover.action} {leftover.path} ({leftover.reason})")
    return found


def _handle(folder: Path, name: str, match: re.Match, dry_run: bool) -> Leftover:
    path, pid = folder / name, int(match["pid"])
    if _running(pid):
        return Leftover(path, "kept", f"its writer, pid {pid}, is still running")
    if match["kind"] == "tmp":
        if not dry_run:
            _remove(path)
        return Leftover(path, "removed", f"an unfinished output of pid {pid}, which no longer runs")
    dst = folder / match["name"]
    if dst.exists() or dst.is_symlink():
        if not dry_run:
            _remove(path)
        return Leftover(path, "removed", f"the previous {dst.name}, already replaced by pid {pid}")
    if not dry_run:
        os.rename(path, dst)
    return Leftover(dst, "restored", f"put back from {name}: pid {pid} was stopped while replacing it")


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OverflowError:
        return False
    return True


# -- helpers ------------------------------------------------------------------------


def _test_kill(step: str) -> None:
    if os.environ.get(KILL_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_tree(path: Path) -> None:
    if not syncing():
        return
    if path.is_dir():
        for child in path.iterdir():
            fsync_path(child)
    fsync_path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
