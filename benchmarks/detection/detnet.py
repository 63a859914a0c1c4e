"""The benchmark's tiny CNN and its seeded training (CPU, seconds).

Three conv layers (48 px input -> a 12 x 12 last feature map), global average pooling and a
linear head, so CAM and Grad-CAM apply. ``build_model`` is the ``[model] factory`` of the
benchmark's configs (this file is copied beside them); ``build_coord_model`` the same net with
two coordinate channels (CoordConv, Liu et al. 2018), for the shortcut types whose cue is a
place (``generator.ShortcutType.coords``).

Why coordinates: convolutions are translation equivariant and global average pooling is
invariant, so ``GAP(conv(x))`` of a digit does not depend on where the digit is (up to the
zero padding's border effects); such a net cannot learn "digit in the top-left => class"
(measured: planted transplant d = -0.02, session 9). CoordConv concatenates the pixel
coordinates ``u = 2 j / (W - 1) - 1`` and ``v = 2 i / (H - 1) - 1`` (both in [-1, 1]) to the
input of the first convolution, so it computes ``relu(w * x + a * u + b * v + c)``: a filter
can fire on strokes only where ``a * u + b * v`` is large, and its pooled response then
encodes the place. By linearity ``conv([x; u; v]) = conv_x(x) + conv_uv([u; v])``, which is
how :class:`CoordConv2d` computes it: the image convolution stays a 3-channel ``Conv2d`` (the
audit checks that the first convolution takes the data's channels, and the model does take
3-channel images) and the coordinates are made inside ``forward``. The head is still linear
after pooling, so Grad-CAM on the last conv layer applies unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def add_coords(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C + 2, H, W]: the input with the column and row coordinates
    ``u = 2 j / (W - 1) - 1``, ``v = 2 i / (H - 1) - 1`` appended (CoordConv, Liu et al. 2018)."""
    n, _, h, w = x.shape
    v = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    u = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
    return torch.cat([x, u.expand(n, 1, h, w), v.expand(n, 1, h, w)], dim=1)


class CoordConv2d(nn.Module):
    """A 3 x 3 convolution over ``[x; u; v]`` (:func:`add_coords`), computed as
    ``conv(x) + coord([u; v])`` (the same map: convolution is linear in its input channels)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.coord = nn.Conv2d(2, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uv = add_coords(x[:, :0])  # [N, 2, H, W]: the coordinate channels alone
        return self.conv(x) + self.coord(uv)


class DetNet(nn.Module):
    """conv(3->16) - conv(16->32, stride 2) - conv(32->32, stride 2) - GAP - linear;
    ``coords``: the first conv also sees the two coordinate channels (:class:`CoordConv2d`)."""

    def __init__(self, num_classes: int = 4, width: int = 16, coords: bool = False) -> None:
        super().__init__()
        self.coords = coords
        self.features = nn.Sequential(
            CoordConv2d(3, width) if coords else nn.Conv2d(3, width, 3, padding=1),
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


def build_coord_model(num_classes: int = 4) -> DetNet:
    """The ``[model] factory`` of the benchmark configs for types with ``coords`` (CoordConv)."""
    return DetNet(num_classes=num_classes, coords=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> normalised float [N, 3, S, S] (``MEAN``, ``STD``)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    epochs: int = 15,
    num_classes: int = 4,
    coords: bool = False,
) -> DetNet:
    """Adam (lr 3e-3), batch 32, ``epochs`` passes, seeded; returns the net in eval mode
    (``coords``: the CoordConv variant, :func:`build_coord_model`)."""
    torch.manual_seed(seed)
    x, y = to_tensor(images), torch.from_numpy(np.asarray(labels, np.int64))
    net = DetNet(num_classes, coords=coords)
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
