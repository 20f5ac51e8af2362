"""One error style: every user error is one line `error: <what> (<where>); <fix>` with exit 1,
every usage error one line with exit 2 and a pointer to the command's --help, Ctrl-C exits 130.

The table below is the contract: command line -> the exact stderr line -> the exit code.
"""

from __future__ import annotations

import errno

import pytest
from conftest import FIXTURES
from helpers import error_line, leftovers, run

import surgery
from surgery.tree import Entry

TINY = FIXTURES / "tiny.safetensors"
SSD = FIXTURES / "ssd300_coco_tiny.h5"
XAVIER = "xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, normal:STD, zeros, ones, constant:V"

CASES = [
    # -- usage errors: a bad option value, or options that do not fit together (exit 2) --
    (["subsample", "{ssd}", "-o", "{out}.h5", "--num-classes", "0"],
     "error: invalid value for '--num-classes': 0 is not in the range x>=1; see 'surgery subsample --help'", 2),
    (["convert", "{tiny}", "-o", "{out}.safetensors", "--dtype", "fp16"],
     "error: invalid value for '--dtype': 'fp16' is not one of 'float16', 'bfloat16', 'float32'; see 'surgery convert --help'", 2),
    (["subsample", "{ssd}", "-o", "{out}.h5", "--classes", "a,b"],
     "error: invalid value for '--classes': --classes gives names but the checkpoint carries no labels; pass --labels "
     "with a table (coco80, coco80+bg, coco91, voc20, voc21, imagenet1k) or a file of names; see 'surgery subsample --help'", 2),
    (["reinit", "{tiny}", "-o", "{out}.safetensors", "--layers", "classifier", "--init", "kaiming"],
     f"error: invalid value for '--init': unknown --init 'kaiming'; use one of: {XAVIER}; see 'surgery reinit --help'", 2),
    (["adapt-input", "{tiny}", "-o", "{out}.safetensors", "--channels", "0"],
     "error: invalid value for '--channels': 0 is not in the range x>=1; see 'surgery adapt-input --help'", 2),
    (["subsample", "{ssd}", "-o", "{out}.h5", "--classes", "0,1", "--num-classes", "3"],
     "error: --classes and --num-classes are both given: pass only one of them; see 'surgery subsample --help'", 2),
    (["subsample", "{ssd}", "-o", "{out}.h5", "--classes", "0,3,3", "--anchors", "4"],
     "error: --classes gives class 3 more than once: drop the repeat, or pass --allow-duplicates to copy its weights "
     "to each place; see 'surgery subsample --help'", 2),
    (["upsample", "{ssd}", "-o", "{out}.h5", "--num-classes", "90", "--init", "he"],
     "error: invalid value for '--init': unknown --init 'he'; use one of: gaussian, zeros, xavier, mean, copy:<class>; "
     "see 'surgery upsample --help'", 2),
    (["convert", "{tiny}", "-o", "{out}.safetensors", "--shard-size", "lots"],
     "error: invalid value for '--shard-size': cannot read 'lots' as a size; write e.g. 500MB or 5GB; see 'surgery convert --help'", 2),
    (["convert", "{tiny}"], "error: missing option '-o' / '--output'; see 'surgery convert --help'", 2),
    (["conver", "{tiny}"], "error: no such command 'conver'; did you mean convert; see 'surgery --help'", 2),
    (["inspect", "{tiny}", "--bogus"], "error: no such option '--bogus'; see 'surgery inspect --help'", 2),
    (["rename", "{tiny}", "-o", "{out}.safetensors"],
     "error: nothing to rename: give --map REGEX=REPL, --strip-prefix, --keep or --drop; see 'surgery rename --help'", 2),
    (["convert", "{tiny}", "-o", "{out}.safetensors", "--rules", "{tiny}"],
     "error: --rules only applies with --layout: add --layout torch or --layout keras; see 'surgery convert --help'", 2),
    (["convert", "{ssd}", "-o", "{out}.pt", "--layout", "torch", "--flatten-shape", "dense=7,7"],
     "error: invalid value for '--flatten-shape': --flatten-shape 'dense=7,7' is not LAYER=H,W,C or LAYER=none; write e.g. "
     "--flatten-shape dense=7,7,64; see 'surgery convert --help'", 2),
    (["transplant", "{tiny}", "{tiny}", "-o", "{out}.safetensors", "--map", "(=x"],
     "error: invalid value for '--map': bad regex '(': missing ), unterminated subpattern; write REGEX=REPL, "
     "e.g. 'module\\.(.*)=\\1'; a literal '=' in the regex is written \\=; see 'surgery transplant --help'", 2),
    (["freeze", "{tiny}", "-o", "{out}.json", "--lr-mult", "fc.*=2", "--lr-mult", "fc.*=3"],
     "error: --lr-mult 'fc.*' is given twice with different values: give each glob once; see 'surgery freeze --help'", 2),
    # -- user errors: the command is well formed but cannot be done (exit 1) --
    (["convert", "{tiny}", "-o", "-"],
     "error: surgery does not write checkpoints to standard output (-o -); name an output file, e.g. -o out.safetensors", 1),
    (["convert", "{tiny}", "-o", "{out}.safetensors", "--shard-size", "1MB"],
     "error: --shard-size writes a folder of shards, but the output is named like a file ({out}.safetensors); "
     "name a folder, e.g. -o {out}", 1),
    (["transplant", "{ddp}", "{tiny}", "-o", "{out}.safetensors"],
     "error: transplant would copy no tensor: none of TARGET's 11 names is in PRETRAINED (PRETRAINED has "
     "'module.features.0.weight', TARGET 'features.0.weight') (PRETRAINED); PRETRAINED's names start with 'module.' "
     "and TARGET's do not: pass --strip-prefix module.", 1),
    (["inspect", "{tiny}", "--key", "model"],
     "error: --key chooses an entry of a PyTorch checkpoint, but this is a safetensors file ({tiny}); drop --key", 1),
    (["inspect", "{out}.missing"], "error: no such file or folder ({out}.missing); check the path", 1),
]


@pytest.fixture
def paths(tmp_path):
    ddp = tmp_path / "ddp.safetensors"
    tree = surgery.load(TINY)
    surgery.save(tree.derive(drop=list(tree), add=[Entry(f"module.{e.name}", e.shape, e.dtype, e.source) for e in tree.values()]), ddp)
    return {"tiny": str(TINY), "ssd": str(SSD), "out": str(tmp_path / "out"), "ddp": str(ddp)}


@pytest.mark.parametrize("args, line, code", CASES, ids=[" ".join(c[0][:1] + c[0][2:]) for c in CASES])
def test_one_line_and_the_exit_code(paths, tmp_path, args, line, code):
    result = run(*(a.format(**paths) for a in args))
    assert error_line(result) == line.format(**paths)
    assert result.exit_code == code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.safetensors"]  # nothing written, no temporary file


def test_an_output_error_names_the_destination_not_the_temporary_file(tmp_path, monkeypatch):
    # A read-only file system cannot be mounted in a test: the final rename fails as it would there.
    import surgery.atomic

    def read_only(tmp, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    monkeypatch.setattr(surgery.atomic, "_replace", read_only)
    out = tmp_path / "out.safetensors"
    result = run("convert", TINY, "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: cannot write the output (Read-only file system) ({out}); check free space and permissions"
    assert leftovers(tmp_path) == [] and not out.exists()


def test_an_unreadable_input_is_one_line(tmp_path, monkeypatch):
    # We run as root, for whom chmod 000 still reads: the open fails the way it does for a user.
    import surgery.formats

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(surgery.formats, "detect", denied)
    result = run("convert", TINY, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 1
    assert error_line(result) == f"error: cannot read the file (Permission denied) ({TINY}); check the path and permissions"


def test_ctrl_c_exits_130_after_removing_the_temporary_file(tmp_path, monkeypatch):
    from surgery.formats import safetensors_io

    seen = []

    def interrupted(tree, tmp, **_options):
        tmp.write_bytes(b"half a checkpoint")
        seen.append(tmp)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_io, "save", interrupted)
    out = tmp_path / "out.safetensors"
    result = run("convert", TINY, "-o", out)
    assert result.exit_code == 130
    assert error_line(result) == "error: interrupted (Ctrl-C); nothing was written, and no temporary file is left"
    assert seen and not seen[0].exists() and not out.exists() and leftovers(tmp_path) == []


def test_help_works_and_exits_0():
    result = run("subsample", "--help")
    assert result.exit_code == 0 and "--class-layout" in result.stdout and "--allow-duplicates" in result.stdout


def test_a_library_error_keeps_its_fields():
    with pytest.raises(surgery.errors.OperationError) as e:
        surgery.ops.classes.parse_classes("a,b")
    assert (e.value.what, e.value.where) == ("'a' is not a class index", "--classes")


def test_a_library_message_that_names_the_temporary_file_names_the_destination(tmp_path, monkeypatch):
    from surgery.formats import safetensors_io

    def h5py_like(tree, tmp, **_options):  # h5py raises OSError without strerror, naming the file it opened
        raise OSError(f"Unable to create file (unable to open file: name = '{tmp}', errno = 30)")

    monkeypatch.setattr(safetensors_io, "save", h5py_like)
    out = tmp_path / "out.safetensors"
    assert error_line(run("convert", TINY, "-o", out)) == (
        f"error: cannot write the output (Unable to create file (unable to open file: name = '{out}', errno = 30)) "
        f"({out}); check free space and permissions"
    )
