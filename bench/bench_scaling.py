"""Benchmark: every write path at several checkpoint sizes, to show time grows linearly and memory doesn't.

Method (also in BENCHMARKS.md):
  1. For each size (default 1, 4 and 16 GB) run `bench_paths.py --size-gb SIZE --json` in its own
     process: it generates the checkpoint, warms the page cache where the file fits in memory,
     and times every write path against cp, cp && sync and the common recipe in interleaved
     rounds (see its docstring). Its files are deleted before the next size starts, so at most
     one size is on disk at a time (about 4x SIZE with the outputs).
  2. From each run: seconds per GB of surgery and of cp && sync, the ratio between them, and
     surgery's peak RSS. Linear time means s/GB stays flat across sizes; bounded memory means
     peak RSS stays flat too (the largest tensor is 256 MiB at every size).

At 16 GB on a 24 GiB machine the source and the outputs no longer all fit in the page cache,
so every command (cp included) also reads from disk: compare ratios within a size, and s/GB
across sizes.

Usage: python bench/bench_scaling.py [--sizes 1,4,16] [--repeats 3] [--cases a,b] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import mib  # noqa: E402
from bench_paths import CASES  # noqa: E402


def run_size(size_gb: float, repeats: int, cases: str, workdir: Path | None) -> dict:
    argv = [sys.executable, str(HERE / "bench_paths.py"), "--size-gb", str(size_gb), "--repeats", str(repeats),
            "--cases", cases, "--json"]
    if workdir is not None:
        argv += ["--workdir", str(workdir)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_paths failed at {size_gb} GB:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16", help="comma-separated sizes in GB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {"sizes": {}}
    for size in (float(s) for s in args.sizes.split(",") if s):
        results["sizes"][f"{size:g}"] = run_size(size, args.repeats, args.cases, args.workdir)
        print(f"  {size:g} GB done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(results: dict) -> str:
    """One row per (case, size): s/GB of surgery and cp && sync, their ratio, --no-sync ÷ cp, peak RSS."""
    lines = ["| case | size | surgery s/GB | cp && sync s/GB | ÷ cp && sync | --no-sync ÷ cp | surgery peak RSS | rounds |",
             "|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        for size, run in results["sizes"].items():
            if case not in run:
                continue
            r, gb = run[case], run["bytes"] / 1e9
            no_sync = f"{r['no_sync_ratio_to_cp']:.2f}" if "no_sync_ratio_to_cp" in r else "–"
            lines.append(f"| {case.replace('_', ' ')} | {gb:.2f} GB | {r['surgery']['wall_s'] / gb:.2f} | {r['cp_sync']['wall_s'] / gb:.2f} "
                         f"| {r['ratio_to_cp_sync']:.2f} | {no_sync} | {mib(r['surgery']['peak_rss_bytes'])} | {run['repeats']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
