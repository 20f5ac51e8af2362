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
