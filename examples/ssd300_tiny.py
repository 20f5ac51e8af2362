"""A torch SSD300 with the layer names of `fixtures/ssd300_coco_tiny.h5`, for `surgery export-onnx`.

The fixture keeps SSD300's six classifier layers, their 4/6/6/6/4/4 anchors and the COCO class
count, with 4 channels everywhere instead of VGG's 512/1024, so the backbone here is a short
stand-in: one conv per feature map the heads read. After `surgery convert --layout torch` (which
export-onnx does by itself) every Keras weight has a module of the same name here, and
`load_state_dict(strict=True)` takes the file as it is.

    surgery export-onnx road.h5 -o road.onnx --model examples/ssd300_tiny.py:SSD300Tiny --model-arg num_classes=9 --input-shape 1,3,64,64

Outputs, for an input of H x W (multiples of 32): `mbox_conf`, class logits (N, boxes, num_classes)
(apply softmax over the last axis), and `mbox_loc`, box offsets (N, boxes, 4); boxes are
anchor-major per location, in the Keras model's order (`Reshape((-1, num_classes))` of NHWC maps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2")
ANCHORS = (4, 6, 6, 6, 4, 4)
CHANNELS = 4  # the fixture's feature channels


class L2Normalization(nn.Module):
    """SSD's conv4_3 normalisation: unit L2 norm over channels, times a learned scale (init 20)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1, eps=1e-12) * self.weight.view(1, -1, 1, 1)


class SSD300Tiny(nn.Module):
    output_names = ("mbox_conf", "mbox_loc")  # export-onnx names the graph outputs after these

    def __init__(self, num_classes: int = 81, channels: int = CHANNELS) -> None:
        super().__init__()
        self.num_classes = num_classes
        conv = lambda cin, stride=1: nn.Conv2d(cin, channels, 3, stride=stride, padding=1)  # noqa: E731
        self.conv1_1 = conv(3)
        self.conv4_3 = conv(channels)
        self.fc7 = conv(channels)
        self.conv6_2 = conv(channels, 2)
        self.conv7_2 = conv(channels, 2)
        self.conv8_2 = conv(channels, 2)
        self.conv9_2 = conv(channels, 2)
        self.conv4_3_norm = L2Normalization(channels)
        for head, anchors in zip(HEADS, ANCHORS):
            setattr(self, f"{head}_mbox_conf", nn.Conv2d(channels, anchors * num_classes, 3, padding=1))
        for head, anchors in zip(HEADS, ANCHORS):
            setattr(self, f"{head}_mbox_loc", nn.Conv2d(channels, anchors * 4, 3, padding=1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.conv1_1(image)), 2)
        conv4_3 = F.relu(self.conv4_3(x))
        fc7 = F.relu(self.fc7(F.max_pool2d(conv4_3, 2)))
        conv6_2 = F.relu(self.conv6_2(fc7))
        conv7_2 = F.relu(self.conv7_2(conv6_2))
        conv8_2 = F.relu(self.conv8_2(conv7_2))
        conv9_2 = F.relu(self.conv9_2(conv8_2))
        maps = (self.conv4_3_norm(conv4_3), fc7, conv6_2, conv7_2, conv8_2, conv9_2)
        conf = [self._flat(getattr(self, f"{h}_mbox_conf")(m), self.num_classes) for h, m in zip(HEADS, maps)]
        loc = [self._flat(getattr(self, f"{h}_mbox_loc")(m), 4) for h, m in zip(HEADS, maps)]
        return torch.cat(conf, dim=1), torch.cat(loc, dim=1)

    @staticmethod
    def _flat(x: torch.Tensor, per_box: int) -> torch.Tensor:
        # NCHW -> NHWC -> (N, H*W*anchors, per_box): channel = anchor * per_box + k, as in Keras.
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_box)
