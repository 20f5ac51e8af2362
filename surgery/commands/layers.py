"""Head and layer surgery: `surgery strip-head`, `truncate`, `reinit` and `adapt-input`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from .common import (
    _emit_json,
    _printable,
    _report,
    _write,
    json_option,
    output_options,
    quiet_option,
)


# -- head and layer surgery: strip-head, truncate ------------------------------------


def _layer_command(kind: str, src: Path, output: Path, force: bool, dry_run: bool, as_json: bool, quiet: bool, edit: Callable) -> None:
    """Shared by strip-head and truncate: load, edit, check the output, write unless --dry-run, report."""
    from ..io import check_output, load

    tree = load(src)
    edited, report = edit(tree)
    fmt = check_output(edited, output, force=force)
    _write(kind, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet or as_json)
    removed = [{"name": c.name, "was": c.before} for c in report.changes if c.kind == "dropped"]
    document = {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, **report.facts}
    document.update({"removed_tensors": removed, "notes": report.notes})
    _report(document, as_json, quiet, _print_layer_edit)


def _print_layer_edit(document: dict) -> None:
    if "head" in document:
        click.echo(f"head: {_printable(document['head']['why'])}")
    if "after" in document:
        click.echo(f"keeping the layers up to and including {_printable(document['after'])}")
    layers = document["removed_layers"]
    click.echo(f"removed {len(layers)} layers: {_printable(', '.join(layers)) or '-'}")
    for row in document["removed_tensors"]:
        click.echo(f"  {_printable(row['name'])}  {row['was']}")
    for note in document["notes"]:
        click.echo(f"note: {_printable(note)}")
    verb = "would write" if document["dry_run"] else "wrote"
    click.echo(f"{verb} {document['output']} ({document['format']}, {document['kept_tensors']} tensors kept, {len(document['removed_tensors'])} removed)")


@click.command("strip-head")
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--head", "globs", multiple=True, metavar="GLOB", help="Layers or tensors to remove (repeatable). Default: detect the classification top.")
@click.option("--family", type=click.Choice(["keras-applications", "torchvision", "timm", "ssd"]), help="Use this family's top from the head table instead of detecting (ssd: its *_mbox_conf/*_mbox_loc layers).")
@json_option
@quiet_option
def strip_head(src: Path, output: Path, force: bool, dry_run: bool, globs: tuple[str, ...], family: str | None, as_json: bool, quiet: bool) -> None:
    """Remove the classification head, keeping every other weight unchanged.

    The head is found from a Keras full model's graph (walking back from the
    output through Activation, pooling, Flatten and Dropout to the layer that
    makes the class scores), or from the table of known tops: Keras
    applications predictions/fc1/fc2/flatten, torchvision fc/classifier.*/head,
    timm head/fc/classifier. When it is unsure it lists the candidates and
    writes nothing. Every removed tensor is listed; try --dry-run first.

    \b
    Examples:
      surgery strip-head vgg16.h5 -o vgg16_notop.h5 --dry-run
      surgery strip-head resnet18.pth -o backbone.safetensors
      surgery strip-head model.safetensors -o out.safetensors --head 'head.*'
      surgery strip-head ssd300.h5 -o ssd300_base.h5 --family ssd
    """
    from ..ops.strip import strip_head as strip

    _layer_command("strip-head", src, output, force, dry_run, as_json, quiet, lambda tree: strip(tree, globs, family))


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--after", required=True, metavar="LAYER", help="The last layer to keep (a PyTorch module name such as layer3 keeps all of it).")
@json_option
@quiet_option
def truncate(src: Path, output: Path, force: bool, dry_run: bool, after: str, as_json: bool, quiet: bool) -> None:
    """Keep the layers up to and including LAYER, in the checkpoint's own order.

    The order is a Keras file's layer list (layer_names) or the PyTorch key
    order. A Keras full model's model_config is rewritten to match, with the
    layers that fed removed ones as its outputs.

    \b
    Examples:
      surgery truncate vgg16.h5 -o vgg16_block4.h5 --after block4_pool
      surgery truncate resnet50.pth -o resnet50_c4.safetensors --after layer3
    """
    from ..ops.strip import truncate as cut

    _layer_command("truncate", src, output, force, dry_run, as_json, quiet, lambda tree: cut(tree, after))

# -- re-initialisation: reinit, adapt-input -------------------------------------------


def _write_reinit(label: str, src: Path, edited, report, output: Path, force: bool, dry_run: bool, quiet: bool) -> dict:
    """check_output, then save unless dry-running; the shared start of reinit and adapt-input's document."""
    from ..io import check_output

    fmt = check_output(edited, output, force=force)
    _write(label, edited, output, fmt, force=force, dry_run=dry_run, quiet=quiet)
    return {"input": str(src), "output": str(output), "format": fmt, "dry_run": dry_run, "notes": list(report.notes)}


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--layers", "layer_globs", multiple=True, required=True, metavar="GLOB", help="Layers (or tensors) to re-initialise (repeatable); '*' crosses '/' and '.'.")
@click.option("--init", required=True, metavar="NAME", help="Kernels: xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, normal:STD, zeros, ones or constant:V.")
@click.option("--bias-init", default="zeros", show_default=True, metavar="NAME", help="Biases: zeros, ones, constant:V or normal:STD.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; each tensor draws from its own generator seeded by (seed, its name).")
@click.option("--layout", type=click.Choice(["keras", "torch"]), help="Kernel layout, when the file does not say: keras (..., in, out) or torch (out, in, ...).")
@json_option
@quiet_option
def reinit(src: Path, output: Path, force: bool, dry_run: bool, layer_globs: tuple[str, ...], init: str, bias_init: str, seed: int, layout: str | None, as_json: bool, quiet: bool) -> None:
    """Re-initialise the tensors of some layers; everything else is copied unchanged.

    \b
    Kernels get --init, with fans from the layout (torch's formulas):
      Keras conv (h, w, in, out):  fan_in = h*w*in,  fan_out = h*w*out  (1-D/3-D alike)
      torch conv (out, in, h, w):  fan_in = in*h*w,  fan_out = out*h*w
      dense: Keras (in, out), torch (out, in)
      depthwise kernels: from the shape, as each framework computes them
      xavier_uniform   U(-b, b), b = sqrt(6 / (fan_in + fan_out))      (gain 1)
      xavier_normal    N(0, s),  s = sqrt(2 / (fan_in + fan_out))      (gain 1)
      kaiming_uniform  U(-b, b), b = sqrt(2) * sqrt(3 / fan_in)        (torch default: fan_in, relu)
      kaiming_normal   N(0, s),  s = sqrt(2) / sqrt(fan_in)
      normal:STD  N(0, STD);  zeros;  ones;  constant:V
    Biases get --bias-init (zeros). Normalisation layers, known by their names
    (gamma/beta/moving_mean/moving_variance; weight/bias beside running_mean/running_var),
    get gamma 1, beta 0, mean 0, variance 1, num_batches_tracked 0, whatever --init says.
    Dtypes are kept; integer buffers (e.g. position_ids) are left unchanged and listed.

    \b
    Examples:
      surgery reinit resnet50.pt -o fresh_fc.safetensors --layers fc --init kaiming_uniform
      surgery reinit vgg16.h5 -o vgg16_new_top.h5 --layers 'fc*' --layers predictions --init xavier_uniform --seed 1
      surgery reinit model.safetensors -o out.safetensors --layers 'head.*' --init normal:0.01 --layout torch
    """
    from ..io import load
    from ..ops.reinit import reinit as reinit_op

    edited, report = reinit_op(load(src), layer_globs, init, seed=seed, bias_init=bias_init, layout=layout)
    document = _write_reinit("reinit", src, edited, report, output, force, dry_run, quiet or as_json)
    document.update(seed=seed, tensors=report.facts["tensors"])
    if as_json:
        _emit_json(document)
    elif not quiet:
        for change in report.changes:
            click.echo(f"{_printable(change.name)}  {change.before}  {change.detail}")
        for note in document["notes"]:
            click.echo(f"note: {_printable(note)}")
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{verb} {output} ({document['format']}): {len(report.changes)} tensors re-initialised, seed {seed}")


@click.command("adapt-input")
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--channels", type=int, required=True, metavar="N", help="Input channels the new model takes (1 for grayscale).")
@click.option("--layer", metavar="NAME", help="The conv layer (or kernel tensor) to adapt; default: the first conv with 3 input channels.")
@click.option("--layout", type=click.Choice(["keras", "torch"]), help="Kernel layout, when the file does not say: keras (HWIO) or torch (OIHW).")
@json_option
@quiet_option
def adapt_input(src: Path, output: Path, force: bool, dry_run: bool, channels: int, layer: str | None, layout: str | None, as_json: bool, quiet: bool) -> None:
    """Change the input channels of a model's first conv from RGB to N channels.

    The rule is timm's adapt_input_conv, on the input axis (2 in Keras HWIO,
    1 in torch OIHW): for N = 1 the three RGB weights are summed, so a gray
    image gives what the RGB model gives for that image repeated 3 times; for
    other N the RGB weights are repeated ceil(N/3) times, cut to N, and
    scaled by 3/N. Without --layer the first rank-4 conv kernel in file order
    with 3 input channels is chosen. Only that kernel changes.

    \b
    Examples:
      surgery adapt-input resnet50.pt -o resnet50_gray.safetensors --channels 1
      surgery adapt-input model.weights.h5 -o rgbn.weights.h5 --channels 4 --layer conv1
    """
    from ..io import load
    from ..ops.reinit import adapt_input as adapt_op

    edited, report = adapt_op(load(src), channels, layer=layer, layout=layout)
    document = _write_reinit("adapt-input", src, edited, report, output, force, dry_run, quiet or as_json)
    document.update(report.facts)
    if as_json:
        _emit_json(document)
    elif not quiet:
        facts = report.facts
        click.echo(f"{_printable(str(facts['tensor']))}: {facts['why']}")
        click.echo(f"  {facts['before']} -> {facts['after']}: {facts['rule']}")
        for note in document["notes"]:
            click.echo(f"note: {_printable(note)}")
        verb = "would write" if dry_run else "wrote"
        click.echo(f"{verb} {output} ({document['format']}). Build the model with {channels} input channel{'s' if channels != 1 else ''}.")
