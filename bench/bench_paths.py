"""Benchmark: every write path against `cp`, `cp && sync` and the common recipe, in one run.

Method (also in BENCHMARKS.md):
  1. A child process generates a sharded safetensors checkpoint of SIZE bytes (default 4.2 GB):
     seeded float32 tensors of 64-256 MiB named like a torchvision classifier (`layer{i}.weight`)
     plus a head (`fc.weight`, `fc.bias`), in 1 GB shards; `surgery convert` joins it into one
     file (untimed; then the shards are deleted unless the sharded -> single case runs). Every input
     is read once, so the page cache is warm for every command alike.
  2. `--repeats` rounds; in each round every command runs once in a fresh process, in turn, so a
     slow spell of a shared machine hits all of them; each round runs a case's commands in a
     new order (seeded shuffle), so that no command always follows the same one (a large write
     can leave a virtual disk busy after `sync` returns), and each run starts after `--settle`
     seconds (default 2) of quiet. Before each run its output is deleted and
     `sync` runs (untimed), so no run pays for the write-back of the one before; each output is
     deleted again right after its run, so the disk holds only the inputs and one output. The cases:
       sharded -> single   cp -r / cp -r && sync / surgery convert shards/ -o one.safetensors
       single -> sharded   cp / cp && sync / surgery convert one.safetensors -o again/ --shard-size 1GB
       safetensors -> .pt  cp / cp && sync / surgery convert one.safetensors -o one.pt
                           / recipe: torch.save(safetensors.torch.load_file(SRC)) && sync
       strip-head          cp / cp && sync / surgery strip-head one.safetensors -o body.safetensors --head fc
       rename              cp / cp && sync / surgery rename one.safetensors -o renamed.safetensors --map '^layer=block'
     With `--no-sync` available (surgery convert --help lists it), each surgery case also runs
     with it, against plain cp in the same rounds (target: <= 1.2x cp); `--no-sync-only` runs
     just those two per case. Both skip the flush, so both are timed without it; the untimed
     `sync` before the next run writes their data back.
  3. Wall time is the median of the rounds; peak RSS is GNU time's %M, the largest over the rounds;
     the 1-minute load average is recorded before every run (its range is printed).
  4. Checks: the .pt output loads with torch.load(weights_only=True) and equals the source
     (when torch is installed); the round trip single -> sharded is bit-exact.
Every file lives in a temporary folder under --workdir (default: the system's), deleted at the end.

Usage: python bench/bench_paths.py [--size-gb 4.2] [--repeats 3] [--workdir DIR] [--cases a,b] [--no-sync-only] [--settle 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, remove, run_measured, surgery_argv, warm  # noqa: E402

MiB = 1 << 20
LARGEST = 256 * MiB
RECIPE_PT = (
    "import os, sys, torch\n"
    "from safetensors.torch import load_file\n"
    "torch.save(load_file(sys.argv[1]), sys.argv[2])\n"
    "fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)"
)
CASES = ("sharded_to_single", "single_to_sharded", "safetensors_to_pt", "strip_head", "rename")


def generate(folder: Path, total: int) -> None:
    """Seeded tensors computed one at a time while surgery writes them (the parent stays small)."""
    import numpy as np

    import surgery
    from surgery.tree import Entry, Tree

    sizes = [LARGEST, 64 * MiB, 128 * MiB, 192 * MiB]
    entries, used, i = [], 0, 0
    while used < total:
        rows = sizes[i % len(sizes)] // 4 // 1024

        def make(i=i, rows=rows) -> np.ndarray:
            return np.random.default_rng(i).standard_normal((rows, 1024), dtype=np.float32)

        entries.append(Entry.computed(f"layer{i}.weight", (rows, 1024), "float32", make))
        used += rows * 1024 * 4
        i += 1
    entries.append(Entry.from_array("fc.weight", np.random.default_rng(-1 % 2**32).standard_normal((1000, 1024), dtype=np.float32)))
    entries.append(Entry.from_array("fc.bias", np.zeros(1000, np.float32)))
    surgery.save(Tree(entries, metadata={"format": "pt"}), folder, shard_size=1 << 30)


def _has_no_sync() -> bool:
    out = subprocess.run(surgery_argv("convert", "--help"), capture_output=True, text=True).stdout
    return "--no-sync" in out


def _commands(work: Path, shards: Path, single: Path, no_sync: bool, no_sync_only: bool = False) -> dict[str, dict[str, tuple[list[str], Path]]]:
    """case -> {label: (argv, output)}; cp runs of the same input bytes are the baselines."""

    def cp(src: Path, dst: Path, sync: bool) -> list[str]:
        flag = "-r " if src.is_dir() else ""
        target = f'"{dst}"/*' if src.is_dir() else f'"{dst}"'
        return ["sh", "-c", f'cp {flag}"{src}" "{dst}"' + (f" && sync {target}" if sync else "")]

    def case(src: Path, out: Path, *surgery_args: str, recipe: list[str] | None = None) -> dict[str, tuple[list[str], Path]]:
        copy = work / ("copy" if src.is_dir() else "copy.bin")
        runs = {"cp": (cp(src, copy, False), copy), "cp_sync": (cp(src, copy, True), copy),
                "surgery": (surgery_argv(*surgery_args, "-q"), out)}
        if no_sync:
            runs["surgery_no_sync"] = (surgery_argv(*surgery_args, "-q", "--no-sync"), out)
        if recipe:
            runs["recipe"] = (recipe, work / "recipe.out")
        if no_sync_only:
            runs = {k: v for k, v in runs.items() if k in ("cp", "surgery_no_sync")}
        return runs

    return {
        "sharded_to_single": case(shards, work / "joined.safetensors", "convert", str(shards), "-o", str(work / "joined.safetensors")),
        "single_to_sharded": case(single, work / "again", "convert", str(single), "-o", str(work / "again"), "--shard-size", "1GB"),
        "safetensors_to_pt": case(single, work / "one.pt", "convert", str(single), "-o", str(work / "one.pt"),
                                  recipe=[sys.executable, "-c", RECIPE_PT, str(single), str(work / "recipe.out")]),
        "strip_head": case(single, work / "body.safetensors", "strip-head", str(single), "-o", str(work / "body.safetensors"), "--head", "fc"),
        "rename": case(single, work / "renamed.safetensors", "rename", str(single), "-o", str(work / "renamed.safetensors"), "--map", "^layer=block"),
    }


def _check_pt(single: Path, pt: Path) -> bool | None:
    code = (
        "import sys, torch\nfrom safetensors.torch import load_file\n"
        "a = load_file(sys.argv[1]); b = torch.load(sys.argv[2], weights_only=True)\n"
        "sys.exit(0 if list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) else 1)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(single), str(pt)], capture_output=True, text=True)
    if "No module named 'torch'" in done.stderr:
        return None
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    parser.add_argument("--no-sync-only", action="store_true", help="per case, only cp and surgery --no-sync")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet before each run, after its sync")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, int(args.size_gb * 1e9))
        return
    cases = [c for c in args.cases.split(",") if c]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        work = Path(tmp)
        shards, single = work / "shards", work / "one.safetensors"
        subprocess.run([sys.executable, __file__, "--generate", str(shards), "--size-gb", str(args.size_gb)], check=True)
        subprocess.run(surgery_argv("convert", str(shards), "-o", str(single), "-q"), check=True)
        if "sharded_to_single" in cases:
            warm(shards)
        else:  # only that case reads the shards: free their disk space for the outputs
            remove(shards)
        warm(single)
        no_sync = _has_no_sync()
        if args.no_sync_only and not no_sync:
            sys.exit("--no-sync-only: this surgery has no --no-sync")
        commands = _commands(work, shards, single, no_sync, args.no_sync_only)
        measured: dict[str, dict[str, list[tuple[float, int]]]] = {c: {k: [] for k in commands[c]} for c in cases}
        loads: list[float] = []  # the 1-minute load average before each run: other work on the machine
        for k in range(args.repeats):
            for c in cases:
                runs = list(commands[c].items())
                random.Random(f"{c} {k}").shuffle(runs)
                for label, (argv, output) in runs:
                    remove(output)
                    subprocess.run(["sync"], check=True)
                    time.sleep(args.settle)
                    loads.append(os.getloadavg()[0])
                    measured[c][label].append(run_measured(argv))
                    if not (c == "safetensors_to_pt" and label.startswith("surgery") and k == args.repeats - 1):
                        remove(output)  # at once: one output on disk at a time (the last .pt is kept for the check)
        results = {"bytes": single.stat().st_size, "largest_tensor_bytes": LARGEST, "repeats": args.repeats,
                   "load_1min": [min(loads), max(loads)]}
        for c in cases:
            row = {}
            for label, runs in measured[c].items():
                walls = [w for w, _ in runs]
                row[label] = {"wall_s": statistics.median(walls), "walls_s": walls, "peak_rss_bytes": max(r for _, r in runs)}
            for base in ("cp", "cp_sync", "recipe"):
                if base in row and "surgery" in row:
                    row[f"ratio_to_{base}"] = row["surgery"]["wall_s"] / row[base]["wall_s"]
            if "surgery_no_sync" in row:
                row["no_sync_ratio_to_cp"] = row["surgery_no_sync"]["wall_s"] / row["cp"]["wall_s"]
            results[c] = row
        if "safetensors_to_pt" in cases:
            results["pt_output_equal"] = _check_pt(single, work / "one.pt")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(results: dict) -> str:
    """The Markdown tables of BENCHMARKS.md for these results: every path, then --no-sync against cp."""
    cases = [c for c in CASES if c in results]
    durable = [c for c in cases if "surgery" in results[c]]
    no_sync = [c for c in cases if "surgery_no_sync" in results[c]]
    low, high = results["load_1min"]
    parts = [f"1-minute load average before the runs: {low:.1f}–{high:.1f}"]
    parts += [_durable_table(results, durable)] if durable else []
    if no_sync:
        parts.append(_no_sync_table(results, no_sync))
    return "\n\n".join(parts)


def _no_sync_table(results: dict, cases: list[str]) -> str:
    lines = [f"`--no-sync` against plain `cp` of the same bytes, {results['bytes'] / 1e9:.2f} GB, medians of {results['repeats']} rounds (target ≤ 1.2)",
             "", "| case | cp | surgery --no-sync | ÷ cp | cp, every round | --no-sync, every round | peak RSS |", "|---|---|---|---|---|---|---|"]
    for c in cases:
        r = results[c]
        rounds = {k: ", ".join(f"{w:.2f}" for w in r[k]["walls_s"]) for k in ("cp", "surgery_no_sync")}
        lines.append(f"| {c.replace('_', ' ')} | {r['cp']['wall_s']:.2f} s | {r['surgery_no_sync']['wall_s']:.2f} s | {r['no_sync_ratio_to_cp']:.2f} "
                     f"| {rounds['cp']} | {rounds['surgery_no_sync']} | {mib(r['surgery_no_sync']['peak_rss_bytes'])} |")
    return "\n".join(lines)


def _durable_table(results: dict, cases: list[str]) -> str:
    lines = [f"{results['bytes'] / 1e9:.2f} GB, medians of {results['repeats']} rounds",
             "", "| case | cp | cp && sync | surgery | ÷ cp && sync | ÷ cp | recipe | ÷ recipe | --no-sync ÷ cp | surgery peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        r = results[c]

        def s(label: str) -> str:
            return f"{r[label]['wall_s']:.2f} s" if label in r else "–"

        def x(key: str) -> str:
            return f"{r[key]:.2f}" if key in r else "–"

        lines.append(f"| {c.replace('_', ' ')} | {s('cp')} | {s('cp_sync')} | {s('surgery')} | {x('ratio_to_cp_sync')} | {x('ratio_to_cp')} "
                     f"| {s('recipe')} | {x('ratio_to_recipe')} | {x('no_sync_ratio_to_cp')} | {mib(r['surgery']['peak_rss_bytes'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
