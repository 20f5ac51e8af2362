"""`surgery freeze`: write a freeze map."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .common import (
    _emit_json,
    _printable,
    json_option,
    output_options,
    quiet_option,
)


# -- freeze maps ---------------------------------------------------------------------


class LrMultType(click.ParamType):
    """--lr-mult GLOB=X: parameters matching GLOB train at X times the base learning rate."""

    name = "GLOB=X"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, float]:
        if isinstance(value, tuple):
            return value
        glob, _, number = str(value).rpartition("=")
        try:
            mult = float(number)
        except ValueError:
            mult = float("nan")
        if not glob or not (0 < mult < float("inf")):
            self.fail(f"{value!r} is not GLOB=X with X a positive number; write e.g. 'fc.*=10'", param, ctx)
        return (glob, mult)


def _recipe_names() -> list[str]:
    from ..ops.freeze import RECIPES

    return list(RECIPES)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@output_options
@click.option("--recipe", type=click.Choice(_recipe_names()), help="A transfer-learning case (see above); --freeze/--train/--lr-mult override it.")
@click.option("--head", "head_globs", multiple=True, metavar="GLOB", help="The new head's layers or parameters, for --recipe (repeatable). Default: detected.")
@click.option("--freeze", "freeze_globs", multiple=True, metavar="GLOB", help="Freeze matching parameters or layers (repeatable).")
@click.option("--train", "train_globs", multiple=True, metavar="GLOB", help="Train matching parameters or layers (repeatable).")
@click.option("--lr-mult", "lr_mults", multiple=True, type=LrMultType(), help="Learning-rate multiple for matching parameters, e.g. 'fc.*=10' (repeatable).")
@json_option
@quiet_option
def freeze(src: Path, output: Path, force: bool, dry_run: bool, recipe: str | None, head_globs: tuple[str, ...], freeze_globs: tuple[str, ...], train_globs: tuple[str, ...], lr_mults: tuple[tuple[str, float], ...], as_json: bool, quiet: bool) -> None:
    """Write a freeze map: which parameters train, and at what learning-rate multiple.

    OUTPUT is JSON, every parameter of SRC once, in checkpoint order:

    \b
      {"version": 1, "source": "SRC", "recipe": "small-similar", "head": [...],
       "parameters": {"features.0.weight": {"trainable": false, "lr_mult": 1.0}, ...},
       "buffers": ["bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]}

    Buffers (BatchNorm running_mean/running_var/num_batches_tracked, Keras
    moving_mean/moving_variance, integer tensors) are not parameters: they are
    listed apart and never trainable. Apply the map with
    surgery.torch.apply_freeze_map(model, "freeze.json", lr), which sets
    requires_grad and returns optimizer parameter groups, or with
    surgery.keras.apply_freeze_map(model, "freeze.json"), which sets
    layer.trainable.

    \b
    Recipes (dataset size, similarity to the pretraining data):
      small-similar    freeze everything but the head; train the head
      small-different  freeze the kept early layers; train the head. Cutting
                       the later layers off is `surgery truncate`, not this command
      large-similar    train everything; the head at lr_mult 10
      large-different  retrain everything; the head at lr_mult 10
    The head is --head GLOB, or detected (a known classifier such as fc,
    classifier, predictions).

    Every parameter starts trainable at lr_mult 1; a recipe sets head and body;
    --freeze, --train and --lr-mult override it. A glob matches a parameter's
    name or its layer ('*' crosses '.' and '/'). When globs disagree on a
    parameter, the more specific glob (more characters other than * ? [...])
    wins; on a tie --train beats --freeze, and the larger lr_mult wins. Each
    conflict is reported. A glob that matches no parameter is an error.

    \b
    Examples:
      surgery freeze resnet18.pth -o freeze.json --recipe small-similar --head fc
      surgery freeze vgg16.h5 -o freeze.json --recipe large-similar      (head detected)
      surgery freeze ssd300.h5 -o freeze.json --freeze 'conv[1-3]_*' --lr-mult '*_mbox_conf=10'
      surgery freeze model.safetensors -o freeze.json --freeze '*' --train 'head.*' --dry-run
    """
    from ..atomic import atomic_output, check_destination
    from ..errors import OperationError
    from ..io import load
    from ..ops.freeze import freeze_map

    mults: dict[str, float] = {}
    for glob, mult in lr_mults:
        if mults.setdefault(glob, mult) != mult:
            raise OperationError(f"--lr-mult {glob!r} is given twice with different values", "--lr-mult", "give each glob once")
    tree = load(src)
    fmap, report = freeze_map(tree, freeze=freeze_globs, train=train_globs, lr_mult=mults, recipe=recipe, head=head_globs, source=str(src))
    check_destination(output, {Path(src), *tree.source_paths()}, force=force)
    document = fmap.to_json()
    if not dry_run:
        with atomic_output(output) as tmp:
            tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        _emit_json(document)
    elif not quiet:
        _print_freeze(report, output, dry_run)


def _print_freeze(report, output: Path, dry_run: bool) -> None:
    facts = report.facts
    if "head" in facts:
        click.echo(f"head: {_printable(', '.join(facts['head']['parameters']))} ({_printable(facts['head']['why'])})")
    for rule in facts["rules"]:
        names = _printable(", ".join(rule["parameters"]))
        click.echo(f"{_printable(rule['rule'])} -> {rule['sets']}: {len(rule['parameters'])} parameter(s): {names}")
    for note in report.notes:
        click.echo(f"note: {_printable(note)}")
    click.echo(
        f"{facts['parameters']} parameters: {facts['trainable']} trainable, {facts['frozen']} frozen; "
        f"{facts['buffers']} buffers listed apart (not parameters)"
    )
    click.echo(f"{'would write' if dry_run else 'wrote'} {output}")
