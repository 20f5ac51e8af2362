"""`@FILE` lists: long class lists and repeatable options read from a file."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import surgery
from surgery.cli import main
from surgery.tree import Entry, Tree


def _head(tmp_path, classes: int):
    rng = np.random.default_rng(0)
    tree = Tree([Entry.from_array("fc.weight", rng.standard_normal((classes, 4)).astype(np.float32)),
                 Entry.from_array("fc.bias", rng.standard_normal(classes).astype(np.float32))], metadata={"format": "pt"})
    surgery.save(tree, tmp_path / "head.safetensors")
    return tmp_path / "head.safetensors"


def test_classes_from_a_file_longer_than_one_argument_may_be(tmp_path):
    src = _head(tmp_path, 40_000)
    keep = list(range(39_999, 9_999, -1))  # 30,000 classes in reverse: ~180 KB of text, past the 128 KiB argument cap
    (tmp_path / "keep.txt").write_text("\n".join(", ".join(map(str, keep[i : i + 10])) for i in range(0, len(keep), 10)))
    result = CliRunner().invoke(main, ["subsample", str(src), "-o", str(tmp_path / "out.safetensors"), "--layers", "fc", "--classes", "@" + str(tmp_path / "keep.txt"), "-q"])
    assert result.exit_code == 0, result.output
    out = surgery.load(tmp_path / "out.safetensors")
    assert np.array_equal(out["fc.weight"].read(), surgery.load(src)["fc.weight"].read()[keep])


def test_a_repeatable_option_takes_one_item_per_line(tmp_path):
    src = _head(tmp_path, 5)
    (tmp_path / "drop.txt").write_text("fc.bias\n\n")
    result = CliRunner().invoke(main, ["rename", str(src), "-o", str(tmp_path / "out.safetensors"), "--drop=@" + str(tmp_path / "drop.txt"), "-q"])
    assert result.exit_code == 0, result.output
    assert list(surgery.load(tmp_path / "out.safetensors")) == ["fc.weight"]


def test_an_unreadable_list_file_is_a_usage_error(tmp_path):
    src = _head(tmp_path, 5)
    result = CliRunner().invoke(main, ["subsample", str(src), "-o", str(tmp_path / "o.safetensors"), "--classes", "@" + str(tmp_path / "missing.txt")])
    assert result.exit_code == 2
    assert f"cannot read the list file @{tmp_path / 'missing.txt'} (No such file or directory); give a readable text file" in result.output
