"""Benchmark: sharded safetensors -> one file -> sharded again, against `cp` of the same bytes.

Method (also in BENCHMARKS.md):
  1. Generate a sharded safetensors checkpoint of SIZE bytes (default 4.2 GB): float32
     tensors of 64-256 MiB, written in 1 GB shards by surgery itself, from seeded data.
  2. Warm the page cache by reading every input once, so each tool sees the same cache.
  3. Time, alternately and `--repeats` times each, in fresh processes:
       cp -r shards/ copy/                      vs  surgery convert shards/ -o one.safetensors
       cp one.safetensors copy.safetensors      vs  surgery convert one.safetensors -o again/ --shard-size 1GB
     Also `cp ... && sync OUTPUT`: surgery fsyncs its output before the rename, so a
     durable copy is the like-for-like baseline. The output is deleted before each run. Wall time is the median; peak RSS is the
     child's own maximum resident set (wait4), the largest over the runs.
  4. Check the round trip: every tensor of again/ equals the original bit for bit.

Usage: python bench/bench_convert.py [--size-gb 4.2] [--repeats 3] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import subprocess

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import best_of, mib, remove, surgery_argv, warm  # noqa: E402

MiB = 1 << 20
LARGEST = 256 * MiB


def generate(folder: Path, total: int) -> None:
    """A seeded checkpoint of about `total` bytes; tensors are computed one at a time when written.

    Runs in its own process (see main): a child forked from a parent holding a large
    tensor would inherit that peak RSS in its own rusage and spoil the measurement.
    """
    import numpy as np

    import surgery
    from surgery.tree import Entry, Tree

    sizes = [LARGEST, 64 * MiB, 128 * MiB, 192 * MiB]
    entries, used, i = [], 0, 0
    while used < total:
        nbytes = sizes[i % len(sizes)]
        rows = nbytes // 4 // 1024

        def make(i=i, rows=rows) -> np.ndarray:
            return np.random.default_rng(i).standard_normal((rows, 1024), dtype=np.float32)

        entries.append(Entry.computed(f"layers.{i}.weight", (rows, 1024), "float32", make))
        used += nbytes
        i += 1
    surgery.save(Tree(entries, metadata={"format": "pt"}), folder, shard_size=1 << 30)


def digest(tree) -> dict[str, str]:
    return {e.name: hashlib.sha256(b"".join(bytes(c) for c in e.iter_bytes())).hexdigest() for e in tree.values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, int(args.size_gb * 1e9))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        work = Path(tmp)
        shards, single, again = work / "shards", work / "one.safetensors", work / "again"
        subprocess.run([sys.executable, __file__, "--generate", str(shards), "--size-gb", str(args.size_gb)], check=True)
        total = sum(p.stat().st_size for p in shards.glob("*.safetensors"))
        largest = LARGEST
        warm(shards)
        copy = work / "copy"
        results = {
            "bytes": total,
            "largest_tensor_bytes": largest,
            "sharded_to_single": {
                "cp": best_of(args.repeats, ["cp", "-r", str(shards), str(copy)], copy),
                "cp_sync": best_of(args.repeats, ["sh", "-c", f'cp -r "{shards}" "{copy}" && sync "{copy}"/*'], copy),
                "surgery": best_of(args.repeats, surgery_argv("convert", str(shards), "-o", str(single), "-q"), single),
            },
        }
        remove(copy)
        warm(single)
        copy = work / "copy.safetensors"
        results["single_to_sharded"] = {
            "cp": best_of(args.repeats, ["cp", str(single), str(copy)], copy),
            "cp_sync": best_of(args.repeats, ["sh", "-c", f'cp "{single}" "{copy}" && sync "{copy}"'], copy),
            "surgery": best_of(
                args.repeats, surgery_argv("convert", str(single), "-o", str(again), "--shard-size", "1GB", "-q"), again
            ),
        }
        remove(copy)
        import surgery

        results["round_trip_bit_exact"] = digest(surgery.load(again)) == digest(surgery.load(shards))

    budget = largest + 300 * MiB
    for step in ("sharded_to_single", "single_to_sharded"):
        r = results[step]
        r["ratio_to_cp"] = r["surgery"]["wall_s"] / r["cp"]["wall_s"]
        r["ratio_to_cp_sync"] = r["surgery"]["wall_s"] / r["cp_sync"]["wall_s"]
        r["rss_within_budget"] = r["surgery"]["peak_rss_bytes"] <= budget
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{total / 1e9:.2f} GB; largest tensor {mib(largest)}; RSS budget {mib(budget)}")
    for step in ("sharded_to_single", "single_to_sharded"):
        r = results[step]
        print(
            f"{step:18} cp {r['cp']['wall_s']:6.2f} s  cp+sync {r['cp_sync']['wall_s']:6.2f} s  "
            f"surgery {r['surgery']['wall_s']:6.2f} s  ratio to cp {r['ratio_to_cp']:.2f}, "
            f"to cp+sync {r['ratio_to_cp_sync']:.2f}  surgery peak RSS {mib(r['surgery']['peak_rss_bytes'])}  "
            f"(cp {mib(r['cp']['peak_rss_bytes'])})"
        )
    print(f"round trip bit-exact: {results['round_trip_bit_exact']}")


if __name__ == "__main__":
    main()
