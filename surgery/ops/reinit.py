"""Re-initialise chosen layers (`reinit`) and adapt a first conv to N input channels (`adapt_input`).

`reinit` gives every chosen tensor fresh values, by its role in its layer:

* kernels (conv and dense weights) get `init`, with fans from `surgery.ops.fans`:

  =================  ===========================================  ==========================
  init               distribution                                 torch equivalent
  =================  ===========================================  ==========================
  xavier_uniform     U(-b, b), b = sqrt(6 / (fan_in + fan_out))   xavier_uniform_ (gain 1)
  xavier_normal      N(0, s), s = sqrt(2 / (fan_in + fan_out))    xavier_normal_ (gain 1)
  kaiming_uniform    U(-b, b), b = sqrt(2) * sqrt(3 / fan_in)     kaiming_uniform_ (fan_in, relu)
  kaiming_normal     N(0, s), s = sqrt(2) / sqrt(fan_in)          kaiming_normal_ (fan_in, relu)
  normal:STD         N(0, STD)                                    normal_(0, STD)
  zeros, ones        0, 1                                         zeros_, ones_
  constant:V         V                                            constant_(V)
  =================  ===========================================  ==========================

* biases get `bias_init` (zeros unless asked otherwise);
* normalisation layers get their identity whatever `init` says: gamma/weight 1,
  beta/bias 0, moving/running mean 0, variance 1, `num_batches_tracked` 0. They are
  known by parameter names (Keras gamma/beta/moving_mean/moving_variance; PyTorch
  weight/bias beside running_mean/running_var, or a rank-1 weight with a bias of its
  shape as in LayerNorm/GroupNorm). Keras 3 `.weights.h5` files number their variables
  (`bn/0` ... `bn/3`); there a layer of four rank-1 tensors of one shape is read as
  BatchNormalization (gamma, beta, mean, variance) and one of two as gamma, beta;
  in a layer with a kernel, numbered rank-1 tensors are biases.

Random values come from a generator per tensor, seeded by (seed, crc32 of the name),
so a tensor's values do not depend on which other tensors were chosen. Values are drawn
in float32 (float64 for float64 tensors) and cast to the tensor's dtype. Integer, bool
and complex tensors other than `num_batches_tracked` are left unchanged and listed in the
report's notes (they are buffers such as `position_ids`, not weights); packed 4/6-bit
floats and float8_e8m0fnu (which has no zero) are refused.

`adapt_input` changes the input channels of a first conv as timm's
`adapt_input_conv` does: for 1 channel, sum the RGB weights; for N != 3, repeat them
ceil(N/3) times along the input axis, keep the first N and scale by 3/N; arithmetic in
float32 (float64 for float64 kernels), cast back to the kernel's dtype.

Framework-free: numpy only.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..conventions import convention_of
from ..errors import OperationError
from ..keras_config import follow_input_channels
from ..naming import layer_of, matches, param_of
from ..provenance import record
from ..report import Report
from ..tree import TORCH, Entry, Tree  # noqa: F401 (TORCH: used by the examples)
from .optimizer_state import follow_reinit
from .fans import LAYOUTS, fans, input_axis

__all__ = ["INITS", "Init", "parse_init", "plan_reinit", "TensorPlan", "reinit", "adapt_input", "find_input_conv"]

INITS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal:STD", "zeros", "ones", "constant:V")
_NEEDS_FANS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")
KAIMING_GAIN = math.sqrt(2.0)  # torch.nn.init.calculate_gain("relu"), kaiming's default (a=0)

# Model knowledge as data: the identity values of normalisation parameters, by name.
NORM_VALUES: Mapping[str, float] = {
    "gamma": 1.0,
    "beta": 0.0,
    "moving_mean": 0.0,
    "moving_variance": 1.0,
    "running_mean": 0.0,
    "running_var": 1.0,
    "num_batches_tracked": 0.0,
}
TORCH_NORM_STATS = ("running_mean", "running_var")  # their presence makes weight/bias a norm's
TORCH_NORM_AFFINE: Mapping[str, float] = {"weight": 1.0, "bias": 0.0}
KERAS3_NORM_ORDER: Mapping[int, tuple[float, ...]] = {4: (1.0, 0.0, 0.0, 1.0), 2: (1.0, 0.0)}
BIAS_NAMES = ("bias",)
KERNEL_NAMES = ("kernel", "weight")  # plus Keras 3's numbered variables
_UNFILLABLE = ("float8_e8m0fnu",)  # a scale format: no zero, no sign


# -- init specifications --------------------------------------------------------------


@dataclass(frozen=True)
class Init:
    """One init, parsed: `kind` is xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal,
    normal or constant; `value` is the std of normal and the value of constant."""

    text: str
    kind: str
    value: float = 0.0

    @property
    def needs_fans(self) -> bool:
        return self.kind in _NEEDS_FANS

    def parameter(self, fan_in: int, fan_out: int) -> tuple[str, float] | None:
        """("bound", b) for uniform, ("std", s) for normal, ("value", v) for constant; None for empty fans."""
        if self.kind == "constant":
            return ("value", self.value)
        if self.kind == "normal":
            return ("std", self.value)
        fan = fan_in + fan_out if self.kind.startswith("xavier") else fan_in
        if fan <= 0:
            return None
        if self.kind == "xavier_uniform":
            return ("bound", math.sqrt(6.0 / fan))
        if self.kind == "xavier_normal":
            return ("std", math.sqrt(2.0 / fan))
        if self.kind == "kaiming_uniform":
            return ("bound", KAIMING_GAIN * math.sqrt(3.0 / fan))
        return ("std", KAIMING_GAIN / math.sqrt(fan))


def parse_init(text: str, option: str = "--init") -> Init:
    """'xavier_uniform' | ... | 'normal:0.01' | 'zeros' | 'ones' | 'constant:0.5' -> Init.

    >>> parse_init("normal:0.02")
    Init(text='normal:0.02', kind='normal', value=0.02)

    Raises:
        OperationError: an unknown name, or a std/value that is not a finite number (std must be >= 0).
    """
    name, sep, arg = text.partition(":")
    if not sep and name in _NEEDS_FANS:
        return Init(text, name)
    if not sep and name in ("zeros", "ones"):
        return Init(text, "constant", 0.0 if name == "zeros" else 1.0)
    if sep and name in ("normal", "constant"):
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (name == "normal" and value < 0):
            what = "a standard deviation >= 0" if name == "normal" else "a finite number"
            raise OperationError(f"{option} {text}: {arg!r} is not {what}", option, f"write e.g. {name}:0.01")
        return Init(text, name, value)
    raise OperationError(f"unknown {option} {text!r}", option, f"use one of: {', '.join(INITS)}")


# -- planning -------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """What one chosen tensor becomes: its role, init and, where used, fans and scale."""

    name: str
    role: str  # kernel, bias, norm
    init: Init
    fan_in: int | None = None
    fan_out: int | None = None

    def to_json(self, tree: Tree) -> dict[str, object]:
        e = tree[self.name]
        doc: dict[str, object] = {"name": self.name, "shape": list(e.shape), "dtype": e.dtype, "role": self.role, "init": self.init.text}
        if self.fan_in is not None:
            doc.update(fan_in=self.fan_in, fan_out=self.fan_out)
        parameter = self.init.parameter(self.fan_in or 0, self.fan_out or 0)
        if parameter is not None:
            doc[parameter[0]] = parameter[1]
        return doc

    def describe(self) -> str:
        text = f"{self.role}: {self.init.text}"
        if self.fan_in is not None:
            text += f", fan_in {self.fan_in}, fan_out {self.fan_out}"
            parameter = self.init.parameter(self.fan_in, self.fan_out or 0)
            if parameter is not None and self.init.needs_fans:
                text += f", {parameter[0]} {parameter[1]:.6g}"
        return text


def plan_reinit(
    tree: Tree, globs: Sequence[str], init: str, *, bias_init: str = "zeros", layout: str | None = None
) -> tuple[list[TensorPlan], list[str]]:
    """Each chosen tensor's role, init and fans, and notes on what is left alone; no data is read.

    Args:
        tree: the checkpoint.
        globs: layer or tensor globs; a tensor is chosen when its name or its layer matches one.
        init: for kernels, one of INITS.
        bias_init: for biases (default zeros); one that needs no fans.
        layout: "keras" or "torch"; default: the tree's convention (needed only for fans).

    Raises:
        OperationError: a glob matches nothing, an init is unknown, fans are needed but the
            layout is unknown or the tensor has rank < 2, or a tensor's dtype cannot be filled.
    """
    kernel_init, bias = parse_init(init, "--init"), parse_init(bias_init, "--bias-init")
    if bias.needs_fans:
        raise OperationError(f"--bias-init {bias_init} needs fans, which a bias has not", "--bias-init", "use zeros, ones, constant:V or normal:STD")
    chosen = _choose(tree, list(globs))
    siblings = _layer_members(tree)
    plans: list[TensorPlan] = []
    notes: list[str] = []
    for e in chosen:
        role, norm_value = _role(e, siblings[layer_of(e.name)])
        if not _fillable(e, role, notes):
            continue
        if role == "norm":
            plans.append(TensorPlan(e.name, role, Init("ones" if norm_value == 1 else "zeros", "constant", norm_value)))
        elif role == "bias":
            plans.append(TensorPlan(e.name, role, bias))
        elif kernel_init.needs_fans:
            fan_in, fan_out = _fans_of(e, _layout(tree, layout, f"--init {init}", notes))
            plans.append(TensorPlan(e.name, role, kernel_init, fan_in, fan_out))
        else:
            plans.append(TensorPlan(e.name, role, kernel_init))
    if layout is not None and tree.convention.out_axis is not None and layout != tree.convention.name:
        notes.append(f"--layout {layout} overrides the checkpoint's {tree.convention.name} convention")
    return plans, notes


def _choose(tree: Tree, globs: list[str]) -> list[Entry]:
    if not globs:
        raise OperationError("no layers given", "--layers", "name the layers to re-initialise with --layers GLOB")
    for g in globs:
        if not any(matches(name, [g]) or matches(layer_of(name), [g]) for name in tree):
            raise OperationError(
                f"--layers {g} matches no layer or tensor",
                "--layers",
                "list the names with `surgery inspect`; globs are case-sensitive and '*' crosses '/' and '.'",
            )
    return [e for e in tree.values() if matches(e.name, globs) or matches(layer_of(e.name), globs)]


def _layer_members(tree: Tree) -> dict[str, dict[str, Entry]]:
    members: dict[str, dict[str, Entry]] = {}
    for e in tree.values():
        members.setdefault(layer_of(e.name), {})[param_of(e.name)] = e
    return members


def _role(e: Entry, siblings: Mapping[str, Entry]) -> tuple[str, float]:
    """("norm", identity value), ("bias", 0) or ("kernel", 0) for one tensor, from its layer's names."""
    param = param_of(e.name)
    if param in NORM_VALUES:
        return "norm", NORM_VALUES[param]
    if param in TORCH_NORM_AFFINE and _is_torch_norm(siblings):
        return "norm", TORCH_NORM_AFFINE[param]
    if param.isdigit() and all(p.isdigit() for p in siblings):
        return _keras3_role(e, siblings)
    return ("bias", 0.0) if param in BIAS_NAMES else ("kernel", 0.0)


def _is_torch_norm(siblings: Mapping[str, Entry]) -> bool:
    if any(p in siblings for p in TORCH_NORM_STATS):
        return True
    weight, bias = siblings.get("weight"), siblings.get("bias")
    return weight is not None and bias is not None and len(weight.shape) == 1 and weight.shape == bias.shape


def _keras3_role(e: Entry, siblings: Mapping[str, Entry]) -> tuple[str, float]:
    ranks = [len(s.shape) for s in siblings.values()]
    if max(ranks) >= 2:
        return ("bias", 0.0) if len(e.shape) <= 1 else ("kernel", 0.0)
    order = sorted(siblings, key=int)
    values = KERAS3_NORM_ORDER.get(len(order))
    if values is not None and ranks == [1] * len(order) and len({s.shape for s in siblings.values()}) == 1:
        return "norm", values[order.index(param_of(e.name))]
    return "kernel", 0.0


def _fillable(e: Entry, role: str, notes: list[str]) -> bool:
    """False (with a note) for integer, bool and complex tensors; raises for packed floats."""
    d = dtypes.get(e.dtype)
    if d.packed or e.dtype in _UNFILLABLE:
        raise OperationError(
            f"tensor {e.name!r} is {e.dtype}, which cannot be re-initialised",
            e.name,
            "leave it out of --layers, or convert the checkpoint to a wider float first",
        )
    if d.is_floating or (param_of(e.name) == "num_batches_tracked" and d.kind in "iu"):
        return True
    notes.append(f"left unchanged: {e.name} is {e.dtype}, not a floating weight")
    return False


def _layout(tree: Tree, layout: str | None, needed_by: str, notes: list[str] | None = None) -> str:
    """--layout, else the file's convention, else the one its names show (said in `notes`)."""
    if layout is not None:
        if layout not in LAYOUTS:
            raise OperationError(f"unknown layout {layout!r}", "--layout", f"use one of: {', '.join(LAYOUTS)}")
        return layout
    inferred = convention_of(tree)
    if inferred.convention.out_axis is None:
        raise OperationError(
            f"the checkpoint does not say whether its kernels are Keras (..., in, out) or PyTorch (out, in, ...), and {inferred.why}",
            needed_by,
            "pass --layout keras or --layout torch",
        )
    note = f"{inferred.convention} layout inferred: {inferred.why}; pass --layout to override"
    if tree.convention.out_axis is None and notes is not None and note not in notes:
        notes.append(note)
    return inferred.convention.name


def _fans_of(e: Entry, layout: str) -> tuple[int, int]:
    if len(e.shape) < 2:
        raise OperationError(
            f"tensor {e.name!r} has shape {list(e.shape)}, which has no fan-in and fan-out",
            e.name,
            "leave it out of --layers, or use an init without fans: normal:STD, zeros, ones or constant:V",
        )
    return fans(e.shape, layout)


# -- applying -------------------------------------------------------------------------


def reinit(
    tree: Tree,
    layers: str | Sequence[str],
    init: str,
    *,
    seed: int = 0,
    bias_init: str = "zeros",
    layout: str | None = None,
) -> tuple[Tree, Report]:
    """Re-initialise every tensor of the chosen layers, lazily; shapes, dtypes and order are kept.

    Args:
        tree: the checkpoint.
        layers: one glob or several, matched against layer names and tensor names
            ('*' crosses '/' and '.').
        init: kernels' init: xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal,
            normal:STD, zeros, ones or constant:V (formulas in the module docstring).
        seed: seeds every tensor's own generator together with the tensor's name.
        bias_init: biases' init (default zeros); normalisation layers always get their identity.
        layout: "keras" or "torch" when the tree's convention is unknown and fans are needed.

    Returns:
        The new tree and a report with one "reinitialised" change per tensor (init and fans
        in `detail`, each tensor's plan in `facts["tensors"]`).

    Raises:
        OperationError: see `plan_reinit`.

    Example:
        >>> t = Tree([Entry.from_array("fc.weight", np.ones((2, 3), "float32"))], convention=TORCH)
        >>> new, report = reinit(t, "fc", "xavier_uniform", seed=1)
        >>> report.changes[0].detail
        'kernel: xavier_uniform, fan_in 3, fan_out 2, bound 1.09545'
    """
    globs = [layers] if isinstance(layers, str) else list(layers)
    plans, notes = plan_reinit(tree, globs, init, bias_init=bias_init, layout=layout)
    report = Report("reinit", notes=notes)
    replace = {}
    for p in plans:
        e = tree[p.name]
        replace[p.name] = Entry.computed(p.name, e.shape, e.dtype, _filler(e, p, seed), like=e)
        report.add("reinitialised", p.name, f"{list(e.shape)} {e.dtype}", p.init.text, p.describe())
    report.facts["tensors"] = [p.to_json(tree) for p in plans]
    report.facts["seed"] = seed
    edited = tree.derive(replace=replace)
    edited = follow_reinit(edited, replace, report)  # fresh weights start from zero moments
    return record(edited, "reinit", layers=globs, init=init, bias_init=bias_init, seed=seed, layout=layout), report


def _filler(e: Entry, p: TensorPlan, seed: int):
    def fill() -> np.ndarray:
        target = dtypes.get(e.dtype).numpy()
        parameter = p.init.parameter(p.fan_in or 0, p.fan_out or 0)
        if parameter is None or e.numel == 0:
            return np.zeros(e.shape, dtype=target)
        kind, scale = parameter
        if kind == "value":
            return np.full(e.shape, scale, dtype=target)
        rng = np.random.default_rng([seed, zlib.crc32(e.name.encode("utf-8"))])
        work = np.float64 if target == np.float64 else np.float32
        if kind == "std":
            values = rng.standard_normal(e.shape, dtype=work)
        else:  # uniform on [-bound, bound)
            values = rng.random(e.shape, dtype=work)
            values *= 2
            values -= 1
        values *= work(scale)
        return values.astype(target, copy=False)

    return fill


# -- adapt-input ------------------------------------------------------------------------


def find_input_conv(tree: Tree, layout: str, layer: str | None = None) -> tuple[Entry, str]:
    """The conv kernel to adapt, and why it was chosen.

    Without `layer`: the first rank-4 floating kernel in tree order whose input axis
    (2 in Keras HWIO, 1 in PyTorch OIHW) has 3 channels. With `layer`: that layer's
    kernel of highest rank (3 or more: 1-D, 2-D, 3-D convs), or the tensor of that name.

    Raises:
        OperationError: no such conv, or the named layer has no conv kernel.
    """
    if layer is None:
        return _first_rgb_conv(tree, layout)
    members = [e for e in tree.values() if layer_of(e.name) == layer or e.name == layer]
    if not members:
        raise OperationError(f"no layer named {layer!r}", "--layer", "list the layers with `surgery inspect`")
    kernel = max(members, key=lambda e: len(e.shape))
    if len(kernel.shape) < 3:
        shapes = ", ".join(f"{e.name} {list(e.shape)}" for e in members)
        raise OperationError(f"layer {layer} has no convolution kernel (its tensors: {shapes})", "--layer", "name a conv layer")
    return kernel, f"named by --layer {layer}"


def _first_rgb_conv(tree: Tree, layout: str) -> tuple[Entry, str]:
    first_conv = None
    for e in tree.values():
        if len(e.shape) != 4 or not dtypes.get(e.dtype).is_floating or not _kernel_name(e.name):
            continue
        axis = input_axis(4, layout)
        if e.shape[axis] == 3:
            return e, f"the first rank-4 conv kernel in tree order with 3 input channels ({layout} layout, input axis {axis})"
        first_conv = first_conv or e
    found = ""
    if first_conv is not None:
        found = f"; the first conv kernel, {first_conv.name} {list(first_conv.shape)}, has {first_conv.shape[input_axis(4, layout)]}"
    raise OperationError(
        f"no conv kernel with 3 input channels found{found}",
        f"{len(tree)} tensors, {layout} layout",
        "name the layer with --layer NAME (see `surgery inspect`), or check --layout",
    )


def _kernel_name(name: str) -> bool:
    param = param_of(name)
    return param in KERNEL_NAMES or param.isdigit()


def adapt_input(tree: Tree, channels: int, *, layer: str | None = None, layout: str | None = None) -> tuple[Tree, Report]:
    """Change the input channels of the first (or the named) conv from 3 to `channels`.

    Args:
        tree: the checkpoint.
        channels: N >= 1. 1: the RGB weights are summed. 3: unchanged. Otherwise the RGB
            weights are repeated ceil(N/3) times along the input axis, cut to N and scaled
            by 3/N, as timm's `adapt_input_conv` does; an input whose N channels repeat
            R, G, B then gives the original output.
        layer: the layer (or kernel tensor) to adapt; default: detected, see `find_input_conv`.
        layout: "keras" or "torch" when the tree's convention is unknown.

    Returns:
        The new tree (only the kernel changes; biases have no input axis) and a report
        with one "reshaped" change and facts: layer, tensor, before, after, rule, why.

    Raises:
        OperationError: N < 1, no conv found, the kernel's input axis does not have 3
            channels, the kernel is not floating, or the layout is unknown.

    Example:
        >>> t = Tree([Entry.from_array("conv1.weight", np.ones((8, 3, 3, 3), "float32"))], convention=TORCH)
        >>> new, report = adapt_input(t, 1)
        >>> new["conv1.weight"].shape, float(new["conv1.weight"].read()[0, 0, 0, 0])
        ((8, 1, 3, 3), 3.0)
    """
    if channels < 1:
        raise OperationError(f"--channels {channels} must be at least 1", "--channels", "give the input channels the new model takes, e.g. 1 for grayscale")
    inferred: list[str] = []
    chosen_layout = _layout(tree, layout, "adapt-input", inferred)
    kernel, why = find_input_conv(tree, chosen_layout, layer)
    axis = input_axis(len(kernel.shape), chosen_layout)
    _check_kernel(kernel, axis, layer)
    shape = list(kernel.shape)
    shape[axis] = channels
    rule = _rule(channels)
    report = Report("adapt-input")
    report.add("reshaped", kernel.name, str(list(kernel.shape)), str(shape), rule)
    report.notes.extend(inferred)
    metadata = dict(tree.metadata)
    report.notes.extend(follow_input_channels(metadata, _config_layer(kernel), kernel.shape[axis], channels))
    edited = tree.derive(replace={kernel.name: Entry.computed(kernel.name, tuple(shape), kernel.dtype, _adapter(kernel, axis, channels), like=kernel)}, metadata=metadata)
    edited = follow_reinit(edited, [kernel.name], report)  # new input channels: its moments restart at zero
    report.facts.update(
        layer=layer_of(kernel.name), tensor=kernel.name, before=list(kernel.shape), after=shape, rule=rule, why=why, axis=axis, channels=channels
    )
    return record(edited, "adapt-input", channels=channels, tensor=kernel.name, layout=chosen_layout), report


def _config_layer(kernel: Entry) -> str:
    """The kernel's layer as a Keras model_config names it."""
    return str(kernel.attrs.get("keras.layer") or layer_of(kernel.name))


def _check_kernel(kernel: Entry, axis: int, layer: str | None) -> None:
    if kernel.shape[axis] != 3:
        raise OperationError(
            f"{kernel.name} {list(kernel.shape)} has {kernel.shape[axis]} input channels (axis {axis}), not 3",
            f"--layer {layer}" if layer else kernel.name,
            "adapt-input starts from an RGB conv: name a layer whose kernel takes 3 channels",
        )
    d = dtypes.get(kernel.dtype)
    if not d.is_floating or d.packed or kernel.dtype in _UNFILLABLE:
        raise OperationError(f"{kernel.name} is {kernel.dtype}, not a float kernel adapt-input can compute with", kernel.name, "convert it to float32 first")


def _rule(n: int) -> str:
    if n == 1:
        return "summed the 3 RGB input channels into 1 (timm adapt_input_conv)"
    if n == 3:
        return "unchanged: the kernel already takes 3 channels"
    if n < 3:
        return f"kept the first {n} of the 3 RGB weights and scaled by 3/{n} (timm adapt_input_conv)"
    return f"repeated the RGB weights {-(-n // 3)} times, kept the first {n} and scaled by 3/{n} (timm adapt_input_conv)"


def _adapter(kernel: Entry, axis: int, n: int):
    def adapt() -> np.ndarray:
        w = kernel.read()
        target = w.dtype
        work = np.float64 if target == np.float64 else np.float32
        w = w.astype(work, copy=False)
        if n == 1:
            out = np.add.reduce(w, axis=axis, keepdims=True)
        elif n == 3:
            out = w
        else:
            reps = [1] * w.ndim
            reps[axis] = -(-n // 3)
            out = np.take(np.tile(w, reps), np.arange(n), axis=axis)
            out *= work(3.0 / n)
        return out.astype(target, copy=False)

    return adapt
