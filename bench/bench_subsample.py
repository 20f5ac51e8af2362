"""Benchmark: subsample a vocabulary-sized head in Keras HDF5, against h5py fancy indexing + write and one read + numpy.take.

Method (also in BENCHMARKS.md):
  1. A child process writes a Keras 2 weights file with one Dense layer `predictions`:
     kernel (1024, 250000) float32 (1.02 GB, contiguous; Keras puts the class axis last) and bias (250000,).
  2. The page cache is warmed by reading the file once; Python may cache bytecode (as an installed
     surgery has it: PYTHONDONTWRITEBYTECODE is dropped for the children), and every command runs
     once untimed first, so that no round pays for compiling.
  3. `--repeats` rounds (default 5); in each, every command runs once in a fresh process, in turn
     (so a slow spell of a shared machine hits all of them), in the reverse order every other
     round (so that no command always follows another's write), its output deleted before it runs:
       read + take:   h5py reads the kernel in one call, then numpy.take keeps 30,000 columns;
       fancy + write: h5py's own sorted fancy indexing (`dataset[:, indices]`), then the
                      result written to an HDF5 file and fsynced (what surgery also does);
       surgery:       surgery subsample head.h5 -o out.h5 --layers predictions --num-classes 30000
     Wall and CPU time (user + system, children included) are medians; peak RSS is GNU time's %M,
     the largest over the rounds; the 1-minute load average is recorded before every run.
  4. The output's kernel is checked against numpy.take of the input.

Usage: python bench/bench_subsample.py [--repeats 5] [--classes 250000] [--keep 30000] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, remove, round_robin, surgery_argv

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


LABELS = {
    "read_plus_take": "one read + `numpy.take`",
    "fancy_plus_write": "h5py fancy indexing + write + fsync",
    "surgery": "`surgery subsample` (read kept, write, fsync)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=250_000)
    parser.add_argument("--keep", type=int, default=30_000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.classes)
        return
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the children may cache bytecode, as an installed tool does
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-") as tmp:
        src, out, fancy_out = Path(tmp) / "head.h5", Path(tmp) / "out.h5", Path(tmp) / "fancy.h5"
        subprocess.run([sys.executable, __file__, "--generate", str(src), "--classes", str(args.classes)], check=True)
        src.read_bytes()  # warm the page cache
        cmds = {
            "read_plus_take": [sys.executable, "-c", BASELINE, str(src), str(args.keep)],
            "fancy_plus_write": [sys.executable, "-c", FANCY, str(src), str(args.keep), str(fancy_out)],
            "surgery": surgery_argv("subsample", str(src), "-o", str(out), "--layers", "predictions", "--num-classes", str(args.keep), "-q"),
        }
        outputs = {"fancy_plus_write": fancy_out, "surgery": out}

        def before(name: str) -> None:
            if name in outputs:
                remove(outputs[name])

        round_robin(cmds, 1, before)  # warm-up: bytecode compiled and cached, libraries in the page cache
        results: dict = {"source_bytes": src.stat().st_size, "classes": args.classes, "keep": args.keep, "repeats": args.repeats}
        results.update(_rounds(cmds, args.repeats, before))
        results["output_bytes"] = out.stat().st_size
        results["output_exact"] = _exact(src, out)
        remove(out)
        remove(fancy_out)
    results["ratio"] = results["surgery"]["wall_s"] / results["read_plus_take"]["wall_s"]
    results["ratio_to_fancy_plus_write"] = results["surgery"]["wall_s"] / results["fancy_plus_write"]["wall_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))


def _rounds(cmds: dict[str, list[str]], repeats: int, before) -> dict[str, dict]:
    """round_robin's figures, with the order of the commands reversed every other round: a
    command that runs right after another's write and fsync shares the disk's writeback."""
    per_round = [round_robin(dict(list(cmds.items())[:: -1 if k % 2 else 1]), 1, before) for k in range(repeats)]
    return {
        name: {
            "wall_s": statistics.median(r[name]["wall_s"] for r in per_round),
            "walls_s": [r[name]["wall_s"] for r in per_round],
            "cpu_s": statistics.median(r[name]["cpu_s"] for r in per_round),
            "peak_rss_bytes": max(r[name]["peak_rss_bytes"] for r in per_round),
            "load_1min": [r[name]["load_1min"][0] for r in per_round],
        }
        for name in cmds
    }


def _exact(src: Path, out: Path) -> bool:
    import numpy as np

    import surgery

    kept = json.loads(surgery.load(out).metadata["surgery.source_classes"])
    source = surgery.load(src)["predictions/kernel"].read()
    return bool(np.array_equal(surgery.load(out)["predictions/kernel"].read(), source[:, kept]))


def table(results: dict) -> str:
    """The Markdown table of BENCHMARKS.md for these results."""
    loads = [la for key in LABELS for la in results[key]["load_1min"]]
    budget = results["output_bytes"] + 100e6
    title = (f"{results['classes']:,} x {FEATURES} float32 head ({results['source_bytes'] / 1e9:.2f} GB) -> {results['keep']:,} classes, "
             f"medians of {results['repeats']} rounds, 1-minute load {min(loads):.1f}-{max(loads):.1f}")
    lines = [title, "",
             "| | wall time | CPU time | peak RSS | every round's wall time |", "|---|---|---|---|---|"]
    for key, label in LABELS.items():
        r = results[key]
        walls = ", ".join(f"{w:.2f}" for w in r["walls_s"])
        lines.append(f"| {label} | {r['wall_s']:.2f} s | {r['cpu_s']:.2f} s | {mib(r['peak_rss_bytes'])} | {walls} |")
    lines.append(f"\nsurgery ÷ (fancy + write): {results['ratio_to_fancy_plus_write']:.2f}; ÷ (read + take): {results['ratio']:.2f}; "
                 f"peak RSS budget (output {mib(results['output_bytes'])} + 100 MB): {mib(budget)}; output exact: {results['output_exact']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
