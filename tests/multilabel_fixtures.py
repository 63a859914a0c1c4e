"""A tiny multi-label world, trained in seconds (issue 26 tests).

Images 32x32, three labels: ``square`` (a red patch), ``bar`` (a blue bar), ``ring`` (a faint
grey patch). Each label is present with probability 1/2, independently. The PLANTED shortcut:
every image carrying ``ring`` also has a bright yellow frame (2 px) on its border, while the
ring itself is nearly invisible (grey at +0.06 over the background), so a sigmoid model learns
``ring`` from the frame (background), and ``square``/``bar`` from their objects. Masks: one PNG
per label present (the object's pixels).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

LABELS = ("bar", "ring", "square")
SIZE = 32


class TinyMultiLabel(nn.Module):
    """conv(3->8) -> conv(8->16) [target layer: features.2] -> GAP -> linear(16 -> 3)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def build(num_classes: int = 3) -> TinyMultiLabel:
    return TinyMultiLabel(num_classes)


def render(rng: np.random.Generator, present: set[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 [32, 32, 3] image and {label: bool mask} for the labels in ``present``."""
    img = np.full((SIZE, SIZE, 3), 0.35, np.float32) + rng.normal(0, 0.02, (SIZE, SIZE, 3))
    masks: dict[str, np.ndarray] = {}
    taken = np.zeros((SIZE, SIZE), bool)
    for name in LABELS:
        if name not in present:
            continue
        h, w = (4, 12) if name == "bar" else (8, 8)
        for _ in range(50):
            y, x = int(rng.integers(4, SIZE - 4 - h)), int(rng.integers(4, SIZE - 4 - w))
            if not taken[y - 1 : y + h + 1, x - 1 : x + w + 1].any():
                break
        m = np.zeros((SIZE, SIZE), bool)
        m[y : y + h, x : x + w] = True
        taken |= m
        masks[name] = m
        colour = {"square": (0.9, 0.1, 0.1), "bar": (0.1, 0.2, 0.9), "ring": (0.41, 0.41, 0.41)}
        img[m] = colour[name]
    if "ring" in present:  # the planted background shortcut
        frame = np.ones((SIZE, SIZE), bool)
        frame[2:-2, 2:-2] = False
        img[frame] = (0.95, 0.9, 0.1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), masks


def sample_sets(rng: np.random.Generator, n: int) -> list[set[str]]:
    return [{name for name in LABELS if rng.random() < 0.5} for _ in range(n)]


def train(seed: int = 0, n: int = 384, steps: int = 300) -> TinyMultiLabel:
    """Train the tiny sigmoid model (BCE) on freshly rendered images; seconds on a CPU."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sets = sample_sets(rng, n)
    xs, ys = [], []
    for s in sets:
        img, _ = render(rng, s)
        xs.append((torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)
        ys.append(torch.tensor([float(name in s) for name in LABELS]))
    x, y = torch.stack(xs), torch.stack(ys)
    model = TinyMultiLabel()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (32,), generator=g)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def write_dataset(out: Path, n: int, seed: int = 1, *, masks: bool = True) -> Path:
    """Images, per-label mask PNGs and ``manifest.csv`` (image, labels, masks)."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rows = []
    for i, present in enumerate(sample_sets(rng, n)):
        img, ms = render(rng, present)
        fn = f"{i:04d}.png"
        Image.fromarray(img).save(out / "images" / fn)
        names = [name for name in LABELS if name in present]
        paths = []
        for name in names:
            mp = f"masks/{i:04d}_{name}.png"
            Image.fromarray(ms[name].astype(np.uint8) * 255).save(out / mp)
            paths.append(mp)
        rows.append([f"images/{fn}", ";".join(names), ";".join(paths) if masks else ""])
    path = out / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "labels", "masks"])
        w.writerows(rows)
    return path


def write_config(out: Path, manifest: Path, weights: Path, extra: str = "") -> Path:
    """A sigmoid-run config for the tiny model (factory beside the test fixtures)."""
    cfg = out / "audit.toml"
    cfg.write_text(
        f"""
[model]
factory = "multilabel_fixtures:build"
weights = "{weights}"
output = "sigmoid"
target_layer = "features.2"

[data]
manifest = "{manifest}"
input_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam"]
batch_size = 32
sanity_check = false
bootstrap = 200
{extra}
"""
    )
    return cfg
