"""Small helpers shared by the example tests."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from click.testing import CliRunner, Result

from surgery.cli import main


def run(*args: str) -> Result:
    """Run the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result: Result) -> str:
    """The single stderr line of a failed command (asserts it is exactly one line)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def raw_safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or raw bytes), with an optional lying length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def digest(path: Path) -> str:
    """A hash of a file or of every file in a folder, to prove inputs are untouched."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write could leave behind."""
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name)
