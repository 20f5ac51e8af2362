"""Benchmark: `surgery diff A B` on two ~4.4 GB checkpoints, against reading both files once (`cat A B`).

Method (also in BENCHMARKS.md):
  1. A child process writes A (safetensors) and B (a torch.save zip .pt, written by surgery)
     from seeded data, one tensor at a time: LARGE (default 16) float32 tensors of 256 MiB,
     one bfloat16 tensor of 128 MiB, and small float32, float16 and int64 tensors. B equals A
     except `layers.1.weight` (every element + 1e-3 * noise: a fine-tuned layer, so the
     float64 path runs over a whole 256 MiB tensor) and one element of `head.bias`.
  2. Both files are read once so the page cache is warm for every command alike.
  3. `--repeats` rounds; in each round, in turn and each in a fresh process:
       cat A B > /dev/null
       surgery diff A B > /dev/null        (exit 1: the files differ)
     Wall time is the median of the rounds; peak RSS is GNU time's %M, the largest over the
     rounds; the 1-minute load average is recorded before each run.
  4. Check (untimed): `surgery diff --json` lists exactly the two changed tensors, and its
     max |a-b| for them equals numpy's over the whole arrays.
All files live in a temporary folder under --workdir (default bench/out/, git-ignored), deleted at the end.

With --same, B holds A's values exactly (a lossless safetensors -> .pt conversion), so only the
byte comparison runs and diff exits 0.

Usage: python bench/bench_diff.py [--repeats 3] [--large 16] [--same] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, print_runs, round_robin, surgery_argv, warm

MiB = 1 << 20
LARGEST = 256 * MiB
ROWS = LARGEST // 4 // 1024  # float32 (ROWS, 1024) is 256 MiB
CHANGED = ("layers.1.weight", "head.bias")


def _normal(seed: int, shape: tuple[int, ...]):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _tensors(large: int, edited: bool) -> list[tuple[str, tuple[int, ...], str, object]]:
    """(name, shape, dtype, compute) for every tensor; `edited` gives B's two changes."""
    import ml_dtypes
    import numpy as np

    def layer(i: int):
        def compute():
            w = _normal(i, (ROWS, 1024))
            if edited and i == 1:
                w += np.float32(1e-3) * _normal(999, (ROWS, 1024))
            return w

        return compute

    def head_bias():
        b = _normal(3000, (1000,))
        if edited:
            b[17] += 0.5
        return b

    specs = [("embed.weight", (ROWS, 1024), "bfloat16", lambda: _normal(1000, (ROWS, 1024)).astype(ml_dtypes.bfloat16))]
    for i in range(large):
        specs.append((f"layers.{i}.weight", (ROWS, 1024), "float32", layer(i)))
        specs.append((f"layers.{i}.bias", (1024,), "float32", lambda i=i: _normal(100 + i, (1024,))))
        specs.append((f"layers.{i}.norm.weight", (1024,), "float16", lambda i=i: _normal(200 + i, (1024,)).astype(np.float16)))
    specs.append(("head.weight", (1000, 1024), "float32", lambda: _normal(2000, (1000, 1024))))
    specs.append(("head.bias", (1000,), "float32", head_bias))
    specs.append(("steps", (), "int64", lambda: np.array(123456789, dtype=np.int64)))
    return specs


def generate(a: Path, b: Path, large: int, same: bool) -> None:
    """Write A and B tensor by tensor (surgery streams computed entries): the parent stays small."""
    import surgery
    from surgery.tree import Entry, Tree

    for path, edited in ((a, False), (b, not same)):
        tree = Tree([Entry.computed(n, s, d, f) for n, s, d, f in _tensors(large, edited)])
        surgery.save(tree, path, force=True)


def measure(a: Path, b: Path, repeats: int) -> dict[str, dict]:
    cmds = {
        "cat": ["sh", "-c", 'cat "$1" "$2" > /dev/null', "sh", str(a), str(b)],
        # diff exits 1 when the files differ (they do): accept 0 and 1, fail on 2.
        "surgery_diff": ["sh", "-c", '"$@" > /dev/null; test $? -le 1', "sh", *surgery_argv("diff", str(a), str(b))],
    }
    return round_robin(cmds, repeats)


def check(a: Path, b: Path, large: int, same: bool) -> dict[str, object]:
    """diff --json names exactly the changed tensors, with numpy's max |a-b| for each."""
    import numpy as np

    out = subprocess.run(surgery_argv("diff", str(a), str(b), "--json"), check=False, capture_output=True, text=True)  # exit 1: they differ
    document = json.loads(out.stdout)
    changed = {t["name"]: t for t in document["tensors"] if t["status"] != "identical"}
    specs = {n: f for n, _, _, f in _tensors(large, False)}
    edited = {n: f for n, _, _, f in _tensors(large, True)}
    if same:
        return {"exit_code": out.returncode, "summary": document["summary"], "changed": sorted(changed), "exact_names": not changed}
    expected = {n: float(np.abs(edited[n]().astype(np.float64) - specs[n]().astype(np.float64)).max()) for n in CHANGED}
    return {
        "exit_code": out.returncode,
        "summary": document["summary"],
        "changed": sorted(changed),
        "exact_names": sorted(changed) == sorted(CHANGED),
        "max_abs": {n: changed[n]["max_abs"] for n in changed},
        "max_abs_numpy": expected,
        "max_abs_match": all(changed.get(n, {}).get("max_abs") == expected[n] for n in CHANGED),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", type=int, default=16, help="number of 256 MiB float32 tensors (default 16)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--same", action="store_true", help="B holds A's values exactly (a lossless conversion): diff exits 0")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(*args.generate, args.large, args.same)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="diff-") as tmp:
        a, b = Path(tmp) / "a.safetensors", Path(tmp) / "b.pt"
        same = ["--same"] if args.same else []
        subprocess.run([sys.executable, __file__, "--generate", str(a), str(b), "--large", str(args.large), *same], check=True)
        warm(a)
        warm(b)
        results: dict[str, object] = {
            "bytes_a": a.stat().st_size,
            "bytes_b": b.stat().st_size,
            "largest_tensor_bytes": LARGEST,
            "cache": "warm (both files read once before the runs)",
            "runs": measure(a, b, args.repeats),
            "check": check(a, b, args.large, args.same),
        }
    runs = results["runs"]
    budget = 2 * LARGEST + 300 * MiB
    ours = runs["surgery_diff"]
    results["ratio_to_cat"] = ours["wall_s"] / runs["cat"]["wall_s"]
    results["rss_budget_bytes"] = budget
    results["rss_within_budget"] = ours["peak_rss_bytes"] <= budget
    results["time_within_budget"] = results["ratio_to_cat"] <= 1.5
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"A {results['bytes_a'] / 1e9:.2f} GB, B {results['bytes_b'] / 1e9:.2f} GB; largest tensor {mib(LARGEST)}; RSS budget {mib(budget)}; cache {results['cache']}")
    print_runs(runs)
    print(f"diff / cat {results['ratio_to_cat']:.2f} (budget 1.5); RSS within budget: {results['rss_within_budget']}")
    c = results["check"]
    print(f"check: exit {c['exit_code']}, changed {c['changed']}, exact names {c['exact_names']}, max|a-b| matches numpy {c.get('max_abs_match')} {c.get('max_abs')}")


if __name__ == "__main__":
    main()
