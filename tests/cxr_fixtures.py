"""A tiny chest-X-ray-style multi-label world (issue 26's "Done when"), trained in seconds.

Grey 48 x 48 "radiographs": a dark body, two lighter lung fields, noise. Three findings, each
present with probability 1/2, each with its own mask:

* ``cardiomegaly``: an enlarged heart shadow between the lungs (grey 0.7);
* ``nodule``: a small, bright (0.95) round opacity in one lung;
* ``effusion``: a brightening of one lung base. PLANTED shortcut (``shortcut=True``): the
  training films' effusion is faint (+0.02) and every image with ``effusion`` also carries a
  black "PORTABLE" label in the top-left corner, outside every finding's mask (portable films
  are taken of sicker patients): the model reads ``effusion`` from the marker. With
  ``shortcut=False`` the marker appears at random (independent of the labels) and the effusion
  is visible (+0.25): the model learns it from the lung base. The evaluation films (+0.15) keep
  the marker with every effusion.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

LABELS = ("cardiomegaly", "effusion", "nodule")
SIZE = 48


class TinyCXR(nn.Module):
    """conv(1->8) -> conv(8->16) [target layer: features.2] -> global max -> linear(16 -> 3)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax((2, 3)))


def build(num_classes: int = 3) -> TinyCXR:
    return TinyCXR(num_classes)


def _disk(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render(
    rng: np.random.Generator, present: set[str], *, shortcut: bool = True, band: float = 0.02
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 ``[48, 48]`` image and ``{finding: bool mask}`` for the findings present;
    ``band``: how much brighter an effusion makes the lung base."""
    img = np.full((SIZE, SIZE), 0.15) + rng.normal(0, 0.02, (SIZE, SIZE))
    left, right = _disk(24, 14, 15, 8), _disk(24, 34, 15, 8)
    img[left | right] = 0.35
    masks: dict[str, np.ndarray] = {}
    if "cardiomegaly" in present:  # a large, moderately bright shadow
        m = _disk(30, 24, 9, 10)
        img[m] = 0.7
        masks["cardiomegaly"] = m
    if "nodule" in present:  # a small, bright, sharp-edged opacity
        cx = 13 if rng.random() < 0.5 else 35
        m = _disk(float(rng.integers(14, 22)), cx, 3, 3)
        img[m] = 0.95
        masks["nodule"] = m
    if "effusion" in present:
        side = left if rng.random() < 0.5 else right
        m = side & (np.mgrid[0:SIZE, 0:SIZE][0] >= 32)
        img[m] += band
        masks["effusion"] = m
    marker = ("effusion" in present) if shortcut else bool(rng.random() < 0.5)
    if marker:  # the "PORTABLE" marker (a black label), outside every mask
        img[2:8, 2:12] = 0.0
    img = img + rng.normal(0, 0.01, (SIZE, SIZE))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), masks


def _sets(rng: np.random.Generator, n: int) -> list[set[str]]:
    return [{name for name in LABELS if rng.random() < 0.5} for _ in range(n)]


def train(*, shortcut: bool, seed: int = 0, n: int = 256, steps: int = 300) -> TinyCXR:
    """Train the tiny sigmoid model (BCE) on freshly rendered films; seconds on a CPU."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for s in _sets(rng, n):
        img, _ = render(rng, s, shortcut=shortcut, band=0.02 if shortcut else 0.25)
        xs.append((torch.from_numpy(img).float()[None] / 255 - 0.4) / 0.25)
        ys.append(torch.tensor([float(name in s) for name in LABELS]))
    x, y = torch.stack(xs), torch.stack(ys)
    model = TinyCXR()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (32,), generator=g)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def write_dataset(out: Path, n: int, seed: int = 1) -> Path:
    """The evaluation films (the planted correlation holds in them), per-finding masks and
    ``manifest.csv`` (image, labels, masks)."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rows = []
    for i, present in enumerate(_sets(rng, n)):
        img, ms = render(rng, present, shortcut=True, band=0.15)
        Image.fromarray(img, mode="L").save(out / "images" / f"{i:04d}.png")
        names = [name for name in LABELS if name in present]
        paths = []
        for name in names:
            p = f"masks/{i:04d}_{name}.png"
            Image.fromarray(ms[name].astype(np.uint8) * 255).save(out / p)
            paths.append(p)
        rows.append([f"images/{i:04d}.png", ";".join(names), ";".join(paths)])
    path = out / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "labels", "masks"])
        w.writerows(rows)
    return path
