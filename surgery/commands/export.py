"""`surgery export-onnx`: a checkpoint, through the user's own torch module, to a proven ONNX file."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import click

from .common import (
    _MAP_HELP,
    _apply_layout,
    _apply_name_options,
    _emit_json,
    _name_summary,
    _parse_rules,
    _printable,
    json_option,
    layout_options,
    name_options,
    output_options,
    quiet_option,
)

_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


# -- option types -------------------------------------------------------------------


class ModelSpecType(click.ParamType):
    """package.module:callable or path/to/file.py:callable."""

    name = "SPEC"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        target, _, attribute = str(value).rpartition(":")
        if not target or not attribute or not all(part.isidentifier() for part in attribute.split(".")):
            self.fail(f"{value!r} is not MODULE:CALLABLE; write e.g. torchvision.models:resnet18 or models.py:Net", param, ctx)
        return str(value)


class ModelArgType(click.ParamType):
    """K=V, V a Python literal (1, 0.5, True, None, (3, 3), 'text') or else a bare string."""

    name = "K=V"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep or not key.isidentifier():
            self.fail(f"{value!r} is not NAME=VALUE; write e.g. num_classes=9", param, ctx)
        try:
            return key, ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return key, text  # a bare word: a string, as a user would mean it (backbone=resnet50)


def _shape(text: str) -> tuple[int, ...] | None:
    parts = text.replace("x", ",").split(",")
    if not all(p.strip().isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


class ShapeType(click.ParamType):
    """1,3,224,224 (or 1x3x224x224)."""

    name = "SHAPE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        shape = _shape(str(value))
        if shape is None:
            self.fail(f"{value!r} is not a shape; write e.g. 1,3,224,224", param, ctx)
        return shape


class InputType(click.ParamType):
    """NAME=SHAPE[:DTYPE], e.g. image=1,3,224,224 or ids=1,128:int64."""

    name = "NAME=SHAPE[:DTYPE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, tuple[int, ...], str]:
        if isinstance(value, tuple):
            return value
        name, sep, rest = str(value).partition("=")
        text, _, dtype = rest.partition(":")
        shape = _shape(text) if sep and name else None
        if shape is None:
            self.fail(f"{value!r} is not NAME=SHAPE[:DTYPE]; write e.g. image=1,3,224,224 or ids=1,128:int64", param, ctx)
        if dtype and dtype not in _DTYPES:
            self.fail(f"{dtype!r} is not a dtype; use one of: {', '.join(_DTYPES)}", param, ctx)
        return name, shape, dtype or "float32"


class DynamicAxisType(click.ParamType):
    """NAME=AXIS:LABEL, e.g. image=2:height."""

    name = "NAME=AXIS:LABEL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int, str]:
        if isinstance(value, tuple):
            return value
        name, sep, rest = str(value).partition("=")
        axis, colon, label = rest.partition(":")
        if not (sep and name and colon and label and axis.lstrip("-").isdigit()):
            self.fail(f"{value!r} is not NAME=AXIS:LABEL; write e.g. image=2:height", param, ctx)
        return name, int(axis), label


class NamesType(click.ParamType):
    """A comma-separated list of names."""

    name = "NAMES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        names = [n.strip() for n in str(value).split(",")]
        if not all(names):
            self.fail(f"{value!r} has an empty name; write e.g. scores,boxes", param, ctx)
        return names


# -- the command ------------------------------------------------------------------------


@click.command("export-onnx")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@output_options
@click.option("--model", "model_spec", required=True, type=ModelSpecType(), help="What builds the torch.nn.Module: package.module:callable or path/to/file.py:callable. This imports and runs that code (see above).")
@click.option("--model-arg", "model_args", multiple=True, type=ModelArgType(), help="A keyword argument for the callable, K=V, V a Python literal (9, 0.5, True, (3, 3)) or a bare string (repeatable).")
@click.option("--input-shape", type=ShapeType(), help="The shape of the single input, e.g. 1,3,224,224 (float32).")
@click.option("--input", "input_specs", multiple=True, type=InputType(), help="One input: NAME=SHAPE[:DTYPE], in forward's order (repeatable; dtype default float32).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random example inputs.")
@click.option("--static", is_flag=True, help="Keep the batch axis fixed (it is dynamic by default).")
@click.option("--dynamic-axis", "dynamic_axes", multiple=True, type=DynamicAxisType(), help="Another dynamic axis: NAME=AXIS:LABEL, e.g. image=2:height (repeatable).")
@click.option("--input-names", type=NamesType(), help="Names of the graph inputs, comma-separated (default: forward's argument names).")
@click.option("--output-names", type=NamesType(), help="Names of the graph outputs, comma-separated (default: the module's output_names attribute, else output, or output_0, output_1, ...).")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), help="torch.onnx.export's exporter (default: torch's own default, dynamo in torch 2.9 and later).")
@click.option("--opset", type=click.IntRange(min=7), help="ONNX opset version (default: the exporter's).")
@click.option("--external-data", is_flag=True, help="Write the weights to a data file beside the model, OUTPUT.<id>.data, written with it as one atomic unit (automatic past protobuf's 2 GB limit).")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison (the checker still runs).")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="Absolute tolerance of the comparison.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="Relative tolerance: passes where |onnx - torch| <= atol + rtol * |torch|.")
@click.option("--verbose", is_flag=True, help="Show what the exporter prints (captured otherwise).")
@click.option("--key", metavar="NAME", help="PyTorch checkpoints: the top-level entry that holds the state dict (e.g. model_ema).")
@click.option("--map", "rules", multiple=True, metavar="REGEX=REPL", help=_MAP_HELP + " Applied after the layout conversion, to torch names.")
@name_options
@layout_options
@json_option
@quiet_option
def export_onnx(checkpoint: Path, output: Path, force: bool, dry_run: bool, model_spec: str, model_args: tuple, input_shape, input_specs: tuple, seed: int, static: bool, dynamic_axes: tuple, input_names, output_names, exporter, opset, external_data: bool, no_verify: bool, atol: float, rtol: float, verbose: bool, key, rules: tuple, strip_prefix, keep: tuple, drop: tuple, layout, from_layout, flatten_shapes: tuple, rules_file, transposed: tuple, depthwise: tuple, as_json: bool, quiet: bool) -> None:
    """Export CHECKPOINT to ONNX through your own torch module, checked and proven equal.

    Builds the module with --model, loads CHECKPOINT into it with
    load_state_dict(strict=True), exports it with torch.onnx.export, runs
    onnx.checker (full_check), and compares onnxruntime's outputs with the
    module's on seeded random inputs, at the given batch size and, when the
    batch axis is dynamic (the default), at another one. Each output's largest
    difference is printed. OUTPUT is written, atomically and with provenance
    in its metadata_props, only when every output is within --atol/--rtol.

    --model imports and runs your own Python code: this is the one place
    surgery runs code it did not write. CHECKPOINT is still read without
    unpickling anything (any format surgery reads: safetensors, npz, PyTorch
    zip or legacy, Keras HDF5, ONNX). As in `surgery convert`, --strip-prefix
    and --keep/--drop apply first, then a Keras-layout checkpoint is moved to
    torch layout (with convert's --layout options); --map then renames the
    torch names to the module's.

    \b
    Examples:
      surgery export-onnx pnet.pt -o pnet.onnx --model facenet_pytorch.models.mtcnn:PNet --input-shape 1,3,24,24
      surgery export-onnx ft.safetensors -o ft.onnx --model torchvision.models:resnet18 --model-arg num_classes=9 --input-shape 1,3,224,224
      surgery export-onnx model.h5 -o model.onnx --model mynet.py:Net --input-shape 1,1,48,48 --map '^dense_1\\.=fc.'
      surgery export-onnx ddp.pt -o two.onnx --model nets.py:Fusion --input image=1,3,64,64 --input meta=1,5 --strip-prefix module.
      surgery export-onnx ckpt.pt -o m.onnx --model nets.py:Net --input-shape 1,3,32,32 --exporter torchscript --opset 17 --dry-run
    """
    from ..atomic import check_destination
    from ..errors import OperationError
    from ..formats.torch_training import without_optimizer
    from ..io import load
    from ..torch_export import ToleranceError, random_inputs, reference_outputs
    from ..torch_export import export_onnx as export
    from ..torch_loading import build_module, load_into

    shapes, dtypes, names_in = _inputs(input_shape, input_specs, input_names)
    with without_optimizer():  # an ONNX model holds no optimizer: its state need not be read, nor follow --keep/--drop
        tree = load(checkpoint, key=key)
    check_destination(output, {checkpoint, *tree.source_paths()}, force=force)  # before anything slow
    if layout == "keras":
        raise OperationError("export-onnx needs the weights in torch layout", "--layout keras", "drop --layout, or give --layout torch")
    # As in `convert`: --strip-prefix, --keep and --drop, then the layout; --map then sees torch names.
    tree, name_reports = _apply_name_options(tree, strip_prefix, drop, keep)
    to_torch = layout or ("torch" if tree.convention.name == "keras" or from_layout == "keras" else None)
    tree, layout_report = _apply_layout(tree, to_torch, from_layout, flatten_shapes, rules_file, transposed, depthwise)
    kwargs = dict(model_args)
    module = build_module(model_spec, kwargs)
    loaded = load_into(module, tree, rules=_parse_rules(rules), where=str(checkpoint))
    inputs = random_inputs(shapes, dtypes, seed=seed)
    document: dict[str, Any] = {
        "checkpoint": str(checkpoint), "output": str(output), "model": model_spec, "model_args": kwargs,
        "tensors": loaded.facts["loaded"], **_name_summary([*name_reports, loaded]),
        "layout": layout_report.to_json() if layout_report is not None else None, "dry_run": dry_run,
    }
    if dry_run:
        reference_outputs(module.eval(), inputs)  # the input fits the module, or the one-line error
        return _finish(document, as_json, quiet)
    axes: dict[str, dict[int, str]] = {}
    for name, axis, label in dynamic_axes:
        axes.setdefault(name, {})[axis] = label
    try:
        report = export(
            module, output, inputs, dynamic_batch=not static, exporter=exporter, opset=opset, verify=not no_verify,
            atol=atol, rtol=rtol, external_data=True if external_data else None, input_names=names_in,
            output_names=output_names, dynamic_axes=axes, force=force, verbose=verbose, history=loaded.facts["history"],
            provenance={"checkpoint": str(checkpoint), "model_spec": model_spec, "model_args": kwargs or None, "seed": seed},
        )
    except ToleranceError as e:  # the table first (stdout), then the one-line error
        if not quiet and not as_json:
            _print_differences(e.report.facts)
        raise
    document.update(report.facts)
    _finish(document, as_json, quiet)


def _inputs(input_shape, input_specs: tuple, input_names) -> tuple[list, list, list | None]:
    from ..errors import OperationError

    if input_shape is not None and input_specs:
        raise OperationError("--input-shape and --input both given", "--input", "give --input-shape for one input, or --input NAME=SHAPE for each")
    if input_shape is None and not input_specs:
        raise OperationError("no input shape given", "--input-shape", "give --input-shape 1,3,224,224, or --input NAME=SHAPE[:DTYPE] per input")
    if input_shape is not None:
        return [input_shape], ["float32"], input_names
    if input_names is not None:
        raise OperationError("--input-names with --input", "--input-names", "--input NAME=... names each input already")
    return [s for _, s, _ in input_specs], [d for _, _, d in input_specs], [n for n, _, _ in input_specs]


def _finish(document: dict, as_json: bool, quiet: bool) -> None:
    if as_json:
        _emit_json(document)
    elif not quiet:
        _print_export(document)


def _print_export(document: dict) -> None:
    if document["layout"] is not None:
        changes = [c["kind"] for c in document["layout"]["changes"]]
        facts = document["layout"]["facts"]
        click.echo(f"layout {facts['from']} -> {facts['to']}: {changes.count('transposed')} transposed, {changes.count('renamed')} renamed, {changes.count('added')} added")
    renamed, dropped = len(document["renamed"]), len(document["dropped"])
    click.echo(f"loaded {document['tensors']} tensors into {document['model']} (strict)"
               + (f", {renamed} renamed" if renamed else "") + (f", {dropped} left out" if dropped else ""))
    if document["dry_run"]:
        click.echo(f"the weights fit and the example input runs; would export {document['output']}")
        return
    click.echo(f"exported with {document['exporter']} (opset {document['opset']}): " + "; ".join(
        f"{kind} " + ", ".join(f"{_printable(v['name'])} [{','.join(map(str, v['shape']))}] {v['dtype']}" for v in document[kind])
        for kind in ("inputs", "outputs")))
    click.echo("onnx.checker (full_check): passed")
    if "verify" in document:
        _print_differences(document)
    else:
        click.echo("onnxruntime comparison skipped (--no-verify)")
    files = ", ".join(f"{f['path']} ({f['bytes']:,} bytes)" for f in document["files"])
    click.echo(f"wrote {files}")


def _print_differences(facts: dict) -> None:
    rows = facts.get("verify") or []
    click.echo(f"onnxruntime vs torch (atol {facts['atol']:g}, rtol {facts['rtol']:g}):")
    width = max((len(_printable(r["output"])) for r in rows), default=0)
    for row in rows:
        verdict = "ok" if row["passed"] else "FAILED" + (f" ({row['problem']})" if row.get("problem") else "")
        click.echo(f"  {_printable(row['output']).ljust(width)}  batch {row['batch']}: largest |difference| {row['max_abs_diff']:.3g}  {verdict}")
