"""Benchmark: a PyTorch zip checkpoint (torch.save) -> safetensors, against `cp` and the usual recipe.

Method (also in BENCHMARKS.md):
  1. A child process generates a torch.save zip checkpoint of about 4.4 GB from seeded data:
     LARGE (default 16) float32 tensors of 256 MiB, one bfloat16 tensor of 128 MiB, and small
     float32, float16 and int64 tensors; torch.save writes it once.
  2. The checkpoint is read once so the page cache is warm for every command alike
     (or, with --cold, the page cache is dropped before every run: root only).
  3. `--repeats` rounds; in each round, every command runs once in a fresh process, in turn:
       cp SRC DST
       cp SRC DST && sync DST                 (as durable as surgery, which fsyncs before its rename)
       surgery convert SRC -o OUT.safetensors -q
       python -c "save_file(torch.load(SRC, weights_only=True), DST)"   (the common recipe)
       the recipe && sync DST
     Before each run its output is deleted and `sync` runs (untimed), so no run pays for the
     write-back of the one before. Wall time is the median of the rounds; peak RSS is GNU
     time's %M for the command, the largest over the rounds. The 1-minute load average is
     recorded before each run: other work on the machine shows up there.
  4. Check: surgery's output equals the recipe's output tensor by tensor, bit for bit (names,
     dtypes, shapes, bytes, read with safetensors.safe_open), both equal the source tensors,
     and surgery's output loads with safetensors.torch.load_file.
All files live in a temporary folder under --workdir (default bench/out/, git-ignored), which
is deleted at the end.

Usage: python bench/bench_torch_convert.py [--repeats 3] [--large 16] [--cold] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, print_runs, remove, round_robin, surgery_argv, warm  # noqa: E402

MiB = 1 << 20
LARGEST = 256 * MiB
ROWS = LARGEST // 4 // 1024  # float32 (ROWS, 1024) is 256 MiB
RECIPE = (
    "import sys, torch\n"
    "from safetensors.torch import save_file\n"
    "save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])"
)


def generate(path: Path, large: int) -> None:
    """A seeded state dict, saved once with torch.save (zip format).

    Runs in its own process (see main): the parent must stay small, since `time` is forked
    from it and Linux would carry a large parent's peak RSS into the child's rusage.
    """
    import numpy as np
    import torch

    def normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    state["embed.weight"] = normal(1000, (ROWS, 1024)).to(torch.bfloat16)  # 128 MiB
    for i in range(large):
        state[f"layers.{i}.weight"] = normal(i, (ROWS, 1024))
        state[f"layers.{i}.bias"] = normal(100 + i, (1024,))
        state[f"layers.{i}.norm.weight"] = normal(200 + i, (1024,)).to(torch.float16)
    state["head.weight"] = normal(2000, (1000, 1024))
    state["steps"] = torch.tensor(123456789, dtype=torch.int64)
    torch.save(state, path)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def commands(src: Path, work: Path) -> dict[str, tuple[list[str], Path]]:
    copy, ours, theirs = work / "copy.pt", work / "surgery.safetensors", work / "recipe.safetensors"
    recipe = [sys.executable, "-c", RECIPE, str(src), str(theirs)]
    return {
        "cp": (["cp", str(src), str(copy)], copy),
        "cp_sync": (["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(src), str(copy)], copy),
        "surgery": (surgery_argv("convert", str(src), "-o", str(ours), "-q"), ours),
        "recipe": (recipe, theirs),
        "recipe_sync": (["sh", "-c", '"$@" && sync "$4"', "sh", *recipe], theirs),
    }


def measure(cmds: dict[str, tuple[list[str], Path]], repeats: int, cold: bool) -> dict[str, dict]:
    """Round-robin; before each run its output is deleted, and synced (and the cache dropped with --cold)."""

    def before(name: str) -> None:
        remove(cmds[name][1])
        os.sync()
        if cold:
            drop_caches()

    return round_robin({name: argv for name, (argv, _) in cmds.items()}, repeats, before)


def check(src: Path, ours: Path, theirs: Path) -> dict[str, object]:
    """Tensor by tensor, bit for bit: surgery's output against the recipe's and against the source."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    def raw(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().reshape(-1).view(torch.uint8)

    source = torch.load(src, weights_only=True, mmap=True)
    mismatches = []
    with safe_open(ours, "pt") as a, safe_open(theirs, "pt") as b:
        names = set(a.keys())
        if names != set(b.keys()) or names != set(source):
            mismatches.append("tensor names differ")
        for name in sorted(names & set(b.keys()) & set(source)):
            x, y, s = a.get_tensor(name), b.get_tensor(name), source[name]
            same = all(t.dtype == s.dtype and t.shape == s.shape and torch.equal(raw(t), raw(s)) for t in (x, y))
            if not same:
                mismatches.append(name)
        metadata = a.metadata()
    loaded = load_file(ours)
    loads = len(loaded) == len(names) and all(loaded[n].shape == source[n].shape for n in loaded)
    return {
        "tensors": len(names),
        "bit_exact": not mismatches,
        "mismatches": mismatches[:10],
        "load_file_ok": loads,
        "surgery_metadata": metadata,
        "surgery_bytes": ours.stat().st_size,
        "recipe_bytes": theirs.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", type=int, default=16, help="number of 256 MiB float32 tensors (default 16)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (root only)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.large)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="torch-convert-") as tmp:
        work = Path(tmp)
        src = work / "model.pt"
        subprocess.run([sys.executable, __file__, "--generate", str(src), "--large", str(args.large)], check=True)
        warm(src)
        cmds = commands(src, work)
        results: dict[str, object] = {
            "bytes": src.stat().st_size,
            "largest_tensor_bytes": LARGEST,
            "cache": "dropped before every run" if args.cold else "warm (source read once before the runs)",
            "runs": measure(cmds, args.repeats, args.cold),
        }
        remove(work / "copy.pt")
        results["check"] = check(src, cmds["surgery"][1], cmds["recipe"][1])

    runs = results["runs"]
    budget = LARGEST + 300 * MiB
    ours = runs["surgery"]
    results["ratio_to_cp"] = ours["wall_s"] / runs["cp"]["wall_s"]
    results["ratio_to_cp_sync"] = ours["wall_s"] / runs["cp_sync"]["wall_s"]
    results["ratio_to_recipe"] = ours["wall_s"] / runs["recipe"]["wall_s"]
    results["rss_budget_bytes"] = budget
    results["rss_within_budget"] = ours["peak_rss_bytes"] <= budget
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{results['bytes'] / 1e9:.2f} GB; largest tensor {mib(LARGEST)}; RSS budget {mib(budget)}; cache {results['cache']}")
    print_runs(runs)
    print(
        f"surgery / cp {results['ratio_to_cp']:.2f}, / cp+sync {results['ratio_to_cp_sync']:.2f}, "
        f"/ recipe {results['ratio_to_recipe']:.2f}; RSS within budget: {results['rss_within_budget']}"
    )
    c = results["check"]
    print(f"check: {c['tensors']} tensors, bit-exact {c['bit_exact']} {c['mismatches'] or ''}, load_file ok {c['load_file_ok']}")


if __name__ == "__main__":
    main()
