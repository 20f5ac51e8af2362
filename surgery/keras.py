"""Helpers for Keras users: freeze maps on models.

keras is imported inside each function, so `import surgery` never needs it.
"""

from __future__ import annotations

__all__: list[str] = []


__all__ += ["apply_freeze_map"]


def apply_freeze_map(model, fmap, *, strict: bool = True):
    """Set each layer's `trainable` from a freeze map; return a Report with notes.

    A Keras layer is frozen or trained as a whole, so all of a layer's parameters
    must agree in the map. Map names are surgery's Keras names, `layer/param`
    (`conv1/kernel` from a Keras 2 or full-model .h5, `conv1/0` from a Keras 3
    .weights.h5; a nested model's layers as `outer/inner/param`). Keras has no
    per-layer learning rate: a map with lr_mult != 1 gives a note saying so.

    Args:
        model: a built Keras 3 model.
        fmap: a FreezeMap, a map document (dict), or the path of a map file.
        strict: when True (default), a layer of the model with weights that the map
            does not cover, or a map layer the model does not have, is an error;
            when False they are left as they are and listed in the report's notes.

    Returns:
        Report("apply-freeze-map") with facts "frozen" and "trainable" (layer
        paths) and notes (learning-rate multipliers, frozen BatchNormalization).

    Raises:
        OperationError: a layer whose parameters disagree, or a missing name (strict).

    Example:
        >>> report = apply_freeze_map(model, "freeze.json")   # doctest: +SKIP
        >>> print("\\n".join(report.notes))                    # doctest: +SKIP
    """
    from .ops.freeze import FreezeMap
    from .report import Report

    fmap = FreezeMap.coerce(fmap)
    report = Report("apply-freeze-map")
    index = _layer_index(model)
    per_layer = _settings_per_layer(fmap, index, strict, report)
    _check_covered(index, per_layer, fmap, strict, report)
    _set_trainable(index, per_layer, report)
    _learning_rate_note(per_layer, report)
    return report


def _layer_index(model) -> dict[str, object]:
    """Every layer, nested ones too, by path (`outer/inner`), in model order."""
    index: dict[str, object] = {}

    def walk(container, prefix: str) -> None:
        for layer in getattr(container, "layers", []):
            path = prefix + layer.name
            index[path] = layer
            walk(layer, path + "/")

    walk(model, "")
    return index


def _resolve(path: str, index: dict[str, object]) -> str | None:
    """A map layer path -> the model's layer path: exact, else by its last name if unique."""
    if path in index:
        return path
    last = path.rsplit("/", 1)[-1]
    found = [p for p in index if p.rsplit("/", 1)[-1] == last]
    return found[0] if len(found) == 1 else None


def _settings_per_layer(fmap, index, strict: bool, report) -> dict[str, dict[str, object]]:
    """model layer path -> {map parameter name: Setting}; checks a layer's parameters agree."""
    from .errors import OperationError

    per_layer: dict[str, dict[str, object]] = {}
    for name, setting in fmap.parameters.items():
        where = _resolve(name.rpartition("/")[0], index)
        if where is None:
            if strict:
                raise OperationError(
                    f"freeze map parameter {name!r} belongs to no layer of the model",
                    fmap.source or "freeze map",
                    "check the map was made from this model's .h5, or pass strict=False",
                )
            report.notes.append(f"ignored {name!r}: the model has no layer {name.rpartition('/')[0]!r}")
            continue
        per_layer.setdefault(where, {})[name] = setting
    for path, settings in per_layer.items():
        _check_agree(path, settings, fmap)
    return {path: per_layer[path] for path in index if path in per_layer}  # in model order


def _check_agree(path: str, settings: dict[str, object], fmap) -> None:
    from .errors import OperationError

    frozen = [n for n, s in settings.items() if not s.trainable]
    trained = [n for n, s in settings.items() if s.trainable]
    if frozen and trained:
        raise OperationError(
            f"layer {path!r} has frozen ({frozen[0]!r}) and trainable ({trained[0]!r}) parameters",
            fmap.source or "freeze map",
            "Keras freezes whole layers: give all of a layer's parameters the same trainable flag",
        )


def _check_covered(index, per_layer, fmap, strict: bool, report) -> None:
    """Every layer that owns weights must be covered by the map, itself or through a parent."""
    from .errors import OperationError

    for path, layer in index.items():
        if getattr(layer, "layers", None) or not layer.weights:
            continue
        if any(path == p or path.startswith(p + "/") for p in per_layer):
            continue
        if _only_buffers(path, fmap):
            continue
        if strict:
            raise OperationError(
                f"layer {path!r} of the model has weights but no parameter in the freeze map",
                fmap.source or "freeze map",
                "make the map from this model's .h5, or pass strict=False to leave the layer as it is",
            )
        report.notes.append(f"left {path!r} as it is (trainable={layer.trainable}): not in the freeze map")


def _only_buffers(path: str, fmap) -> bool:
    last = path.rsplit("/", 1)[-1]
    return any(b.rpartition("/")[0].rsplit("/", 1)[-1] == last for b in fmap.buffers)


def _set_trainable(index, per_layer, report) -> None:
    frozen_bn = []
    for path, settings in per_layer.items():
        layer = index[path]
        trainable = next(iter(settings.values())).trainable
        layer.trainable = trainable
        report.facts.setdefault("trainable" if trainable else "frozen", []).append(path)
        if not trainable and type(layer).__name__ == "BatchNormalization":
            frozen_bn.append(path)
    report.facts.setdefault("trainable", [])
    report.facts.setdefault("frozen", [])
    if frozen_bn:
        report.notes.append(
            f"frozen BatchNormalization layers ({', '.join(frozen_bn)}) run in inference mode in Keras: "
            "they use their moving statistics and do not update them"
        )


def _learning_rate_note(per_layer, report) -> None:
    mults = {
        path: s.lr_mult for path, settings in per_layer.items() for s in settings.values() if s.trainable and s.lr_mult != 1.0
    }
    if mults:
        listed = ", ".join(f"{p} x{m:g}" for p, m in mults.items())
        report.notes.append(
            f"Keras has no per-layer learning rate, so the map's lr_mult is not applied ({listed}); "
            "train those layers first with the rest frozen, or scale their gradients in a custom train_step"
        )

