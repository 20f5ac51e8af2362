"""Benchmark: subsample a vocabulary-sized head in Keras HDF5, against one read plus numpy.take.

Method (also in BENCHMARKS.md):
  1. A child process writes a Keras 2 weights file with one Dense layer `predictions`:
     kernel (1024, 250000) float32 (1.02 GB; Keras puts the class axis last) and bias (250000,).
  2. The page cache is warmed by reading the file once.
  3. Alternately, `--repeats` times each, in fresh processes:
       baseline: h5py reads the kernel in one call, then numpy.take keeps 30,000 columns;
       surgery:  surgery subsample head.h5 -o out.h5 --layers predictions --num-classes 30000
     Wall time is the median; peak RSS is GNU time's %M.
  4. The output's kernel is checked against numpy.take of the input.

h5py's own fancy indexing (`dataset[:, indices]`) with 30,000 indices is the slow path this
avoids; it is not timed here by default (`--fancy` adds it, once).

Usage: python bench/bench_subsample.py [--repeats 3] [--classes 250000] [--keep 30000] [--workdir DIR] [--fancy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import best_of, mib, remove, run_measured, surgery_argv  # noqa: E402

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
import sys, h5py, numpy as np
path, keep = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "r") as f:
    ds = f["predictions/predictions/kernel:0"]
    index = np.sort(np.random.default_rng(0).choice(np.arange(1, ds.shape[1]), keep - 1, replace=False))
    out = ds[:, np.concatenate([[0], index]).tolist()]
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
    parser.add_argument("--fancy", action="store_true")
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
        results = {"source_bytes": src.stat().st_size, "classes": args.classes, "keep": args.keep}
        results["read_plus_take"] = best_of(args.repeats, baseline, Path(tmp) / "none")
        results["surgery"] = best_of(args.repeats, command, out)
        if args.fancy:
            wall, rss = run_measured([sys.executable, "-c", FANCY, str(src), str(args.keep)])
            results["h5py_fancy_indexing"] = {"wall_s": wall, "peak_rss_bytes": rss}
        import numpy as np

        import surgery

        kept = json.loads(surgery.load(out).metadata["surgery.source_classes"])
        source = surgery.load(src)["predictions/kernel"].read()
        results["output_exact"] = bool(np.array_equal(surgery.load(out)["predictions/kernel"].read(), source[:, kept]))
        remove(out)
    results["ratio"] = results["surgery"]["wall_s"] / results["read_plus_take"]["wall_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.classes:,} x {FEATURES} float32 head ({results['source_bytes'] / 1e9:.2f} GB) -> {args.keep:,} classes")
    for key in ("read_plus_take", "surgery", "h5py_fancy_indexing"):
        if key in results:
            print(f"{key:20} {results[key]['wall_s']:7.2f} s  peak RSS {mib(results[key]['peak_rss_bytes'])}")
    print(f"ratio surgery / (read + take): {results['ratio']:.2f}; output exact: {results['output_exact']}")


if __name__ == "__main__":
    main()
