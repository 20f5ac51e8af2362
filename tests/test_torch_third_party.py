"""Real third-party torch files, read by surgery in a process where torch cannot be imported.

- lpips 0.1.4: legacy (non-zip) torch.save files, lpips/weights/v0.1/{alex,vgg,squeeze}.pth.
- pesto-pitch 2.0.1: a zip-format Lightning checkpoint, pesto/weights/mir-1k.ckpt (state dict under
  "state_dict"), and mir-1k_g7.ckpt, which holds omegaconf objects and must be refused by name.

Both are installed with `pip install --no-deps -r requirements-models.txt`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import error_line, run

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
LPIPS_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512],
                  "squeeze": [64, 128, 256, 384, 384, 512, 512]}

# Runs in a fresh interpreter where `import torch` fails: proves the reader needs no torch.
_READER = r"""
import hashlib, json, sys, time
sys.modules["torch"] = None
import surgery
out = {}
for path in sys.argv[1:]:
    start = time.perf_counter()
    tree = surgery.load(path)
    inspect_s = time.perf_counter() - start
    out[path] = {"inspect_s": inspect_s, "metadata": tree.metadata, "tensors": [
        [e.name, list(e.shape), e.dtype, hashlib.sha256(b"".join(bytes(c) for c in e.iter_bytes())).hexdigest()]
        for e in tree.values()]}
assert "torch" not in sys.modules or sys.modules["torch"] is None
print(json.dumps(out))
"""


def _package_file(package: str, relative: str, pin: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{pin} is not installed; run: pip install --no-deps -r requirements-models.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    assert path.is_file(), f"{path} is missing; reinstall {pin} from requirements-models.txt"
    return path


def lpips_file(net: str) -> Path:
    return _package_file("lpips", f"weights/v0.1/{net}.pth", "lpips==0.1.4")


def pesto_file(name: str = "mir-1k.ckpt") -> Path:
    return _package_file("pesto", f"weights/{name}", "pesto-pitch==2.0.1")


def read_without_torch(*paths: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _READER, *map(str, paths)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def torch_digest(state: dict) -> list:
    rows = []
    for name, t in state.items():
        data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        rows.append([name, list(t.shape), str(t.dtype).removeprefix("torch."), hashlib.sha256(data).hexdigest()])
    return rows


def test_lpips_legacy_and_pesto_zip_files_equal_torch_load_without_torch():
    files = {lpips_file(n): None for n in LPIPS_CHANNELS} | {pesto_file(): "state_dict"}
    ours = read_without_torch(*files)
    total_tensors = total_bytes = 0
    for path, key in files.items():
        reference = torch.load(path, weights_only=True, map_location="cpu")
        reference = reference[key] if key else reference
        got = ours[str(path)]
        assert got["tensors"] == torch_digest(reference), path
        assert got["metadata"] == ({"surgery.torch_key": key} if key else {})
        total_tensors += len(reference)
        total_bytes += sum(t.numel() * t.element_size() for t in reference.values())
        print(f"{path.name}: {len(reference)} tensors, inspect {got['inspect_s'] * 1000:.1f} ms")
    print(f"{total_tensors} tensors, {total_bytes} bytes compared")
    assert total_tensors == 5 + 5 + 7 + 16


@pytest.mark.parametrize("net", list(LPIPS_CHANNELS))
def test_lpips_converted_loads_strictly_into_its_linear_layers(tmp_path, net):
    from safetensors.torch import load_file

    out = tmp_path / f"{net}.safetensors"
    result = run("convert", lpips_file(net), "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    # lpips.NetLinLayer: Sequential(Dropout(), Conv2d(chn, 1, 1, bias=False)), named lin0..linN.
    heads = torch.nn.Module()
    for i, chn in enumerate(LPIPS_CHANNELS[net]):
        layer = torch.nn.Module()
        layer.model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(chn, 1, 1, bias=False))
        heads.add_module(f"lin{i}", layer)
    heads.load_state_dict(load_file(out), strict=True)
    reference = torch.load(lpips_file(net), weights_only=True, map_location="cpu")
    for name, t in heads.state_dict().items():
        assert torch.equal(t, reference[name]), name


def test_pesto_converted_equals_its_state_dict(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "pesto.safetensors"
    result = run("convert", pesto_file(), "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    reference = torch.load(pesto_file(), weights_only=True, map_location="cpu")["state_dict"]
    converted = load_file(out)
    assert list(converted) == list(reference) or sorted(converted) == sorted(reference)
    for name, t in reference.items():
        assert torch.equal(converted[name], t), name


def test_a_checkpoint_holding_other_objects_is_refused_by_name():
    path = pesto_file("mir-1k_g7.ckpt")
    assert error_line(run("inspect", path)) == (
        f"error: the checkpoint asks to load omegaconf.listconfig.ListConfig, which is not a tensor or container ({path}); "
        "surgery never runs a checkpoint's code; its state dict 'state_dict' reads without it: pass --key state_dict"
    )


@functools.lru_cache(maxsize=1)
def _pesto_encoder_class():
    """pesto's own Resnet1d. The package's __init__ imports torchaudio (not installed here), so the
    module is imported under a bare package spec; model.py itself needs only torch."""
    import types

    root = str(pesto_file().parent.parent)
    saved = sys.modules.get("pesto")
    package = types.ModuleType("pesto")
    package.__path__ = [root]
    package.__spec__ = importlib.machinery.ModuleSpec("pesto", None, is_package=True)
    package.__spec__.submodule_search_locations = [root]
    sys.modules["pesto"] = package
    try:
        return importlib.import_module("pesto.model").Resnet1d
    finally:
        if saved is None:
            del sys.modules["pesto"]
        else:
            sys.modules["pesto"] = saved


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pesto_encoder_renamed_loads_strictly_into_pestos_own_module(tmp_path, suffix):
    """pesto 2.0.1's own loader falls back to strict=False for this file: its prefilter conv is saved as
    `prefilt_layers.0.*` but the module names it `prefilt_layers.0.0.*`, so pesto leaves it untrained.
    One rename makes the file load strictly, with every weight in place."""
    checkpoint = torch.load(pesto_file(), weights_only=True, map_location="cpu")
    Resnet1d = _pesto_encoder_class()
    expected = {k.removeprefix("encoder."): v for k, v in checkpoint["state_dict"].items() if k != "shift"}
    expected = {k.replace("prefilt_layers.0.", "prefilt_layers.0.0."): v for k, v in expected.items()}
    reference = Resnet1d(**checkpoint["hparams"]["encoder"]).eval()
    reference.load_state_dict(expected, strict=True)

    out = tmp_path / f"encoder{suffix}"
    result = run("rename", pesto_file(), "-o", out, "--strip-prefix", "encoder.", "--drop", "shift",
                 "--map", r"^prefilt_layers\.(\d+)\.=prefilt_layers.\1.0.", "-q")
    assert result.exit_code == 0, result.stderr
    if suffix == ".pt":
        state = torch.load(out, weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(out)
    ours = Resnet1d(**checkpoint["hparams"]["encoder"]).eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 264, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))
