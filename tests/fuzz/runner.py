"""Run mutated cases in a child process with an address-space limit, a wall-clock limit and a watchdog.

The parent makes the cases (seed bytes + `mutate`), the child (`_worker`) loads each one,
reads every tensor, and saves it in its own format and as safetensors. The child lives
for many cases; when one hangs past the limit, or the child dies, the parent kills and
restarts it and records the case. Every case is reproducible from (seed name, base seed,
index): `random.Random(f"{base}-{name}-{index}")` drives its mutations.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .mutate import mutate
from .seeds import SEEDS, Seed

MEMORY_LIMIT = 2 << 30  # bytes of address space for the child (RLIMIT_AS)
OUTCOMES = ("success", "clean", "failure", "hang", "memory", "crash")


@dataclass
class Case:
    seed: str
    index: int
    files: dict[str, bytes]  # relative path -> bytes ("" is the seed itself when it is one file)
    what: str


@dataclass
class Result:
    seed: str
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: list[tuple[Case, str, str]] = field(default_factory=list)  # (case, outcome, detail)
    messages: Counter = field(default_factory=Counter)  # clean error kinds (first words)
    seconds: float = 0.0


def seed_files(seed: Seed, folder: Path) -> tuple[dict[str, bytes], bool]:
    """The seed's files by relative path, and whether it is a folder."""
    path = seed.write(folder)
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}, True
    return {"": path.read_bytes()}, False


def make_case(seed_name: str, files: dict[str, bytes], base: int, index: int) -> Case:
    rng = random.Random(f"{base}-{seed_name}-{index}")
    target = rng.choice(sorted(files))
    data, what = mutate(rng, files[target])
    return Case(seed_name, index, {**files, target: data}, f"{target or 'file'}: {what}")


# -- the child --------------------------------------------------------------------


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


READ_TIMEOUT = "3"  # seconds surgery's own read guard allows, well below the fuzzer's hang limit


Layout = tuple[str | None, str]  # a seed's own suffix, and the file of a folder seed to load ("" = the folder)


def _worker(conn, layouts: dict[str, Layout], work: Path) -> None:
    _limit_memory()
    os.environ["SURGERY_READ_TIMEOUT"] = READ_TIMEOUT
    # Load every reader before the first case, so that no case pays for an import: onnx itself
    # too (typed-field tensors are decoded by its numpy_helper), and its protobuf classes.
    import onnx.numpy_helper  # noqa: F401

    import surgery.io
    from surgery.errors import SurgeryError
    from surgery.formats import (  # noqa: F401
        keras_h5,
        keras_zip,
        npz_io,
        onnx_io,
        onnx_writer,
        safetensors_io,
        torch_pt,
    )
    from surgery.formats.onnx_model import proto_module

    proto_module()

    work.mkdir()
    while True:
        case = conn.recv()
        if case is None:
            break
        conn.send(_run_case(case, layouts[case.seed], work, surgery.io, SurgeryError))
    shutil.rmtree(work, ignore_errors=True)


def _run_case(case: Case, layout: Layout, work: Path, io, surgery_error) -> tuple[str, str]:
    from surgery.formats import onnx_io

    own_suffix, entry = layout
    for child in work.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    if "" in case.files:
        src = work / ("input" + (own_suffix or ".bin"))
        src.write_bytes(case.files[""])
    else:
        src = work / "input"
        src.mkdir()
        for name, data in case.files.items():
            (src / name).write_bytes(data)
        src = src / entry if entry else src
    out = work / "out"
    out.mkdir()
    try:
        tree = io.load(src)
        for entry in tree.values():
            entry.read()
        if own_suffix is None:
            io.save(tree, out / "own", shard_size=600)
        else:
            io.save(_own_options(tree), out / ("own" + own_suffix))
        io.save(tree, out / "all.safetensors")
        for name in tree:  # what the table printer and every writer need
            name.encode("utf-8")
        if tree.format == "onnx":  # the model's facts `inspect` shows, as its --json prints them
            json.dumps(onnx_io.describe(tree), ensure_ascii=False).encode("utf-8")
        return "success", ""
    except surgery_error as e:
        line = e.one_line()
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            return "failure", f"unprintable error message {line!r}"
        if "\n" in line:
            return "failure", f"error message of several lines {line!r}"
        return "clean", line
    except MemoryError:
        return "memory", traceback.format_exc(limit=-6)
    except Exception:  # noqa: BLE001 - this is what the fuzzer looks for
        return "failure", traceback.format_exc(limit=-8)


def _own_options(tree):
    """An ONNX model read with external data is written with it again, from 16 bytes up (the
    default threshold, 1 KiB, would keep every tensor of the tiny seed inline)."""
    from surgery.graph import GRAPH

    if tree.format == "onnx" and getattr(tree.format_state.get(GRAPH), "external_data", False):
        from surgery.formats import onnx_io

        return onnx_io.with_write_options(tree, external=True, threshold=16)
    return tree


# -- the parent -------------------------------------------------------------------


class _Child:
    """One worker process. Its work folder is made by the parent inside the run's own temporary
    folder, so a child killed mid-case (a hang, a crash) leaves nothing behind: `kill` removes it."""

    def __init__(self, layouts: dict[str, Layout], work: Path) -> None:
        ctx = mp.get_context("spawn")
        self.work = work
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(theirs, layouts, work), daemon=True)
        self.process.start()
        theirs.close()

    def run(self, case: Case, timeout: float) -> tuple[str, str]:
        """The case's outcome; "hang" or "crash" when the child must be replaced (self.dead)."""
        self.conn.send(case)
        if not self.conn.poll(timeout):
            self.kill()
            return "hang", f"no answer in {timeout:g} s"
        try:
            return self.conn.recv()
        except EOFError:
            self.kill()
            return "crash", f"the child died (exit code {self.process.exitcode})"

    @property
    def dead(self) -> bool:
        return not self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.process.join(5)
        except (BrokenPipeError, OSError):
            pass
        self.kill()


def fuzz(names: list[str], *, seconds: float | None = None, cases: int | None = None, base: int = 0,
         timeout: float = 10.0, repro_dir: Path | None = None, progress=None) -> list[Result]:
    """Fuzz each named seed for `seconds` (or `cases` cases); return one Result per seed."""
    layouts = {n: (s.own_suffix, s.load) for n, s in SEEDS.items()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        children = (Path(tmp) / f"child-{n}" for n in itertools.count())
        child = _Child(layouts, next(children))
        try:
            for name in names:
                folder = Path(tmp) / name
                folder.mkdir()
                files, _ = seed_files(SEEDS[name], folder)
                result = Result(name)
                started = time.monotonic()
                index = 0
                while (cases is None or index < cases) and (seconds is None or time.monotonic() - started < seconds):
                    case = make_case(name, files, base, index)
                    index += 1
                    kind, detail = child.run(case, timeout)
                    if child.dead:
                        child.kill()
                        child = _Child(layouts, next(children))
                    result.outcomes[kind] += 1
                    if kind == "clean":
                        result.messages[_message_kind(detail)] += 1
                        if repro_dir is not None and "did not finish" in detail:  # stopped by surgery's own guard: keep it
                            save_reproducer(case, "guarded", detail, repro_dir / "guarded")
                    elif kind != "success":
                        result.failures.append((case, kind, detail))
                        if repro_dir is not None:
                            save_reproducer(case, kind, detail, repro_dir)
                    if progress:
                        progress(name, index, kind)
                result.cases = index
                result.seconds = time.monotonic() - started
                results.append(result)
        finally:
            child.close()
    return results


def _message_kind(line: str) -> str:
    return line.split(" (", 1)[0][:60]


def save_reproducer(case: Case, kind: str, detail: str, folder: Path) -> Path:
    """The case's files under folder/<seed>-<index>/, with what it did in README.txt."""
    out = folder / f"{case.seed}-{case.index}"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in case.files.items():
        (out / (name or "input" + (SEEDS[case.seed].own_suffix or ".bin"))).write_bytes(data)
    (out / "README.txt").write_text(f"{kind}: {case.what}\n\n{detail}\n", encoding="utf-8", errors="backslashreplace")
    return out
