"""Benchmark: `surgery inspect` of a large safetensors, PyTorch and ONNX (external data) file,
against each format's own library listing the same tensors.

Method (also in BENCHMARKS.md):
  1. For each kind, one at a time (only one large file is on disk at any moment), write a file of
     --size-gb of float32 tensors (--tensors of them, equal shapes):
       safetensors  the header, then the data section as a sparse file (no data is ever read);
       torch        torch.save of a state dict, one storage per tensor (the zip layout torch writes;
                    its 4 GB are really written, from sparse-file mappings, so little memory is used);
       onnx         model.onnx (an Identity node per weight) + model.onnx.data, sparse, every
                    initializer external.
  2. Warm up once (which also compiles bytecode: PYTHONDONTWRITEBYTECODE is unset for the runs), then
     --repeats rounds; each round runs every command once in a fresh process, in turn, so a slow
     spell of the shared machine hits all alike. Median wall time, median CPU time (user + sys, which
     other work on the machine inflates less), largest peak RSS, and the 1-minute load average.
       safetensors  surgery inspect F  vs  safe_open(F, "np") + list(keys())
       torch        surgery inspect F  vs  torch.load(F, mmap=True, weights_only=True) + list(keys)
       onnx         surgery inspect F  vs  onnx.load(F, load_external_data=False) + initializer names
     `python -c "import click"` runs in the same rounds: the floor any click command pays.
  3. Check, with `python -X importtime`, which of numpy, torch, onnx, h5py the inspect imports.
Targets (issue 14): inspect <= 0.5 s for each kind; safetensors <= 1.5 x safe_open + keys.

Usage: python bench/bench_inspect.py [--size-gb 4] [--tensors 300] [--repeats 10] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import mib, remove, round_robin, surgery_argv

HEAVY = ("numpy", "ml_dtypes", "h5py", "torch", "onnx", "keras")
COLUMNS = 1024  # every tensor is (rows, 1024) float32


def rows_for(size: int, tensors: int) -> int:
    return max(1, size // (tensors * COLUMNS * 4))


# -- the files ---------------------------------------------------------------------------


def write_safetensors(folder: Path, size: int, tensors: int) -> Path:
    """A safetensors file whose data section is a hole: the header is all that inspect reads."""
    rows = rows_for(size, tensors)
    nbytes = rows * COLUMNS * 4
    header = {f"layers.{i}.weight": {"dtype": "F32", "shape": [rows, COLUMNS], "data_offsets": [i * nbytes, (i + 1) * nbytes]} for i in range(tensors)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + tensors * nbytes)
    return path


def write_torch(folder: Path, size: int, tensors: int) -> Path:
    """torch.save of `tensors` tensors, each its own storage, mapped from one sparse file (zeros)."""
    import torch

    rows = rows_for(size, tensors)
    zeros = folder / "zeros.bin"
    with open(zeros, "wb") as f:
        f.truncate(rows * COLUMNS * 4)
    # shared=True maps the file: every tensor reads the same zero pages, so memory stays at one tensor.
    state = {f"layers.{i}.weight": torch.from_file(str(zeros), shared=True, size=rows * COLUMNS).view(rows, COLUMNS) for i in range(tensors)}
    path = folder / "model.pt"
    torch.save(state, path)
    del state
    zeros.unlink()
    return path


def write_onnx(folder: Path, size: int, tensors: int) -> Path:
    """model.onnx with every initializer in model.onnx.data (sparse), each consumed by an Identity."""
    from onnx import TensorProto, helper

    rows = rows_for(size, tensors)
    nbytes = rows * COLUMNS * 4
    initializers, nodes, outputs = [], [], []
    for i in range(tensors):
        t = TensorProto(name=f"layers.{i}.weight", data_type=TensorProto.FLOAT, dims=[rows, COLUMNS])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "model.onnx.data"), ("offset", str(i * nbytes)), ("length", str(nbytes))):
            t.external_data.add(key=key, value=value)
        initializers.append(t)
        nodes.append(helper.make_node("Identity", [t.name], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [rows, COLUMNS]))
    graph = helper.make_graph(nodes, "inspect_bench", [], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with open(folder / "model.onnx.data", "wb") as f:
        f.truncate(tensors * nbytes)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def reference(kind: str, path: Path) -> list[str]:
    """The format's own library listing the tensor names, as a fresh process."""
    code = {
        "safetensors": "from safetensors import safe_open\nwith safe_open(P, 'np') as f: keys = list(f.keys())",
        "torch": "import torch\nkeys = list(torch.load(P, mmap=True, weights_only=True))",
        "onnx": "import onnx\nkeys = [t.name for t in onnx.load(P, load_external_data=False).graph.initializer]",
    }[kind]
    return [sys.executable, "-c", f"P = {str(path)!r}\n{code}\nassert len(keys) > 0"]


KINDS: dict[str, tuple[Callable[[Path, int, int], Path], str]] = {
    "safetensors": (write_safetensors, "safe_open + keys"),
    "torch": (write_torch, "torch.load(mmap=True, weights_only=True)"),
    "onnx": (write_onnx, "onnx.load(load_external_data=False)"),
}


# -- measuring ---------------------------------------------------------------------------


def heavy_imports(path: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "surgery", "inspect", str(path)], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted({m.split(".")[0] for m in imported if m.split(".")[0] in HEAVY})


def files_of(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.is_file()]


def measure(kind: str, folder: Path, size: int, tensors: int, repeats: int) -> dict:
    write, label = KINDS[kind]
    path = write(folder, size, tensors)
    try:
        commands = {"surgery inspect": surgery_argv("inspect", str(path)), label: reference(kind, path), "import click": [sys.executable, "-c", "import click"]}
        round_robin(commands, 1)  # warm-up: bytecode compiled, the header's pages cached
        runs = round_robin(commands, repeats)
        ours, theirs = runs["surgery inspect"]["wall_s"], runs[label]["wall_s"]
        return {
            "kind": kind,
            "file_bytes": sum(p.stat().st_size for p in files_of(path)),
            "tensors": tensors,
            "reference": label,
            "runs": runs,
            "ratio": ours / theirs,
            "heavy_imports": heavy_imports(path),
        }
    finally:
        for p in files_of(path):
            remove(p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--tensors", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # else every run compiles every module again
    size = int(args.size_gb * 1e9)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_inspect.") as tmp:
        results = [measure(kind, Path(tmp), size, args.tensors, args.repeats) for kind in args.kinds.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))


def table(results: list[dict]) -> str:
    lines = [
        (
            "| file | surgery inspect: wall (CPU) | reference | reference: wall (CPU) | ratio, wall (CPU) | `import click`: wall (CPU) "
            "| peak RSS: surgery / reference | numpy, torch, onnx, h5py imported | load (1 min) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, theirs, click = r["runs"]["surgery inspect"], r["runs"][r["reference"]], r["runs"]["import click"]
        loads = [la for run in r["runs"].values() for la in run["load_1min"]]
        lines.append(
            f"| {r['kind']}, {r['file_bytes'] / 1e9:.2f} GB, {r['tensors']} tensors | {_timing(ours)} | `{r['reference']}` "
            f"| {_timing(theirs)} | {r['ratio']:.2f}x ({ours['cpu_s'] / theirs['cpu_s']:.2f}x) | {_timing(click)} "
            f"| {mib(ours['peak_rss_bytes'])} / {mib(theirs['peak_rss_bytes'])} | {', '.join(r['heavy_imports']) or 'none'} "
            f"| {min(loads):.2f}-{max(loads):.2f} |"
        )
    return "\n".join(lines)


def _timing(run: dict) -> str:
    return f"{run['wall_s']:.3f} s ({run['cpu_s']:.3f} s)"


if __name__ == "__main__":
    main()
