"""ONNX as a format: reading every weight lazily, writing it back into the graph, atomically.

Models come from the real torch.onnx exporters (TorchScript and dynamo, with external data)
and from onnx's helpers; onnx.numpy_helper, onnx.checker and onnxruntime are the judges.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("onnx")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import surgery  # noqa: E402
from surgery.formats import onnx_io, onnx_writer  # noqa: E402
from surgery.formats.onnx_tensors import ExternalRange, InlineBytes  # noqa: E402

from helpers import digest, error_line, leftovers, run  # noqa: E402
from onnx_builders import arrays, check, identity_model, initializer_facts, matmul_constant_model, run_ort, save  # noqa: E402

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):
    """A conv body, a PReLU (TorchScript names its weight onnx::PRelu_N) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.act = torch.nn.PReLU(8)
        self.proj = torch.nn.Conv2d(8, 4, 1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.proj(self.act(self.conv(x))).mean((2, 3)))


def _net(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


INPUT = np.random.default_rng(5).standard_normal((2, 3, 10, 10)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The same Net (seed 0) through both exporters: TorchScript inline, dynamo with external data."""
    folder = tmp_path_factory.mktemp("exported")
    net, x = _net(0), torch.from_numpy(INPUT)
    script = folder / "script.onnx"
    torch.onnx.export(net, (x,), str(script), dynamo=False, input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    dynamo_dir = folder / "dynamo"
    dynamo_dir.mkdir()
    dyn = dynamo_dir / "model.onnx"
    program = torch.onnx.export(net, (x,), dynamo=True)
    program.save(str(dyn), external_data=True)
    return {"script": script, "dynamo": dyn}


# -- reading ------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["script", "dynamo"])
def test_inspect_lists_every_initializer_as_numpy_helper_does(exported, kind):
    path = exported[kind]
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    listed = [(t["name"], t["shape"], t["dtype"]) for t in json.loads(result.stdout)["tensors"]]
    assert listed == initializer_facts(path)
    if kind == "script":
        assert any(name.startswith("onnx::PRelu_") for name, _, _ in listed)


@pytest.mark.interop
def test_external_data_is_read_by_byte_range_and_inline_data_from_the_parse(exported):
    external, inline = surgery.load(exported["dynamo"]), surgery.load(exported["script"])
    model = onnx.load_model(str(exported["dynamo"]), load_external_data=False)
    stored_outside = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert "conv.weight" in stored_outside
    assert {n for n, e in external.items() if isinstance(e.source, ExternalRange)} == stored_outside
    assert {external[n].source.path.name for n in stored_outside} == {"model.onnx.data"}
    assert all(isinstance(e.source, InlineBytes) for e in inline.values())
    assert {e.attrs["onnx.kind"] for e in inline.values()} == {"initializer"}


@pytest.mark.interop
def test_inspect_shows_the_model_facts(exported):
    facts = json.loads(run("inspect", exported["script"], "--json").stdout)["onnx"]
    assert facts["ir_version"] >= 7 and facts["opsets"]["ai.onnx"] >= 17
    assert facts["producer"]["name"] == "pytorch"
    assert facts["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 10, 10]}]
    assert facts["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]
    text = run("inspect", exported["dynamo"]).stdout
    assert "input x [2, 3, 10, 10] float32" in text and "external data: model.onnx.data" in text


def test_detected_by_content_whatever_the_name(tmp_path):
    model = identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")])
    path = save(model, tmp_path / "weights.bin")
    assert surgery.load(path).format == "onnx"
    assert list(surgery.load(path)) == ["w"]


def test_constant_only_model_lists_its_weights_not_its_shape_vector(tmp_path):
    path = save(matmul_constant_model(), tmp_path / "constants.onnx")
    tree = surgery.load(path)
    assert [(e.name, e.shape, e.dtype, e.attrs["onnx.kind"]) for e in tree.values()] == [
        ("W", (4, 6), "float32", "constant"),
        ("b16", (6,), "float16", "constant"),  # held in int32_data, as onnx.helper writes float16
    ]
    assert np.array_equal(tree["b16"].read(), np.arange(6, dtype=np.float16))
    out = tmp_path / "w.safetensors"
    assert run("convert", path, "-o", out, "--quiet").exit_code == 0
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(out)["W"], numpy_helper.to_array(onnx.load(str(path)).graph.node[0].attribute[0].t))


# -- writing: convert ---------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["script", "dynamo"])
def test_convert_to_safetensors_is_bit_exact_against_numpy_helper(exported, kind, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "w.safetensors"
    assert run("convert", exported[kind], "-o", out, "--quiet").exit_code == 0
    written, reference = load_file(out), arrays(exported[kind])
    assert list(written) == list(reference)
    for name, array in reference.items():
        assert written[name].dtype == array.dtype and written[name].tobytes() == array.tobytes(), name


@pytest.mark.interop
@pytest.mark.parametrize("target", ["w.npz", "w.pt"])
def test_convert_exports_the_weights_to_other_checkpoints(exported, tmp_path, target):
    out = tmp_path / target
    assert run("convert", exported["script"], "-o", out, "--quiet").exit_code == 0
    back = surgery.load(out)
    for name, array in arrays(exported["script"]).items():
        assert np.array_equal(back[name].read(), array)


@pytest.mark.interop
def test_convert_exports_keras_weights_with_layout(exported, tmp_path):
    out = tmp_path / "w.h5"
    # TorchScript's anonymous PReLU weight belongs to no named module: the layout converter needs it dropped
    result = run("convert", exported["script"], "-o", out, "--layout", "keras", "--drop", "onnx::*", "--quiet")
    assert result.exit_code == 0, result.stderr
    back, reference = surgery.load(out), arrays(exported["script"])
    assert np.array_equal(back["conv/kernel"].read(), reference["conv.weight"].transpose(2, 3, 1, 0))
    assert np.array_equal(back["fc/kernel"].read(), reference["fc.weight"].T)


@pytest.mark.interop
def test_convert_moves_tensors_to_external_data_and_back(exported, tmp_path):
    src = exported["script"]
    ext, inline = tmp_path / "ext.onnx", tmp_path / "inline.onnx"
    assert run("convert", src, "-o", ext, "--external-data", "--size-threshold", "100", "--quiet").exit_code == 0
    data_files = [p.name for p in tmp_path.iterdir() if p.suffix == ".data"]
    assert len(data_files) == 1 and re.fullmatch(r"ext\.onnx\.[0-9a-f]{12}\.data", data_files[0])
    tree = surgery.load(ext)
    assert {n for n, e in tree.items() if isinstance(e.source, ExternalRange)} == {n for n, e in tree.items() if e.nbytes >= 100}
    assert run("convert", ext, "-o", inline, "--inline", "--quiet").exit_code == 0
    assert all(isinstance(e.source, InlineBytes) for e in surgery.load(inline).values())
    expected = run_ort(src, {"x": INPUT})[0]
    for path in (ext, inline):
        check(path)
        assert np.array_equal(run_ort(path, {"x": INPUT})[0], expected)
        assert {k: v.tobytes() for k, v in arrays(path).items()} == {k: v.tobytes() for k, v in arrays(src).items()}


def test_constants_go_to_external_data_too_and_still_run(tmp_path):
    src = save(matmul_constant_model(), tmp_path / "c.onnx")
    out = tmp_path / "c_ext.onnx"
    assert run("convert", src, "-o", out, "--external-data", "--size-threshold", "1", "--quiet").exit_code == 0
    model = onnx.load_model(str(out), load_external_data=False)
    assert model.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL
    check(out)
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(run_ort(out, {"x": x})[0], run_ort(src, {"x": x})[0])


def test_checkpoint_to_onnx_is_refused_with_the_fix(tmp_path):
    weights = tmp_path / "w.safetensors"
    surgery.save(surgery.Tree([surgery.Entry.from_array("w", np.ones(2, np.float32))]), weights)
    assert error_line(run("convert", weights, "-o", tmp_path / "m.onnx")) == (
        "error: an ONNX file needs a graph, and this safetensors checkpoint is only tensors (onnx); "
        "put the weights into an existing model with `surgery transplant WEIGHTS MODEL.onnx -o OUT.onnx`, "
        "or export the model from PyTorch"
    )


def test_dtype_on_onnx_output_is_refused(tmp_path):
    src = save(identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")]), tmp_path / "m.onnx")
    assert error_line(run("convert", src, "-o", tmp_path / "h.onnx", "--dtype", "float16")) == (
        "error: --dtype cannot change an ONNX model: its nodes, inputs and outputs are typed too (--dtype); "
        "export the model again in the dtype you want, or convert its weights to safetensors with --dtype"
    )


def test_onnx_options_need_onnx_output(tmp_path):
    src = save(identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")]), tmp_path / "m.onnx")
    assert error_line(run("convert", src, "-o", tmp_path / "w.safetensors", "--inline")) == (
        "error: --inline only applies to ONNX output (--inline); drop it, or write a .onnx file"
    )
    assert error_line(run("convert", src, "-o", tmp_path / "o.onnx", "--size-threshold", "1KB")) == (
        "error: --size-threshold needs --external-data (--size-threshold); add --external-data"
    )


def test_inline_past_two_gigabytes_is_refused_before_writing(tmp_path):
    huge = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[(1 << 29) + 1])
    model = identity_model([huge])
    tree = _tree_for(model, tmp_path)
    out = tmp_path / "big.onnx"
    with pytest.raises(surgery.OutputError) as caught:
        surgery.save(onnx_io.with_write_options(tree, external=False), out)
    assert str(caught.value).startswith("the weights are 2,147,483,")
    assert str(caught.value).endswith("past protobuf's 2 GB limit for one ONNX file (--inline); keep them in external data: drop --inline, or pass --external-data")
    assert list(tmp_path.iterdir()) == []


def _tree_for(model, folder):
    """A tree over `model` whose weights are zeros computed on demand (nothing is held or read)."""
    from surgery.formats.onnx_model import OnnxGraph
    from surgery.graph import GRAPH

    entries = [
        surgery.Entry.computed(t.name, tuple(t.dims), "float32", lambda t=t: np.zeros(tuple(t.dims), np.float32))
        for t in model.graph.initializer
    ]
    return surgery.Tree(entries, format="onnx", convention=surgery.TORCH, format_state={GRAPH: OnnxGraph(model, folder / "src.onnx")})


def test_a_tensor_the_graph_lacks_is_refused_naming_transplant(tmp_path):
    tree = surgery.load(save(identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")]), tmp_path / "m.onnx"))
    extra = tree.derive(add=[surgery.Entry.from_array("head.weight", np.ones(2, np.float32))])
    with pytest.raises(surgery.OutputError) as caught:
        surgery.save(extra, tmp_path / "o.onnx")
    assert str(caught.value) == (
        f"tensor 'head.weight' is not a weight of the ONNX graph ({tmp_path / 'm.onnx'}); an ONNX file's weights must belong "
        "to its graph: put them into the model with `surgery transplant WEIGHTS MODEL.onnx -o OUT.onnx`, which copies the tensors whose names match"
    )


def test_a_weight_without_entry_is_dropped_when_unused_and_refused_when_used(tmp_path):
    used, unused = numpy_helper.from_array(np.ones(3, np.float32), "used"), numpy_helper.from_array(np.ones(2, np.float32), "spare")
    model = identity_model([used])
    model.graph.initializer.append(unused)
    tree = surgery.load(save(model, tmp_path / "m.onnx"))
    surgery.save(tree.derive(drop=["spare"]), tmp_path / "o.onnx")
    assert [t.name for t in onnx.load(str(tmp_path / "o.onnx")).graph.initializer] == ["used"]
    check(tmp_path / "o.onnx")
    assert error_line(run("convert", tmp_path / "m.onnx", "-o", tmp_path / "p.onnx", "--drop", "used")) == (
        f"error: weight 'used' is used by the graph but the tree has no tensor of that name ({tmp_path / 'm.onnx'}); "
        "keep the tensor (check --drop/--keep and renames), or cut the nodes that use it with `surgery truncate`"
    )


def test_changed_shapes_and_dtypes_come_from_the_entries(tmp_path):
    model = identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("w__out", TensorProto.FLOAT, ["n"]))
    tree = surgery.load(save(model, tmp_path / "m.onnx"))
    new = tree.derive(replace={"w": surgery.Entry.from_array("w", np.arange(5, dtype=np.float32))})
    surgery.save(new, tmp_path / "o.onnx")
    check(tmp_path / "o.onnx")
    assert np.array_equal(run_ort(tmp_path / "o.onnx", {})[0], np.arange(5, dtype=np.float32))


def test_ir3_models_keep_initializer_inputs_in_step(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["w"], ["y"])],
        "old",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    tree = surgery.load(save(model, tmp_path / "m.onnx"))
    surgery.save(tree.derive(replace={"w": surgery.Entry.from_array("w", -np.ones((3, 1), np.float32))}), tmp_path / "o.onnx")
    written = onnx.load(str(tmp_path / "o.onnx"))
    assert [d.dim_value for d in written.graph.input[0].type.tensor_type.shape.dim] == [3, 1]
    check(tmp_path / "o.onnx")
    assert run("inspect", tmp_path / "o.onnx", "--json").exit_code == 0
    assert json.loads(run("inspect", tmp_path / "m.onnx", "--json").stdout)["onnx"]["inputs"] == []


# -- writing: transplant ------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("kind", ["script", "dynamo"])
def test_transplanted_weights_give_torchs_outputs(exported, kind, tmp_path):
    from safetensors.torch import save_file

    new = _net(1)
    with torch.no_grad():  # TorchScript renames and reshapes the PReLU weight: give both nets the same one
        new.act.weight.copy_(_net(0).act.weight)
    weights = tmp_path / "new.safetensors"
    save_file({k: v.contiguous() for k, v in new.state_dict().items()}, str(weights), metadata={"format": "pt"})
    out = tmp_path / "out.onnx"
    before = digest(exported[kind].parent)
    result = run("transplant", weights, exported[kind], "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["counts"]["copied"] >= 6 and document["counts"]["mismatched"] == 0
    check(out)
    with torch.no_grad():
        expected = new(torch.from_numpy(INPUT)).numpy()
    got = run_ort(out, {"x": INPUT})[0]
    assert np.abs(got - expected).max() <= 1e-5
    assert not np.allclose(run_ort(exported[kind], {"x": INPUT})[0], expected, atol=1e-3)  # the weights did change
    steps = json.loads({p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}["surgery.provenance"])
    assert steps[-1]["op"] == "transplant"
    assert digest(exported[kind].parent) == before


# -- atomic pairs ---------------------------------------------------------------------


def _external_pair(tmp_path, value: float):
    src = save(identity_model([numpy_helper.from_array(np.full(512, value, np.float32), "w")]), tmp_path / f"src{value}.onnx")
    return onnx_io.with_write_options(surgery.load(src), external=True)


def _location(path) -> str:
    t = onnx.load_model(str(path), load_external_data=False).graph.initializer[0]
    return {e.key: e.value for e in t.external_data}["location"]


def test_replacing_a_pair_removes_the_old_data_file_that_surgery_wrote(tmp_path):
    out = tmp_path / "m.onnx"
    surgery.save(_external_pair(tmp_path, 1.0), out)
    first = _location(out)
    foreign = tmp_path / "m.onnx.data"
    foreign.write_bytes(b"someone else's")
    surgery.save(_external_pair(tmp_path, 2.0), out, force=True)
    second = _location(out)
    assert first != second and not (tmp_path / first).exists() and (tmp_path / second).is_file()
    assert foreign.read_bytes() == b"someone else's"
    assert np.array_equal(arrays(out)["w"], np.full(512, 2.0, np.float32))
    assert leftovers(tmp_path) == []


def test_a_failed_model_write_leaves_the_old_pair_and_no_new_data(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    surgery.save(_external_pair(tmp_path, 1.0), out)
    second = _external_pair(tmp_path, 2.0)
    files = sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_writer, "_write_model", fail)
    with pytest.raises(surgery.OutputError):
        surgery.save(second, out, force=True)
    assert sorted(os.listdir(tmp_path)) == files
    assert np.array_equal(arrays(out)["w"], np.full(512, 1.0, np.float32))


def test_a_kill_between_data_and_model_leaves_the_old_pair_readable(tmp_path, monkeypatch):
    """The new data file is in place under its own name; the model still points at the old one."""
    out = tmp_path / "m.onnx"
    surgery.save(_external_pair(tmp_path, 1.0), out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for SIGKILL: no cleanup runs after it in a real kill

    monkeypatch.setattr(onnx_writer, "_write_model", killed)
    monkeypatch.setattr(onnx_writer.Path, "unlink", lambda self, missing_ok=False: None)  # as if no cleanup ran
    with pytest.raises(KeyboardInterrupt):
        surgery.save(_external_pair(tmp_path, 2.0), out, force=True)
    monkeypatch.undo()
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".data"]) == 2
    assert np.array_equal(arrays(out)["w"], np.full(512, 1.0, np.float32))
    check(out)


def test_outputs_never_overwrite_the_input_model_or_its_data(exported, tmp_path):
    src = exported["dynamo"]
    for target in (src, src.parent / "model.onnx.data"):
        assert error_line(run("convert", src, "-o", target, "--to", "onnx", "--force")) == (
            f"error: the output would overwrite an input ({target}); choose a different output path; inputs are never modified"
        )


@pytest.mark.interop
def test_readme_onnx_block_runs(exported, tmp_path, monkeypatch):
    import shlex

    from conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### ONNX\n\n```sh\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "road.onnx").write_bytes(exported["script"].read_bytes())  # the README's road.onnx comes from export-onnx
    for line in block.strip().splitlines():
        args = shlex.split(line.split("#")[0])[1:]
        result = run(*args)
        assert result.exit_code == 0, (line, result.stderr)
    check(tmp_path / "whole.onnx")
    assert np.array_equal(run_ort(tmp_path / "whole.onnx", {"x": INPUT})[0], run_ort(exported["script"], {"x": INPUT})[0])


def test_the_graph_object_keeps_the_contract(tmp_path):
    from surgery.formats.onnx_model import OnnxGraph
    from surgery.graph import GRAPH, Graph, graph_of

    path = save(matmul_constant_model(), tmp_path / "c.onnx")
    tree = surgery.load(path)
    graph = graph_of(tree)
    assert isinstance(graph, Graph) and isinstance(graph, OnnxGraph) and tree.format_state[GRAPH] is graph
    assert graph.format == "onnx" and graph.source == path and isinstance(graph.model, onnx.ModelProto)
    weights = [n.attribute[0].t for n in graph.model.graph.node if n.output[0] in ("W", "b16")]
    assert [(list(t.dims), t.data_type, t.HasField("raw_data"), len(t.int32_data)) for t in weights] == [
        ([4, 6], TensorProto.FLOAT, False, 0),
        ([6], TensorProto.FLOAT16, False, 0),
    ]
    shape = next(n for n in graph.model.graph.node if n.output[0] == "shape").attribute[0].t
    assert list(numpy_helper.to_array(shape)) == [1, -1]  # graph structure keeps its data
    edited = onnx.ModelProto()
    edited.CopyFrom(graph.model)
    edited.producer_name = "edited"
    again = graph.with_model(edited)
    assert again.model.producer_name == "edited" and again.source == path and graph.model.producer_name == "tests"


def test_sparse_initializers_are_refused_by_name(tmp_path):
    model = identity_model([numpy_helper.from_array(np.ones(3, np.float32), "w")])
    values = numpy_helper.from_array(np.ones(1, np.float32), "sparse_w")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "sparse_w_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    path = save(model, tmp_path / "s.onnx")
    assert error_line(run("inspect", path)) == (
        f"error: sparse initializer 'sparse_w' is not supported ({path}); densify it before export, or use onnx tools"
    )
