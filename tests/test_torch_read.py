"""PyTorch zip checkpoints: read without running code, equal to torch.load(weights_only=True)."""

from __future__ import annotations

import pickle
import zipfile

import pytest

import surgery
from helpers import error_line, run

torch = pytest.importorskip("torch")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]


def raw(t) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def ours(entry) -> bytes:
    return b"".join(bytes(c) for c in entry.iter_bytes())


def assert_same_as_torch(path):
    reference = torch.load(path, weights_only=True)
    if "state_dict" in reference:
        reference = reference["state_dict"]
    tree = surgery.load(path)
    assert list(tree) == list(reference)
    for name, t in reference.items():
        assert tree[name].shape == tuple(t.shape), name
        assert ours(tree[name]) == raw(t), name
    return tree


def test_every_dtype_views_scalars_and_tied_weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for i, dt in enumerate(DTYPES):
        base = torch.randn(3, 5, generator=gen) * 4
        sd[f"t{i}"] = base > 0 if dt == torch.bool else base.to(dt)
    big = torch.randn(6, 4, generator=gen)
    sd["transposed"] = big.t()  # non-contiguous view
    sd["offset_slice"] = big[2:4]  # view with a storage offset
    sd["strided"] = big[:, ::2]
    sd["tied_a"] = big
    sd["tied_b"] = big  # same storage twice
    sd["num_batches_tracked"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    path = tmp_path / "all.pt"
    torch.save(sd, path)
    tree = assert_same_as_torch(path)
    assert tree.convention == surgery.TORCH and tree["num_batches_tracked"].shape == ()
    assert tree["tied_a"].attrs["torch.storage"] == tree["tied_b"].attrs["torch.storage"]


def test_training_checkpoint_container_is_found_and_reported(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "optimizer": {"lr": 0.1}}, path)
    tree = assert_same_as_torch(path)
    assert tree.metadata == {"surgery.torch_key": "state_dict"}


def test_converted_checkpoint_loads_strictly_into_the_module(tmp_path):
    from safetensors.torch import load_file

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    src = tmp_path / "m.pt"
    torch.save(model.state_dict(), src)
    out = tmp_path / "m.safetensors"
    assert run("convert", src, "-o", out, "-q").exit_code == 0
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    fresh.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 8, 8)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_torch_class_surgery_on_a_faster_rcnn_predictor(tmp_path):
    """cls_score (C rows) and bbox_pred (4·C class-major rows) move together; the smaller module loads strictly."""

    class Predictor(torch.nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.cls_score = torch.nn.Linear(16, classes)
            self.bbox_pred = torch.nn.Linear(16, classes * 4)

        def forward(self, x):
            return self.cls_score(x), self.bbox_pred(x)

    class Heads(torch.nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.box_predictor = Predictor(classes)

    big = Heads(91)
    src = tmp_path / "frcnn.pt"
    torch.save({"model": {f"roi_heads.{k}": v for k, v in big.state_dict().items()}}, src)
    out = tmp_path / "small.safetensors"
    result = run("subsample", src, "-o", out, "--classes", "0,3,8,1", "--verify", "-q")
    assert result.exit_code == 0, result.stderr
    from safetensors.torch import load_file

    small = Heads(4)
    small.load_state_dict({k.removeprefix("roi_heads."): v for k, v in load_file(out).items()}, strict=True)
    x = torch.randn(5, 16)
    cls_big, box_big = big.box_predictor(x)
    cls_small, box_small = small.box_predictor(x)
    rows = [c * 4 + k for c in (0, 3, 8, 1) for k in range(4)]
    # The weights are exact copies; the matmuls may round differently with fewer rows (BLAS blocking).
    assert torch.equal(small.box_predictor.cls_score.weight, big.box_predictor.cls_score.weight[[0, 3, 8, 1]])
    assert torch.equal(small.box_predictor.bbox_pred.weight, big.box_predictor.bbox_pred.weight[rows])
    torch.testing.assert_close(cls_small, cls_big[:, [0, 3, 8, 1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(box_small, box_big[:, rows], atol=1e-6, rtol=0)


# -- hostile files --------------------------------------------------------------------


class _Reduce:
    """Pickles as a call of `func(*args)`: the shape of every pickle exploit."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(canary):
    import builtins
    import importlib
    import operator
    import os

    command = f"touch {canary}"
    return {
        "os.system": _Reduce(os.system, command),
        "builtins.eval": _Reduce(builtins.eval, f"open({str(canary)!r}, 'w')"),
        "builtins.exec": _Reduce(builtins.exec, f"open({str(canary)!r}, 'w')"),
        "importlib.import_module": _Reduce(importlib.import_module, "os"),
        "operator.attrgetter": _Reduce(operator.attrgetter("__class__.__base__"), "x"),
        "nested pickle": _Reduce(pickle.loads, pickle.dumps(_Reduce(os.system, command))),
    }


def _zip_checkpoint(path, pickled: bytes):
    """A torch.save-shaped archive whose data.pkl is `pickled`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec", "importlib.import_module",
                                  "operator.attrgetter", "nested pickle"])
@pytest.mark.parametrize("broken_tail", [False, True])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, kind, broken_tail):
    canary = tmp_path / "canary"
    payload = _payloads(canary)[kind]
    pickled = pickle.dumps({"weight": payload}, protocol=2)
    if broken_tail:
        pickled = pickled[:-1] + b"\xff\xfe"  # a payload followed by a broken stream
    path = tmp_path / "evil.pt"
    _zip_checkpoint(path, pickled)
    result = run("inspect", path)
    line = error_line(result)
    assert result.exit_code == 1
    assert line.startswith("error: the checkpoint asks to load "), line
    assert ", which is not a tensor or container" in line
    module = {"nested pickle": "_pickle.loads", "operator.attrgetter": "operator.attrgetter"}.get(kind, kind)
    assert module.split(".")[-1] in line
    assert not canary.exists()


def test_a_real_checkpoint_with_a_payload_added_is_refused(tmp_path):
    canary = tmp_path / "canary"
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = pickle.dumps({"w": _payloads(canary)["os.system"]}, protocol=2)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert error_line(run("inspect", evil)).startswith("error: the checkpoint asks to load posix.system")
    assert not canary.exists()


def test_truncated_zip_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    line = error_line(run("inspect", cut))
    assert line.startswith("error: ") and "Traceback" not in line


def test_a_dtype_surgery_lacks_is_refused_by_name(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"ok": torch.ones(2), "c": torch.zeros(2, dtype=torch.complex128)}, path)
    assert error_line(run("inspect", path)) == (
        f"error: the checkpoint holds complex128 tensors, which surgery does not support ({path}); "
        "convert or remove those tensors in torch first (complex128 can become complex64)"
    )


def test_a_dtype_surgery_lacks_is_refused_by_name_in_an_untyped_storage(tmp_path):
    # Newer torch names the dtype beside an untyped storage (_rebuild_tensor_v3): the same refusal.
    good = tmp_path / "f8.pt"
    torch.save({"f": torch.zeros(2, dtype=torch.float8_e5m2)}, good)
    with zipfile.ZipFile(good) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    assert b"ctorch\nfloat8_e5m2\n" in members[pkl]
    members[pkl] = members[pkl].replace(b"ctorch\nfloat8_e5m2\n", b"ctorch\ncomplex128\n")
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert error_line(run("inspect", path)) == (
        f"error: the checkpoint holds complex128 tensors, which surgery does not support ({path}); "
        "convert or remove those tensors in torch first (complex128 can become complex64)"
    )


def test_writing_torch_gives_what_torch_load_reads_back(tmp_path):
    src = tmp_path / "m.pt"
    sd = {"w": torch.randn(2, 3), "tied": None, "n": torch.tensor(4)}
    sd["tied"] = sd["w"]
    torch.save(sd, src)
    result = run("convert", src, "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(out) == ["w", "tied", "n"]
    assert torch.equal(out["w"], sd["w"]) and torch.equal(out["n"], sd["n"])
    assert out["tied"].untyped_storage().data_ptr() == out["w"].untyped_storage().data_ptr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out.pt"]


def test_pickle_extension_codes_are_refused_even_when_registered(tmp_path):
    """copyreg's extension registry is process-wide: a registered code must not reach os.system."""
    import copyreg
    import os

    canary = tmp_path / "canary"
    copyreg.add_extension("os", "system", 0xF0)
    try:
        pickled = b"\x80\x02" + pickle.EXT1 + b"\xf0" + pickle.BINUNICODE + len(f"touch {canary}").to_bytes(4, "little") + f"touch {canary}".encode() + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
        path = tmp_path / "evil.pt"
        _zip_checkpoint(path, pickled)
        line = error_line(run("inspect", path))
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    assert line == (
        f"error: the checkpoint names a global by a pickle extension code, which state dicts never use ({path}); "
        "surgery reads only tensors and plain containers and never runs a checkpoint's code; save model.state_dict() where the model is built"
    )
    assert not canary.exists() and os.path.exists(tmp_path)
