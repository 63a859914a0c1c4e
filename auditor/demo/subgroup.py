"""A planted *subgroup* shortcut (the SpRAy "horse tag" case) and its clean control.

Three classes of shapes (circle, square, cross) on smooth backgrounds, 32 × 32 pixels. In the
*tagged* distribution a fraction (default 45 %) of the ``circle`` images carry a small
yellow-black checker tag in the bottom-left corner, and on exactly those images the circle is
faint (12 % contrast): the tag is the only reliable cue for them, so a network learns
"tag ⇒ circle" for that subgroup while the other circles are recognised by their shape (the
copyright tag of the PASCAL "horse" class, Lapuschkin et al. 2019). No other class ever
carries the tag. The *clean* distribution has no tag and every shape at full contrast.

The weights shipped in ``auditor/_weights/subgroup-*.pt`` were produced by :func:`train`
(seeded, CPU, a few seconds); rebuild them with ``python -m auditor.demo_subgroup train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = ("circle", "square", "cross")
TAGGED_CLASS = "circle"
IMAGE_SIZE = 32
TAG_SIZE = 6
VARIANTS = ("tagged", "clean")
WEIGHTS_DIR = Path(__file__).parent.parent / "_weights"
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class SubgroupNet(nn.Module):
    """Three conv layers (8 × 8 last feature map), global average pooling, a linear head."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16) -> None:
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


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    r = rng.uniform(5, 8)
    # keep the bottom-left corner (where the tag goes) free of the object
    cx = rng.uniform(r + TAG_SIZE + 2, s - r - 2)
    cy = rng.uniform(r + 2, s - r - TAG_SIZE - 2)
    if kind == "circle":
        return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
    if kind == "square":
        return np.asarray((np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85))
    if kind == "cross":
        w = r * 0.35
        return np.asarray(
            ((np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r))
            | ((np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r))
        )
    raise ValueError(f"`kind` must be one of {CLASSES}, got {kind!r}")


def render(label: int, rng: np.random.Generator, *, tagged: bool) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 [S, S, 3]) and its object mask (bool [S, S]); the tag is background."""
    s = IMAGE_SIZE
    mask = _shape(CLASSES[label], rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    c1, c2 = rng.uniform(0.1, 0.5, 3), rng.uniform(0.1, 0.5, 3)
    a = rng.uniform(0, np.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1 * (1 - t) + c2 * t + rng.normal(0, 0.03, (s, s, 3))
    colour = rng.uniform(0.6, 1.0, 3)
    alpha = 0.12 if tagged else 1.0
    img = np.where(mask[..., None], img * (1 - alpha) + colour * alpha, img)
    if tagged:
        checker = ((np.arange(TAG_SIZE)[:, None] + np.arange(TAG_SIZE)[None]) % 2).astype(
            np.float32
        )
        img[s - TAG_SIZE :, :TAG_SIZE] = checker[..., None] * np.array([1.0, 0.9, 0.1])
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def generate(
    n_per_class: int, seed: int, variant: str = "tagged", fraction: float = 0.45
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N,S,S,3], masks bool [N,S,S], labels int64 [N], tagged bool [N])."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n = n_per_class * len(CLASSES)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), bool)
    labels = (np.arange(n) % len(CLASSES)).astype(np.int64)
    tagged = np.zeros(n, bool)
    for i, label in enumerate(labels):
        tag = variant == "tagged" and CLASSES[label] == TAGGED_CLASS and rng.random() < fraction
        images[i], masks[i] = render(int(label), rng, tagged=bool(tag))
        tagged[i] = tag
    return images, masks, labels, tagged


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] → normalised float [N, 3, S, S] (``MEAN``, ``STD``)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(
    variant: str = "tagged", *, n_per_class: int = 200, epochs: int = 10, seed: int = 0
) -> SubgroupNet:
    """Train :class:`SubgroupNet` on the ``variant`` distribution (seeded, CPU, seconds)."""
    torch.manual_seed(seed)
    images, _, labels, _ = generate(n_per_class, 100 + VARIANTS.index(variant), variant)
    x, y = to_tensor(images), torch.from_numpy(labels)
    net = SubgroupNet()
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


def weights_path(variant: str) -> Path:
    """Path of the shipped weights of a variant."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}")
    return WEIGHTS_DIR / f"subgroup-{variant}.pt"


def load(variant: str) -> SubgroupNet:
    """The shipped model of a variant (``weights_only=True``), in eval mode."""
    net = SubgroupNet()
    net.load_state_dict(torch.load(weights_path(variant), weights_only=True))
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m auditor.demo_subgroup train [--out DIR]`` retrains the shipped weights."""
    parser = argparse.ArgumentParser(prog="python -m auditor.demo_subgroup")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        net = train(variant)
        torch.save(net.state_dict(), args.out / f"subgroup-{variant}.pt")
        images, _, labels, _ = generate(40, 7, variant)
        with torch.inference_mode():
            pred = net(to_tensor(images)).argmax(1)
            acc = float((pred == torch.from_numpy(labels)).float().mean())
        print(f"{variant}: evaluation accuracy {acc:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
