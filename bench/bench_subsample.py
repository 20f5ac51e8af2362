"""Benchmark: subsample a vocabulary-sized head in Keras HDF5, against one read plus numpy.take.

Method (also in BENCHMARKS.md):
  1. A child process writes a Keras 2 weights file with one Dense layer `predictions`:
     kernel (1024, 250000) float32 (1.02 GB; Keras puts the class axis last) and bias (250000,).
  2. The page cache is warmed by reading the file once.
  3. `--repeats` rounds; in each, every command runs once in a fresh process, in turn:
       read + take:  h5py reads the kernel in one call, then numpy.take keeps 30,000 columns;
       fancy + write: h5py's own sorted fancy indexing (`dataset[:, indices]`), then the
                      result written to an HDF5 file and fsynced (what surgery also does);
       surgery:      surgery subsample head.h5 -o out.h5 --layers predictions --num-classes 30000
     Wall time is the median; peak RSS is GNU time's %M, the largest over the rounds.
  4. The output's kernel is checked against numpy.take of the input.

Usage: python bench/bench_subsample.py [--repeats 3] [--classes 250000] [--keep 30000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, remove, run_measured, surgery_argv  # noqa: E402

FEATURES = 1024

BASELINE = """
import sys, h5py, numpy as np
path, keep = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "r") as f:
    kernel = f["predictions/predictions/kernel:0"][()]
rng = np.random.default_rng(0)
index = np.sort(rng.choice(np.arange(1, kernel.shape[1]), keep - 1, replace=False))
out = np.take(kernel, np.concatenate([[0], index]), axis=-1)
"""

FANCY = """
import os, sys, h5py, numpy as np
path, keep, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with h5py.File(path, "r") as f:
    ds = f["predictions/predictions/kernel:0"]
    index = np.sort(np.random.default_rng(0).choice(np.arange(1, ds.shape[1]), keep - 1, replace=False))
    out = ds[:, np.concatenate([[0], index]).tolist()]
with h5py.File(dst, "w") as g:
    g.create_dataset("kernel", data=out)
fd = os.open(dst, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""


def generate(path: Path, classes: int) -> None:
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"predictions"])
        f.attrs["keras_version"], f.attrs["backend"] = b"2.15.0", b"tensorflow"
        g = f.create_group("predictions")
        g.attrs["weight_names"] = np.array([b"predictions/kernel:0", b"predictions/bias:0"])
        ds = g.create_dataset("predictions/kernel:0", (FEATURES, classes), "float32")
        for start in range(0, FEATURES, 64):  # in slabs, so generating stays small
            ds[start : start + 64] = rng.standard_normal((64, classes), dtype=np.float32)
        g.create_dataset("predictions/bias:0", data=rng.standard_normal(classes, dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=250_000)
    parser.add_argument("--keep", type=int, default=30_000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.classes)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        src, out = Path(tmp) / "head.h5", Path(tmp) / "out.h5"
        subprocess.run([sys.executable, __file__, "--generate", str(src), "--classes", str(args.classes)], check=True)
        src.read_bytes()  # warm the page cache
        baseline = [sys.executable, "-c", BASELINE, str(src), str(args.keep)]
        command = surgery_argv("subsample", str(src), "-o", str(out), "--layers", "predictions", "--num-classes", str(args.keep), "-q")
        fancy_out = Path(tmp) / "fancy.h5"
        fancy = [sys.executable, "-c", FANCY, str(src), str(args.keep), str(fancy_out)]
        results = {"source_bytes": src.stat().st_size, "classes": args.classes, "keep": args.keep}
        runs: dict[str, list[tuple[float, int]]] = {"read_plus_take": [], "fancy_plus_write": [], "surgery": []}
        for _ in range(args.repeats):  # rounds, so that a slow spell of a shared machine hits every command
            for key, argv, output in (("read_plus_take", baseline, None), ("fancy_plus_write", fancy, fancy_out), ("surgery", command, out)):
                if output is not None:
                    remove(output)
                runs[key].append(run_measured(argv))
        for key, measured in runs.items():
            walls = [w for w, _ in measured]
            results[key] = {"wall_s": statistics.median(walls), "walls_s": walls, "peak_rss_bytes": max(r for _, r in measured)}
        import numpy as np

        import surgery

        kept = json.loads(surgery.load(out).metadata["surgery.source_classes"])
        source = surgery.load(src)["predictions/kernel"].read()
        results["output_exact"] = bool(np.array_equal(surgery.load(out)["predictions/kernel"].read(), source[:, kept]))
        remove(out)
    results["ratio"] = results["surgery"]["wall_s"] / results["read_plus_take"]["wall_s"]
    results["ratio_to_fancy_plus_write"] = results["surgery"]["wall_s"] / results["fancy_plus_write"]["wall_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.classes:,} x {FEATURES} float32 head ({results['source_bytes'] / 1e9:.2f} GB) -> {args.keep:,} classes")
    for key in ("read_plus_take", "fancy_plus_write", "surgery"):
        print(f"{key:20} {results[key]['wall_s']:7.2f} s  peak RSS {mib(results[key]['peak_rss_bytes'])}")
    print(f"surgery / (read + take): {results['ratio']:.2f}; surgery / (fancy + write): {results['ratio_to_fancy_plus_write']:.2f}")
    print(f"output exact: {results['output_exact']}")


def table(results: dict) -> str:
    """The Markdown table of BENCHMARKS.md for these results."""
    lines = [f"{results['classes']:,} x {FEATURES} float32 head ({results['source_bytes'] / 1e9:.2f} GB) -> {results['keep']:,} classes", "",
             "| | wall time | peak RSS |", "|---|---|---|"]
    for key, label in (("read_plus_take", "one read + `numpy.take`"), ("fancy_plus_write", "h5py fancy indexing + write + fsync"),
                       ("surgery", "`surgery subsample` (read kept, write, fsync)")):
        lines.append(f"| {label} | {results[key]['wall_s']:.2f} s | {mib(results[key]['peak_rss_bytes'])} |")
    lines.append(f"\nsurgery ÷ (fancy + write): {results['ratio_to_fancy_plus_write']:.2f}; ÷ (read + take): {results['ratio']:.2f}; "
                 f"output exact: {results['output_exact']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
