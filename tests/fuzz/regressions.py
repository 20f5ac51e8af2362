"""Reproducers the fuzzer found, kept as small patches of a seed (tests/fuzz/regressions.json).

A reproducer is stored as the seed's name, the file it changed, and the byte ranges that
differ (byte ranges replaced in the seed), so it stays a few hundred bytes of JSON and is
rebuilt from the golden seed generators. tests/test_reliability_fuzz.py checks each one's
exact error message.

    python -m tests.fuzz.regressions add fuzz-repro/keras_h5-123 [more dirs]   # record
    python -m tests.fuzz.regressions add-hang fuzz-repro/guarded/keras_h5-5459  # one HDF5 spins on
    python -m tests.fuzz.regressions add-inspect fuzz-repro/onnx-221            # one `inspect` broke on
    python -m tests.fuzz.regressions fill         # record current messages as expected; review the diff
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from .runner import seed_files
from .seeds import SEEDS

STORE = Path(__file__).with_name("regressions.json")


def diff(old: bytes, new: bytes) -> list[list]:
    """Replacements [start, end, new bytes as hex] that turn `old` into `new`: the differing
    middle after the common prefix and suffix, split where long equal runs sit inside it."""
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    a, b = old[head : len(old) - tail], new[head : len(new) - tail]
    if len(a) == len(b):  # overwrites only (bit flips, new values): keep the differing bytes alone
        ops, k = [], 0
        while k < len(a):
            if a[k] == b[k]:
                k += 1
                continue
            start = k
            while k < len(a) and (a[k] != b[k] or a[k : k + 8] != b[k : k + 8]):
                k += 1
            ops.append([head + start, head + k, b[start:k].hex()])
        return ops
    # Lengths differ: a member rewritten inside a zip shifts everything after it, but the rest
    # stays equal; difflib finds those runs (checked, since its junk heuristic may miss some).
    import difflib

    ops = [[head + i1, head + i2, b[j1:j2].hex()] for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes() if tag != "equal"]
    if patch(old, ops) == new and len(ops) < 64:
        return ops
    return [[head, len(old) - tail, b.hex()]]


def patch(old: bytes, ops: list[list]) -> bytes:
    out, at = bytearray(), 0
    for start, end, data in ops:
        out += old[at:start] + bytes.fromhex(data)
        at = end
    return bytes(out + old[at:])


def seed_bytes(seed: str) -> tuple[dict[str, bytes], bool]:
    with tempfile.TemporaryDirectory() as tmp:
        return seed_files(SEEDS[seed], Path(tmp))


def build(case: dict, folder: Path) -> Path:
    """Write the reproducer into `folder`; return the path to load."""
    files, is_dir = seed_bytes(case["seed"])
    files = {**files, case["file"]: patch(files[case["file"]], case["patch"])}
    suffix = SEEDS[case["seed"]].own_suffix or ""
    if not is_dir:
        path = folder / ("case" + suffix)
        path.write_bytes(files[""])
        return path
    path = folder / "case"
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path / SEEDS[case["seed"]].load if SEEDS[case["seed"]].load else path


def load_store() -> list[dict]:
    return json.loads(STORE.read_text()) if STORE.exists() else []


def add(directories: list[Path], env: dict[str, str] | None = None, **marks: bool) -> None:
    store = load_store()
    for d in directories:
        seed = d.name.rsplit("-", 1)[0]
        files, _ = seed_bytes(seed)
        for name, old in files.items():
            found = d / (name or "input" + (SEEDS[seed].own_suffix or ".bin"))
            new = found.read_bytes()
            if new != old:
                note = (d / "README.txt").read_text(errors="replace").splitlines()[0]
                store.append({"seed": seed, "file": name, "patch": diff(old, new), "found": note, "message": "", **({"env": env} if env else {}), **marks})
    STORE.write_text(json.dumps(store, indent=1) + "\n")


def outcome(case: dict, folder: Path) -> str:
    """The first error line of `surgery convert` to safetensors, then to the seed's own format; "" if both work.

    A case marked "inspect" (one that broke what `inspect` shows) runs `inspect --json` first."""
    from click.testing import CliRunner

    from surgery.cli import main

    src = build(case, folder)
    own = SEEDS[case["seed"]].own_suffix
    targets = [["-o", str(folder / "out.safetensors")], ["-o", str(folder / "own"), "--shard-size", "600"] if own is None else ["-o", str(folder / ("own" + own))]]
    saved = {k: os.environ.get(k) for k in case.get("env", {})}
    os.environ.update(case.get("env", {}))  # e.g. a short SURGERY_READ_TIMEOUT for files HDF5 spins on
    commands = [["convert", str(src), *target, "-q"] for target in targets]
    if case.get("inspect"):
        commands.insert(0, ["inspect", str(src), "--json"])
    try:
        for command in commands:
            result = CliRunner().invoke(main, command, catch_exceptions=False)
            if result.exit_code:
                assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.stderr
                return result.stderr.strip().replace(str(folder), "{dir}")
        return ""
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fill() -> None:
    """Record every reproducer's current outcome as its expected message (review the diff!)."""
    store = load_store()
    for case in store:
        with tempfile.TemporaryDirectory() as tmp:
            case["message"] = outcome(case, Path(tmp))
    STORE.write_text(json.dumps(store, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["add"]:
        add([Path(p) for p in sys.argv[2:]])
    elif sys.argv[1:2] == ["add-hang"]:  # files HDF5 spins on: checked with a 2 s guard
        add([Path(p) for p in sys.argv[2:]], env={"SURGERY_READ_TIMEOUT": "2"})
    elif sys.argv[1:2] == ["add-inspect"]:
        add([Path(p) for p in sys.argv[2:]], inspect=True)
    elif sys.argv[1:2] == ["fill"]:
        fill()
