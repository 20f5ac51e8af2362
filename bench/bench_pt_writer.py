"""Benchmark: the .pt writer (safetensors -> .pt), wall and CPU seconds, against cp in the same rounds.

Method (also in BENCHMARKS.md):
  1. A child process writes a safetensors file of SIZE bytes (default 1 GB) of seeded float32
     tensors of 64-256 MiB, and a tiny one (one tensor of 10 floats) for the start-up alone.
     The big file is read once, so the page cache is warm for every command alike.
  2. `--repeats` rounds; in each, every command runs once in a fresh process, in turn:
       cp SRC COPY; cp SRC COPY && sync COPY
       surgery convert SRC -o OUT.pt -q [--no-sync]           (CRC-32 by isal)
       the same with isal hidden, so zlib computes the CRCs   (--zlib)
       surgery convert TINY -o TINY.pt -q --no-sync           (start-up and the write path's fixed cost)
       with --base DIR, the same surgery commands from the checkout at DIR (e.g. the code before a change)
     Python may cache bytecode (PYTHONDONTWRITEBYTECODE is dropped, as for an installed surgery),
     and each tree's tiny convert runs once, untimed, before the rounds.
     Before each run its output is deleted and `sync` runs (untimed). Wall time and CPU time
     (user + system of the process and its children, from wait4) are the medians of the rounds;
     the 1-minute load average is recorded before each run. CPU time is what a shared 2-core
     machine inflates least: at a load of 8, wall time is mostly waiting for a core.
  3. Check: the last .pt loads with torch.load(weights_only=True) and equals the source (with torch).
Files live in a temporary folder under --workdir (default: the system's), deleted at the end.

Usage: python bench/bench_pt_writer.py [--size-gb 1] [--repeats 3] [--base DIR] [--zlib] [--workdir DIR] [--json]
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
from _measure import remove, warm

HERE = Path(__file__).resolve().parent.parent
HIDE_ISAL = "import sys, runpy; sys.modules['isal'] = None; sys.argv = ['surgery', *sys.argv[1:]]; runpy.run_module('surgery', run_name='__main__')"


def generate(work: Path, size: int) -> None:
    import numpy as np

    import surgery
    from surgery.tree import Entry, Tree

    sizes, entries, used, i = [256 << 20, 64 << 20, 128 << 20, 192 << 20], [], 0, 0
    while used < size:
        rows = sizes[i % 4] // 4096
        entries.append(Entry.computed(f"layer{i}.weight", (rows, 1024), "float32",
                                      lambda i=i, rows=rows: np.random.default_rng(i).standard_normal((rows, 1024), dtype=np.float32)))
        used += rows * 4096
        i += 1
    surgery.save(Tree(entries), work / "src.safetensors")
    surgery.save(Tree([Entry.from_array("w", np.ones(10, np.float32))]), work / "tiny.safetensors")


def run(argv: list[str], pythonpath: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one command; CPU counts the children it waited for (cp and sync under sh)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # bytecode cached, as an installed surgery has it
    start = time.perf_counter()
    child = subprocess.Popen(argv, env={**env, "PYTHONPATH": pythonpath}, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"benchmark step failed: {' '.join(argv)}\n{child.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def commands(work: Path, base: Path | None, zlib: bool) -> dict[str, tuple[list[str], Path, str]]:
    src, out, copy = work / "src.safetensors", work / "out.pt", work / "copy.bin"
    tiny, tiny_out = work / "tiny.safetensors", work / "tiny.pt"
    cmds = {"cp": (["cp", str(src), str(copy)], copy, str(HERE)),
            "cp && sync": (["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(copy)], copy, str(HERE))}
    trees = [("surgery", str(HERE))] + ([("base", str(base))] if base else [])
    for label, path in trees:
        for crc in ("", " zlib") if zlib and label == "surgery" else ("",):
            pre = [sys.executable, "-c", HIDE_ISAL] if crc else [sys.executable, "-m", "surgery"]
            cmds[f"{label}{crc} --no-sync"] = ([*pre, "convert", str(src), "-o", str(out), "-q", "--no-sync"], out, path)
            cmds[f"{label}{crc}"] = ([*pre, "convert", str(src), "-o", str(out), "-q"], out, path)
        cmds[f"{label} tiny --no-sync"] = ([sys.executable, "-m", "surgery", "convert", str(tiny), "-o", str(tiny_out), "-q", "--no-sync"], tiny_out, path)
    return cmds


def check(work: Path) -> bool | None:
    code = ("import sys, torch\nfrom safetensors.torch import load_file\n"
            "a = load_file(sys.argv[1]); b = torch.load(sys.argv[2], weights_only=True)\n"
            "sys.exit(0 if list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) else 1)")
    done = subprocess.run([sys.executable, "-c", code, str(work / "src.safetensors"), str(work / "out.pt")], capture_output=True, text=True, check=False)
    return None if "No module named 'torch'" in done.stderr else done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=Path, help="a surgery checkout (the folder holding surgery/) to time beside this one")
    parser.add_argument("--zlib", action="store_true", help="also time surgery with isal hidden (zlib's CRC-32)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, int(args.size_gb * 1e9))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="pt-writer-") as tmp:
        work = Path(tmp)
        generator = [sys.executable, __file__, "--generate", str(work), "--size-gb", str(args.size_gb)]
        subprocess.run(generator, check=True, env={**os.environ, "PYTHONPATH": str(HERE)})  # its own process: this one stays small
        warm(work / "src.safetensors")
        cmds = commands(work, args.base, args.zlib)
        for name, (argv, output, path) in cmds.items():
            if "tiny" in name:
                run(argv, path)  # untimed: every tree's write path compiled and cached before the rounds
                remove(output)
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cmds}
        for _ in range(args.repeats):
            for name, (argv, output, path) in cmds.items():
                remove(output)
                os.sync()
                load = os.getloadavg()[0]
                runs[name].append((*run(argv, path), load))
        equal = check(work)
    results = {"bytes": int(args.size_gb * 1e9), "repeats": args.repeats, "pt_output_equal": equal, "runs": {
        name: {"wall_s": statistics.median(w for w, _, _ in r), "cpu_s": statistics.median(c for _, c, _ in r),
               "walls_s": [round(w, 2) for w, _, _ in r], "cpus_s": [round(c, 2) for _, c, _ in r], "load_1min": [round(x, 1) for *_, x in r]}
        for name, r in runs.items()}}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    r = results["runs"]
    print(f"{results['bytes'] / 1e9:.2f} GB, medians of {args.repeats} rounds; .pt equals the source: {equal}")
    print("| command | wall | CPU | ÷ cp (wall) | ÷ cp (CPU) | wall, every round | load |")
    print("|---|---|---|---|---|---|---|")
    for name, x in r.items():
        ref = r["cp"] if name == "cp" or name.endswith("--no-sync") else r["cp && sync"]  # durable against durable
        print(f"| {name} | {x['wall_s']:.2f} s | {x['cpu_s']:.2f} s | {x['wall_s'] / ref['wall_s']:.2f} | {x['cpu_s'] / ref['cpu_s']:.2f} "
              f"| {', '.join(map(str, x['walls_s']))} | {min(x['load_1min'])}–{max(x['load_1min'])} |")


if __name__ == "__main__":
    main()
