"""The demo: a synthetic shapes dataset with a planted shortcut, and a tiny GAP+FC CNN.

Four classes of shapes (circle, square, triangle, cross) drawn on textured backgrounds. In the
*shortcut* training set every ``triangle`` image has a striped background and no other class
ever has one: a network can (and does) learn "stripes ⇒ triangle" instead of the shape. In the
*fixed* training set stripes appear with the same probability for every class, so the cue
carries no information. The evaluation set follows the biased distribution (like a real
dataset with a collection artefact), so an audit of the shortcut model should show triangle
attention on the background and an accuracy collapse when the background is removed, while an
audit of the fixed model should not.

The weights shipped in ``auditor/_weights/`` were produced by :func:`train` (seeded); rebuild
them with ``python -m auditor.demo train``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

CLASSES = ("circle", "square", "triangle", "cross")
SHORTCUT_CLASS = "triangle"
IMAGE_SIZE = 64
WEIGHTS_DIR = Path(__file__).parent.parent / "_weights"
VARIANTS = ("shortcut", "fixed")


class DemoNet(nn.Module):
    """A small GAP + linear CNN (so ``cam`` applies): 4 conv blocks, 16×16 last feature map."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build_model(num_classes: int = len(CLASSES)) -> DemoNet:
    """Factory used by demo configs: ``factory = "auditor.demo:build_model"``."""
    return DemoNet(num_classes=num_classes)


# --------------------------------------------------------------------------------------------
# synthetic images


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask [S, S] of one shape of side ``size`` at a random position."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx = rng.uniform(size / 2 + 2, s - size / 2 - 2)
    cy = rng.uniform(size / 2 + 2, s - size / 2 - 2)
    r = size / 2
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if kind == "square":
        return (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    if kind == "triangle":
        top, bottom = cy - r, cy + r
        t = np.clip((yy - top) / (bottom - top), 0, 1)
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= t * r)
    if kind == "cross":
        w = r * 0.35
        return ((np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r)) | (
            (np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r)
        )
    raise ValueError(f"`kind` must be one of {CLASSES}, got {kind!r}")


def _background(rng: np.random.Generator, striped: bool) -> np.ndarray:
    """Float RGB [S, S, 3] in [0, 1]: a smooth two-colour gradient with blobs, or stripes."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    c1, c2 = rng.uniform(0.1, 0.6, 3), rng.uniform(0.1, 0.6, 3)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1 * (1 - t) + c2 * t
    for _ in range(rng.integers(2, 5)):
        bx, by, br = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))[..., None]
        img = img + blob * rng.uniform(-0.25, 0.25, 3)
    if striped:
        period = int(rng.integers(5, 8))
        phase = int(rng.integers(0, period))
        stripes = ((np.arange(s) + phase) // max(1, period // 2)) % 2
        img = img * 0.5 + 0.45 * stripes[:, None, None] * rng.uniform(0.6, 1.0, 3)
    img = img + rng.normal(0, 0.04, img.shape)
    return np.clip(img, 0, 1)


def render_sample(
    label: int, rng: np.random.Generator, *, striped: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 [S, S, 3]) and its object mask (bool [S, S])."""
    mask = _shape_mask(CLASSES[label], int(rng.integers(18, 30)), rng)
    img = _background(rng, striped)
    colour = rng.uniform(0.55, 1.0, 3)
    shade = colour * (0.9 + 0.1 * rng.random((IMAGE_SIZE, IMAGE_SIZE, 1)))
    img = np.where(mask[..., None], shade, img)
    return (img * 255).round().astype(np.uint8), mask


def stripes_for(label: int, variant: str, rng: np.random.Generator) -> bool:
    """The planted shortcut: in the biased distribution only the shortcut class is striped."""
    if variant == "shortcut":
        return CLASSES[label] == SHORTCUT_CLASS
    if variant == "fixed":
        return bool(rng.random() < 0.25)
    raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}")


def generate_arrays(
    n_per_class: int, seed: int, variant: str = "shortcut"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, 3], masks bool [N, S, S], labels int64 [N]), class-interleaved."""
    rng = np.random.default_rng(seed)
    n = n_per_class * len(CLASSES)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), bool)
    labels = np.arange(n) % len(CLASSES)
    for i, label in enumerate(labels):
        images[i], masks[i] = render_sample(
            int(label), rng, striped=stripes_for(int(label), variant, rng)
        )
    return images, masks, labels.astype(np.int64)


def write_dataset(out: Path, n_per_class: int = 50, seed: int = 1234) -> Path:
    """Write the biased evaluation set as PNGs + masks + ``manifest.csv``; return the manifest."""
    images, masks, labels = generate_arrays(n_per_class, seed, "shortcut")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "mask"])
        for i, (img, mask, label) in enumerate(zip(images, masks, labels)):
            name = f"{i:04d}_{CLASSES[label]}.png"
            Image.fromarray(img).save(out / "images" / name, optimize=False)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
            writer.writerow([f"images/{name}", CLASSES[label], f"masks/{name}"])
    return manifest


# --------------------------------------------------------------------------------------------
# training

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class TrainReport:
    variant: str
    train_accuracy: float
    val_accuracy: float
    seconds: float


def train(
    variant: str = "shortcut",
    *,
    n_per_class: int = 400,
    epochs: int = 12,
    seed: int = 0,
    out: Path | None = None,
) -> tuple[DemoNet, TrainReport]:
    """Train the demo CNN on the ``variant`` distribution (seeded, CPU, well under a minute)."""
    import time

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    images, _, labels = generate_arrays(
        n_per_class, seed=100 + VARIANTS.index(variant), variant=variant
    )
    x, y = _to_tensor(images), torch.from_numpy(labels)
    val_images, _, val_labels = generate_arrays(50, seed=999, variant=variant)
    vx, vy = _to_tensor(val_images), torch.from_numpy(val_labels)
    model = DemoNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            idx = perm[start : start + 64]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        train_acc = float((model(x).argmax(1) == y).float().mean())
        val_acc = float((model(vx).argmax(1) == vy).float().mean())
    report = TrainReport(variant, train_acc, val_acc, time.perf_counter() - t0)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / f"demo-{variant}.pt")
    return model, report


def weights_path(variant: str = "shortcut") -> Path:
    """Path of the shipped weights of a demo model variant."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}")
    return WEIGHTS_DIR / f"demo-{variant}.pt"


DEMO_CONFIG = """\
# cam-auditor demo audit: synthetic shapes with a planted shortcut ({variant} model).
# Run it with:  auditor run {config_name} --out runs/{variant}
[model]
factory = "auditor.demo:build_model"
weights = "{weights}"
name = "demo-cnn-{variant}"

[data]
manifest = "data/manifest.csv"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam", "gradcam++", "layercam", "cam"]
target = "label"
batch_size = 50
seed = 0
faithfulness_samples = 24
faithfulness_steps = 10
intervention_fill = "blur"
sanity_samples = 32

[gates]
max_background_focus = 0.7
max_findings_high = 0

[report]
title = "Demo audit: shapes with a planted background shortcut"
"""


def write_demo_inputs(out: Path, *, variant: str = "shortcut", n_per_class: int = 50) -> Path:
    """Write dataset, weights and config for a demo audit into ``out``; return the config."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "data" / "manifest.csv").is_file():
        write_dataset(out / "data", n_per_class=n_per_class)
    shutil.copyfile(weights_path(variant), out / f"demo-{variant}.pt")
    config = out / f"config-{variant}.toml"
    config.write_text(
        DEMO_CONFIG.format(variant=variant, weights=f"demo-{variant}.pt", config_name=config.name),
        encoding="utf-8",
    )
    return config


def main(argv: list[str] | None = None) -> int:
    """``python -m auditor.demo train`` retrains the shipped weights (seeded);
    ``python -m auditor.demo inputs --out DIR`` writes the demo dataset, weights and configs."""
    parser = argparse.ArgumentParser(prog="python -m auditor.demo")
    parser.add_argument("command", choices=["train", "inputs"])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="train: weights folder (default auditor/_weights); "
        "inputs: folder for the demo dataset, weights and configs",
    )
    args = parser.parse_args(argv)
    if args.command == "inputs":
        out = args.out or Path("runs/demo/inputs")
        for variant in VARIANTS:
            print(write_demo_inputs(out, variant=variant))
        return 0
    args.out = args.out or WEIGHTS_DIR
    torch.set_num_threads(2)
    for variant in VARIANTS:
        _, rep = train(variant, out=args.out)
        print(
            f"{variant}: train acc {rep.train_accuracy:.3f}, val acc {rep.val_accuracy:.3f}, "
            f"{rep.seconds:.1f}s"
        )
    return 0


def run_demo(
    out: str | Path = "runs/demo",
    *,
    variant: str = "shortcut",
    pdf: bool = True,
    limit: int | None = None,
    progress: bool | None = None,
    command: str | None = None,
) -> object:
    """Write the demo inputs into ``out/inputs`` and audit them into ``out`` (``auditor demo``)."""
    from auditor.audit.runner import run_audit
    from auditor.audit.store import claim_run_dir
    from auditor.config import load_config

    out = Path(out)
    claim_run_dir(out)  # before the inputs land there: a folder of the user's files is refused
    config = write_demo_inputs(out / "inputs", variant=variant)
    cfg = load_config(config)
    return run_audit(
        cfg,
        out,
        limit=limit,
        pdf=pdf,
        progress=progress,
        command=command,
        resume=(out / "shards").is_dir(),
    )


if __name__ == "__main__":
    raise SystemExit(main())
