"""How commands show a training checkpoint's state: optimizer kind, step, tensors, entries kept."""

from __future__ import annotations

import click

from .common import _printable


def training_document(tree) -> dict | None:
    """The training state as plain data for --json, or None for a checkpoint without one."""
    from ..formats.torch_training import describe, training_state

    state = training_state(tree)
    return describe(state) if state is not None else None


def print_training(tree) -> None:
    document = training_document(tree)
    if document is None:
        return
    for o in document["optimizers"]:
        step = "no step counter" if o["step"] is None else f"step {o['step']:g}"
        shown = f"{o['namespace']}/state/<parameter>/<key>" if o["mapped"] or document["framework"] == "torch" else f"{o['namespace']}/<name in the file>"
        click.echo(f"training: {o['where']}: {o['kind']}, {step}, {o['tensors']} tensors for {o['parameters']} parameters, as {shown}")
        if not o["mapped"]:
            click.echo(f"training: {o['where']} is not mapped to parameter names: {o['reason']}; edits that change parameters refuse it, --drop-optimizer leaves it out")
    if document["dropped"]:
        click.echo(f"training: left out by --drop-optimizer: {', '.join(document['dropped'])}")
    if document["framework"] == "torch":
        kept = ", ".join(_printable(k) for k in document["kept"]) or "none"
        click.echo(f"training: model state dict under {_printable(document['model_key'])!r}; other entries kept as they are: {kept}")


def note_training_not_written(tree, fmt: str, quiet: bool) -> None:
    """Only torch checkpoints and Keras files (of the layout read) hold their optimizer state: say
    so when another format leaves it behind."""
    from ..formats.torch_training import training_state

    state = training_state(tree)
    if state is None or quiet or fmt == "torch" and state.framework == "torch":
        return
    if state.framework == "keras" and fmt in ("keras_h5", "keras") and tree.format in ("keras_h5", "keras"):
        return
    left = [o.where for o in state.optimizers] + list(state.kept)
    if left:
        click.echo(f"note: {', '.join(_printable(k) for k in left)} not written: a {fmt} file holds the model's tensors only", err=True)
