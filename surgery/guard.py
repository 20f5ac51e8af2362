"""Run a reader that may spin inside C code in a forked child, under a watchdog.

h5py holds the GIL while HDF5 works, so a hostile file that makes HDF5 loop cannot be
stopped from the same process: a timer thread never runs, and Ctrl-C is only noticed
when HDF5 returns. `run_guarded` forks; the child does the reading and sends its result
back through a pipe, while the parent waits in short steps. The parent stops the child
when the time limit passes, when the child crashes (HDF5 can also segfault on a hostile
file), and at once on Ctrl-C. The cost is one fork and one pickle of the result, a few
milliseconds (see RELIABILITY.md).

Where fork is missing, the reader runs in the process itself: the checks done before each
read (see keras_h5) still apply. Other threads (a library's monitor thread, in a program that
imports surgery) do not stop the fork: only this thread runs in the child, and if a lock
another thread held at the fork left the child stuck, the time limit ends it with one line.
A read that could hang the whole process is the worse risk.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import CorruptFileError, SurgeryError

__all__ = ["DISABLE_ENV", "TIMEOUT_ENV", "run_guarded"]

TIMEOUT_ENV = "SURGERY_READ_TIMEOUT"  # seconds a guarded read may take (default 120)
DISABLE_ENV = "SURGERY_NO_READ_GUARD"  # set to run guarded readers in-process
_STEP = 0.1  # seconds between checks for Ctrl-C while waiting

T = TypeVar("T")


def run_guarded(read: Callable[..., T], *args: Any, where: str, what: str, fix: str) -> T:
    """`read(*args)` in a watched child process; its result, or its SurgeryError, comes back here.

    `what` names the step for the timeout and crash messages ("reading the HDF5 metadata").
    """
    if not _can_fork():
        return read(*args)
    timeout = float(os.environ.get(TIMEOUT_ENV) or 120)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, send, and leave without running the parent's exit handlers
        os.close(r)
        _child(read, args, w)
    os.close(w)
    try:
        data, status = _wait(pid, r, timeout, where, what, fix)
    finally:
        os.close(r)
    if not data:
        cause = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}"
        raise CorruptFileError(f"{what} crashed the HDF5 library ({cause})", where, fix)
    kind, value = pickle.loads(data)  # bytes our own forked child wrote to this pipe, never a file's
    if kind == "ok":
        return value
    if kind == "surgery":
        cls, parts = value
        raise cls(*parts)
    raise value


def _can_fork() -> bool:
    return hasattr(os, "fork") and not os.environ.get(DISABLE_ENV)


def _child(read: Callable, args: tuple, w: int) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent handles Ctrl-C and stops us
        faulthandler.disable()  # a crash here is the parent's one-line error, not a dump on stderr
        try:
            result: tuple = ("ok", read(*args))
        except SurgeryError as e:
            result = ("surgery", (type(e), (e.what, e.where, e.fix)))
        except BaseException as e:  # noqa: BLE001 - carried to the parent as it is
            result = ("other", e)
        try:
            data = pickle.dumps(result)
        except Exception as e:  # noqa: BLE001 - an exception that cannot be pickled
            data = pickle.dumps(("other", RuntimeError(f"{type(e).__name__}: {e}")))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
    except BaseException:  # noqa: BLE001 - never return into the parent's code
        code = 1
    finally:
        os._exit(code)


def _wait(pid: int, r: int, timeout: float, where: str, what: str, fix: str) -> tuple[bytes, int]:
    """The child's bytes and exit status; stops the child on timeout or Ctrl-C."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([r], [], [], _STEP)
            if ready:
                chunk = os.read(r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                continue
            if time.monotonic() > deadline:
                raise CorruptFileError(f"{what} did not finish in {timeout:g} s", where, fix)
    except BaseException:
        _stop(pid)
        raise
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), status


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
