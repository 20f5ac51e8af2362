"""Legacy (non-zip) torch.save files: read without running code, equal to torch.load(weights_only=True)."""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct

import numpy as np
import pytest

import surgery
from helpers import error_line, run
from test_torch_read import _payloads, _Reduce, ours, raw

torch = pytest.importorskip("torch")

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
# Every dtype torch 2.13 writes in the legacy format AND reads back.
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool, torch.complex64]  # complex128: surgery has no such dtype yet
# Written (as an untyped byte storage + _rebuild_tensor_v3) but not read back by torch.load, weights_only or not.
WRITE_ONLY_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]
KINDS = ["os.system", "builtins.eval", "builtins.exec", "importlib.import_module", "operator.attrgetter", "nested pickle"]
# Protocol 2 names builtins as __builtin__, and os.system by its real module.
GLOBAL_NAME = {"nested pickle": "pickle.loads", "os.system": "posix.system", "builtins.eval": "__builtin__.eval",
               "builtins.exec": "__builtin__.exec"}


def save_legacy(obj, path, **kwargs):
    torch.save(obj, path, _use_new_zipfile_serialization=False, **kwargs)
    return path


def assert_same_as_torch(path, key=None, reference=None):
    """Names in order, shapes, dtypes and bytes equal torch.load(weights_only=True) (or `reference`)."""
    reference = torch.load(path, weights_only=True) if reference is None else reference
    if key is not None:
        reference = reference[key]
    tree = surgery.load(path, key=key)
    assert list(tree) == list(reference)
    for name, t in reference.items():
        assert tree[name].shape == tuple(t.shape), name
        assert tree[name].dtype == str(t.dtype).removeprefix("torch."), name
        assert ours(tree[name]) == raw(t), name
        assert np.ascontiguousarray(tree[name].read()).tobytes() == raw(t), name
    return tree


def sample_state_dict():
    gen = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    for i, dt in enumerate(DTYPES):
        base = torch.randn(3, 5, generator=gen) * 4
        sd[f"t{i}.{str(dt)[6:]}"] = base > 0 if dt == torch.bool else base.to(dt)
    big = torch.randn(6, 4, generator=gen)
    sd["transposed"] = big.t()
    sd["offset_slice"] = big[2:4]
    sd["strided"] = big[:, ::2]
    sd["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    sd["tied_a"] = big
    sd["tied_b"] = big
    sd["num_batches_tracked"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    sd["empty_view"] = big[:, 4:]  # zero columns at an offset
    return sd


# -- real torch.save files ---------------------------------------------------------------


def test_every_dtype_views_scalars_and_tied_weights_equal_torch_load(tmp_path):
    path = save_legacy(sample_state_dict(), tmp_path / "all.pth")
    tree = assert_same_as_torch(path)
    assert tree.format == "torch" and tree.convention == surgery.TORCH and tree.metadata == {}
    assert tree["num_batches_tracked"].shape == ()
    assert tree["tied_a"].attrs["torch.storage"] == tree["tied_b"].attrs["torch.storage"]
    assert tree["tied_a"].attrs["torch.storage"] == tree["transposed"].attrs["torch.storage"]
    assert tree["tied_a"].attrs["torch.storage"] != tree["t0.float32"].attrs["torch.storage"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".weights"])
def test_found_by_content_whatever_the_suffix_and_pickle_protocol(tmp_path, protocol, suffix):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = save_legacy(model.state_dict(), tmp_path / f"m{suffix}", pickle_protocol=protocol)
    assert surgery.formats.detect(path) == "torch"
    if protocol == 2:
        assert_same_as_torch(path)
    else:  # torch 2.13's weights_only loader has no FRAME opcode (protocol 4+): "Unsupported operand 149"
        with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 149"):
            torch.load(path, weights_only=True)
        assert_same_as_torch(path, reference=model.state_dict())


@pytest.mark.parametrize("dtype", WRITE_ONLY_DTYPES, ids=str)
def test_dtypes_torch_writes_but_cannot_read_back_are_read_exactly(tmp_path, dtype):
    t = (torch.arange(12, dtype=torch.float32).reshape(3, 4) * 3).to(dtype)
    path = save_legacy({"w": t, "v": t[:, 1:3]}, tmp_path / "f8.pth")
    with pytest.raises(AttributeError):  # torch 2.13: "UntypedStorage has no attribute 'dtype'"
        torch.load(path, weights_only=True)
    tree = surgery.load(path)
    assert tree["w"].dtype == str(dtype)[6:] and tree["w"].shape == (3, 4)
    assert ours(tree["w"]) == raw(t) and ours(tree["v"]) == raw(t[:, 1:3])


def test_containers_and_key(tmp_path):
    net = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    path = save_legacy({"epoch": 3, "model_ema": ema.state_dict(), "state_dict": net.state_dict(), "optimizer": {"lr": 0.1}},
                       tmp_path / "ckpt.pth")
    tree = assert_same_as_torch(path, key="state_dict")
    assert tree.metadata == {"surgery.torch_key": "state_dict"}
    tree = assert_same_as_torch(path, key="model_ema")
    assert tree.metadata == {"surgery.torch_key": "model_ema"}
    assert run("inspect", path, "--key", "model_ema", "--json").exit_code == 0
    result = run("inspect", path, "--key", "optimizer")
    assert error_line(result) == (f"error: no state dict under key 'optimizer' ({path}); "
                                  "choose one of: state_dict, model_ema")  # only the entries that hold a state dict


def test_key_for_a_file_that_is_not_torch_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(path))
    with pytest.raises(surgery.errors.FormatError):
        surgery.load(path, key="model")
    for command in (["inspect", path], ["convert", path, "-o", tmp_path / "o.npz"]):
        assert error_line(run(*command, "--key", "model")) == (
            f"error: --key chooses an entry of a PyTorch checkpoint, but this is a safetensors file ({path}); drop --key"
        )
    assert not (tmp_path / "o.npz").exists()


def test_convert_with_key_loads_strictly_into_the_module(tmp_path):
    from safetensors.torch import load_file

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    src = save_legacy({"model_ema": model.state_dict(), "other": {"w": torch.ones(1)}}, tmp_path / "m.pth")
    out = tmp_path / "m.safetensors"
    result = run("convert", src, "-o", out, "--key", "model_ema", "-q")
    assert result.exit_code == 0, result.stderr
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(load_file(out), strict=True)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


# -- metadata through state_dict._metadata --------------------------------------------


@pytest.mark.parametrize("legacy", [True, False])
def test_surgery_metadata_in_the_state_dicts_metadata_attribute(tmp_path, legacy):
    sd = torch.nn.BatchNorm1d(2).state_dict()
    sd._metadata[""]["version"] = 2
    sd._metadata["__surgery__"] = {"surgery.num_classes": "9", "surgery.convention": "keras", "note": "é"}
    path = tmp_path / "m.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    assert_same_as_torch(path)  # torch's weights_only loader accepts it
    tree = surgery.load(path)
    assert tree.metadata == {"surgery.num_classes": "9", "note": "é"}
    assert tree.convention == surgery.KERAS


def test_metadata_on_the_container_and_other_metadata_ignored(tmp_path):
    plain = tmp_path / "plain.pth"
    save_legacy(torch.nn.BatchNorm1d(2).state_dict(), plain)  # torch's own _metadata: versions only
    assert surgery.load(plain).metadata == {}
    outer = collections.OrderedDict(state_dict=collections.OrderedDict(w=torch.ones(2)))
    outer._metadata = {"__surgery__": {"a": "b"}}
    path = save_legacy(outer, tmp_path / "outer.pth")
    assert surgery.load(path).metadata == {"a": "b", "surgery.torch_key": "state_dict"}
    wrong = collections.OrderedDict(w=torch.ones(2))
    wrong._metadata = {"__surgery__": {"a": 1}}  # not str -> str: ignored
    path = save_legacy(wrong, tmp_path / "wrong.pth")
    assert surgery.load(path).metadata == {}


def test_build_on_anything_but_an_ordered_dict_is_refused(tmp_path):
    from surgery.formats import torch_pt

    cases = {
        # {} {'a': 1} BUILD: a plain dict takes no state
        b"\x80\x02}}X\x01\x00\x00\x00aK\x01sb.": "a dict",
        # the stand-in for torch.FloatStorage: must never be changed by a file
        b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x05\x00\x00\x00int64sb.": "a storage type",
        # the stand-in for OrderedDict itself (a function)
        b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb.": "a function",
    }
    for body, kind in cases.items():
        path = tmp_path / "evil.pth"
        path.write_bytes(_legacy_raw([_header_pickles(), body, pickle.dumps([], protocol=2)]))
        assert error_line(run("inspect", path)) == (
            f"error: the checkpoint asks to set the state of {kind}, which is not a container ({path}); "
            "surgery reads only tensors and plain containers and never runs a checkpoint's code; save model.state_dict() where the model is built"
        )
    assert torch_pt._ALLOWED[("torch", "FloatStorage")].dtype == "float32"


# -- hand-made legacy files --------------------------------------------------------------


class Storage:
    """Pickles as a legacy persistent id: ('storage', torch.<Kind>Storage, key, 'cpu', numel, view)."""

    def __init__(self, key, kind, numel, view=None):
        self.key, self.kind, self.numel, self.view = key, kind, numel, view


def tensor(storage, offset, shape, stride):
    return _Reduce(torch._utils._rebuild_tensor_v2, storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())


def _header_pickles(magic=MAGIC, protocol=1001, sys_info=None):
    return b"".join(pickle.dumps(x, protocol=2) for x in (magic, protocol, SYS_INFO if sys_info is None else sys_info))


def _main_pickle(obj):
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                return ("storage", getattr(torch, o.kind), o.key, "cpu", o.numel, o.view)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _legacy_raw(parts):
    return b"".join(parts)


def legacy_file(path, obj, storages: dict[str, bytes], counts: dict[str, int] | None = None, keys=None, header=None):
    """A legacy file: header pickles, `obj`, the key list, then each storage as <count><bytes>."""
    keys = sorted(storages) if keys is None else keys
    data = b""
    for key in keys:
        payload = storages.get(key, b"")
        count = (counts or {}).get(key, len(payload) // 4)
        data += struct.pack("<q", count) + payload
    path.write_bytes((header or _header_pickles()) + _main_pickle(obj) + pickle.dumps(keys, protocol=2) + data)
    return path


def test_old_storage_views_are_read_like_torch(tmp_path):
    root = np.arange(10, dtype=np.float32)
    view = Storage("0", "FloatStorage", 10, ("v1", 2, 6))  # elements 2..7 of storage 0
    obj = collections.OrderedDict(
        whole=tensor(Storage("0", "FloatStorage", 10), 0, [10], [1]),
        view=tensor(view, 1, [2, 2], [2, 1]),  # view elements 1..4 = root 3..6
        view_t=tensor(view, 0, [3, 2], [1, 3]),
    )
    path = legacy_file(tmp_path / "views.pth", obj, {"0": root.tobytes()})
    tree = assert_same_as_torch(path)
    assert tree["view"].read().tolist() == [[3, 4], [5, 6]]
    assert tree["view"].attrs["torch.storage"] == tree["whole"].attrs["torch.storage"] == "0"


@pytest.mark.parametrize(
    "view, message",
    [
        (("v", 8, 6), "a view of 6 elements at 8 in storage '0' of 10"),
        (("0", 0, 2), "storage view key '0' also names a storage"),
        (("v", -1, 2), "a view offset of '-1'"),
        ("v", "a storage view 'v'"),
    ],
)
def test_bad_storage_views_are_refused(tmp_path, view, message):
    obj = {"w": tensor(Storage("0", "FloatStorage", 10, view), 0, [2], [1])}
    path = legacy_file(tmp_path / "bad.pth", obj, {"0": bytes(40)})
    assert error_line(run("inspect", path)) == (
        f"error: cannot read the checkpoint ({message}) ({path}); "
        "the file is corrupt or not a torch.save checkpoint; save it again"
    )


def _fix(path, fix="the file is corrupt or not a torch.save checkpoint; save it again"):
    return f" ({path}); {fix}"


TRUNCATED = "the file is truncated; copy or download it again"


@pytest.mark.parametrize(
    "counts, keys, message",
    [
        ({"0": 11}, None, "error: storage '0' holds 11 elements in the file but its header says 10"),
        ({"0": 9}, None, "error: storage '0' holds 9 elements in the file but its header says 10"),
        ({"0": -1}, None, "error: storage '0' holds -1 elements in the file but its header says 10"),
        ({"0": 2**62}, None, "error: storage '0' holds 4611686018427387904 elements in the file but its header says 10"),
        (None, ["0", "0"], "error: the storage key list names a storage twice"),
        (None, [], "error: storage '0' has no data in the file"),
        (None, ["0", "9"], "error: the storage key list names '9', which no tensor uses"),
    ],
)
def test_lying_counts_and_key_lists(tmp_path, counts, keys, message):
    obj = {"w": tensor(Storage("0", "FloatStorage", 10), 0, [10], [1])}
    path = legacy_file(tmp_path / "lie.pth", obj, {"0": bytes(40)}, counts=counts, keys=keys)
    assert error_line(run("inspect", path)) == message + _fix(path)


def test_tensor_past_its_storage_is_refused(tmp_path):
    obj = {"w": tensor(Storage("0", "FloatStorage", 10), 4, [2, 4], [4, 1])}
    path = legacy_file(tmp_path / "past.pth", obj, {"0": bytes(40)})
    assert error_line(run("inspect", path)) == "error: tensor 'w' reaches past its storage" + _fix(path)


def test_cut_anywhere_gives_one_line(tmp_path):
    good = save_legacy({"a": torch.arange(100.0), "b": torch.ones(3, dtype=torch.int64)}, tmp_path / "good.pth")
    data = good.read_bytes()
    ends = _pickle_ends(data)
    assert len(ends) == 5
    a_key = surgery.load(good)["a"].attrs["torch.storage"]
    size_cut = ends[-1] + 8 + 50
    expected = {
        ends[0] - 3: "error: not a torch.save checkpoint (neither a zip archive nor the legacy format)" + _fix(tmp_path / "cut.pth"),
        ends[2] - 10: "error: the checkpoint's pickle ends early" + _fix(tmp_path / "cut.pth"),
        ends[3] - 1: "error: the checkpoint's pickle ends early" + _fix(tmp_path / "cut.pth"),
        ends[3] + 20: "error: the checkpoint's pickle ends early" + _fix(tmp_path / "cut.pth"),
        ends[4]: None,  # the first storage's count is missing
        ends[4] + 4: None,  # half of it
        len(data) - 1: None,  # the last storage is one byte short
    }
    cut = tmp_path / "cut.pth"
    for at, message in expected.items():
        cut.write_bytes(data[:at])
        result = run("inspect", cut)
        line = error_line(result)
        assert result.exit_code == 1
        if message:
            assert line == message, at
        else:
            assert line.startswith(("error: the file ends before storage", "error: storage ")), line
            assert line.endswith(_fix(cut, TRUNCATED)), line
    keys = sorted([a_key, surgery.load(good)["b"].attrs["torch.storage"]])
    if keys[0] == a_key:  # the 400-byte storage comes first: cut inside it
        cut.write_bytes(data[:size_cut])
        assert error_line(run("inspect", cut)) == (
            f"error: storage {a_key!r} needs 400 bytes at byte {ends[-1] + 8} but the file has {size_cut}" + _fix(cut, TRUNCATED)
        )


def _pickle_ends(data: bytes) -> list[int]:
    """Where each of the five pickles of a legacy file ends."""
    ends, f = [], io.BytesIO(data)
    for _ in range(5):
        for op, _arg, pos in pickletools.genops(f):
            if op.name == "STOP":
                ends.append(pos + 1)
                break
    return ends


def test_bad_magic_and_protocol(tmp_path):
    obj = {"w": tensor(Storage("0", "FloatStorage", 1), 0, [1], [1])}
    path = legacy_file(tmp_path / "p.pth", obj, {"0": bytes(4)}, header=_header_pickles(protocol=1002))
    assert error_line(run("inspect", path)) == "error: legacy torch.save protocol 1002, expected 1001" + _fix(path)
    path = legacy_file(tmp_path / "s.pth", obj, {"0": bytes(4)}, header=_header_pickles(sys_info=[1]))
    assert error_line(run("inspect", path)) == "error: the legacy sys_info is not a dict" + _fix(path)


# -- hostile legacy files ----------------------------------------------------------------


def _expected_refusal(kind: str, path) -> str:
    name = GLOBAL_NAME.get(kind, kind)
    return f"error: the checkpoint asks to load {name}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("broken_tail", [False, True])
def test_payload_in_the_main_pickle_is_refused_and_nothing_runs(tmp_path, kind, broken_tail):
    canary = tmp_path / "canary"
    main = pickle.dumps({"weight": _payloads(canary)[kind]}, protocol=2)
    if broken_tail:
        main = main[:-1] + b"\xff\xfe"
    path = tmp_path / "evil.pth"
    path.write_bytes(_header_pickles() + main + pickle.dumps([], protocol=2))
    _assert_refused(path, kind, canary)


@pytest.mark.parametrize("where", ["sys_info", "keys", "magic"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "nested pickle"])
def test_payload_in_the_other_pickles_is_refused(tmp_path, where, kind):
    canary = tmp_path / "canary"
    good = save_legacy({"w": torch.ones(3)}, tmp_path / "good.pth").read_bytes()
    ends = _pickle_ends(good)
    parts = [good[a:b] for a, b in zip([0, *ends], ends)] + [good[ends[-1]:]]
    evil = pickle.dumps(_payloads(canary)[kind], protocol=2)
    index = {"magic": 0, "sys_info": 2, "keys": 4}[where]
    if where == "magic":  # keep the magic so the file is detected; the payload comes next
        evil = parts[0] + evil
        parts[1] = b""
    parts[index] = evil
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts))
    _assert_refused(path, kind, canary)


def _assert_refused(path, kind, canary):
    result = run("inspect", path)
    line = error_line(result)
    assert result.exit_code == 1
    assert line.startswith(_expected_refusal(kind, path)), line
    assert line.endswith(", which is not a tensor or container" + _fix(path, "surgery reads only tensors and plain containers "
                                                                            "and never runs a checkpoint's code; save model.state_dict() where the model is built"))
    assert not canary.exists()
    with pytest.raises(surgery.errors.UnsafeFileError):
        surgery.load(path)
    assert not canary.exists()


def test_a_whole_model_is_refused_by_name(tmp_path):
    path = save_legacy(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    line = error_line(run("inspect", path))
    assert line.startswith("error: the checkpoint ")
    assert "torch.nn.modules.linear" in line or "persistent object ('module'" in line, line
