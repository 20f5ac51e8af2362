"""Benchmark: `surgery diff A B` on two ~4.4 GB checkpoints, against reading both files once.

Method (also in BENCHMARKS.md):
  1. A child process writes A (safetensors) from seeded data, one tensor at a time: LARGE
     (default 16) float32 tensors of 256 MiB, one bfloat16 tensor of 128 MiB, and small float32,
     float16 and int64 tensors. Two cases, one after the other (only A and one B on disk):
       same:      B = `surgery convert A -o B.pt`, a lossless conversion to a torch.save zip
                  (other format, other offsets): only bytes are compared, diff exits 0;
       different: B is written like A but as .pt, with `layers.1.weight` changed in every
                  element (+1e-3 * noise: a fine-tuned layer, so the float64 measures run over a
                  whole 256 MiB tensor) and one element of `head.bias`: diff exits 1.
  2. References, in the same rounds: `cat A B > /dev/null`, and a Python loop that reads A
     then B with `readinto` into one 1 MiB buffer (a fresh interpreter, as diff is).
  3. Warm cache: both files are read once before the runs. `--repeats` rounds; in each round
     cat, the read loop and `surgery diff A B > /dev/null` run once each, in turn, each in a
     fresh process. Median wall time; peak RSS is GNU time's %M, the largest over the rounds;
     the 1-minute load average is recorded before each run.
  4. Cold cache (unless --no-cold): the same rounds, but before every run both files are
     dropped from the page cache with posix_fadvise(POSIX_FADV_DONTNEED), which needs no root
     and touches no other file (`--cold-repeats`, default 3).
  5. Check (untimed): `surgery diff --json` lists exactly the changed tensors (none when the
     same), and its max |a-b| for them equals numpy's over the whole arrays.
All files live in a temporary folder under --workdir (default bench/out/, git-ignored), deleted at the end.

Usage: python bench/bench_diff.py [--repeats 3] [--cold-repeats 3] [--no-cold] [--large 16]
       [--cases same,different] [--workdir DIR] [--json]
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
from _measure import mib, round_robin, surgery_argv, warm

MiB = 1 << 20
LARGEST = 256 * MiB
ROWS = LARGEST // 4 // 1024  # float32 (ROWS, 1024) is 256 MiB
BUDGET = 2 * LARGEST + 300_000_000  # issue 16: 2 x the largest tensor + 300 MB


def _normal(seed: int, shape: tuple[int, ...]):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _changed_layer(large: int) -> int:
    return min(1, large - 1)


def _changed(large: int) -> tuple[str, str]:
    """The two tensors B changes: one whole large layer and one element of the head's bias."""
    return (f"layers.{_changed_layer(large)}.weight", "head.bias")


def _tensors(large: int, edited: bool) -> list[tuple[str, tuple[int, ...], str, object]]:
    """(name, shape, dtype, compute) for every tensor; `edited` gives B's two changes."""
    import ml_dtypes
    import numpy as np

    def layer(i: int):
        def compute():
            w = _normal(i, (ROWS, 1024))
            if edited and i == _changed_layer(large):
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


def generate(path: Path, large: int, edited: bool) -> None:
    """Write one file tensor by tensor (surgery streams computed entries): the parent stays small."""
    import surgery
    from surgery.tree import Entry, Tree

    tree = Tree([Entry.computed(n, s, d, f) for n, s, d, f in _tensors(large, edited)])
    surgery.save(tree, path, force=True)


def read_once(paths: list[Path]) -> None:
    """The Python reference: every file read once with readinto into one reused 1 MiB buffer."""
    buffer = bytearray(MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def drop_from_cache(*paths: Path) -> None:
    """Evict these files' pages from the page cache (clean pages only, which they are after sync)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(a: Path, b: Path, repeats: int, cold: bool) -> dict[str, dict]:
    cmds = {
        "cat": ["sh", "-c", 'cat "$1" "$2" > /dev/null', "sh", str(a), str(b)],
        "read_loop": [sys.executable, __file__, "--read-once", str(a), str(b)],
        # diff exits 1 when the files differ: accept 0 and 1, fail on 2.
        "surgery_diff": ["sh", "-c", '"$@" > /dev/null; test $? -le 1', "sh", *surgery_argv("diff", str(a), str(b))],
    }
    if not cold:
        warm(a)
        warm(b)
    return round_robin(cmds, repeats, before=(lambda _: drop_from_cache(a, b)) if cold else None)


def check(a: Path, b: Path, large: int, same: bool) -> dict[str, object]:
    """diff --json names exactly the changed tensors, with numpy's max |a-b| for each."""
    import numpy as np

    out = subprocess.run(surgery_argv("diff", str(a), str(b), "--json"), check=False, capture_output=True, text=True)
    document = json.loads(out.stdout)
    changed = {t["name"]: t for t in document["tensors"] if t["status"] != "identical"}
    result: dict[str, object] = {"exit_code": out.returncode, "summary": document["summary"], "changed": sorted(changed)}
    if same:
        result["as_expected"] = out.returncode == 0 and not changed
        return result
    specs = {n: f for n, _, _, f in _tensors(large, False)}
    edited = {n: f for n, _, _, f in _tensors(large, True)}
    expected = {n: float(np.abs(edited[n]().astype(np.float64) - specs[n]().astype(np.float64)).max()) for n in _changed(large)}
    result["max_abs"] = {n: changed[n]["max_abs"] for n in changed}
    result["max_abs_numpy"] = expected
    result["as_expected"] = out.returncode == 1 and sorted(changed) == sorted(expected) and all(changed[n]["max_abs"] == expected[n] for n in expected)
    return result


def run_case(tmp: Path, a: Path, case: str, args: argparse.Namespace) -> dict[str, object]:
    b = tmp / "b.pt"
    if case == "same":
        subprocess.run([*surgery_argv("convert", str(a), "-o", str(b), "-q", "--force")], check=True)
    else:
        subprocess.run([sys.executable, __file__, "--generate", str(b), "--large", str(args.large), "--edited"], check=True)
    try:
        result: dict[str, object] = {"bytes_b": b.stat().st_size, "check": check(a, b, args.large, case == "same")}
        for cache in ("warm", "cold") if args.cold else ("warm",):
            runs = measure(a, b, args.repeats if cache == "warm" else args.cold_repeats, cache == "cold")
            result[cache] = {
                "runs": runs,
                "ratio_to_cat": runs["surgery_diff"]["wall_s"] / runs["cat"]["wall_s"],
                "ratio_to_read_loop": runs["surgery_diff"]["wall_s"] / runs["read_loop"]["wall_s"],
            }
        return result
    finally:
        b.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="warm-cache rounds (default 3)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold-cache rounds (default 3)")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold-cache rounds")
    parser.add_argument("--large", type=int, default=16, help="number of 256 MiB float32 tensors (default 16)")
    parser.add_argument("--cases", default="same,different")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--edited", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--read-once", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_once:
        read_once(args.read_once)
        return
    if args.generate:
        generate(args.generate, args.large, args.edited)
        return

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # children write and reuse .pyc files: start-up as users see it
    subprocess.run(surgery_argv("--version"), check=True, capture_output=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"largest_tensor_bytes": LARGEST, "rss_budget_bytes": BUDGET, "repeats": args.repeats, "cold_repeats": args.cold_repeats}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="diff-") as tmp:
        a = Path(tmp) / "a.safetensors"
        subprocess.run([sys.executable, __file__, "--generate", str(a), "--large", str(args.large)], check=True)
        results["bytes_a"] = a.stat().st_size
        for case in args.cases.split(","):
            results[case] = run_case(Path(tmp), a, case, args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def table(results: dict) -> str:
    """BENCHMARKS.md's table: per case and cache, the references, diff, the ratios and diff's peak RSS."""
    has_cold = any("cold" in results[c] for c in ("same", "different") if c in results)
    cold = results["cold_repeats"] if has_cold else "no"
    lines = [
        (
            f"A {results['bytes_a'] / 1e9:.2f} GB; largest tensor {mib(results['largest_tensor_bytes'])}; "
            f"RSS budget {mib(results['rss_budget_bytes'])} (2 x largest + 300 MB); medians of {results['repeats']} warm, {cold} cold rounds"
        ),
        "",
        "| case | cache | `cat A B` | read loop | `surgery diff` | ÷ cat | ÷ read loop | diff peak RSS | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for case in ("same", "different"):
        if case not in results:
            continue
        r = results[case]
        for cache in ("warm", "cold"):
            if cache not in r:
                continue
            runs = r[cache]["runs"]
            loads = [la for run in runs.values() for la in run["load_1min"]]
            walls = {k: "/".join(f"{w:.2f}" for w in runs[k]["walls_s"]) for k in runs}
            lines.append(
                f"| {case} (B {r['bytes_b'] / 1e9:.2f} GB) | {cache} | {runs['cat']['wall_s']:.2f} s ({walls['cat']}) | {runs['read_loop']['wall_s']:.2f} s ({walls['read_loop']}) "
                f"| {runs['surgery_diff']['wall_s']:.2f} s ({walls['surgery_diff']}) | {r[cache]['ratio_to_cat']:.2f} | {r[cache]['ratio_to_read_loop']:.2f} "
                f"| {mib(runs['surgery_diff']['peak_rss_bytes'])} | {min(loads):.1f}–{max(loads):.1f} |"
            )
        c = r["check"]
        notes.append(f"check {case}: exit {c['exit_code']}, changed {c['changed']}, as expected {c['as_expected']}" + (f", max|a-b| {c['max_abs']}" if "max_abs" in c else ""))
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    main()
