"""Recipe files: steps applied in order to one lazy tree, one write, the same bytes as the commands one by one."""

from __future__ import annotations

import json

import pytest

import surgery
from helpers import digest, error_line, run
from surgery import provenance

SSD = "ssd300_coco_tiny.h5"
ROAD = [0, 3, 8, 1, 2, 10, 4, 6, 12]

TOML = """
[[steps]]
op = "subsample"
classes = [0, 3, 8, 1, 2, 10, 4, 6, 12]
anchors = 4

[[steps]]
op = "cast"
dtype = "float16"
"""


def tensor_bytes(path):
    tree = surgery.load(path)
    return {name: b"".join(bytes(c) for c in e.iter_bytes()) for name, e in tree.items()}


def test_a_recipe_equals_its_commands_run_one_by_one(tmp_path, fixtures_dir):
    recipe = tmp_path / "road.toml"
    recipe.write_text(TOML)
    src = fixtures_dir / SSD
    before = digest(src)
    out = tmp_path / "road.safetensors"
    result = run("apply", recipe, src, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr

    step1, step2 = tmp_path / "step1.h5", tmp_path / "step2.safetensors"
    assert run("subsample", src, "-o", step1, "--classes", ",".join(map(str, ROAD)), "--anchors", "4", "-q").exit_code == 0
    assert run("convert", step1, "-o", step2, "--dtype", "float16", "-q").exit_code == 0
    assert tensor_bytes(out) == tensor_bytes(step2)
    assert [s["op"] for s in provenance.history(surgery.load(out))] == ["subsample", "cast"]
    assert digest(src) == before


def test_json_recipe_and_dry_run_writes_nothing(tmp_path, fixtures_dir):
    recipe = tmp_path / "road.json"
    recipe.write_text(json.dumps({"steps": [{"op": "subsample", "classes": "0,3,8", "anchors": 4}]}))
    out = tmp_path / "out.h5"
    result = run("apply", recipe, fixtures_dir / SSD, "-o", out, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["dry_run"] is True and not out.exists()
    assert document["steps"][0]["op"] == "subsample"
    changes = document["steps"][0]["report"]["changes"]
    assert {"kind": "reshaped", "name": "fc7_mbox_conf/bias", "before": "[486]", "after": "[18]", "detail": "6 anchors"} in changes


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("[[steps]]\nop = 'explode'\n", ".toml", "error: unknown operation 'explode' ({path}, step 1); use one of: "),
        ("[[steps]]\nop = 'cast'\nsize = 3\n", ".toml", "error: cast takes no option 'size' ({path}, step 1); its options are: dtype"),
        ("title = 'nothing'\n", ".toml", "error: the recipe has no steps ({path}); write a list of steps"),
        ("[[steps]]\nclasses = [1]\n", ".toml", "error: a step without an \"op\" name ({path}, step 1); write a list of steps"),
        ("[[steps\n", ".toml", "error: the recipe is not valid TOML ("),
        ("{", ".json", "error: the recipe is not valid JSON ("),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, fixtures_dir, text, suffix, expected):
    recipe = tmp_path / f"r{suffix}"
    recipe.write_text(text)
    result = run("apply", recipe, fixtures_dir / SSD, "-o", tmp_path / "out.h5")
    assert result.exit_code == 1
    assert error_line(result).startswith(expected.format(path=recipe))
    assert not (tmp_path / "out.h5").exists()


def test_a_failing_step_is_named(tmp_path, fixtures_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[[steps]]\nop = 'cast'\ndtype = 'float16'\n[[steps]]\nop = 'subsample'\nclasses = [0, 500]\nanchors = 4\n")
    line = error_line(run("apply", recipe, fixtures_dir / SSD, "-o", tmp_path / "out.h5"))
    assert line.startswith(f"error: class index 500 is out of range: conv4_3_norm_mbox_conf has 81 classes, so indices run 0..80 ({recipe}, step 2: subsample, --classes); ")


def test_head_and_layer_steps_equal_their_commands(tmp_path, fixtures_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[[steps]]\nop = 'reinit'\nlayers = 'conv9_2_mbox_conf'\ninit = 'xavier_uniform'\nseed = 1\n"
        "[[steps]]\nop = 'truncate'\nafter = 'conv9_2_mbox_conf'\n"
        "[[steps]]\nop = 'adapt-input'\nchannels = 1\n"
        "[[steps]]\nop = 'strip-head'\nfamily = 'ssd'\n"
    )
    src = fixtures_dir / SSD
    out = tmp_path / "out.safetensors"
    assert run("apply", recipe, src, "-o", out, "-q").exit_code == 0
    a, b, c, d = (tmp_path / f"{k}.h5" for k in "abcd")
    commands = [
        ("reinit", src, "-o", a, "--layers", "conv9_2_mbox_conf", "--init", "xavier_uniform", "--seed", "1"),
        ("truncate", a, "-o", b, "--after", "conv9_2_mbox_conf"),
        ("adapt-input", b, "-o", c, "--channels", "1"),
        ("strip-head", c, "-o", d, "--family", "ssd"),
    ]
    for command in commands:
        result = run(*command, "-q")
        assert result.exit_code == 0, (command, result.stderr)
    assert tensor_bytes(out) == tensor_bytes(d)
    assert [s["op"] for s in provenance.history(surgery.load(out))] == ["reinit", "truncate", "adapt-input", "strip-head"]


def test_layout_and_name_steps_equal_their_commands(tmp_path, fixtures_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[[steps]]\nop = 'convert-layout'\nlayout = 'torch'\n"
        "[[steps]]\nop = 'rename'\nmap = ['^conv(\\d)_(\\d)\\.=block\\1.conv\\2.']\ndrop = ['*_mbox_*']\n"
    )
    src = fixtures_dir / SSD
    out = tmp_path / "out.pt"
    assert run("apply", recipe, src, "-o", out, "-q").exit_code == 0
    a, b = tmp_path / "a.safetensors", tmp_path / "b.pt"
    assert run("convert", src, "-o", a, "--layout", "torch", "-q").exit_code == 0
    result = run("rename", a, "-o", b, "--drop", "*_mbox_*", "--map", r"^conv(\d)_(\d)\.=block\1.conv\2.", "-q")
    assert result.exit_code == 0, result.stderr
    assert tensor_bytes(out) == tensor_bytes(b)
    assert list(surgery.load(out))[:2] == ["block1.conv1.weight", "block1.conv1.bias"]
