"""Helpers for PyTorch users: state dicts to and from trees, strict loading and proven ONNX export, freeze maps.

torch is imported inside each function, so `import surgery` never needs it.
"""

from __future__ import annotations

__all__: list[str] = []

# -- state dicts ------------------------------------------------------------------

__all__ += ["to_state_dict", "from_state_dict"]


def to_state_dict(tree):
    """The tree's tensors as an ordered `dict[str, torch.Tensor]`, ready for `load_state_dict`.

    Every dtype torch has comes out as that torch dtype (bfloat16 and float8 through
    their raw bytes). Entries that share one storage in the source (tied weights read
    unchanged from one file, or one array from `from_state_dict`) come out as views of
    one storage, so they stay tied. Each storage is read once, one at a time.

    Args:
        tree: a Tree in PyTorch layout (output axis first).

    Returns:
        An ordered dict of CPU tensors, in the tree's order.

    Raises:
        OutputError: the tree is in Keras layout, or holds a dtype torch lacks (packed fp4/fp6).

    Example:
        >>> model.load_state_dict(to_state_dict(surgery.load("model.safetensors")), strict=True)  # doctest: +SKIP
    """
    from .formats.torch_writer import check_writable, plan_storages

    check_writable(tree)
    tensors = {}
    for storage in plan_storages(tree):
        flat = _flat_tensor(storage.source.read().reshape(-1), storage.dtype)
        for entry, offset in storage.views:
            tensors[entry.name] = flat[offset : offset + entry.numel].view(entry.shape)
    return {name: tensors[name] for name in tree}


def from_state_dict(sd, *, metadata=None):
    """A tree over a state dict's tensors, in PyTorch layout, without copying their data.

    Tensors that share a storage are recorded in each entry's `attrs["torch.storage"]`;
    those that are the same view of it (tied weights) share one array, so writing the
    tree to a .pt file, or `to_state_dict`, keeps them tied.

    Args:
        sd: a mapping of names to tensors, such as `module.state_dict()`.
        metadata: string metadata for the tree (kept by formats that store metadata); by
            default what surgery wrote into `sd._metadata` when it saved the file `sd` came from.

    Returns:
        A Tree of in-memory entries. It views the tensors' memory: do not modify them in
        place while the tree is in use.

    Raises:
        OperationError: a value is not a tensor, or its dtype has no surgery form.

    Example:
        >>> tree = from_state_dict(model.state_dict())  # doctest: +SKIP
        >>> surgery.save(tree, "model.safetensors")  # doctest: +SKIP
    """
    from .tree import TORCH, ArraySource, Entry, Tree

    storages: dict[int, str] = {}
    arrays: dict[tuple, object] = {}
    entries = []
    for name, tensor in sd.items():
        tensor = _plain_tensor(name, tensor)
        attrs = {}
        if tensor.numel():
            pointer = tensor.untyped_storage().data_ptr()
            attrs["torch.storage"] = storages.setdefault(pointer, str(len(storages)))
        view = (attrs.get("torch.storage"), tensor.dtype, tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        array = arrays.get(view) if attrs else None
        if array is None:
            array = arrays[view] = _numpy_of(name, tensor)
        entries.append(Entry(str(name), tuple(tensor.shape), _dtype_name(name, tensor), ArraySource(array), attrs))
    if metadata is None:
        metadata = _surgery_metadata(sd)
    return Tree(entries, convention=TORCH, metadata=metadata)


def _surgery_metadata(sd) -> dict[str, str]:
    from .formats.torch_writer import METADATA_KEY

    found = (getattr(sd, "_metadata", None) or {}).get(METADATA_KEY)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _flat_tensor(array, dtype: str):
    """A 1-d torch tensor of `dtype` over a 1-d numpy array's bytes (no copy)."""
    import numpy as np
    import torch

    raw = torch.from_numpy(np.ascontiguousarray(array).view(np.uint8))
    return raw.view(getattr(torch, dtype))


def _plain_tensor(name, tensor):
    import torch

    from .errors import OperationError

    if not isinstance(tensor, torch.Tensor):
        raise OperationError(
            f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor",
            str(name),
            "pass only tensors, e.g. module.state_dict()",
        )
    return tensor.detach().cpu()


def _dtype_name(name, tensor) -> str:
    from . import dtypes
    from .errors import OperationError

    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in dtypes.DTYPES or dtypes.get(dtype).packed:
        raise OperationError(
            f"tensor {name!r} is torch.{dtype}, which surgery cannot hold",
            str(name),
            f"convert it first, e.g. tensor.to(torch.float32); surgery holds: {', '.join(n for n, d in dtypes.DTYPES.items() if not d.packed)}",
        )
    return dtype


def _numpy_of(name, tensor):
    """The tensor's values as a numpy array of the matching (ml_dtypes) dtype, sharing memory when it can."""
    import torch

    from . import dtypes

    target = dtypes.get(_dtype_name(name, tensor)).numpy()
    contiguous = tensor.contiguous()
    raw = contiguous.reshape(-1).view(torch.uint8) if contiguous.dim() else contiguous.reshape(1).view(torch.uint8)
    return raw.numpy().view(target).reshape(tuple(tensor.shape))

# -- ONNX export (surgery/torch_export.py, surgery/torch_loading.py) -----------------

__all__ += ["export_onnx", "load_into"]

from .torch_export import export_onnx  # noqa: E402  (each imports torch only when called)
from .torch_loading import load_into  # noqa: E402

# -- freeze maps --------------------------------------------------------------------

__all__ += ["apply_freeze_map"]


def apply_freeze_map(module, fmap, base_lr: float, *, strict: bool = True) -> list[dict]:
    """Set `requires_grad` from a freeze map and return optimizer parameter groups.

    Args:
        module: a torch.nn.Module whose parameter names are the map's (as in its state dict).
        fmap: a FreezeMap, a map document (dict), or the path of a map file
            written by `surgery freeze`.
        base_lr: the learning rate of lr_mult 1.
        strict: when True (default), a module parameter missing from the map, or a
            map parameter missing from the module, is an error. When False, such
            module parameters keep their requires_grad (and train at lr_mult 1 if
            they require grad), and such map names are ignored.

    Returns:
        One group per distinct lr_mult among trainable parameters, in map order:
        `[{"params": [...], "lr": base_lr * mult, "lr_mult": mult}]`. Frozen
        parameters are in no group. Buffers (BatchNorm running statistics) are not
        parameters and are never touched.

    Raises:
        OperationError: a name missing on either side (strict), or tied parameters
            the map sets differently.

    Example:
        >>> groups = apply_freeze_map(model, "freeze.json", 1e-3)   # doctest: +SKIP
        >>> optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)  # doctest: +SKIP
    """
    from .ops.freeze import FreezeMap

    fmap = FreezeMap.coerce(fmap)
    named = _named_parameters(module)
    settings = _match_names(module, named, fmap, strict)
    _set_requires_grad(named, settings)
    return _param_groups(named, settings, base_lr)


def _named_parameters(module) -> list[tuple[str, object]]:
    # Tied parameters appear under every name, as they do in a state dict.
    return list(module.named_parameters(remove_duplicate=False))


def _match_names(module, named, fmap, strict: bool) -> dict[str, object]:
    """name -> Setting for the module's parameters that the map covers; checks both sides."""
    from .errors import OperationError

    names = list(dict.fromkeys(n for n, _ in named))
    buffers = {n for n, _ in module.named_buffers(remove_duplicate=False)}
    if strict:
        for name in names:
            if name not in fmap.parameters:
                where = "listed as a buffer in the map" if name in fmap.buffers else "not in the freeze map"
                raise OperationError(
                    f"module parameter {name!r} is {where}",
                    fmap.source or "freeze map",
                    "make the map from this model's checkpoint, or pass strict=False to leave it as it is",
                )
        known = set(names)
        for name in fmap.parameters:
            if name not in known:
                what = "a buffer" if name in buffers else "not a parameter"
                raise OperationError(
                    f"freeze map parameter {name!r} is {what} of the module",
                    fmap.source or "freeze map",
                    "check the map was made from this model's checkpoint (a prefix such as 'module.' may differ), or pass strict=False",
                )
    return {n: fmap.parameters[n] for n in names if n in fmap.parameters}


def _set_requires_grad(named, settings) -> None:
    from .errors import OperationError

    chosen: dict[int, tuple[str, object]] = {}
    for name, param in named:
        if name not in settings:
            continue
        first = chosen.setdefault(id(param), (name, settings[name]))
        if first[1] != settings[name]:
            raise OperationError(
                f"tied parameters {first[0]!r} and {name!r} are set differently by the freeze map",
                "freeze map",
                "give tied parameters the same trainable and lr_mult",
            )
        param.requires_grad_(settings[name].trainable)


def _param_groups(named, settings, base_lr: float) -> list[dict]:
    groups: dict[float, dict] = {}
    seen: set[int] = set()
    for name, param in named:
        setting = settings.get(name)
        trains = setting.trainable if setting is not None else param.requires_grad
        if not trains or id(param) in seen:
            continue
        seen.add(id(param))
        mult = setting.lr_mult if setting is not None else 1.0
        groups.setdefault(mult, {"params": [], "lr": base_lr * mult, "lr_mult": mult})["params"].append(param)
    return list(groups.values())
