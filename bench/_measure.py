"""Shared measuring for the benchmarks: wall time and peak RSS of a child process."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


TIME = shutil.which("time", path="/usr/bin:/bin")


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Run argv to completion; return (wall seconds, peak RSS in bytes) of that command.

    Peak RSS comes from GNU time (%M) when present. Linux carries a forked child's
    pre-exec peak into its rusage, so a child forked straight from this (larger)
    Python process would report our RSS instead of its own; time forks from a tiny process.
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
    return wall, kilobytes * 1024


def best_of(repeats: int, argv: list[str], cleanup: Path) -> dict[str, float]:
    """Median wall time and largest peak RSS over `repeats` runs, removing the output between runs."""
    walls, rss = [], []
    for _ in range(repeats):
        remove(cleanup)
        wall, peak = run_measured(argv)
        walls.append(wall)
        rss.append(peak)
    return {"wall_s": statistics.median(walls), "walls_s": walls, "peak_rss_bytes": max(rss)}


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
