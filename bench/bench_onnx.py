"""Benchmark: an ONNX model of SIZE bytes with external data, against `cp` of the same bytes.

Method (also in BENCHMARKS.md):
  1. Generate model.onnx + model.onnx.data as torch's dynamo exporter lays them out: float32
     weights of 64-256 MiB (seeded) in one data file, each consumed by a ReduceSum node.
  2. Warm the page cache by reading the data file once, so every tool sees the same cache.
  3. Time, `--repeats` times each, in fresh processes (median wall, largest peak RSS):
       surgery inspect model.onnx (and surgery --version, the CLI's own start-up, for scale;
       both also as CPU time, user + sys, which a busy machine does not inflate)
       cp model.onnx.data copy.data (and cp + sync)  vs  surgery convert model.onnx -o w.safetensors
       cp (as above)                                 vs  surgery transplant w.safetensors model.onnx -o out/out.onnx
     surgery fsyncs what it writes, so cp + sync is the like-for-like baseline.
  4. Check: the safetensors and the transplanted model's weights equal the original bit for bit.
  5. Library figures for the choice of reader (in one process, median of 3): the time to read the
     graph with onnx.load(load_external_data=False), with onnx_ir.load, and surgery.load, for the
     big external-data model and for an inline model of --inline-gb; and what importing
     protobuf, onnx and onnx_ir costs a fresh process.

Usage: python bench/bench_onnx.py [--size-gb 4.2] [--inline-gb 1.0] [--repeats 3] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import best_of, mib, remove, run_measured, surgery_argv, warm  # noqa: E402

MiB = 1 << 20
LARGEST = 256 * MiB
SIZES = [LARGEST, 64 * MiB, 128 * MiB, 192 * MiB]


def generate(folder: Path, total: int, inline: bool = False) -> Path:
    """model.onnx (+ model.onnx.data unless inline) of about `total` bytes of float32 weights."""
    import numpy as np
    from onnx import TensorProto, helper

    data_name = "model.onnx.data"
    initializers, nodes, outputs, used, i = [], [], [], 0, 0
    with open(folder / data_name, "wb") if not inline else open("/dev/null", "wb") as data:
        while used < total:
            nbytes = min(SIZES[i % len(SIZES)], total) if inline else SIZES[i % len(SIZES)]
            rows = nbytes // 4 // 1024
            array = np.random.default_rng(i).standard_normal((rows, 1024), dtype=np.float32)
            tensor = TensorProto(name=f"layers.{i}.weight", data_type=TensorProto.FLOAT, dims=[rows, 1024])
            if inline:
                tensor.raw_data = array.tobytes()
            else:
                offset = data.tell()
                data.write(array.tobytes())
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            initializers.append(tensor)
            nodes.append(helper.make_node("ReduceSum", [tensor.name], [f"sum_{i}"], keepdims=0))
            outputs.append(helper.make_tensor_value_info(f"sum_{i}", TensorProto.FLOAT, []))
            used += array.nbytes
            i += 1
    if inline:
        (folder / data_name).unlink(missing_ok=True)
    graph = helper.make_graph(nodes, "bench", [], outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="bench_onnx")
    path = folder / ("inline.onnx" if inline else "model.onnx")
    path.write_bytes(model.SerializeToString())
    return path


def digest(tree) -> dict[str, str]:
    return {e.name: hashlib.sha256(b"".join(bytes(c) for c in e.iter_bytes())).hexdigest() for e in tree.values()}


def read_graph_times(path: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds to read the graph (not the external data) with each library, in this process."""
    import onnx
    import onnx_ir

    import surgery

    readers = {
        "onnx.load(load_external_data=False)": lambda: onnx.load_model(str(path), load_external_data=False),
        "onnx_ir.load": lambda: onnx_ir.load(str(path)),
        "surgery.load": lambda: surgery.load(path),
    }
    times = {}
    for name, read in readers.items():
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            read()
            walls.append(time.perf_counter() - start)
        times[name] = statistics.median(walls)
    return times


def cpu_seconds(argv: list[str], repeats: int) -> float:
    """Median CPU time (user + sys) of a command: on a shared machine, wall time of a short
    command is mostly waiting for a core, while its CPU time is what it costs."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run(["/usr/bin/time", "-f", "%U %S", *argv], capture_output=True, text=True, check=True)
        user, system = map(float, done.stderr.strip().splitlines()[-1].split())
        runs.append(user + system)
    return statistics.median(runs)


def import_costs() -> dict[str, dict[str, float]]:
    """Wall time and peak RSS of a fresh Python that only imports each library (median of 3)."""
    costs = {}
    for name in ("google.protobuf.message", "onnx", "onnx_ir"):
        runs = [run_measured([sys.executable, "-c", f"import {name}"]) for _ in range(3)]
        costs[name] = {"wall_s": statistics.median(w for w, _ in runs), "peak_rss_bytes": max(r for _, r in runs)}
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.2)
    parser.add_argument("--inline-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generate-inline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate or args.generate_inline:
        generate(args.generate or args.generate_inline, int((args.inline_gb if args.generate_inline else args.size_gb) * 1e9), inline=bool(args.generate_inline))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="surgery-bench-onnx-") as tmp:
        work = Path(tmp)
        big, weights = work / "model.onnx", work / "w.safetensors"
        out_dir = work / "out"
        subprocess.run([sys.executable, __file__, "--generate", str(work), "--size-gb", str(args.size_gb)], check=True)
        data = work / "model.onnx.data"
        total = data.stat().st_size
        warm(data)
        copy = work / "copy.data"
        cp = best_of(args.repeats, ["cp", str(data), str(copy)], copy)
        cp_sync = best_of(args.repeats, ["sh", "-c", f'cp "{data}" "{copy}" && sync "{copy}"'], copy)
        remove(copy)
        results = {
            "bytes": total,
            "largest_tensor_bytes": LARGEST,
            "cp": cp,
            "cp_sync": cp_sync,
            "inspect": best_of(args.repeats, surgery_argv("inspect", str(big)), work / "nothing"),
            "surgery_version": best_of(args.repeats, surgery_argv("--version"), work / "nothing"),
            "convert_to_safetensors": best_of(args.repeats, surgery_argv("convert", str(big), "-o", str(weights), "-q"), weights),
        }
        results["inspect"]["cpu_s"] = cpu_seconds(surgery_argv("inspect", str(big)), args.repeats)
        results["surgery_version"]["cpu_s"] = cpu_seconds(surgery_argv("--version"), args.repeats)
        warm(weights)
        transplant = ["sh", "-c", f'mkdir -p "{out_dir}" && exec ' + " ".join(f'"{a}"' for a in surgery_argv("transplant", str(weights), str(big), "-o", str(out_dir / "out.onnx"), "-q"))]
        results["transplant_into_onnx"] = best_of(args.repeats, transplant, out_dir)
        import surgery

        original = digest(surgery.load(big))
        results["bit_exact"] = {
            "safetensors": digest(surgery.load(weights)) == original,
            "transplanted": digest(surgery.load(out_dir / "out.onnx")) == original,
        }
        remove(out_dir)
        remove(weights)
        results["read_graph_s"] = {"external": read_graph_times(big)}
        remove(data)
        subprocess.run([sys.executable, __file__, "--generate-inline", str(work), "--inline-gb", str(args.inline_gb)], check=True)
        inline = work / "inline.onnx"
        results["inline_bytes"] = inline.stat().st_size
        results["read_graph_s"]["inline"] = read_graph_times(inline)
    results["import"] = import_costs()

    budget = LARGEST + 300 * MiB
    for step in ("convert_to_safetensors", "transplant_into_onnx"):
        r = results[step]
        r["ratio_to_cp"] = r["wall_s"] / cp["wall_s"]
        r["ratio_to_cp_sync"] = r["wall_s"] / cp_sync["wall_s"]
    for step in ("inspect", "convert_to_safetensors", "transplant_into_onnx"):
        results[step]["rss_within_budget"] = results[step]["peak_rss_bytes"] <= budget
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{total / 1e9:.2f} GB external data; largest tensor {mib(LARGEST)}; RSS budget {mib(budget)}")
    print(f"cp {cp['wall_s']:.2f} s, cp+sync {cp_sync['wall_s']:.2f} s")
    for step in ("inspect", "surgery_version"):
        r = results[step]
        print(f"{step:22} {r['wall_s']:6.2f} s (CPU {r['cpu_s']:.2f} s)  peak RSS {mib(r['peak_rss_bytes'])}")
    for step in ("convert_to_safetensors", "transplant_into_onnx"):
        r = results[step]
        print(
            f"{step:22} {r['wall_s']:6.2f} s  ratio to cp {r['ratio_to_cp']:.2f}, to cp+sync {r['ratio_to_cp_sync']:.2f}  "
            f"peak RSS {mib(r['peak_rss_bytes'])}"
        )
    print(f"bit-exact: {results['bit_exact']}")
    for kind, times in results["read_graph_s"].items():
        size = f" ({results['inline_bytes'] / 1e9:.2f} GB)" if kind == "inline" else ""
        print(f"read the graph, {kind}{size}: " + ", ".join(f"{name} {t:.3f} s" for name, t in times.items()))
    print("import: " + ", ".join(f"{name} {c['wall_s']:.2f} s {mib(c['peak_rss_bytes'])}" for name, c in results["import"].items()))


if __name__ == "__main__":
    main()
