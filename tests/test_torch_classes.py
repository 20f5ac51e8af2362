"""Class surgery on a torchvision-style SSD classification head, proven with real torch modules.

torchvision's SSDClassificationHead is one 3x3 conv per feature map with
anchors × classes output channels, anchor-major (its forward reshapes to
(N, A, K, H, W)). After `surgery subsample`, the head built for the new class
count must load with strict=True and give the original's scores at the kept classes.
"""

from __future__ import annotations

import pytest

import surgery
from helpers import run

torch = pytest.importorskip("torch")

ANCHORS = [4, 6, 6, 6, 4, 4]  # SSD300's boxes per location
CHANNELS = [8, 8, 6, 6, 4, 4]
KEEP = [0, 3, 8, 1, 2, 10, 4, 6, 12]


class Head(torch.nn.Module):
    """The state-dict names and the forward of torchvision.models.detection.ssd.SSDHead, at toy size."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classification_head = torch.nn.Module()
        self.classification_head.module_list = torch.nn.ModuleList(
            torch.nn.Conv2d(c, a * num_classes, 3, padding=1) for c, a in zip(CHANNELS, ANCHORS)
        )
        self.regression_head = torch.nn.Module()
        self.regression_head.module_list = torch.nn.ModuleList(
            torch.nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(CHANNELS, ANCHORS)
        )

    def forward(self, features):
        scores, boxes = [], []
        for conv, loc, x in zip(self.classification_head.module_list, self.regression_head.module_list, features):
            n, _, h, w = x.shape
            scores.append(conv(x).view(n, -1, self.num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_classes))
            boxes.append(loc(x).view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(scores, dim=1), torch.cat(boxes, dim=1)


class Detector(torch.nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = Head(num_classes)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return Detector(91).eval()  # torchvision's COCO class count, background at 0


def features():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, s, s, generator=gen) for c, s in zip(CHANNELS, [8, 4, 4, 2, 2, 1])]


def test_ssd_head_subsampled_loads_strictly_and_keeps_the_scores(tmp_path, original):
    src = tmp_path / "ssd_coco.pt"
    torch.save(original.state_dict(), src)
    out = tmp_path / "ssd_road.safetensors"
    result = run("subsample", src, "-o", out, "--classes", ",".join(map(str, KEEP)), "--source-classes", "91", "--verify", "--json")
    assert result.exit_code == 0, result.stderr

    from safetensors.torch import load_file

    small = Detector(len(KEEP)).eval()
    small.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        scores, boxes = original.head(features())
        new_scores, new_boxes = small.head(features())
    assert torch.equal(new_boxes, boxes)  # box regression is class-agnostic and untouched
    # The kept weights are exact copies; a conv with fewer output channels may round differently.
    for big_conv, conv, a in zip(original.head.classification_head.module_list, small.head.classification_head.module_list, ANCHORS):
        rows = [anchor * 91 + c for anchor in range(a) for c in KEEP]
        assert torch.equal(conv.weight, big_conv.weight[rows]) and torch.equal(conv.bias, big_conv.bias[rows])
    torch.testing.assert_close(new_scores, scores[..., KEEP], atol=1e-6, rtol=0)
    assert surgery.load(out).metadata["surgery.num_classes"] == str(len(KEEP))


def test_anchor_counts_are_read_from_each_layer(tmp_path, original):
    src = tmp_path / "ssd_coco.pt"
    torch.save(original.state_dict(), src)
    result = run("subsample", src, "-o", tmp_path / "x.safetensors", "--classes", "0,1", "--source-classes", "91", "--dry-run", "--json")
    import json

    layers = json.loads(result.stdout)["layers"]
    assert [layer["anchors"] for layer in layers] == ANCHORS
    assert [layer["layer"] for layer in layers] == [f"head.classification_head.module_list.{i}" for i in range(6)]
