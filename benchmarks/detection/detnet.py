"""The benchmark's tiny CNN and its seeded training (CPU, seconds).

Three conv layers (48 px input -> a 12 x 12 last feature map), global average pooling and a
linear head, so CAM and Grad-CAM apply. ``build_model`` is the ``[model] factory`` of the
benchmark's configs (this file is copied beside them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class DetNet(nn.Module):
    """conv(3->16) - conv(16->32, stride 2) - conv(32->32, stride 2) - GAP - linear."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(num_classes: int = 4) -> DetNet:
    """The ``[model] factory`` of the benchmark configs."""
    return DetNet(num_classes=num_classes)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> normalised float [N, 3, S, S] (``MEAN``, ``STD``)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(
    images: np.ndarray, labels: np.ndarray, *, seed: int, epochs: int = 15, num_classes: int = 4
) -> DetNet:
    """Adam (lr 3e-3), batch 32, ``epochs`` passes, seeded; returns the net in eval mode."""
    torch.manual_seed(seed)
    x, y = to_tensor(images), torch.from_numpy(np.asarray(labels, np.int64))
    net = DetNet(num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = perm[start : start + 32]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def predict(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """Predicted class indices (int [N])."""
    with torch.inference_mode():
        return net(to_tensor(images)).argmax(1).numpy()
