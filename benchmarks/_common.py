"""Shared helpers of the benchmarks: synthetic datasets, configs, machine info, docs sections.

Not part of the package and not a test: ``benchmarks/*.py`` import it as a sibling module
(``benchmarks/`` is put on ``sys.path`` by each script).
"""

from __future__ import annotations

import csv
import os
import platform
import re
import resource
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
CLASSES = ("circle", "square", "triangle", "cross")

DOC_INTRO = """# Performance

Numbers measured by `make bench` (`benchmarks/run_all.py`); each benchmark rewrites only its own
section of this file. They depend on the machine (given in each section): compare rows within
a section, not across machines.
"""


def ensure_root_on_path() -> None:
    """Make ``import auditor`` work when a script is run as ``python benchmarks/x.py``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def set_threads(n: int = 2) -> None:
    """Pin torch's intra-op threads (the benchmarks are specified for 2 cores)."""
    import torch

    torch.set_num_threads(n)


def machine_info() -> str:
    """One line naming the machine, the library versions and the torch thread count."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def load_average() -> str:
    """The 1/5/15-minute load averages (a busy machine explains noisy rows)."""
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_section(section: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) only the ``section`` heading's block of ``doc``.

    ``section`` is the full heading line, e.g. ``"## End to end"``; the block runs up to the
    next ``## `` heading or the end of the file. Other sections are kept byte for byte; the
    file is created with a short introduction when absent.
    """
    if not section.startswith("## "):
        raise ValueError(f"`section` must be a '## ' heading, got {section!r}")
    text = doc.read_text(encoding="utf-8") if doc.exists() else DOC_INTRO
    block = f"{section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(section)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, doc)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (values formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --------------------------------------------------------------------------------------------
# synthetic datasets


def _write_shard(args: tuple[Path, int, int, int, int]) -> list[tuple[str, str, str]]:
    """Write images ``start .. stop-1`` (independent seed per image): manifest rows."""
    root, start, stop, size, seed = args
    from PIL import Image

    rows = []
    for i in range(start, stop):
        label = i % len(CLASSES)
        img, mask = render_image(label, size, np.random.default_rng([seed, i]))
        name = f"{i:06d}_{CLASSES[label]}.png"
        Image.fromarray(img).save(root / "images" / name, compress_level=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name, compress_level=1)
        rows.append((f"images/{name}", CLASSES[label], f"masks/{name}"))
    return rows


def render_image(label: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 ``[size, size, 3]``) and its object mask (bool).

    At ``size >= 64`` the demo's renderer (``auditor.demo.render_sample``, 64 px, triangles on
    stripes) is upscaled bilinearly (mask: nearest); below it a cheaper direct drawing is used
    (a shape of the class on a noisy two-colour background) so that 20,000 images are quick.
    """
    from PIL import Image

    if size >= 64:
        from auditor.demo import CLASSES as DEMO_CLASSES
        from auditor.demo import SHORTCUT_CLASS, render_sample

        img, mask = render_sample(label, rng, striped=DEMO_CLASSES[label] == SHORTCUT_CLASS)
        if size != img.shape[0]:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            mask = (
                np.asarray(
                    Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
                )
                > 127
            )
        return img, mask
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    kind = CLASSES[label]
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    elif kind == "square":
        mask = (np.abs(xx - cx) <= 0.85 * r) & (np.abs(yy - cy) <= 0.85 * r)
    elif kind == "triangle":
        t = np.clip((yy - cy + r) / (2 * r), 0, 1)
        mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= t * r)
    else:
        w = 0.35 * r
        mask = ((np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r)) | (
            (np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r)
        )
    c1, c2 = rng.uniform(0.1, 0.6, (2, 3))
    t = (xx / size)[..., None]
    img = c1 * (1 - t) + c2 * t + rng.normal(0, 0.04, (size, size, 3))
    img = np.where(mask[..., None], rng.uniform(0.6, 1.0, 3), img)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def make_dataset(root: Path, n: int, size: int, *, seed: int = 0, workers: int = 2) -> Path:
    """Write ``n`` synthetic PNG images + masks and ``manifest.csv`` under ``root``.

    Class-interleaved labels (``i % 4``), one independent seed per image, so the first ``k``
    rows of a large set are exactly a small set. Returns the manifest path.
    """
    if n <= 0:
        raise ValueError(f"`n` must be positive, got {n}")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    step = max(1, -(-n // (8 * max(1, workers))))
    jobs = [(root, a, min(n, a + step), size, seed) for a in range(0, n, step)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_write_shard, jobs))
    else:
        parts = [_write_shard(j) for j in jobs]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "mask"])
        for part in parts:
            writer.writerows(part)
    return manifest


def write_config(
    path: Path,
    *,
    model: dict[str, object],
    manifest: Path,
    input_size: int,
    audit: dict[str, object],
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Path:
    """Write a TOML audit config (only str/int/float/bool/list values are needed here)."""

    def fmt(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = ["[model]"] + [f"{k} = {fmt(v)}" for k, v in model.items()]
    lines += [
        "",
        "[data]",
        f"manifest = {fmt(manifest)}",
        f"classes = {fmt(list(CLASSES))}",
        f"input_size = {input_size}",
        f"mean = {fmt(list(mean))}",
        f"std = {fmt(list(std))}",
        "",
        "[audit]",
    ]
    lines += [f"{k} = {fmt(v)}" for k, v in audit.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
