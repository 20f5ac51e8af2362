"""What keeps `surgery inspect` fast (issue 14): it imports no numpy or framework, commands are
imported on demand, and an ONNX model's external data file is checked once, not per tensor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import surgery
from surgery.cli import COMMANDS, main
from surgery.formats import onnx_tensors

REPO = __import__("conftest").FIXTURES.parent
HEAVY = ("numpy", "ml_dtypes", "h5py", "torch", "onnx", "onnxruntime", "keras")


def _external_onnx(folder, count: int = 3):
    from onnx_builders import identity_model, onnx

    tensors = [onnx.numpy_helper.from_array(np.full((2, 3), i, np.float32), f"w{i}") for i in range(count)]
    path = folder / "model.onnx"
    onnx.save_model(identity_model(tensors), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def _torch_pt(folder):
    out = folder / "model.pt"
    result = subprocess.run(
        [sys.executable, "-m", "surgery", "convert", str(REPO / "fixtures" / "tiny.safetensors"), "-o", str(out)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("kind", ["safetensors", "torch", "onnx"])
def test_inspect_imports_no_numpy_or_framework(kind, tmp_path):
    path = {"safetensors": lambda: REPO / "fixtures" / "tiny.safetensors", "torch": lambda: _torch_pt(tmp_path), "onnx": lambda: _external_onnx(tmp_path)}[kind]()
    code = (
        "import contextlib, io, sys\n"
        "from surgery.cli import main\n"
        "shown = io.StringIO()\n"
        "with contextlib.redirect_stdout(shown):\n"
        "    try:\n"
        f"        main(['inspect', {str(path)!r}])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "assert ' tensors, ' in shown.getvalue(), shown.getvalue()\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_command_table_names_every_command_by_its_own_name():
    assert main.list_commands(None) == sorted(COMMANDS)
    for name in COMMANDS:
        assert main.get_command(None, name).name == name
    assert main.get_command(None, "no-such-command") is None


def test_an_onnx_data_file_is_checked_once_per_model(tmp_path, monkeypatch):
    path = _external_onnx(tmp_path, count=5)
    checked = []
    real = onnx_tensors.safe_location
    monkeypatch.setattr(onnx_tensors, "safe_location", lambda *args: checked.append(args[0]) or real(*args))
    tree = surgery.load(path)
    assert checked == ["model.onnx.data"]
    assert [e.source.offset for e in tree.values()] == sorted({e.source.offset for e in tree.values()})
    assert tree["w4"].read().tolist() == [[4.0] * 3] * 2


def test_a_tensor_past_the_end_of_a_data_file_checked_for_an_earlier_tensor_is_still_refused(tmp_path):
    path = _external_onnx(tmp_path, count=3)
    data = tmp_path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-1])  # the last tensor now runs one byte past the end
    with pytest.raises(surgery.errors.CorruptFileError, match="offset 48 length 24 runs past the end of the 71-byte file .*tensor 'w2'"):
        surgery.load(path)
