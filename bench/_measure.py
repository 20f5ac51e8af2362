"""Shared measuring for the benchmarks: wall time and peak RSS of a child process."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


TIME = shutil.which("time", path="/usr/bin:/bin")


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Run argv to completion; return (wall seconds, peak RSS in bytes) of that command (see run_timed)."""
    wall, _, peak = run_timed(argv)
    return wall, peak


def run_timed(argv: list[str]) -> tuple[float, float, int]:
    """Run argv to completion; return (wall seconds, CPU seconds (user + sys), peak RSS in bytes).

    CPU time is what a busy machine inflates least: other processes stretch the wall clock,
    not the work done.

    Peak RSS comes from GNU time (%M) when present. Linux carries a forked child's
    pre-exec peak into its rusage, so a child forked straight from this (larger)
    Python process would report our RSS instead of its own; time forks from a tiny process.
    CPU time is user + system of the command and every child it waited for (rusage of wait4).
    """
    wrapped = [TIME, "-f", "%M", *argv] if TIME else argv
    start = time.perf_counter()
    child = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    err = child.stderr.read().decode()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{err}")
    kilobytes = int(err.strip().splitlines()[-1]) if TIME else usage.ru_maxrss
    return wall, usage.ru_utime + usage.ru_stime, kilobytes * 1024


def best_of(repeats: int, argv: list[str], cleanup: Path) -> dict[str, float]:
    """Median wall time and largest peak RSS over `repeats` runs, removing the output between runs."""
    walls, rss = [], []
    for _ in range(repeats):
        remove(cleanup)
        wall, peak = run_measured(argv)
        walls.append(wall)
        rss.append(peak)
    return {"wall_s": statistics.median(walls), "walls_s": walls, "peak_rss_bytes": max(rss)}


def round_robin(cmds: dict[str, list[str]], repeats: int, before: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Every command once per round, in turn, so slow spells of a shared machine hit all alike.

    `before(name)` runs untimed before each run (delete an output, sync). Returns per command the
    median wall time, every round's time, the median CPU time, the largest peak RSS and the
    1-minute load average recorded before each run.
    """
    runs: dict[str, list[tuple[float, int, float, float]]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, argv in cmds.items():
            if before is not None:
                before(name)
            load = os.getloadavg()[0]
            wall, cpu, peak = run_timed(argv)
            runs[name].append((wall, peak, load, cpu))
    return {
        name: {
            "wall_s": statistics.median(w for w, _, _, _ in r),
            "walls_s": [round(w, 3) for w, _, _, _ in r],
            "cpu_s": statistics.median(c for _, _, _, c in r),
            "peak_rss_bytes": max(p for _, p, _, _ in r),
            "load_1min": [round(la, 2) for _, _, la, _ in r],
        }
        for name, r in runs.items()
    }


def print_runs(runs: dict[str, dict]) -> None:
    """One line per command of `round_robin`'s result: median, every round, peak RSS, load."""
    for name, r in runs.items():
        walls = ", ".join(f"{w:.2f}" for w in r["walls_s"])
        loads = ", ".join(f"{la:.2f}" for la in r["load_1min"])
        print(f"{name:12} median {r['wall_s']:7.2f} s  (runs {walls})  peak RSS {mib(r['peak_rss_bytes']):>10}  load {loads}")


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def warm(path: Path) -> None:
    """Read a file, or every file under a folder, once, so the page cache holds it for every run alike."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for p in files:
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(64 << 20):
                    pass


def surgery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "surgery", *args]


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
