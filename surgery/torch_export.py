"""ONNX export from a torch module, proven before it is written.

`export_onnx` exports through `torch.onnx.export` (the dynamo or the TorchScript exporter)
into a temporary folder, checks the result with `onnx.checker.check_model(full_check=True)`,
runs it in onnxruntime on the example input (and on a second batch size when the batch axis
is dynamic), compares every output with the module's own, and only then writes the
destination atomically, with the provenance in the model's `metadata_props`. Building the
user's module and loading a checkpoint into it live in `surgery.torch_loading`.

torch, onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OperationError
from .report import Report
from .torch_loading import first_line

__all__ = ["EXPORTERS", "ToleranceError", "default_exporter", "export_onnx", "random_inputs", "reference_outputs"]

EXPORTERS = ("dynamo", "torchscript")
PROTOBUF_LIMIT = 2**31  # bytes: one serialized ONNX protobuf cannot be larger
_GRAPH_ROOM = 64 << 20  # what the graph itself may need beside inline weights
SECOND_BATCH = 3  # the other batch size the dynamic batch axis is proven at
_REASON_CHARS = 300  # torch's reason in an exporter error, at most


class ToleranceError(OperationError):
    """onnxruntime's outputs differ from torch's beyond the tolerance; `report` holds every difference."""

    def __init__(self, what: str, where: str, fix: str, report: Report) -> None:
        super().__init__(what, where, fix)
        self.report = report


# -- example inputs ---------------------------------------------------------------------


def random_inputs(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str] | None = None, *, seed: int = 0) -> tuple:
    """Seeded example inputs: standard normal floats, integers in [0, 10), random bools."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in zip(shapes, dtypes or ["float32"] * len(shapes)):
        out.append(_random_tensor(tuple(shape), getattr(torch, dtype), generator))
    return tuple(out)


def _random_tensor(shape: tuple[int, ...], dtype, generator):
    import torch

    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 10, shape, generator=generator).to(dtype)


def default_exporter() -> str:
    """The exporter `torch.onnx.export` uses when not told (its `dynamo` argument's default)."""
    import torch

    dynamo = inspect.signature(torch.onnx.export).parameters["dynamo"].default
    return "dynamo" if dynamo else "torchscript"


# -- export, check, verify, write --------------------------------------------------------


def export_onnx(
    module,
    path: str | Path,
    example_inputs,
    *,
    dynamic_batch: bool = True,
    exporter: str | None = None,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    external_data: bool | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    force: bool = False,
    verbose: bool = False,
    history: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Any] | None = None,
) -> Report:
    """Export `module` to ONNX at `path`, checked by onnx and proven equal in onnxruntime.

    Args:
        module: a built torch.nn.Module with its weights loaded; exported in eval mode
            (its training flag is restored afterwards).
        path: the .onnx file to write; it is written only once every check has passed.
        example_inputs: a tensor or a tuple of tensors, one per forward argument.
        dynamic_batch: make axis 0 of every input (and of outputs that carry the batch) dynamic.
        exporter: "dynamo" or "torchscript"; default torch's own default.
        opset: the ONNX opset; default the exporter's.
        verify: run onnxruntime and compare every output with the module's.
        atol, rtol: the comparison passes where |onnx - torch| <= atol + rtol * |torch|.
        external_data: weights in a data file beside the model (`<name>.<id>.data`, written
            with it as one atomic unit); by default only when they would not fit in one
            protobuf (2 GB).
        input_names, output_names: default the forward signature's argument names, and the
            module's `output_names` attribute, a returned dict's keys or namedtuple's fields,
            else `output` / `output_0, output_1, ...`.
        dynamic_axes: more dynamic axes, {name: {axis: label}}.
        force: replace an existing `path`.
        verbose: let the exporter print what it prints (it is captured otherwise).
        history: the provenance steps the weights went through (`surgery.provenance.history`).
        provenance: more arguments of the export step's provenance record (the CLI's module spec).

    Returns:
        A Report whose facts hold the exporter, opset, inputs and outputs (names, shapes with
        symbolic labels, dtypes), the checker result, the differences per output and batch size,
        the files written and their sizes, and the seconds each step took.

    Raises:
        OperationError: the module rejects the input, the exporter fails (its reason and the
            other exporter to try), the checker rejects the model; ToleranceError: onnxruntime
            differs beyond the tolerance. Nothing is written then.
        OutputError: `path` exists (without `force`) or cannot be written.

    Example:
        >>> report = export_onnx(model.eval(), "model.onnx", torch.randn(1, 3, 224, 224))  # doctest: +SKIP
        >>> report.facts["verify"][0]["max_abs_diff"]  # doctest: +SKIP
    """
    import torch

    from .atomic import check_destination

    path = Path(path)
    _require_frameworks()
    exporter = exporter or default_exporter()
    if exporter not in EXPORTERS:
        raise OperationError(f"unknown exporter {exporter!r}", "exporter", f"use one of: {', '.join(EXPORTERS)}")
    check_destination(path, (), force=force)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    report = Report("export-onnx", facts={"exporter": exporter, "path": str(path), "atol": atol, "rtol": rtol, "dynamic_batch": dynamic_batch})
    training = module.training
    module.eval()
    try:
        reference = reference_outputs(module, inputs)
        names_in = list(input_names) if input_names else _forward_names(module, len(inputs))
        names_out = list(output_names) if output_names else _output_names(module, reference)
        _check_names(names_in, len(inputs), names_out, len(_flat_outputs(reference)))
        axes = _dynamic_axes(inputs, names_in, _flat_outputs(reference), names_out, dynamic_batch, dynamic_axes)
        external = _wants_external(module, external_data)
        cases = [(inputs, reference)] + ([_second_batch(module, inputs, axes, names_in)] if verify and dynamic_batch else [])
        with tempfile.TemporaryDirectory(prefix="surgery-export-") as folder:
            staged = Path(folder) / path.name
            seconds = time.perf_counter()
            _run_exporter(module, inputs, staged, exporter, opset, names_in, names_out, axes, external, verbose)
            report.facts["export_seconds"] = round(time.perf_counter() - seconds, 3)
            _check_model(staged)
            report.facts.update(checker="passed", **_describe(staged))
            if verify:
                seconds = time.perf_counter()
                report.facts["verify"] = _verify(staged, cases, names_in, names_out, atol, rtol, report)
                report.facts["verify_seconds"] = round(time.perf_counter() - seconds, 3)
            step = _export_step(module, exporter, report, provenance)
            report.facts["files"] = _write(staged, path, external, history, step, force=force)
    finally:
        module.train(training)
    report.facts.update(external_data=external, torch=torch.__version__)
    return report


def _require_frameworks() -> None:
    """onnx and onnxruntime prove the export; onnxscript is what the dynamo exporter builds graphs with."""
    for package in ("onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise OperationError(f"ONNX export needs the {package} package", package, "pip install 'surgery[export]'")


def reference_outputs(module, inputs: tuple):
    """The module's outputs on `inputs`, without gradients; a forward that raises is a one-line error."""
    import torch

    try:
        with torch.no_grad():
            outputs = module(*inputs)
    except Exception as e:  # the user's forward: its message is the reason
        shapes = ", ".join(f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in inputs if isinstance(t, torch.Tensor))
        raise OperationError(f"the module rejects the example input {shapes}: {first_line(e)}", "--input-shape", "give the shape (and dtype) its forward expects") from e
    for value in _flat_outputs(outputs):
        if not isinstance(value, torch.Tensor):
            raise OperationError(f"forward returns a {type(value).__name__} among its outputs", "forward", "return tensors (or tuples, lists or dicts of tensors) only")
    return outputs


def _flat_outputs(outputs) -> list:
    """The output tensors in the order both exporters flatten them (dict values in order)."""
    if isinstance(outputs, Mapping):
        return [t for v in outputs.values() for t in _flat_outputs(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in _flat_outputs(v)]
    return [outputs]


def _forward_names(module, count: int) -> list[str]:
    parameters = [p for p in inspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(parameters) >= count:
        return [p.name for p in parameters[:count]]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def _output_names(module, outputs) -> list[str]:
    flat = _flat_outputs(outputs)
    fields = getattr(outputs, "_fields", None)  # a namedtuple
    declared = getattr(module, "output_names", None)  # a module may say, as examples/ssd300_tiny.py does
    if isinstance(declared, (tuple, list)) and len(declared) == len(flat) and all(isinstance(n, str) for n in declared):
        return list(declared)
    if isinstance(outputs, Mapping) and len(outputs) == len(flat):
        return [str(k) for k in outputs]
    if fields and len(fields) == len(flat):
        return list(fields)
    return ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]


def _check_names(names_in: list[str], inputs: int, names_out: list[str], outputs: int) -> None:
    if len(names_in) != inputs:
        raise OperationError(f"{len(names_in)} input names for {inputs} inputs", "--input-names", f"give {inputs} names, in forward's order")
    if len(names_out) != outputs:
        raise OperationError(f"{len(names_out)} output names for {outputs} outputs", "--output-names", f"give {outputs} names, in the order forward returns them")
    for kind, names in (("input", names_in), ("output", names_out)):
        if len(set(names)) != len(names):
            raise OperationError(f"{kind} names repeat: {', '.join(names)}", f"--{kind}-names", "give each a different name")


def _dynamic_axes(inputs, names_in, outputs, names_out, dynamic_batch: bool, extra) -> dict[str, dict[int, str]]:
    """{value name: {axis: label}}: the batch axis (when dynamic) and the extra axes asked for."""
    axes: dict[str, dict[int, str]] = {}
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() else None
    if dynamic_batch:
        for name, tensor in zip(names_in, inputs):
            if tensor.dim():
                axes.setdefault(name, {})[0] = "batch"
        for name, tensor in zip(names_out, outputs):
            if getattr(tensor, "dim", lambda: 0)() and tensor.shape[0] == batch:
                axes.setdefault(name, {})[0] = "batch"
    known = {**dict(zip(names_in, inputs)), **dict(zip(names_out, outputs))}
    for name, more in (extra or {}).items():
        if name not in known:
            raise OperationError(f"--dynamic-axis names {name!r}, which is no input or output", "--dynamic-axis", f"use one of: {', '.join(known)}")
        for axis, label in more.items():
            if not -known[name].dim() <= int(axis) < known[name].dim():
                raise OperationError(f"{name!r} has {known[name].dim()} axes, not axis {axis}", "--dynamic-axis", "count axes from 0")
            axes.setdefault(name, {})[int(axis) % known[name].dim()] = str(label)
    return axes


def _wants_external(module, external_data: bool | None) -> bool:
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if external_data is None:
        return weights > PROTOBUF_LIMIT - _GRAPH_ROOM
    if not external_data and weights > PROTOBUF_LIMIT - _GRAPH_ROOM:
        raise OperationError(f"the weights ({weights:,} bytes) do not fit in one ONNX protobuf (2 GB)", "external_data=False", "leave external_data at None (automatic) or True")
    return external_data


def _run_exporter(module, inputs, staged: Path, exporter: str, opset, names_in, names_out, axes, external: bool, verbose: bool) -> None:
    import torch

    options: dict[str, Any] = {"input_names": names_in, "output_names": names_out, "opset_version": opset}
    if exporter == "dynamo":
        # Labels as strings: torch makes each a dynamic dimension and names the ONNX axis after it.
        per_input = tuple(axes.get(name) or None for name in names_in)
        options.update(dynamo=True, external_data=external, dynamic_shapes=per_input if any(per_input) else None)
    else:
        options.update(dynamo=False, dynamic_axes=axes or None)
    try:
        with _exporter_noise(verbose):
            torch.onnx.export(module, inputs, str(staged), **options)
    except Exception as e:  # torch raises many kinds; the innermost cause says why
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise OperationError(
            f"the {exporter} exporter failed: {_innermost_reason(e)}", "torch.onnx.export",
            f"try --exporter {other}, or --verbose to see the exporter's own report",
        ) from e


@contextlib.contextmanager
def _exporter_noise(verbose: bool) -> Iterator[None]:
    """Capture what the exporters print (Python prints, warnings, logging, C++ writes to fds 1 and 2)."""
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    disabled = logging.root.manager.disable
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            logging.disable(logging.CRITICAL)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                yield
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):  # what they buffered belongs to the sink
                if stream is not None:
                    stream.flush()
            logging.disable(disabled)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _innermost_reason(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {first_line(error)}"[:_REASON_CHARS]


def _check_model(staged: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise OperationError(f"the exported model fails onnx.checker: {first_line(e)}", "torch.onnx.export", "try the other exporter or another --opset") from e


def _describe(staged: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(staged), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "inputs": [_value(v) for v in model.graph.input], "outputs": [_value(v) for v in model.graph.output]}


def _value(value) -> dict[str, Any]:
    import onnx

    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}


def _second_batch(module, inputs, axes, names_in) -> tuple[tuple, Any]:
    """Inputs at another batch size (fresh floats, the example's rows for integers) and torch's outputs."""
    import torch

    batch = inputs[0].shape[0]
    size = SECOND_BATCH if batch != SECOND_BATCH else SECOND_BATCH + 1
    generator = torch.Generator().manual_seed(1)
    second = []
    for name, tensor in zip(names_in, inputs):
        if 0 not in axes.get(name, {}):
            second.append(tensor)
        elif tensor.dtype.is_floating_point:
            second.append(_random_tensor((size, *tensor.shape[1:]), tensor.dtype, generator))
        else:
            second.append(tensor[torch.arange(size) % tensor.shape[0]])
    second = tuple(second)
    try:
        return second, reference_outputs(module, second)
    except OperationError as e:  # the module itself takes one batch size only
        reason = e.what.partition(": ")[2]
        raise OperationError(f"the module rejects batch {size} (the batch axis is dynamic): {reason}", "--static", "export with --static for its one batch size, or make forward batch-agnostic") from e


def _verify(staged: Path, cases, names_in, names_out, atol: float, rtol: float, report: Report) -> list[dict[str, Any]]:
    import numpy as np

    session = _session(staged)
    rows = []
    for inputs, reference in cases:
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(names_in, inputs)}
        got = _run_onnxruntime(session, feeds)
        expected = [t.detach().cpu().numpy() for t in _flat_outputs(reference)]
        if len(got) != len(expected):
            raise OperationError(f"onnxruntime gives {len(got)} outputs and the module {len(expected)}", "torch.onnx.export", "try the other exporter")
        for name, mine, theirs in zip(names_out, got, expected):
            rows.append(_compare(name, int(inputs[0].shape[0]) if inputs[0].dim() else None, np.asarray(mine), theirs, atol, rtol))
    report.facts["verify"] = rows
    failed = [row for row in rows if not row["passed"]]
    if failed:
        worst = max(failed, key=lambda row: row["max_abs_diff"])
        raise ToleranceError(
            f"onnxruntime differs from torch beyond atol {atol:g}, rtol {rtol:g}: {len(failed)} of {len(rows)} comparisons, "
            f"worst output {worst['output']!r} at batch {worst['batch']} by {worst['max_abs_diff']:.3g}"
            + (f" ({worst['problem']})" if worst.get("problem") else ""),
            str(report.facts["path"]),
            "nothing was written; try the other exporter, or loosen --atol/--rtol if this is float rounding",
            report,
        )
    return rows


def _session(staged: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about its own graph rewrites
    try:
        with _exporter_noise(False):
            return onnxruntime.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OperationError(f"onnxruntime cannot load the exported model: {first_line(e)}", "onnxruntime", "try the other exporter or another --opset") from e


def _run_onnxruntime(session, feeds: dict) -> list:
    import onnxruntime

    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4  # its failure comes back as the exception below; do not print it too
    try:
        return session.run(None, feeds, quiet)
    except Exception as e:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        raise OperationError(f"onnxruntime fails on {shapes}: {_ort_reason(e)}", "onnxruntime", "the exported graph may have fixed a dynamic size; try the other exporter, or --static") from e


def _ort_reason(error: BaseException) -> str:
    """onnxruntime's message without its status prefix and the C++ source location."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(error))
    return re.sub(r"/onnxruntime_src/\S+:\d+ \S+?\(.*?\) ", "", text)[:_REASON_CHARS]


def _compare(name: str, batch: int | None, mine, theirs, atol: float, rtol: float) -> dict[str, Any]:
    import numpy as np

    row: dict[str, Any] = {"output": name, "batch": batch, "shape": list(theirs.shape)}
    if mine.shape != theirs.shape:
        return {**row, "max_abs_diff": float("inf"), "passed": False, "problem": f"onnxruntime gives shape {list(mine.shape)}"}
    if theirs.dtype.kind in "fc":
        close = np.isclose(mine, theirs, atol=atol, rtol=rtol, equal_nan=True)
        diff = np.abs(mine.astype(np.float64) - theirs.astype(np.float64))
        worst = float(np.nanmax(diff)) if diff.size else 0.0
    else:
        close = mine == theirs
        worst = float(np.abs(mine.astype(np.int64) - theirs.astype(np.int64)).max()) if theirs.size else 0.0
    return {**row, "max_abs_diff": worst, "passed": bool(close.all())}


def _export_step(module, exporter: str, report: Report, provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The export's provenance arguments: the module, what the caller adds (spec, checkpoint), the exporter."""
    import torch

    from .torch_loading import USER_FILE

    kind = type(module)
    where = "" if kind.__module__.startswith(USER_FILE) else f"{kind.__module__}."  # a file's module name means nothing
    step: dict[str, Any] = {"module": where + kind.__qualname__}
    step.update({k: v for k, v in (provenance or {}).items() if v is not None})
    step.update(exporter=exporter, opset=report.facts.get("opset"), torch=torch.__version__)
    return step


def _write(staged: Path, path: Path, external: bool, history: Sequence[Mapping[str, Any]], step: dict[str, Any], *, force: bool) -> list[dict[str, Any]]:
    """The checked model at `path` through surgery's ONNX writer: model and data file as one atomic unit."""
    from .formats.onnx_io import with_write_options
    from .io import load, save
    from .provenance import KEY, record

    tree = with_write_options(load(staged, "onnx"), external=external)
    tree = tree.derive(metadata={**tree.metadata, KEY: json.dumps(list(history), ensure_ascii=False, default=str)})
    save(record(tree, "export-onnx", **step), path, "onnx", force=force)
    return [{"path": str(p), "bytes": p.stat().st_size} for p in (path, *_data_files(path))]


def _data_files(path: Path) -> list[Path]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {x.value for t in model.graph.initializer for x in t.external_data if x.key == "location"}
    return [path.parent / name for name in sorted(locations)]
