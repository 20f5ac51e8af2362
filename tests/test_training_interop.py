"""Training checkpoints survive class surgery: real torch trains, surgery edits, torch resumes.

A tiny detector-style module trains a few steps; its {"model", "optimizer", "epoch"} checkpoint
goes through `surgery subsample`/`upsample`; then `load_state_dict(strict=True)` and
`optimizer.load_state_dict` must succeed, and one more step must move the kept rows exactly as
the unedited run moves them (within 1e-6), with new rows starting from zero moments.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import error_line, run

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.interop

CLASSES, ANCHORS = 5, 2
KEEP = [0, 3, 1]  # subsample: classes kept, in this order


class Detector(torch.nn.Module):
    def __init__(self, classes: int = CLASSES, frozen: bool = False) -> None:
        super().__init__()
        self.backbone = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.cls_logits = torch.nn.Conv2d(8, ANCHORS * classes, 3, padding=1)
        self.bbox = torch.nn.Conv2d(8, ANCHORS * 4, 3, padding=1)
        if frozen:  # a frozen stem the optimizer never sees: the order can no longer be proven
            self.backbone.weight.requires_grad_(False)

    def forward(self, x):
        h = torch.relu(self.bn(self.backbone(x)))
        return self.cls_logits(h), self.bbox(h)


def batch(seed: int):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def step(model, optimizer, seed: int) -> None:
    # Sums, not means: each class channel's gradient then depends on that channel alone,
    # so a smaller head gets the same gradient for the rows it kept.
    c, b = model(batch(seed))
    (c.square().sum() + b.square().sum()).backward()
    optimizer.step()
    optimizer.zero_grad()


def make_optimizer(kind: str, params):
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def trained(kind: str, path, *, frozen: bool = False, lightning: bool = False):
    torch.manual_seed(0)
    model = Detector(frozen=frozen)
    optimizer = make_optimizer(kind, [p for p in model.parameters() if p.requires_grad])
    for seed in range(3):
        step(model, optimizer, seed)
    if lightning:  # Lightning's layout, built without Lightning: a "model." prefix and a list of optimizers
        sd = {f"model.{k}": v for k, v in model.state_dict().items()}
        checkpoint = {"epoch": 1, "global_step": 3, "state_dict": sd, "optimizer_states": [optimizer.state_dict()], "lr_schedulers": []}
    else:
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3, "rng": torch.get_rng_state()}
    torch.save(checkpoint, path)
    return model, optimizer


def rows(channels: list[int | None]) -> list[int | None]:
    """Class channels of the edited head: anchor-major, per anchor the classes in order."""
    return [None if c is None else a * CLASSES + c for a in range(ANCHORS) for c in channels]


def resumed(kind: str, path, classes: int, *, lightning: bool = False):
    checkpoint = torch.load(path, weights_only=True)
    model = Detector(classes)
    sd = checkpoint["state_dict"] if lightning else checkpoint["model"]
    if lightning:
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    optimizer = make_optimizer(kind, model.parameters())
    optimizer.load_state_dict(checkpoint["optimizer_states"][0] if lightning else checkpoint["optimizer"])
    return model, optimizer, checkpoint


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_subsample_keeps_the_moments_of_the_kept_rows(tmp_path, kind):
    src, out = tmp_path / "train.pt", tmp_path / "sub.pt"
    original, opt = trained(kind, src)
    result = run("subsample", src, "-o", out, "--classes", ",".join(map(str, KEEP)), "--layers", "cls_logits", "--anchors", ANCHORS, "--json")
    assert result.exit_code == 0, result.stderr
    model, optimizer, checkpoint = resumed(kind, out, len(KEEP))
    assert checkpoint["epoch"] == 3 and torch.equal(checkpoint["rng"], torch.load(src, weights_only=True)["rng"])
    kept = rows(KEEP)
    state = optimizer.state_dict()["state"]
    moments = ("exp_avg", "exp_avg_sq") if kind == "adam" else ("momentum_buffer",)
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    before = opt.state_dict()["state"]
    for key in moments:  # the moments moved with the rows, bit for bit
        assert torch.equal(state[index["cls_logits.weight"]][key], before[index["cls_logits.weight"]][key][kept])
        assert torch.equal(state[index["bbox.weight"]][key], before[index["bbox.weight"]][key])
    step(original, opt, 3)
    step(model, optimizer, 3)
    assert (model.cls_logits.weight - original.cls_logits.weight[kept]).abs().max() <= 1e-6
    assert (model.cls_logits.bias - original.cls_logits.bias[kept]).abs().max() <= 1e-6
    assert (model.bbox.weight - original.bbox.weight).abs().max() <= 1e-6


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_upsample_new_rows_start_from_zero_moments(tmp_path, kind):
    src, out = tmp_path / "train.pt", tmp_path / "up.pt"
    original, opt = trained(kind, src)
    assert run("upsample", src, "-o", out, "--num-classes", 7, "--layers", "cls_logits", "--anchors", ANCHORS, "--seed", 1, "-q").exit_code == 0
    model, optimizer, _ = resumed(kind, out, 7)
    channels = rows([*range(CLASSES), None, None])
    kept = [j for j, c in enumerate(channels) if c is not None]
    new = [j for j, c in enumerate(channels) if c is None]
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    state = optimizer.state_dict()["state"][index["cls_logits.weight"]]
    for key in ("exp_avg", "exp_avg_sq") if kind == "adam" else ("momentum_buffer",):
        assert torch.count_nonzero(state[key][new]) == 0
        assert torch.count_nonzero(state[key][kept]) > 0
    step(original, opt, 3)
    step(model, optimizer, 3)
    assert (model.cls_logits.weight[kept] - original.cls_logits.weight).abs().max() <= 1e-6


def test_lightning_style_checkpoint(tmp_path):
    src, out = tmp_path / "lightning.ckpt", tmp_path / "sub.pt"  # .ckpt is found by content
    original, opt = trained("adam", src, lightning=True)
    result = run("subsample", src, "-o", out, "--classes", ",".join(map(str, KEEP)), "--layers", "model.cls_logits", "--anchors", ANCHORS, "-q")
    assert result.exit_code == 0, result.stderr
    model, optimizer, checkpoint = resumed("adam", out, len(KEEP), lightning=True)
    assert (checkpoint["epoch"], checkpoint["global_step"], checkpoint["lr_schedulers"]) == (1, 3, [])
    step(original, opt, 3)
    step(model, optimizer, 3)
    assert (model.cls_logits.weight - original.cls_logits.weight[rows(KEEP)]).abs().max() <= 1e-6


def test_inspect_shows_the_training_state(tmp_path):
    src = tmp_path / "train.pt"
    trained("adam", src)
    lines = run("inspect", src).stdout.splitlines()
    assert lines[-2:] == [
        "training: optimizer: Adam-family (exp_avg, exp_avg_sq), step 3, 24 tensors for 8 parameters, as optimizer/state/<parameter>/<key>",
        "training: model state dict under 'model'; other entries kept as they are: epoch, rng",
    ]
    document = json.loads(run("inspect", src, "--json").stdout)["training"]
    assert document["kept"] == ["epoch", "rng"] and document["dropped"] == []
    assert document["optimizers"][0] == {"where": "optimizer", "namespace": "optimizer", "kind": "Adam-family (exp_avg, exp_avg_sq)", "step": 3.0, "tensors": 24, "parameters": 8, "mapped": True, "reason": ""}


def test_unprovable_order_is_refused_with_the_reason_and_drop_optimizer_works(tmp_path):
    src, out = tmp_path / "frozen.pt", tmp_path / "sub.pt"
    trained("adam", src, frozen=True)
    why = (
        "optimizer holds 7 parameters but the state dict has 8 tensors that are not known buffers "
        "(running_mean, running_var, num_batches_tracked); frozen parameters or other buffers hide which tensor is which"
    )
    assert f"training: optimizer is not mapped to parameter names: {why}" in run("inspect", src).stdout
    args = ["subsample", src, "-o", out, "--classes", "0,3,1", "--layers", "cls_logits", "--anchors", ANCHORS, "-q"]
    refused = run(*args)
    assert refused.exit_code == 1 and not out.exists()
    assert error_line(refused) == (
        f"error: subsample/upsample would have to move the optimizer state, but {why} (optimizer); "
        "pass --drop-optimizer to write the checkpoint without optimizer state (training then restarts its moments)"
    )
    assert run(*args, "--drop-optimizer").exit_code == 0
    checkpoint = torch.load(out, weights_only=True)
    assert sorted(checkpoint) == ["epoch", "model", "rng"]
    Detector(len(KEEP)).load_state_dict(checkpoint["model"], strict=True)


def test_a_plain_conversion_keeps_everything_verbatim(tmp_path):
    src, out = tmp_path / "train.pt", tmp_path / "copy.pt"
    trained("adam", src)
    assert run("convert", src, "-o", out, "-q").exit_code == 0
    a, b = torch.load(src, weights_only=True), torch.load(out, weights_only=True)
    assert list(b) == list(a) and b["epoch"] == 3 and b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]
    for i, per_param in a["optimizer"]["state"].items():
        assert per_param.keys() == b["optimizer"]["state"][i].keys()
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in per_param.items())
    assert np.array_equal(a["rng"].numpy(), b["rng"].numpy())


class Headless(Detector):
    """The detector after strip-head removed its box branch."""

    def __init__(self) -> None:
        super().__init__()
        del self.bbox

    def forward(self, x):
        return self.cls_logits(torch.relu(self.bn(self.backbone(x)))), torch.zeros(())


def test_strip_head_renumbers_the_param_groups_and_training_resumes(tmp_path):
    src, out = tmp_path / "train.pt", tmp_path / "strip.pt"
    original, opt = trained("adam", src)
    result = run("strip-head", src, "-o", out, "--head", "bbox*")
    assert result.exit_code == 0, result.stderr
    assert "note: optimizer: 2 parameters removed, param_groups renumbered 0..5" in result.stdout
    checkpoint = torch.load(out, weights_only=True)
    model = Headless()
    model.load_state_dict(checkpoint["model"], strict=True)
    optimizer = make_optimizer("adam", model.parameters())
    optimizer.load_state_dict(checkpoint["optimizer"])
    assert checkpoint["optimizer"]["param_groups"][0]["params"] == list(range(6))
    step(original, opt, 3)
    step(model, optimizer, 3)
    assert (model.cls_logits.weight - original.cls_logits.weight).abs().max() <= 1e-6


def test_reinit_zeroes_the_moments_and_rename_keeps_them(tmp_path):
    src, fresh, renamed = tmp_path / "train.pt", tmp_path / "fresh.pt", tmp_path / "renamed.pt"
    trained("adam", src)
    assert run("reinit", src, "-o", fresh, "--layers", "cls_logits", "--init", "zeros", "-q").exit_code == 0
    before = torch.load(src, weights_only=True)["optimizer"]["state"]
    after = torch.load(fresh, weights_only=True)["optimizer"]["state"]
    for i, per_param in after.items():
        head = i in (4, 5)  # cls_logits.weight and .bias: parameters 4 and 5 (the BatchNorm buffers have no index)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(per_param[key], torch.zeros_like(per_param[key]) if head else before[i][key])
        assert torch.equal(per_param["step"], before[i]["step"])  # step counters are kept
    assert run("rename", src, "-o", renamed, "--map", "^cls_logits\\.=head.", "-q").exit_code == 0
    import surgery
    from surgery.formats.torch_training import training_state

    names = [n for n in training_state(surgery.load(renamed)).optimizers[0].tensors if "/head." in n]
    assert names == [f"optimizer/state/head.{p}/{k}" for p in ("weight", "bias") for k in ("step", "exp_avg", "exp_avg_sq")]
    assert torch.equal(torch.load(renamed, weights_only=True)["optimizer"]["state"][4]["exp_avg"], before[4]["exp_avg"])


def test_cast_touches_the_moments_only_with_cast_optimizer(tmp_path):
    src, plain, both = tmp_path / "train.pt", tmp_path / "plain.pt", tmp_path / "both.pt"
    trained("adam", src)
    assert run("convert", src, "-o", plain, "--dtype", "bfloat16", "-q").exit_code == 0
    assert run("convert", src, "-o", both, "--dtype", "bfloat16", "--cast-optimizer", "-q").exit_code == 0
    for path, moments in ((plain, torch.float32), (both, torch.bfloat16)):
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["model"]["cls_logits.weight"].dtype == torch.bfloat16
        state = checkpoint["optimizer"]["state"][4]
        assert (state["exp_avg"].dtype, state["exp_avg_sq"].dtype, state["step"].dtype) == (moments, moments, torch.float32)
    assert run("convert", src, "-o", tmp_path / "x.pt", "--cast-optimizer").exit_code == 2


def test_diff_compares_the_optimizer_state_too(tmp_path):
    src, out = tmp_path / "train.pt", tmp_path / "sub.pt"
    trained("adam", src)
    assert run("subsample", src, "-o", out, "--classes", "0,3,1", "--layers", "cls_logits", "--anchors", ANCHORS, "-q").exit_code == 0
    result = run("diff", src, out, "--json")
    changed = sorted(t["name"] for t in json.loads(result.stdout)["tensors"] if t["status"] != "identical")
    params = ("cls_logits.weight", "cls_logits.bias")
    assert result.exit_code == 1
    assert changed == sorted([*params, *(f"optimizer/state/{p}/{k}" for p in params for k in ("exp_avg", "exp_avg_sq"))])


def test_param_groups_out_of_model_order_are_refused(tmp_path):
    src = tmp_path / "groups.pt"
    model = Detector()
    head = [model.cls_logits.weight, model.cls_logits.bias]
    rest = [p for n, p in model.named_parameters() if not n.startswith("cls_logits")]
    optimizer = torch.optim.Adam([{"params": head, "lr": 1e-2}, {"params": rest}], lr=1e-3)  # head first
    step(model, optimizer, 0)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, src)
    text = run("inspect", src).stdout
    assert (
        "training: optimizer is not mapped to parameter names: optimizer's exp_avg for parameter 0 has shape "
        "[10, 8, 3, 3] but parameter 0 in state-dict order (buffers left out), backbone.weight, has [8, 3, 3, 3]"
    ) in text


def test_a_model_only_format_says_what_it_leaves_behind(tmp_path):
    src = tmp_path / "train.pt"
    trained("adam", src)
    result = run("convert", src, "-o", tmp_path / "model.safetensors")
    assert result.exit_code == 0
    assert result.stderr.splitlines()[-1] == "note: optimizer, epoch, rng not written: a safetensors file holds the model's tensors only"
