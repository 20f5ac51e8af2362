"""The README's runnable examples run: its Python API block and its Quick start job."""

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
        args = [str(REPO / a) if a.startswith("fixtures/") else a for a in args]
        args = [str(tmp_path / a[len("/tmp/") :]) if a.startswith("/tmp/") else a for a in args]
        result = run(*args)
        assert result.exit_code == 0, (line, result.stderr)
        outputs[args[0]] = outputs.get(args[0], "") + result.stdout
    assert "resolved indices: 0,1,2,3,4,6,8" in outputs["subsample"]
    assert "labels (3): background, car, bus" in outputs["subsample"]
    assert "    17  sheep  19" in outputs["upsample"] and "    18  sofa  new" in outputs["upsample"]
    assert "labels (3, from the checkpoint's recorded labels (surgery.labels)): background, car, bus" in outputs["inspect"]
    assert (tmp_path / "road.txt").read_text(encoding="utf-8").splitlines()[-1] == "truck"
