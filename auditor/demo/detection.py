"""A tiny object detector and a synthetic COCO set with a planted context cue (issue 26).

**Detector** (:class:`TinyDetector`): a CenterNet-style detector (Zhou et al. 2019, "Objects
as Points"): a 3-layer convolutional backbone of stride 4, a per-class centre heatmap
(sigmoid) and a box-size head; a detection is a local maximum of the heatmap (3 x 3) with its
probability as the score and the box ``centre +- size / 2``. It has torchvision's detector
interface (a list of ``[3, H, W]`` images in [0, 1] in, a list of ``{boxes, labels, scores}``
out, label ``k + 1`` for class ``k``) and its ``backbone`` module is the target layer. It
trains in seconds on CPU (:func:`train_detector`).

**Data** (:func:`make_scene`, :func:`write_coco`): 64 x 64 images with one object, a 2-pixel
black-and-white checkerboard square (12-18 px). The two classes LOOK THE SAME; they differ
only by their context: a ``"boat"`` always lies on blue "water" (blue exceeds red and green by
>= 0.3), a ``"kite"`` on a background where blue does not dominate (grey included). A
detector can tell them apart only from the context, so the audit must find that ``boat`` is
detected from its context (its recall collapses when the context is removed: the grey fill is
not water) and stay silent on ``kite`` (grey context keeps it a kite).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import Tensor, nn

__all__ = [
    "DET_CLASSES",
    "IMAGE",
    "TinyDetector",
    "build_tiny_detector",
    "make_scene",
    "train_detector",
    "write_coco",
]

DET_CLASSES = ("boat", "kite")
IMAGE = 64
STRIDE = 4


class TinyDetector(nn.Module):
    """CenterNet-style tiny detector (see the module docstring)."""

    def __init__(self, num_classes: int = 3, score_floor: float = 0.05, max_det: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=4, dilation=4),
            nn.ReLU(),
        )
        self.heat = nn.Conv2d(16, num_classes, 1)  # background + classes, softmax per cell
        self.size = nn.Conv2d(16, 2, 1)
        self.score_floor, self.max_det = score_floor, max_det

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, 1 + C, h, w] (background first), log box size in stride units
        [B, 2, h, w])``."""
        f = self.backbone(x * 2.0 - 1.0)
        return self.heat(f), self.size(f)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        heat, size = self.heads(torch.stack(list(images)))
        prob = torch.softmax(heat, dim=1)[:, 1:]  # one class per cell: P(class | cell)
        peak = prob == F.max_pool2d(prob, 3, stride=1, padding=1)
        out = []
        for b in range(prob.shape[0]):
            p = prob[b]
            keep = (peak[b] & (p >= self.score_floor)).flatten()
            idx = torch.nonzero(keep).flatten()
            order = torch.argsort(p.flatten()[idx].detach(), descending=True)[: self.max_det]
            idx = idx[order]
            hw = p.shape[1] * p.shape[2]
            c, rem = idx // hw, idx % hw
            i, j = rem // p.shape[2], rem % p.shape[2]
            wh = torch.exp(size[b][:, i, j]).t() * STRIDE  # [N, 2]
            cx, cy = (j.float() + 0.5) * STRIDE, (i.float() + 0.5) * STRIDE
            boxes = torch.stack(
                [cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1
            )
            out.append({"boxes": boxes, "labels": c + 1, "scores": p.flatten()[idx]})
        return out


def build_tiny_detector(num_classes: int = 3) -> TinyDetector:
    """The factory ``auditor.demo.detection:build_tiny_detector``."""
    return TinyDetector(num_classes=num_classes)


def _background(rng: np.random.Generator, water: bool) -> np.ndarray:
    if water:
        r, g = rng.uniform(0.0, 0.35, 2)
        b = rng.uniform(max(r, g) + 0.3, 1.0)
    else:
        r, g = rng.uniform(0.2, 1.0, 2)
        b = rng.uniform(0.0, max(r, g))
    base = np.array([r, g, b])
    noise = rng.normal(0, 0.05, (IMAGE, IMAGE, 3))
    return np.clip(base + noise, 0, 1)


def make_scene(rng: np.random.Generator, cls: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image (uint8 ``[64, 64, 3]``) of class ``cls`` and its box ``(x0, y0, x1, y1)``."""
    img = _background(rng, water=DET_CLASSES[cls] == "boat")
    s = int(rng.integers(12, 19))
    x0, y0 = (int(v) for v in rng.integers(2, IMAGE - s - 2, 2))
    yy, xx = np.mgrid[0:s, 0:s]
    board = ((yy // 2 + xx // 2) % 2).astype(np.float64)
    img[y0 : y0 + s, x0 : x0 + s] = board[..., None]
    return (img * 255).round().astype(np.uint8), (x0, y0, x0 + s, y0 + s)


def _targets(
    boxes: list[tuple[int, int, int, int]], labels: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    h = IMAGE // STRIDE
    heat = torch.zeros(len(boxes), h, h, dtype=torch.long)  # 0 background, c + 1 class c
    size = torch.zeros(len(boxes), 2, h, h)
    pos = torch.zeros(len(boxes), 1, h, h, dtype=torch.bool)
    for n, ((x0, y0, x1, y1), c) in enumerate(zip(boxes, labels, strict=True)):
        i, j = int((y0 + y1) / 2 // STRIDE), int((x0 + x1) / 2 // STRIDE)
        heat[n, i, j] = c + 1
        size[n, :, i, j] = torch.log(torch.tensor([(x1 - x0) / STRIDE, (y1 - y0) / STRIDE]))
        pos[n, 0, i, j] = True
    return heat, size, pos


def train_detector(n: int = 256, steps: int = 150, seed: int = 0) -> TinyDetector:
    """Train :class:`TinyDetector` on ``n`` scenes (half of each class); seconds on CPU.

    Runs on one CPU thread (restored afterwards): the result then does not depend on the
    machine's thread count (a multi-threaded reduction changes the trained weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(n, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(n: int, steps: int, seed: int) -> TinyDetector:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = [i % 2 for i in range(n)]
    scenes = [make_scene(rng, c) for c in labels]
    x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 255
    heat_t, size_t, pos = _targets([s[1] for s in scenes], labels)
    weight = torch.tensor([1.0] + [30.0] * len(DET_CLASSES))
    model = TinyDetector(num_classes=len(DET_CLASSES) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = torch.randint(0, n, (32,), generator=g)
        heat, size = model.heads(x[b])
        loss = F.cross_entropy(heat, heat_t[b], weight=weight)
        m = pos[b].expand_as(size)
        loss = loss + F.l1_loss(size[m], size_t[b][m])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def write_coco(root: Path, n_per_class: int = 20, seed: int = 1) -> Path:
    """Write ``n_per_class`` scenes per class as PNGs and a COCO ``instances.json``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k in range(2 * n_per_class):
        cls = k % 2
        img, (x0, y0, x1, y1) = make_scene(rng, cls)
        name = f"images/{k:04d}.png"
        Image.fromarray(img).save(root / name)
        images.append({"id": k + 1, "file_name": name, "width": IMAGE, "height": IMAGE})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": cls + 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                     "iscrowd": 0})  # fmt: skip
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(DET_CLASSES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
