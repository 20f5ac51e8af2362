"""Benchmark: how long `surgery --help` and `surgery --version` take, against `python -c "import click"`.

Method: `--runs` (default 10) fresh processes of each, alternating; the minimum and the median
wall time are reported (the minimum is the figure least disturbed by other work). Also checks,
with `python -X importtime`, that `--help` imports none of numpy, ml_dtypes, h5py, torch, onnx.
Target (performance issue): `surgery --help` <= 2 x `import click`, minimum of 10 runs.

Usage: python bench/bench_startup.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import surgery_argv  # noqa: E402

HEAVY = ("numpy", "ml_dtypes", "h5py", "torch", "onnx", "onnxruntime", "keras")


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def heavy_imports() -> list[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "surgery", "--help"], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted(m for m in imported if m.split(".")[0] in HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    commands = {"click": [sys.executable, "-c", "import click"], "help": surgery_argv("--help"), "version": surgery_argv("--version")}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for key, argv in commands.items():
            times[key].append(wall(argv))
    results = {key: {"min_s": min(t), "median_s": statistics.median(t)} for key, t in times.items()}
    results["help_ratio_to_click_min"] = results["help"]["min_s"] / results["click"]["min_s"]
    results["heavy_imports_in_help"] = heavy_imports()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(results: dict) -> str:
    lines = ["| command | min | median |", "|---|---|---|"]
    for key, label in (("click", '`python -c "import click"`'), ("help", "`surgery --help`"), ("version", "`surgery --version`")):
        lines.append(f"| {label} | {results[key]['min_s']:.3f} s | {results[key]['median_s']:.3f} s |")
    lines.append(f"\n`surgery --help` ÷ `import click` (minimums): {results['help_ratio_to_click_min']:.2f}; "
                 f"heavy modules imported by --help: {', '.join(results['heavy_imports_in_help']) or 'none'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
