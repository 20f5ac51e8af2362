"""inspect and convert through the CLI: output formats, safety of outputs, and the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import surgery
from helpers import digest, error_line, leftovers, run
from surgery.tree import Entry, Tree

REPO_FIXTURES = __import__("conftest").FIXTURES
TINY = REPO_FIXTURES / "tiny.safetensors"


def tensor_bytes(tree: Tree) -> dict[str, bytes]:
    return {name: b"".join(bytes(c) for c in e.iter_bytes()) for name, e in tree.items()}


def test_inspect_json_schema_and_values():
    result = run("inspect", TINY, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert set(doc) == {"format", "convention", "convention_from", "tensor_count", "parameters", "tensors", "total_bytes", "metadata"}
    assert (doc["format"], doc["convention"], doc["convention_from"], doc["tensor_count"]) == ("safetensors", "torch", "file", 11)
    assert doc["parameters"] == 8 * 27 + 8 + 8 + 80 + 10 + 4  # floating weights; buffers (BatchNorm statistics, integers) apart
    assert doc["metadata"] == {"format": "pt", "source": "surgery fixtures"}
    assert doc["tensors"][0] == {"name": "features.0.weight", "shape": [8, 3, 3, 3], "dtype": "float32", "nbytes": 864}
    assert {t["dtype"] for t in doc["tensors"]} >= {"bfloat16", "float16", "int64", "bool", "uint8", "float8_e4m3fn"}
    assert doc["total_bytes"] == sum(t["nbytes"] for t in doc["tensors"]) == 1307


def test_inspect_table_has_totals_and_format():
    out = run("inspect", TINY).stdout.splitlines()
    assert out[0].split() == ["name", "shape", "dtype", "size"]
    assert "11 tensors, 326 parameters, 1,307 bytes (1.3 KB); format safetensors, convention torch" in out
    assert "metadata format = pt" in out


def test_inspect_filter_and_no_match():
    doc = json.loads(run("inspect", TINY, "--json", "--filter", "*.bias").stdout)
    assert [t["name"] for t in doc["tensors"]] == ["features.0.bias", "classifier.bias"]
    assert doc["total_bytes"] == 72
    result = run("inspect", TINY, "--filter", "nothing*")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"error: no tensor name matches --filter nothing* ({TINY}); "
        "list the names without --filter; globs are case-sensitive and '*' crosses '/' and '.'"
    )


def test_missing_file_and_unknown_format(tmp_path):
    assert error_line(run("inspect", tmp_path / "nope.safetensors")) == (
        f"error: no such file or folder ({tmp_path / 'nope.safetensors'}); check the path"
    )
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    assert error_line(run("inspect", junk)).startswith(
        f"error: cannot tell the file's format from its content or name ({junk}); surgery reads: safetensors, npz"
    )


@pytest.mark.parametrize("source", ["tiny.safetensors", "tiny.npz", "tiny-sharded"])
@pytest.mark.parametrize("target", ["out.safetensors", "out.npz", "shards"])
def test_convert_round_trips_bit_exactly(tmp_path, source, target):
    src = REPO_FIXTURES / source
    before = digest(src)
    args = ["convert", src, "-o", tmp_path / target, "--quiet"]
    if target == "shards":
        args += ["--shard-size", "500"]
    if target == "out.npz":  # numpy has no bfloat16 or float8: npz refuses them
        args += ["--drop", "features.1.running_mean", "--drop", "scale.fp8"]
    assert run(*args).exit_code == 0
    original, converted = surgery.load(src), surgery.load(tmp_path / target)
    if target == "out.npz":
        original = original.derive(drop=["features.1.running_mean", "scale.fp8"])
    assert list(converted) == list(original)
    assert {n: (e.shape, e.dtype) for n, e in converted.items()} == {n: (e.shape, e.dtype) for n, e in original.items()}
    assert tensor_bytes(converted) == tensor_bytes(original)
    assert converted.metadata == ({} if target == "out.npz" else original.metadata)  # npz keeps no metadata
    assert digest(src) == before


def test_convert_dtype_casts_floating_only(tmp_path):
    out = tmp_path / "bf16.safetensors"
    result = run("convert", TINY, "-o", out, "--dtype", "bfloat16", "--json")
    doc = json.loads(result.stdout)
    assert doc["cast"] == ["features.0.weight", "features.0.bias", "features.1.weight", "classifier.weight", "classifier.bias", "empty", "scale.fp8"]
    tree, original = surgery.load(out), surgery.load(TINY)
    assert tree["features.1.num_batches_tracked"].dtype == "int64"
    assert tree["mask"].dtype == "bool" and tree["ids"].dtype == "uint8"
    import ml_dtypes

    np.testing.assert_array_equal(
        tree["classifier.weight"].read(), original["classifier.weight"].read().astype(ml_dtypes.bfloat16)
    )


def test_shard_size_parsing(tmp_path):
    doc = json.loads(run("convert", TINY, "-o", tmp_path / "s", "--shard-size", "1KB", "--dry-run", "--json").stdout)
    assert doc["shards"] == 2 and doc["dry_run"] is True
    assert not (tmp_path / "s").exists()
    bad = run("convert", TINY, "-o", tmp_path / "s", "--shard-size", "5 parsecs")
    assert bad.exit_code == 2
    assert "cannot read '5 parsecs' as a size; write e.g. 500MB or 5GB" in bad.stderr


def test_sharded_output_has_hugging_face_index(tmp_path):
    run("convert", TINY, "-o", tmp_path / "s", "--shard-size", "600")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 1307}
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    assert list(index["weight_map"]) == list(surgery.load(TINY))


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    result = run("convert", TINY, "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: output already exists ({out}); pass --force to replace it"
    assert out.read_bytes() == b"precious"
    assert run("convert", TINY, "-o", out, "--force", "-q").exit_code == 0
    assert len(surgery.load(out)) == 11


def test_output_equal_to_input_is_refused_even_with_force(tmp_path):
    src = tmp_path / "m.safetensors"
    src.write_bytes(TINY.read_bytes())
    result = run("convert", src, "-o", src, "--force")
    assert error_line(result) == (
        f"error: the output would overwrite an input ({src}); choose a different output path; inputs are never modified"
    )
    assert src.read_bytes() == TINY.read_bytes()


def test_output_folder_holding_the_input_shards_is_refused(tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(REPO_FIXTURES / "tiny-sharded", shards)
    before = digest(shards)
    result = run("convert", shards, "-o", shards, "--shard-size", "1KB", "--force")
    assert result.exit_code == 1
    assert "the output would overwrite an input" in error_line(result)
    assert digest(shards) == before


def test_force_replaces_a_sharded_folder_atomically(tmp_path):
    out = tmp_path / "s"
    run("convert", TINY, "-o", out, "--shard-size", "600")
    assert run("convert", TINY, "-o", out, "--shard-size", "100KB", "--force").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    def explode():
        raise Boom("disk on fire")

    good = Entry.from_array("a", np.ones(3, np.float32))
    bad = Entry.computed("b", (3,), "float32", explode)
    for dst, shard in ((tmp_path / "x.safetensors", None), (tmp_path / "x.npz", None), (tmp_path / "sh", 8)):
        with pytest.raises(Boom):
            surgery.save(Tree([good, bad]), dst, shard_size=shard)
        assert not dst.exists()
    assert leftovers(tmp_path) == []


def test_unwritable_output_folder_is_one_line(tmp_path):
    result = run("convert", TINY, "-o", tmp_path / "no" / "such" / "out.npz")
    assert error_line(result) == f"error: the output's folder does not exist ({tmp_path / 'no' / 'such'}); create it first"


def test_unknown_output_suffix_needs_to(tmp_path):
    result = run("convert", TINY, "-o", tmp_path / "out.weird")
    assert error_line(result) == (
        f"error: cannot tell which format to write from the output's name ({tmp_path / 'out.weird'}); "
        "pass --to (safetensors, npz, keras_h5, keras, torch, onnx) or use a known suffix (.safetensors, .npz, .h5, .hdf5, .keras, .pt, .pth, .onnx)"
    )
    assert run("convert", TINY, "-o", tmp_path / "out.weird", "--to", "npz", "--dtype", "float32", "-q").exit_code == 0
    assert surgery.load(tmp_path / "out.weird").format == "npz"  # detected by content, not suffix


def test_npz_cannot_be_sharded(tmp_path):
    result = run("convert", TINY, "-o", tmp_path / "x.npz", "--shard-size", "1KB")
    assert error_line(result) == "error: npz files cannot be sharded (--shard-size); drop --shard-size, or write safetensors"


def test_usage_errors_exit_2():
    assert run("convert", TINY).exit_code == 2  # -o missing
    assert run("inspect").exit_code == 2
    assert run("convert", TINY, "-o", "x.npz", "--dtype", "int8").exit_code == 2


def test_version_and_help():
    assert run("--version").stdout.strip() == f"surgery, version {surgery.__version__}"
    assert "Examples:" in run("convert", "--help").stdout


def test_root_launcher_and_help_without_torch():
    """`python cli.py --help` works from a checkout, and --help imports neither torch nor h5py."""
    code = (
        "import sys, runpy; sys.argv = ['cli.py', '--help'];"
        "\ntry:\n    runpy.run_path('cli.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'h5py', 'onnx', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_FIXTURES.parent, capture_output=True, text=True, check=True)
    assert "Usage: cli.py" in out.stdout
    assert "HEAVY []" in out.stdout


def test_progress_is_silent_off_terminal(tmp_path):
    result = run("convert", TINY, "-o", tmp_path / "o.safetensors")
    assert result.stderr == ""
    assert result.stdout.startswith(f"wrote {tmp_path / 'o.safetensors'} (safetensors, 11 tensors")


def test_kernel_copy_refused_falls_back_to_python_copy(tmp_path, monkeypatch):
    """Where copy_file_range is refused (other filesystems, old kernels), the bytes are copied by hand."""
    import errno
    import os as os_module

    from surgery import output_file

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os_module, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(output_file, "DIRECT", False)  # the page-cache path is the one that copies in the kernel
    out = tmp_path / "copy.safetensors"
    surgery.save(surgery.load(TINY), out)
    assert calls  # the fast path was tried
    assert out.read_bytes() == TINY.read_bytes()


def test_truncated_source_during_kernel_copy_is_a_clear_error(tmp_path):
    src = tmp_path / "src.safetensors"
    src.write_bytes(TINY.read_bytes())
    tree = surgery.load(src)
    src.write_bytes(TINY.read_bytes()[:-100])  # the file shrinks after its header was read
    result_path = tmp_path / "out.safetensors"
    with pytest.raises(surgery.errors.CorruptFileError, match="file ended .* bytes early while reading tensor"):
        surgery.save(tree, result_path)
    assert not result_path.exists() and leftovers(tmp_path) == []


def test_help_and_version_import_no_numpy_or_frameworks():
    """`surgery --help` must stay fast: numpy, ml_dtypes, h5py and the frameworks are imported by commands only."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from surgery.cli import main\n"
        "for args in (['--help'], ['--version'], ['convert', '--help'], ['subsample', '--help'], ['freeze', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "heavy = sorted(m for m in ('numpy', 'ml_dtypes', 'h5py', 'torch', 'onnx', 'onnxruntime', 'keras') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_FIXTURES.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
