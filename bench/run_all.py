"""Run every benchmark under bench/ and print BENCHMARKS.md's tables, in one command.

Each script runs in its own process with --json; this prints one Markdown section per case,
with the machine it ran on. `--quick` uses small sizes and one round, to check that every
benchmark still runs (its figures are not for BENCHMARKS.md). `--only a,b` picks benchmarks.

Usage: python bench/run_all.py [--quick] [--only paths,subsample,many,startup,scaling,inspect,diff,...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (script, full arguments, quick arguments); a script with a `table(results)` prints its own table.
BENCHMARKS = {
    "startup": ("bench_startup.py", ["--runs", "10"], ["--runs", "3"]),
    "paths": ("bench_paths.py", ["--size-gb", "4.2", "--repeats", "3"], ["--size-gb", "0.2", "--repeats", "1"]),
    "subsample": ("bench_subsample.py", ["--repeats", "5"], ["--repeats", "1", "--classes", "20000", "--keep", "3000"]),
    "many": ("bench_many.py", ["--tensors", "50000", "--repeats", "5"], ["--tensors", "2000", "--repeats", "1"]),
    "convert": ("bench_convert.py", ["--size-gb", "4.2", "--repeats", "3"], ["--size-gb", "0.2", "--repeats", "1"]),
    "torch_convert": ("bench_torch_convert.py", ["--repeats", "3"], ["--repeats", "1", "--large", "1"]),
    "scaling": ("bench_scaling.py", ["--sizes", "1,4,16", "--repeats", "3"], ["--sizes", "0.1,0.2", "--repeats", "1"]),
    "inspect": ("bench_inspect.py", ["--size-gb", "4", "--repeats", "10"], ["--size-gb", "0.1", "--tensors", "30", "--repeats", "1"]),
    "diff": ("bench_diff.py", ["--repeats", "3", "--cold-repeats", "3"], ["--large", "1", "--repeats", "1", "--no-cold"]),
}
TAKES_WORKDIR = {"paths", "subsample", "many", "convert", "torch_convert", "scaling", "inspect", "diff"}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.machine()}, Python {platform.python_version()}, Linux {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    print(f"# Benchmarks\n\nMachine: {machine()}.\n")
    for name in args.only.split(","):
        script, full, quick = BENCHMARKS[name]
        if not (HERE / script).exists():
            print(f"## {name}\n\n(skipped: {script} is not here)\n")
            continue
        argv = [sys.executable, str(HERE / script), *(quick if args.quick else full), "--json"]
        if name in TAKES_WORKDIR and args.workdir:
            argv += ["--workdir", str(args.workdir)]
        done = subprocess.run(argv, capture_output=True, text=True)
        print(f"## {name} (`bench/{script}`)\n")
        if done.returncode:
            print(f"failed (exit {done.returncode}):\n\n```\n{done.stderr.strip()[-2000:]}\n```\n")
            continue
        results = json.loads(done.stdout)
        module = importlib.import_module(script[:-3])
        print((module.table(results) if hasattr(module, "table") else "```json\n" + json.dumps(results, indent=2) + "\n```") + "\n")


if __name__ == "__main__":
    main()
