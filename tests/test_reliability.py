"""Issue 13: replacing an output never loses it, leftovers are cleaned, inputs are never
overwritten, every corrupt file is one clean line, and no HDF5 read can hang us."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import digest, error_line, run

import surgery
from surgery import atomic
from surgery.errors import CorruptFileError
from surgery.tree import Entry, Tree

FIXTURES = __import__("conftest").FIXTURES
TINY = FIXTURES / "tiny.safetensors"
REPO = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(params=["exchange", "rename"])
def swap(request, monkeypatch):
    """Run a test with renameat2(RENAME_EXCHANGE) and with the rename fallback."""
    if request.param == "rename":
        monkeypatch.setenv(atomic.NO_EXCHANGE, "1")
    elif atomic._EXCHANGE is None:
        pytest.skip("renameat2 is not available here")
    return request.param


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- 1. replacing an output never loses it --------------------------------------------


def test_folder_replaces_folder(tmp_path, swap):
    out = tmp_path / "s"
    assert run("convert", TINY, "-o", out, "--shard-size", "600", "-q").exit_code == 0
    assert run("convert", TINY, "-o", out, "--shard-size", "100KB", "--force", "-q").exit_code == 0
    assert names(out) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert names(tmp_path) == ["s"]


def test_file_replaces_folder_and_folder_replaces_file(tmp_path, swap):
    out = tmp_path / "out"
    assert run("convert", TINY, "-o", out, "--shard-size", "600", "-q").exit_code == 0
    assert run("convert", TINY, "-o", out, "--to", "safetensors", "--force", "-q").exit_code == 0
    assert out.is_file() and out.read_bytes() == TINY.read_bytes()
    assert run("convert", TINY, "-o", out, "--shard-size", "600", "--force", "-q").exit_code == 0
    assert out.is_dir() and len(names(out)) == 3
    assert names(tmp_path) == ["out"]


def test_an_interrupted_fallback_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    monkeypatch.setenv(atomic.NO_EXCHANGE, "1")
    out = tmp_path / "s"
    surgery.save(surgery.load(TINY), out, shard_size=600)
    before = digest(out)
    real_rename = os.rename

    def rename(a, b):
        if Path(a).name.startswith(".s.tmp-"):  # the step that would move the new folder in
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        surgery.save(surgery.load(TINY), out, shard_size=100_000, force=True)
    assert digest(out) == before
    assert names(tmp_path) == ["s"]


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler: a framework imported by an earlier test may have replaced it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_swap_waits_for_it_to_finish(tmp_path, swap, monkeypatch, python_ctrl_c):
    out = tmp_path / "s"
    surgery.save(surgery.load(TINY), out, shard_size=600)
    real = atomic._replace

    def replace_with_a_ctrl_c(tmp, dst):
        os.kill(os.getpid(), signal.SIGINT)  # held until the swap is done
        real(tmp, dst)

    monkeypatch.setattr(atomic, "_replace", replace_with_a_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        surgery.save(surgery.load(TINY), out, shard_size=100_000, force=True)
    assert names(out) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert surgery.load(out).total_bytes == surgery.load(TINY).total_bytes
    assert names(tmp_path) == ["s"]


# -- 2. leftovers are cleaned -----------------------------------------------------------


def leftover_folder(tmp_path: Path) -> tuple[Path, int]:
    pid = dead_pid()
    d = tmp_path / "models"
    d.mkdir()
    (d / f".a.safetensors.tmp-{pid}-0123456789ab").write_bytes(b"partial")
    (d / f".s.tmp-{pid}-0123456789ab").mkdir()
    (d / f".s.tmp-{pid}-0123456789ab" / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    (d / f".b.npz.tmp-{os.getppid()}-0123456789ab").write_bytes(b"a live writer's")
    (d / f".gone.npz.old-{pid}-0123456789ab").write_bytes(b"the old output")
    (d / "kept.npz").write_bytes(b"new")
    (d / f".kept.npz.old-{pid}-0123456789ab").write_bytes(b"old")
    (d / ".c.tmp-0123456789ab").write_bytes(b"an old-style name: not ours to judge")
    (d / "notes.txt").write_text("mine")
    return d, pid


def test_clean_removes_only_dead_writers_leftovers_and_restores_hidden_outputs(tmp_path):
    d, pid = leftover_folder(tmp_path)
    result = run("clean", d)
    assert result.exit_code == 0, result.stderr
    live = os.getppid()
    assert result.stdout.splitlines() == [
        f"removed {d}/.a.safetensors.tmp-{pid}-0123456789ab (an unfinished output of pid {pid}, which no longer runs)",
        f"would keep {d}/.b.npz.tmp-{live}-0123456789ab (its writer, pid {live}, is still running)".replace("would keep", "kept"),
        f"restored {d}/gone.npz (put back from .gone.npz.old-{pid}-0123456789ab: pid {pid} was stopped while replacing it)",
        f"removed {d}/.kept.npz.old-{pid}-0123456789ab (the previous kept.npz, already replaced by pid {pid})",
        f"removed {d}/.s.tmp-{pid}-0123456789ab (an unfinished output of pid {pid}, which no longer runs)",
    ]
    assert names(d) == [f".b.npz.tmp-{live}-0123456789ab", ".c.tmp-0123456789ab", "gone.npz", "kept.npz", "notes.txt"]
    assert (d / "gone.npz").read_bytes() == b"the old output" and (d / "kept.npz").read_bytes() == b"new"
    assert run("clean", d).stdout.splitlines() == [
        f"kept {d}/.b.npz.tmp-{live}-0123456789ab (its writer, pid {live}, is still running)"
    ]


def test_clean_dry_run_and_json(tmp_path):
    d, pid = leftover_folder(tmp_path)
    before = names(d)
    dry = run("clean", d, "--dry-run")
    assert dry.stdout.splitlines()[0] == f"would remove {d}/.a.safetensors.tmp-{pid}-0123456789ab (an unfinished output of pid {pid}, which no longer runs)"
    assert names(d) == before
    document = json.loads(run("clean", d, "--json").stdout)
    assert document["dry_run"] is False
    assert [(Path(x["path"]).name, x["action"]) for x in document["leftovers"]] == [
        (f".a.safetensors.tmp-{pid}-0123456789ab", "removed"),
        (f".b.npz.tmp-{os.getppid()}-0123456789ab", "kept"),
        ("gone.npz", "restored"),
        (f".kept.npz.old-{pid}-0123456789ab", "removed"),
        (f".s.tmp-{pid}-0123456789ab", "removed"),
    ]
    assert error_line(run("clean", tmp_path / "nope")) == f"error: no such folder ({tmp_path / 'nope'}); pass the folder that holds the outputs"


def test_the_next_write_into_a_folder_cleans_and_says_so(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".x.safetensors.tmp-{pid}-0123456789ab"
    stale.write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("mine")
    result = run("convert", TINY, "-o", tmp_path / "y.pt", "-q")
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [f"note: removed {stale} (an unfinished output of pid {pid}, which no longer runs)"]
    assert names(tmp_path) == ["notes.txt", "y.pt"]


def test_temporary_names_carry_the_writers_pid(tmp_path, monkeypatch):
    seen = []
    real = atomic._replace
    monkeypatch.setattr(atomic, "_replace", lambda tmp, dst: (seen.append(tmp.name), real(tmp, dst)))
    surgery.save(surgery.load(TINY), tmp_path / "a.pt")
    assert atomic._LEFTOVER.match(seen[0])["pid"] == str(os.getpid())
    assert seen[0].startswith(".a.pt.tmp-")


# -- 3. an input can never be overwritten -------------------------------------------------


def empty_inputs(tmp_path: Path) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    found = {}
    surgery.save(Tree(), tmp_path / "empty.safetensors")
    found["safetensors"] = tmp_path / "empty.safetensors"
    surgery.save(Tree(), tmp_path / "empty-sharded", shard_size=1000)
    found["sharded"] = tmp_path / "empty-sharded"
    found["sharded index"] = tmp_path / "empty-sharded" / "model.safetensors.index.json"
    np.savez(tmp_path / "empty.npz")
    found["npz"] = tmp_path / "empty.npz"
    torch.save({}, tmp_path / "empty.pt")
    found["torch zip"] = tmp_path / "empty.pt"
    torch.save({}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    found["torch legacy"] = tmp_path / "legacy.pth"
    with h5py.File(tmp_path / "weightless.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"input_1", b"flatten"])
        for layer in ("input_1", "flatten"):
            f.create_group(layer).attrs["weight_names"] = np.zeros(0, "S1")
    found["keras h5"] = tmp_path / "weightless.h5"
    with h5py.File(tmp_path / "empty.weights.h5", "w") as f:
        f.create_group("layers").create_group("flatten").create_group("vars").attrs["name"] = "flatten"
        f.create_group("vars")
    found["keras .weights.h5"] = tmp_path / "empty.weights.h5"
    return found


OVERWRITE = "error: the output would overwrite an input ({}); choose a different output path; inputs are never modified"
# torch's reader refuses a checkpoint without tensors before anything is written.
NO_STATE_DICT = "error: no state dict of tensors found in the checkpoint ({}); pass --key NAME for the entry that holds it"


def test_converting_an_empty_input_onto_itself_is_refused(tmp_path):
    for kind, src in empty_inputs(tmp_path).items():
        before = digest(src)
        target = src if kind != "sharded index" else src.parent
        args = ["--shard-size", "1KB"] if kind.startswith("sharded") else ["--to", "torch" if "torch" in kind else surgery.formats.detect(src)]
        result = run("convert", src, "-o", target, "--force", *args)
        expected = NO_STATE_DICT.format(src) if "torch" in kind else OVERWRITE.format(target)
        assert error_line(result) == expected, kind
        assert digest(src) == before, kind


def test_an_empty_tree_remembers_its_input_through_operations(tmp_path):
    np.savez(tmp_path / "empty.npz")
    tree = surgery.load(tmp_path / "empty.npz")
    assert tree.inputs == (tmp_path / "empty.npz",)
    derived = tree.derive(metadata={"a": "b"})
    assert derived.source_paths() == {tmp_path / "empty.npz"}
    with pytest.raises(surgery.errors.OutputError):
        surgery.save(derived, tmp_path / "empty.npz", force=True)


def test_a_hard_link_or_symlink_to_the_input_is_refused(tmp_path):
    src = tmp_path / "a.safetensors"
    src.write_bytes(TINY.read_bytes())
    os.link(src, tmp_path / "hard.safetensors")
    (tmp_path / "soft.safetensors").symlink_to(src)
    for other in ("hard.safetensors", "soft.safetensors"):
        result = run("convert", src, "-o", tmp_path / other, "--force")
        assert "the output would overwrite an input" in error_line(result)
    assert src.read_bytes() == TINY.read_bytes()


# -- 4. every exception from a third-party reader is ours ---------------------------------


def zip_with(tmp_path: Path, name: str, members: dict[str, bytes], edit) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)
    raw = bytearray(path.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    return path


def central(raw: bytearray) -> int:
    return raw.index(b"PK\x01\x02")


def npy(array) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


NPZ_MEMBERS = {"w.npy": npy(np.arange(64, dtype=np.float32))}


def _set(raw: bytearray, at: int, value: int, width: int = 2) -> None:
    raw[at : at + width] = value.to_bytes(width, "little")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: _set(r, central(r) + 10, 99) or _set(r, 8, 99),
         "cannot read the member (unsupported zip feature: That compression method is not supported)"),
        (lambda r: _set(r, central(r) + 6, 255),
         "cannot read the zip archive (unsupported zip feature: zip file version 25.5)"),
        (lambda r: _set(r, central(r) + 8, 1) or _set(r, 6, 1), "cannot read the member (an encrypted member)"),
        (lambda r: _set(r, central(r) + 8, 0x20), "cannot read the member (unsupported zip feature: compressed patched data (flag bit 5))"),
        (lambda r: _set(r, central(r) + 8, 0x800) or r.__setitem__(slice(central(r) + 46, central(r) + 47), b"\xff"),
         "cannot read the zip archive (a name is not valid UTF-8: byte b'\\xff' at 0)"),
        (lambda r: r.__setitem__(slice(30 + 5 + 8, 30 + 5 + 12), b"\xff\xff\xff\xff"),
         "cannot read the member (bad compressed data: Error -3 while decompressing data: invalid code lengths set)"),
    ],
    ids=["method", "version", "encrypted", "flag-bit-5", "utf8-name", "zlib"],
)
def test_broken_zip_members_are_one_line_in_npz(tmp_path, edit, message):
    path = zip_with(tmp_path, "a.npz", NPZ_MEMBERS, edit)
    result = run("convert", path, "-o", tmp_path / "out.safetensors")
    line = error_line(result)
    assert line.startswith(f"error: {message} ("), line
    assert result.exit_code == 1


def test_anything_starting_with_pk_is_detected_or_refused_cleanly(tmp_path):
    for k, blob in enumerate([b"PK", b"PK\x03\x04", b"PK\x05\x06" + b"\xff" * 18, b"PK\x03\x04" + bytes(range(256)) * 4]):
        path = tmp_path / f"{k}.bin"
        path.write_bytes(blob)
        assert error_line(run("inspect", path)) == (
            f"error: cannot tell the file's format from its content or name ({path}); surgery reads: safetensors, npz, keras_h5, keras, torch, onnx"
        )
    flagged = zip_with(tmp_path, "flags.bin", NPZ_MEMBERS, lambda r: _set(r, central(r) + 8, 0x800) or r.__setitem__(slice(central(r) + 46, central(r) + 47), b"\xff"))
    assert "cannot tell the file's format" in error_line(run("inspect", flagged))


def keras2(path: Path, weight_names) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = weight_names
        g.create_dataset("kernel:0", data=np.ones((2, 2), np.float32))
    return path


def test_a_weight_name_that_is_not_utf8_is_refused_escaped(tmp_path):
    path = keras2(tmp_path / "a.h5", np.array([b"kernel\xff:0"]))
    assert error_line(run("inspect", path)) == (
        f"error: a name in attribute 'weight_names' of '/dense' is b'kernel\\xff:0', which is not valid UTF-8 ({path}); "
        "the file is corrupt or not a Keras weights file; re-save it with model.save_weights"
    )


KERAS_FIX = "the file is corrupt or not a Keras weights file; re-save it with model.save_weights"


def _bad_link_name(layers):
    layers.create_group(b"dense\xff").create_group("vars").create_dataset("0", data=np.ones(2, np.float32))


def _stored_datatype(layers):
    layers["dense"] = np.dtype("float32")


def _soft_and_external_links(layers):
    layers["loop"] = h5py.SoftLink("/layers")
    layers["outside"] = h5py.ExternalLink("/etc/passwd", "/")


@pytest.mark.parametrize(
    "build, message",
    [
        (_bad_link_name, "a link in '/layers' is named b'dense\\xff', which is not valid UTF-8"),
        (_stored_datatype, "'/layers/dense' is a stored datatype, not a group or dataset"),
        (_soft_and_external_links, "'/layers/loop' is a SoftLink; Keras files hold only plain groups and datasets"),
    ],
    ids=["bytes-link-name", "stored-datatype", "soft-link"],
)
def test_keras3_groups_that_are_not_plain_are_refused(tmp_path, build, message):
    path = tmp_path / "a.weights.h5"
    with h5py.File(path, "w") as f:
        build(f.create_group("layers"))
    assert error_line(run("inspect", path)) == f"error: {message} ({path}); {KERAS_FIX}"


def _time_dataset(group, name):
    """A dataset of HDF5's time datatype, which h5py has no numpy dtype for (its .dtype raises)."""
    space = h5py.h5s.create_simple((2,))
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.UNIX_D32LE, space)


def _deflate_without_a_level(group, name):
    """A deflate filter with no client data: reading its settings (compression_opts) raises in h5py."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((2,))
    dcpl.set_filter(h5py.h5z.FILTER_DEFLATE, h5py.h5z.FLAG_OPTIONAL, ())
    h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((2,)), dcpl=dcpl)


def _compound_dataset(group, name):
    group.create_dataset(name, data=np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))


@pytest.mark.parametrize(
    "build, message",
    [
        # The error handler once read .dtype again to say what it was, and so raised h5py's TypeError.
        (_time_dataset, "cannot read the datatype of dataset '/dense/kernel:0' (TypeError: No NumPy equivalent for TypeTimeID exists)"),
        (_deflate_without_a_level, "cannot read the compression settings of dataset '/dense/kernel:0' (IndexError: tuple index out of range)"),
        (_compound_dataset, "dataset '/dense/kernel:0' has dtype [('a', '<f4'), ('b', '<i4')], which is not a tensor type"),
    ],
    ids=["datatype-h5py-cannot-map", "compression-settings", "not-a-tensor-dtype"],
)
def test_a_weight_whose_datatype_or_filters_cannot_be_read_is_one_line(tmp_path, build, message):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        g = f.create_group("dense")
        g.attrs["weight_names"] = np.array([b"kernel:0"])
        build(g, "kernel:0")
    assert error_line(run("convert", path, "-o", tmp_path / "out.safetensors")) == f"error: {message} ({path}); {KERAS_FIX}"


def test_an_attribute_that_claims_more_than_the_limit_is_not_read(tmp_path, monkeypatch):
    from surgery.formats import keras_h5

    path = keras2(tmp_path / "a.h5", np.array([b"kernel:0"] * 4))
    monkeypatch.setattr(keras_h5, "_ATTR_MAX_BYTES", 16)  # 4 names of 8 bytes claim 32
    monkeypatch.setenv("SURGERY_NO_READ_GUARD", "1")  # the patched limit lives in this process
    with pytest.raises(CorruptFileError) as e:
        surgery.load(path)
    assert str(e.value) == (
        f"attribute 'weight_names' claims 4 strings (32 bytes), more than the file's {path.stat().st_size} bytes can hold ({path}); "
        "the file is corrupt or not a Keras weights file; re-save it with model.save_weights"
    )


# The guard forks only in a process with one thread (as the CLI is); earlier tests may leave
# threads behind (tqdm's monitor, BLAS), so these run in a fresh interpreter of their own.
_GUARDED = (
    "import ctypes, sys, time\n"
    "from surgery.errors import CorruptFileError\n"
    "from surgery.guard import run_guarded\n"
    "started = time.monotonic()\n"
    "try:\n"
    "    run_guarded({call}, where='x.h5', what='reading the HDF5 metadata', fix='re-save it')\n"
    "except CorruptFileError as e:\n"
    "    print(e)\n"
    "print(round(time.monotonic() - started))\n"
)


def _guarded(call: str, **env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _GUARDED.format(call=call)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_guarded_read_that_spins_with_the_gil_held_is_stopped():
    # ctypes.PyDLL's sleep keeps the GIL, as HDF5 inside h5py does
    message, seconds = _guarded("ctypes.PyDLL(None).sleep, 30", SURGERY_READ_TIMEOUT="1")
    assert message == "reading the HDF5 metadata did not finish in 1 s (x.h5); re-save it"
    assert int(seconds) < 3


def test_a_crash_inside_a_guarded_read_is_one_line():
    message, _ = _guarded("ctypes.string_at, 0")
    assert message == "reading the HDF5 metadata crashed the HDF5 library (signal 11) (x.h5); re-save it"


def test_ctrl_c_stops_a_spinning_read_within_a_second(tmp_path):
    script = (
        "import ctypes, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever this test run inherited\n"
        "from surgery.guard import run_guarded\n"
        "print('ready', flush=True)\n"
        "run_guarded(ctypes.PyDLL(None).sleep, 60, where='x', what='w', fix='f')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    started = time.monotonic()
    child.wait(10)
    assert time.monotonic() - started < 1.0
    assert b"KeyboardInterrupt" in child.stderr.read()


# -- a full disk, from every writer ----------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_for_every_writer(tmp_path, full_disk):
    big = Tree([Entry.from_array("dense/kernel", np.ones((256, 256), np.float32))])
    sources = {"safetensors": tmp_path / "big.safetensors", "keras_h5": tmp_path / "big.h5"}
    surgery.save(big, sources["safetensors"])
    surgery.save(big, sources["keras_h5"])  # h5 -> h5 takes HDF5's object copy path
    outputs = [
        (sources["safetensors"], full_disk / "a.safetensors", []),
        (sources["safetensors"], full_disk / "sharded", ["--shard-size", "100KB"]),
        (sources["safetensors"], full_disk / "a.npz", []),
        (sources["safetensors"], full_disk / "a.pt", []),
        (sources["safetensors"], full_disk / "a.h5", []),
        (sources["keras_h5"], full_disk / "b.h5", []),
    ]
    for src, dst, options in outputs:
        result = run("convert", src, "-o", dst, *options)
        assert error_line(result) == (
            f"error: cannot write the output (No space left on device) ({dst}); check free space and permissions"
        ), dst
        assert os.listdir(full_disk) == [], dst
