"""Writeback requests during a write (the closing fsync is left with the tail only), and
--no-sync: one switch that skips every fsync and writeback request, same bytes written."""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run

import surgery
from surgery import durable, output_file
from surgery.durable import Writeback


def test_writeback_requests_each_32_mb_range_once_in_order(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "_sync_file_range", lambda fd, offset, length, flags: calls.append((offset, length, flags)) or 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"h" * 100)  # a header before the tensors: requests start after it
        writeback = Writeback(fd)
        step = writeback.progress(None)
        for _ in range(5):
            step(16 << 20)
    finally:
        os.close(fd)
    assert calls == [(100, 32 << 20, 2), (100 + (32 << 20), 32 << 20, 2)]  # the last 16 MB are left to fsync


def test_writeback_stops_asking_after_a_refusal_and_still_reports_progress(tmp_path, monkeypatch):
    calls, reported = [], []
    monkeypatch.setattr(durable, "_sync_file_range", lambda *args: calls.append(args) or -1)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        step = Writeback(fd).progress(reported.append)
        for _ in range(6):
            step(32 << 20)
    finally:
        os.close(fd)
    assert len(calls) == 1 and reported == [32 << 20] * 6


def test_sync_file_range_is_found_on_linux():
    assert durable._sync_file_range is not None or not os.uname().sysname == "Linux"


# -- --no-sync / save(sync=False): one switch for every writer ------------------------

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _keras_zip(folder: Path) -> Path:
    """A minimal Keras 3 `.keras` (one Dense layer), laid out as keras writes it; no keras needed."""
    import h5py

    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 3], "name": "input_layer"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}}
    weights = folder / "w.h5"
    with h5py.File(weights, "w") as f:
        f.create_group("vars").attrs["name"] = "s"
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "d"
        group["0"] = np.arange(6, dtype=np.float32).reshape(3, 2)
        group["1"] = np.ones(2, np.float32)
    path = folder / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(config))
        z.write(weights, "model.weights.h5")
    return path


def _onnx_model(folder: Path) -> Path:
    onnx_builders = pytest.importorskip("onnx_builders")  # skips without onnx
    from onnx import numpy_helper

    tensors = [numpy_helper.from_array(np.full((64, 64), k, np.float32), f"w{k}") for k in range(3)]
    return onnx_builders.save(onnx_builders.identity_model(tensors), folder / "m.onnx")


def _hf_folder(folder: Path) -> Path:
    model = folder / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    shutil.copy(FIXTURES / "tiny.safetensors", model / "model.safetensors")
    (model / "vocab.txt").write_text("[PAD]\n")
    return model


# case -> (source, output name, command, extra arguments)
WRITERS = {
    "safetensors": (lambda d: FIXTURES / "tiny.safetensors", "out.safetensors", "convert", ()),
    "safetensors sharded": (lambda d: FIXTURES / "tiny.safetensors", "shards", "convert", ("--shard-size", "1KB")),
    "npz": (lambda d: FIXTURES / "tiny.safetensors", "out.npz", "convert", ("--dtype", "float32")),
    "pt": (lambda d: FIXTURES / "tiny.safetensors", "out.pt", "convert", ()),
    "h5": (lambda d: FIXTURES / "ssd300_coco_tiny.h5", "out.h5", "subsample", ("--classes", "0,3,5")),
    "keras": (_keras_zip, "out.keras", "convert", ()),
    "onnx inline": (_onnx_model, "out.onnx", "convert", ()),
    "onnx external data": (_onnx_model, "out.onnx", "convert", ("--external-data", "--size-threshold", "1KB")),
    "hf folder": (_hf_folder, "bert-out", "rename", ("--map", "^features=body")),
}


class _Counted:
    """os.fsync and sync_file_range calls, and direct outputs opened, while it is installed (the real ones still run)."""

    def __init__(self, monkeypatch) -> None:
        self.fsync = self.ranges = self.direct = 0
        real = os.fsync
        real_direct = output_file._DirectOutput.open.__func__

        def direct(cls, path):
            opened = real_direct(cls, path)
            self.direct += opened is not None
            return opened

        monkeypatch.setattr(output_file._DirectOutput, "open", classmethod(direct))

        def fsync(fd: int) -> None:
            self.fsync += 1
            real(fd)

        def ranges(fd, offset, length, flags) -> int:
            self.ranges += 1
            return 0

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(durable, "_sync_file_range", ranges)
        monkeypatch.setattr(durable, "_KICK", 1)  # a request after every copied range, even of a tiny file


def _contents(path: Path) -> dict[str, bytes]:
    """What must be equal between two writes: every file's bytes, a zip's members (not their
    timestamps), and ONNX external data under its per-write random name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path, *path.parent.glob(f"{path.name}.*.data")]
    found = {}
    for p in files:
        if zipfile.is_zipfile(p) and p.suffix == ".keras":
            with zipfile.ZipFile(p) as z:
                found.update({f"{p.name}/{n}": z.read(n) for n in z.namelist()})
        else:
            found[re.sub(r"\.[0-9a-f]{12}\.data$", ".ID.data", p.name)] = re.sub(rb"\.[0-9a-f]{12}\.data", b".ID.data", p.read_bytes())
    return found


@pytest.mark.parametrize("case", WRITERS)
def test_no_sync_skips_every_fsync_and_writes_the_same_bytes(tmp_path, monkeypatch, case):
    make, name, command, extra = WRITERS[case]
    src = make(tmp_path)
    outputs = {}
    for flag in ((), ("--no-sync",)):
        counted = _Counted(monkeypatch)
        # The scratch leg also takes the page-cache path, so the bytes of the two paths are compared too.
        monkeypatch.setattr(output_file, "DIRECT", not flag)
        out = tmp_path / ("no-sync" if flag else "sync") / name
        out.parent.mkdir()
        result = run(command, src, "-o", out, "-q", *extra, *flag)
        assert result.exit_code == 0, result.stderr
        outputs[bool(flag)] = out
        if flag:
            assert (counted.fsync, counted.ranges) == (0, 0), case
        else:
            assert counted.fsync > 0, case
            if case in ("safetensors", "safetensors sharded", "pt", "hf folder", "onnx external data"):  # the streaming writers
                assert counted.ranges + counted.direct > 0, case  # direct writes, or writeback requests where O_DIRECT is refused
        assert durable.syncing(), "--no-sync outlived its command"
    sync, no_sync = _contents(outputs[False]), _contents(outputs[True])
    assert len(sync) >= {"safetensors sharded": 3, "onnx external data": 2, "hf folder": 3}.get(case, 1)  # every file compared
    assert sync == no_sync


def test_save_sync_false_skips_the_fsyncs_of_that_call_only(tmp_path, monkeypatch):
    tree = surgery.load(FIXTURES / "tiny.safetensors")
    counted = _Counted(monkeypatch)
    surgery.save(tree, tmp_path / "scratch.safetensors", sync=False)
    assert (counted.fsync, counted.ranges) == (0, 0) and durable.syncing()
    surgery.save(tree, tmp_path / "kept.safetensors")
    assert counted.fsync >= 2 and counted.ranges + counted.direct > 0  # the file, then its folder after the rename
    assert (tmp_path / "scratch.safetensors").read_bytes() == (tmp_path / "kept.safetensors").read_bytes()


def test_no_sync_block_turns_syncing_off_inside_only(tmp_path):
    assert durable.syncing()
    with durable.no_sync():
        assert not durable.syncing()
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
        try:
            assert not Writeback(fd).enabled
        finally:
            os.close(fd)
    assert durable.syncing()


def test_no_sync_help_says_what_a_crash_can_do():
    text = " ".join(run("convert", "--help").stdout.split())
    assert "--no-sync Skip the fsyncs: faster for scratch outputs, but a power loss or OS crash soon after can leave OUTPUT empty or partial (an interrupted surgery still never can)." in text


def test_every_command_that_writes_takes_no_sync():
    from surgery.cli import main

    commands = {name: main.get_command(None, name) for name in main.list_commands(None)}  # imported on demand
    writers = {name for name, command in commands.items() if any(p.name == "output" for p in command.params)}
    assert {"convert", "subsample", "rename", "export-onnx", "freeze"} <= writers
    assert [name for name in sorted(writers) if not any(p.name == "no_sync" for p in commands[name].params)] == []


@pytest.mark.parametrize("case", ["safetensors", "safetensors sharded", "pt", "onnx external data"])
def test_each_streaming_writer_tells_create_its_output_size(tmp_path, monkeypatch, case):
    # The size decides whether a --no-sync output may stay in the page cache: it must be the real one.
    make, name, command, extra = WRITERS[case]
    told: list[tuple[int | None, object]] = []
    real = output_file.create

    def create(path, expected_bytes=None):
        out = real(path, expected_bytes)
        told.append((expected_bytes, out))
        return out

    monkeypatch.setattr(output_file, "create", create)
    result = run(command, make(tmp_path), "-o", tmp_path / name, "-q", *extra)
    assert result.exit_code == 0, result.stderr
    assert told, case
    # `offset` is what a file holds once written; each file is told its own size and the later files' (shards).
    written = [out.offset for _, out in told]
    slack = 0 if case.startswith("safetensors") else 4096  # zip records and ONNX alignment are left out
    for k, (expected, _) in enumerate(told):
        rest = sum(written[k:])
        assert expected is not None and rest - slack * (len(told) - k) <= expected <= rest, (case, k, expected, written)
