"""Writing torch.save checkpoints without torch: real torch.load(weights_only=True) and load_state_dict prove them."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest

import surgery
import surgery.io
import surgery.provenance
import surgery.torch
from helpers import error_line, leftovers, run
from surgery.errors import CorruptFileError, OutputError
from surgery.formats import torch_writer
from surgery.tree import KERAS, TORCH, Entry, FileRange, Source, Tree

torch = pytest.importorskip("torch")

# Every dtype surgery holds that torch has: typed storages (v2) and untyped ones (v3).
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool, torch.complex64, torch.uint16, torch.uint32, torch.uint64,
          torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu]


def raw(t) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def every_dtype() -> dict:
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for dt in DTYPES:
        bits = torch.randint(0, 256, (3, 5, 2 * dt.itemsize), dtype=torch.uint8, generator=gen)
        name = str(dt).removeprefix("torch.")
        sd[name] = (bits[..., 0] & 1).bool() if dt == torch.bool else bits.view(dt).reshape(3, 5, 2)
    sd["scalar"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    sd["empty_mid"] = torch.zeros(2, 0, 4, dtype=torch.bfloat16)
    return sd


def assert_same(loaded: dict, expected: dict, order: list[str] | None = None) -> None:
    assert list(loaded) == (order or list(expected))
    for name, t in expected.items():
        got = loaded[name]
        assert (got.dtype, tuple(got.shape), got.stride()) == (t.dtype, tuple(t.shape), t.contiguous().stride()), name
        assert raw(got) == raw(t), name


def new_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)
    )


def trained_model():
    torch.manual_seed(0)
    model = new_model()
    model.train()
    model(torch.randn(8, 3, 8, 8))  # moves the BN running statistics and num_batches_tracked
    return model.eval()


# -- round trips through real torch -------------------------------------------------


def test_every_dtype_round_trips_pt_to_pt_byte_equal(tmp_path):
    sd = every_dtype()
    torch.save(sd, tmp_path / "src.pt")
    result = run("convert", tmp_path / "src.pt", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stderr
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), sd)
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True, mmap=True), sd)


def test_every_dtype_round_trips_safetensors_to_pt(tmp_path):
    from safetensors.torch import save_file

    sd = every_dtype()
    save_file(sd, tmp_path / "src.safetensors")
    tree = surgery.load(tmp_path / "src.safetensors")
    surgery.save(tree, tmp_path / "out.pth")
    assert_same(torch.load(tmp_path / "out.pth", weights_only=True), sd, order=list(tree))  # safetensors sorts names


@pytest.mark.parametrize("source", ["pt", "safetensors"])
def test_real_module_loads_strictly_and_gives_equal_outputs(tmp_path, source):
    from safetensors.torch import save_file

    model = trained_model()
    src = tmp_path / f"m.{source}"
    if source == "pt":
        torch.save(model.state_dict(), src)
    else:
        save_file(model.state_dict(), src)
    out = tmp_path / "out.pt"
    result = run("convert", src, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    fresh = new_model()
    assert str(fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)) == "<All keys matched successfully>"
    fresh.eval()
    assert int(fresh[1].num_batches_tracked) == 1
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), fresh(x))


def test_zero_size_tensor_and_scalar(tmp_path):
    tree = Tree(
        [Entry.from_array("empty", np.zeros((0, 3), np.float32)), Entry.from_array("scalar", np.array(2.5, np.float64))],
        convention=TORCH,
    )
    surgery.save(tree, tmp_path / "out.pt")
    sd = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sd["empty"].shape == (0, 3) and sd["empty"].dtype == torch.float32
    assert sd["scalar"].shape == () and sd["scalar"].item() == 2.5


def test_bin_outputs_are_torch_but_bin_inputs_are_found_by_content(tmp_path):
    tree = Tree([Entry.from_array("w", np.arange(4, dtype=np.float32))], convention=TORCH)
    assert surgery.save(tree, tmp_path / "pytorch_model.bin") == "torch"
    assert torch.equal(torch.load(tmp_path / "pytorch_model.bin", weights_only=True)["w"], torch.arange(4.0))
    assert surgery.load(tmp_path / "pytorch_model.bin").format == "torch"
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(surgery.SurgeryError, match="cannot tell the file's format"):
        surgery.load(tmp_path / "junk.bin")


# -- tied weights -------------------------------------------------------------------


def test_tied_weights_stay_tied(tmp_path):
    big = torch.randn(6, 4)
    sd = {"embed.weight": big, "head.weight": big, "rows": big[2:4], "other": torch.ones(3)}
    torch.save(sd, tmp_path / "src.pt")
    surgery.save(surgery.load(tmp_path / "src.pt"), tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert_same(out, sd)
    ptr = out["embed.weight"].untyped_storage().data_ptr()
    assert out["head.weight"].untyped_storage().data_ptr() == ptr
    assert out["rows"].untyped_storage().data_ptr() == ptr and out["rows"].storage_offset() == 8
    assert out["other"].untyped_storage().data_ptr() != ptr
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert sorted(n for n in z.namelist() if "/data/" in n) == ["archive/data/0", "archive/data/1"]


def test_changed_tensors_are_not_tied_to_their_old_storage(tmp_path):
    shared = torch.randn(3, 2)
    torch.save({"a": shared, "b": shared}, tmp_path / "src.pt")
    tree = surgery.load(tmp_path / "src.pt")
    doubled = Entry.computed("b", (3, 2), "float32", lambda: tree["b"].read() * 2, like=tree["b"])
    assert doubled.attrs["torch.storage"] == tree["a"].attrs["torch.storage"]  # same attrs, new bytes
    surgery.save(tree.derive(replace={"b": doubled}), tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(out["a"], shared) and torch.equal(out["b"], shared * 2)
    assert out["a"].untyped_storage().data_ptr() != out["b"].untyped_storage().data_ptr()


# -- metadata -----------------------------------------------------------------------


def test_metadata_is_in_state_dict_metadata_and_load_state_dict_ignores_it(tmp_path):
    model = trained_model()
    tree = surgery.torch.from_state_dict(model.state_dict(), metadata={"author": "ü", "surgery.num_classes": "9"})
    surgery.save(tree, tmp_path / "out.pt")
    sd = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sd._metadata == {"__surgery__": {"author": "ü", "surgery.num_classes": "9"}}
    fresh = new_model()
    fresh.load_state_dict(sd, strict=True)
    assert surgery.torch.from_state_dict(sd).metadata == {"author": "ü", "surgery.num_classes": "9"}


def test_metadata_and_provenance_survive_pt_to_pt(tmp_path):
    torch.save({"w": torch.ones(2, 3), "n": torch.tensor(1)}, tmp_path / "src.pt")
    tree = surgery.load(tmp_path / "src.pt")
    tree = tree.derive(metadata={"note": "kept"})
    half, _ = surgery.ops.cast_floating(tree, "float16")
    surgery.save(half, tmp_path / "a.pt")
    again = surgery.load(tmp_path / "a.pt")
    assert again.metadata["note"] == "kept"
    assert [step["op"] for step in surgery.provenance.history(again)] == [
        step["op"] for step in surgery.provenance.history(half)
    ] != []
    surgery.save(again, tmp_path / "b.pt")
    assert surgery.load(tmp_path / "b.pt").metadata == half.metadata


# -- the archive itself -------------------------------------------------------------


def test_archive_matches_torch_layout_and_is_deterministic(tmp_path):
    sd = {**trained_model().state_dict(), "f8": torch.ones(3, dtype=torch.float8_e5m2), "u16": torch.arange(5).to(torch.uint16)}
    torch.save(sd, tmp_path / "src.pt")
    tree = surgery.load(tmp_path / "src.pt")
    surgery.save(tree, tmp_path / "a.pt")
    surgery.save(tree, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    with zipfile.ZipFile(tmp_path / "src.pt") as theirs, zipfile.ZipFile(tmp_path / "a.pt") as ours:
        assert [n.split("/", 1)[1] for n in ours.namelist()] == [n.split("/", 1)[1] for n in theirs.namelist()]
        assert ours.testzip() is None  # every CRC checks
        data = (tmp_path / "a.pt").read_bytes()
        for info in ours.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert ours.read("archive/byteorder") == b"little" and ours.read("archive/version") == b"3\n"
        assert len(ours.read("archive/.data/serialization_id")) == 40


def test_zip64_members_and_archive_load_in_torch(tmp_path, monkeypatch):
    # Lowering zipfile's limit makes every member and offset past 1000 bytes take the Zip64 path.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    sd = {"big": torch.randn(64, 32), "small": torch.arange(3), "after": torch.randn(40)}
    torch.save(sd, tmp_path / "src.pt")
    surgery.save(surgery.load(tmp_path / "src.pt"), tmp_path / "out.pt")
    data = (tmp_path / "out.pt").read_bytes()
    assert b"PK\x06\x06" in data[-200:]  # Zip64 end of central directory
    monkeypatch.undo()
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), sd)
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert z.testzip() is None


def rebuilt_with_zipfile(path, out) -> bytes:
    """The archive's members (names, torch's padding fields, data) written again by zipfile: the reference bytes."""
    data = path.read_bytes()
    with open(out, "wb") as f, zipfile.ZipFile(path) as ours, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for info in ours.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
            local_extra = data[info.header_offset + 30 + name_len :][:extra_len]
            assert local_extra[:2] == b"FB"
            again = zipfile.ZipInfo(info.filename)
            again.file_size = info.file_size
            again.extra = local_extra[: 4 + struct.unpack("<H", local_extra[2:4])[0]]  # the padding field, not Zip64's
            with z.open(again, "w") as member:
                member.write(ours.read(info))
    return out.read_bytes()


@pytest.mark.parametrize("limit", [None, 1000])
@pytest.mark.parametrize("source", ["pt", "safetensors", "arrays"])
def test_whole_archive_is_what_zipfile_writes(tmp_path, monkeypatch, source, limit):
    # Kernel-copied members (from .pt and .safetensors), streamed ones (arrays), and with a
    # lowered Zip64 limit every member and offset past 1000 bytes on zipfile's Zip64 paths.
    from safetensors.torch import save_file

    sd = {**every_dtype(), "big": torch.randn(64, 32)}
    if source == "arrays":
        tree = Tree([Entry.from_array(k, surgery.torch.from_state_dict({k: v})[k].read()) for k, v in sd.items()], convention=TORCH)
    else:
        (torch.save if source == "pt" else save_file)(sd, tmp_path / f"src.{source}")
        tree = surgery.load(tmp_path / f"src.{source}")
    if limit:
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", limit)
    surgery.save(tree, tmp_path / "out.pt")
    assert (tmp_path / "out.pt").read_bytes() == rebuilt_with_zipfile(tmp_path / "out.pt", tmp_path / "again.pt")
    monkeypatch.undo()
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), sd, order=list(tree))


def test_pt_to_pt_reuses_the_source_crcs(tmp_path, monkeypatch):
    from surgery.formats import zip_stored

    def computed(*args):
        raise AssertionError("a CRC was computed although the source zip records it")

    sd = {**trained_model().state_dict(), "empty": torch.zeros(0, 3), "tied": torch.ones(4)}
    sd["tied_too"] = sd["tied"]
    torch.save(sd, tmp_path / "src.pt")
    monkeypatch.setattr(zip_stored, "_file_crc", computed)
    surgery.save(surgery.load(tmp_path / "src.pt"), tmp_path / "out.pt")
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert z.testzip() is None
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), sd)


def test_safetensors_tensors_are_copied_by_the_kernel_with_crcs_beside_the_copy(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from surgery.formats import zip_stored

    sd = {"a": torch.randn(300, 7), "b": torch.arange(10), "empty": torch.zeros(0)}
    save_file(sd, tmp_path / "src.safetensors")
    copied, crcs = [], []
    real_copy, real_crc = FileRange.copy_into, zip_stored._file_crc
    monkeypatch.setattr(FileRange, "copy_into", lambda self, *a: copied.append(self.length) or real_copy(self, *a))
    monkeypatch.setattr(zip_stored, "_file_crc", lambda *a: crcs.append(a[2]) or real_crc(*a))
    tree = surgery.load(tmp_path / "src.safetensors")
    surgery.save(tree, tmp_path / "out.pt")
    assert sorted(copied) == sorted(crcs) == [0, 80, 8400]
    with zipfile.ZipFile(tmp_path / "out.pt") as z:
        assert z.testzip() is None
    assert_same(torch.load(tmp_path / "out.pt", weights_only=True), sd, order=list(tree))


# -- refusals -----------------------------------------------------------------------


def test_keras_layout_is_refused_before_anything_is_written(tmp_path):
    tree = Tree([Entry.from_array("dense/kernel", np.ones((3, 2), np.float32))], convention=KERAS)
    with pytest.raises(OutputError) as e:
        surgery.save(tree, tmp_path / "out.pt")
    assert str(e.value) == (
        "the weights are in Keras layout (output axis last); PyTorch modules expect the output axis first (torch); "
        "add --layout torch"
    )
    assert list(tmp_path.iterdir()) == []


def test_keras_file_to_pt_is_one_line_on_the_command_line(tmp_path):
    src = tmp_path / "k.safetensors"  # records the Keras convention (npz keeps none)
    tree = Tree([Entry.from_array("dense/kernel", np.ones((3, 2), np.float32))], convention=KERAS)
    surgery.save(tree, src)
    result = run("convert", src, "-o", tmp_path / "out.pt")
    assert result.exit_code == 1
    assert error_line(result) == (
        "error: the weights are in Keras layout (output axis last); PyTorch modules expect the output axis first "
        "(torch); add --layout torch"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]


def test_packed_dtypes_are_refused_before_anything_is_written(tmp_path):
    from surgery.formats import safetensors_io

    packed = Entry("w", (2, 2), "float4_e2m1fn", safetensors_io.FileRange(tmp_path / "none", 0, 2))
    tree = Tree([Entry.from_array("ok", np.ones(2, np.float32)), packed], convention=TORCH)
    with pytest.raises(OutputError) as e:
        surgery.io.check_output(tree, tmp_path / "out.pt")
    assert str(e.value) == (
        "tensor 'w' is float4_e2m1fn (packed at 4 bits per element), which torch.save files cannot hold (w); "
        "write .safetensors instead, which keeps it, or cast it with --dtype float16"
    )
    with pytest.raises(OutputError):
        surgery.save(tree, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


class _Short(Source):
    """A source that gives fewer bytes than its entry declares (a file that changed underneath us)."""

    def iter_bytes(self, entry):
        yield memoryview(b"\0" * 4)


def test_a_failed_write_leaves_no_output_and_no_temporary_file(tmp_path):
    tree = Tree(
        [Entry.from_array("ok", np.ones(1000, np.float32)), Entry("short", (4,), "float32", _Short())], convention=TORCH
    )
    with pytest.raises(CorruptFileError) as e:
        surgery.save(tree, tmp_path / "out.pt")
    assert str(e.value).startswith("tensor 'short' gave 4 bytes but 16 were expected (short)")
    assert list(tmp_path.iterdir()) == [] and leftovers(tmp_path) == []


def test_dry_run_writes_nothing(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "src.pt")
    result = run("convert", tmp_path / "src.pt", "-o", tmp_path / "out.pt", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]


# -- surgery.torch state-dict helpers -----------------------------------------------


def test_to_and_from_state_dict_round_trip_every_dtype():
    sd = every_dtype()
    sd["tied"] = sd["float32"]
    tree = surgery.torch.from_state_dict(sd)
    assert tree.convention == TORCH and list(tree) == list(sd)
    assert tree["tied"].attrs["torch.storage"] == tree["float32"].attrs["torch.storage"]
    back = surgery.torch.to_state_dict(tree)
    assert_same(back, sd)
    assert back["tied"].untyped_storage().data_ptr() == back["float32"].untyped_storage().data_ptr()


def test_to_state_dict_keeps_ties_read_from_a_file(tmp_path):
    shared = torch.randn(4, 4)
    torch.save({"a": shared, "b": shared, "c": torch.ones(2)}, tmp_path / "src.pt")
    sd = surgery.torch.to_state_dict(surgery.load(tmp_path / "src.pt"))
    assert torch.equal(sd["a"], shared) and torch.equal(sd["b"], shared)
    assert sd["a"].untyped_storage().data_ptr() == sd["b"].untyped_storage().data_ptr()


def test_from_state_dict_refuses_what_is_not_a_tensor():
    with pytest.raises(surgery.OperationError) as e:
        surgery.torch.from_state_dict({"w": torch.ones(1), "epoch": 3})
    assert str(e.value) == "state dict entry 'epoch' is a int, not a tensor (epoch); pass only tensors, e.g. module.state_dict()"


def test_from_state_dict_refuses_dtypes_surgery_lacks():
    with pytest.raises(surgery.OperationError, match=r"^tensor 'w' is torch.complex128, which surgery cannot hold \(w\)"):
        surgery.torch.from_state_dict({"w": torch.ones(1, dtype=torch.complex128)})


def test_writer_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, tempfile, os, surgery\n"
        "from surgery.tree import Tree, Entry, TORCH\n"
        "d = tempfile.mkdtemp()\n"
        "surgery.save(Tree([Entry.from_array('w', np.ones(2, 'float32'))], convention=TORCH), os.path.join(d, 'o.pt'))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_contiguous_stride_matches_torch():
    for shape in [(), (0,), (3,), (2, 0, 4), (3, 0), (2, 3, 4)]:
        assert torch_writer.contiguous_stride(shape) == torch.empty(shape).stride(), shape
