"""The README's runnable examples run: its Python API block, its Quick start job and its ONNX export section."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from conftest import REPO
from helpers import run

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_python_api_block_runs(monkeypatch):
    pytest.importorskip("torch")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert list(scope["state_dict"])[:2] == ["conv1_1.weight", "conv1_1.bias"]


def test_quick_start_job_runs(tmp_path):
    line = next(l for l in README.splitlines() if l.startswith("pip install . && surgery subsample"))
    args = shlex.split(line.split("&& surgery ", 1)[1])
    args = [str(REPO / a) if a.startswith("fixtures/") else a for a in args]
    args[args.index("-o") + 1] = str(tmp_path / "road.h5")
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert "largest |difference| 0" in result.stdout and "Build the model with 9 classes" in result.stdout
    assert os.path.exists(tmp_path / "road.h5")


def test_classes_by_name_block_runs(tmp_path):
    block = re.search(r"### Classes by name\n\n```sh\n(.*?)```", README, re.S).group(1)
    outputs = {}
    for line in block.splitlines():
        args = shlex.split(line)[1:]  # drop "surgery"
        # Outputs first: the checkout itself may live under /tmp, and its fixtures must stay where they are.
        args = [str(tmp_path / a[len("/tmp/") :]) if a.startswith("/tmp/") else a for a in args]
        args = [str(REPO / a) if a.startswith("fixtures/") else a for a in args]
        result = run(*args)
        assert result.exit_code == 0, (line, result.stderr)
        outputs[args[0]] = outputs.get(args[0], "") + result.stdout
    assert "resolved indices: 0,1,2,3,4,6,8" in outputs["subsample"]
    assert "labels (3): background, car, bus" in outputs["subsample"]
    assert "    17  sheep  19" in outputs["upsample"] and "    18  sofa  new" in outputs["upsample"]
    assert "labels (3, from the checkpoint's recorded labels (surgery.labels)): background, car, bus" in outputs["inspect"]
    assert (tmp_path / "road.txt").read_text(encoding="utf-8").splitlines()[-1] == "truck"


@pytest.mark.interop
def test_onnx_export_section_runs(tmp_path, monkeypatch):
    """The three commands from a Keras SSD .h5 to a subsampled ONNX detector, as the README gives them."""
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    block = re.search(r"### ONNX export: from a Keras SSD to a subsampled ONNX detector\n\n```sh\n(.*?)```", README, re.S).group(1)
    commands = [shlex.split(line)[1:] for line in block.strip().splitlines()]
    assert [c[0] for c in commands] == ["subsample", "export-onnx", "inspect"]
    monkeypatch.chdir(tmp_path)
    results = [run(*[str(REPO / a) if a.startswith(("fixtures/", "examples/")) else a for a in args]) for args in commands]
    for result in results:
        assert result.exit_code == 0, result.stderr
    assert "output mbox_conf [batch, 6132, 9] float32" in results[2].stdout
    # onnxruntime's 9 classes are the original 81-class model's kept classes, in the new order.
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    from ssd300_tiny import SSD300Tiny

    import surgery.torch

    original = SSD300Tiny(num_classes=81).eval()
    surgery.torch.load_into(original, str(REPO / "fixtures" / "ssd300_coco_tiny.h5"))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32")
    conf, loc = ort.InferenceSession("road.onnx", providers=["CPUExecutionProvider"]).run(None, {"image": x})
    with torch.no_grad():
        ref_conf, ref_loc = (t.numpy() for t in original(torch.from_numpy(x)))
    np.testing.assert_allclose(conf, ref_conf[..., [0, 3, 8, 1, 2, 10, 4, 6, 12]], atol=1e-4, rtol=0)
    np.testing.assert_allclose(loc, ref_loc, atol=1e-4, rtol=0)
