"""Benchmark: a checkpoint of many small tensors (an LLM's shape), to find surgery's per-tensor overhead.

Method (also in BENCHMARKS.md):
  1. The safetensors library writes N (default 50,000) float32 tensors of 4 x 4, named like an
     LLM's (`model.layers.{i}.mlp.w{j}.weight`), and a second file with one tensor of the same
     total bytes: the same data to copy, one tensor instead of N.
  2. `--repeats` rounds; in each, in fresh processes: `surgery convert` of each file to
     safetensors, `surgery inspect --json` of each, and `safe_open` + list the keys.
  3. The per-tensor overhead is (median time for N tensors - median time for 1 tensor) / N,
     from wall time and from CPU time (user + sys, less disturbed by a busy machine).
Target (performance issue): under 50 µs per tensor.

Usage: python bench/bench_many.py [--tensors 50000] [--repeats 5] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import remove, surgery_argv  # noqa: E402

LIST_KEYS = "import sys\nfrom safetensors import safe_open\nwith safe_open(sys.argv[1], 'np') as f: list(f.keys())"


def generate(many: Path, one: Path, n: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({f"model.layers.{i // 10}.mlp.w{i % 10}.weight": np.full((4, 4), i, np.float32) for i in range(n)}, str(many))
    save_file({"weight": np.zeros((n, 4, 4), np.float32)}, str(one))


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, user + sys CPU) seconds of one run."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{child.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        work = Path(tmp)
        many, one, out = work / "many.safetensors", work / "one.safetensors", work / "out.safetensors"
        generate(many, one, args.tensors)
        steps = {
            "convert": lambda src: surgery_argv("convert", str(src), "-o", str(out), "-q"),
            "inspect": lambda src: surgery_argv("inspect", str(src), "--json"),
            "safe_open_keys": lambda src: [sys.executable, "-c", LIST_KEYS, str(src)],
        }
        runs = {(step, kind): [] for step in steps for kind in ("many", "one")}
        for _ in range(args.repeats):
            for step, argv in steps.items():
                for kind, src in (("many", many), ("one", one)):
                    remove(out)
                    runs[step, kind].append(timed(argv(src)))
    results: dict = {"tensors": args.tensors, "repeats": args.repeats}
    for step in steps:
        row = {}
        for kind in ("many", "one"):
            row[f"{kind}_wall_s"] = statistics.median(w for w, _ in runs[step, kind])
            row[f"{kind}_cpu_s"] = statistics.median(c for _, c in runs[step, kind])
        row["per_tensor_wall_us"] = (row["many_wall_s"] - row["one_wall_s"]) / args.tensors * 1e6
        row["per_tensor_cpu_us"] = (row["many_cpu_s"] - row["one_cpu_s"]) / args.tensors * 1e6
        results[step] = row
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(results: dict) -> str:
    lines = [f"{results['tensors']:,} tensors of 4 x 4 float32 against 1 tensor of the same bytes, medians of {results['repeats']}", "",
             "| step | N tensors | 1 tensor | per tensor (wall) | per tensor (CPU) |", "|---|---|---|---|---|"]
    for step in ("convert", "inspect", "safe_open_keys"):
        r = results[step]
        lines.append(f"| {step} | {r['many_wall_s']:.2f} s | {r['one_wall_s']:.2f} s | {r['per_tensor_wall_us']:.0f} µs | {r['per_tensor_cpu_us']:.0f} µs |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
