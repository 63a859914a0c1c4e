"""Gallery panels of a detection run (issue 26): the box and the explained detection's map.

Drawn ONCE, when the run is finalised (:func:`auditor.audit.detection_finish.
finish_detection`), under ``RUN_DIR/gallery/det-*.png``; ``summary.json`` lists them in
``detection.gallery`` and the report only embeds the files (rendering computes nothing).

Which boxes are shown (:func:`choose_detection_panels`), per class, at most 20 classes
(flagged classes first, then the others in class order):

* up to ``per_class`` found ground-truth boxes of the primary method whose map is defined,
  the highest background focus first (the maps most off the box);
* up to 2 false-positive detections of the class, the highest score first.

Each panel is :func:`auditor.report.figures.gallery_panel` (image | image + outline | map
overlay) with the box as the outline: the map is the primary method's low-resolution map of
that detection's score, bilinearly upsampled and scaled to its maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.format import slugify

__all__ = [
    "MAX_CLASSES",
    "MAX_FALSE_POSITIVES",
    "choose_detection_panels",
    "draw_detection_gallery",
]

MAX_CLASSES = 20
MAX_FALSE_POSITIVES = 2


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def choose_detection_panels(
    rows: pa.Table, classes: Sequence[str], flagged: Mapping[str, bool], primary: str,
    per_class: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """The panels to draw, in display order: ``{class, kind, id, index, box, box_id, score,
    background_focus, energy_in_mask, x0, y0, x1, y1}`` (see the module docstring)."""
    if per_class <= 0 or rows.num_rows == 0:
        return []
    prim = rows.filter(pc.equal(rows.column("method"), primary)).to_pylist()
    order = [c for c in classes if flagged.get(c)] + [c for c in classes if not flagged.get(c)]
    out: list[dict[str, Any]] = []
    for name in order[:MAX_CLASSES]:
        mine = [r for r in prim if r.get("label_name") == name]
        found = [r for r in mine if r["kind"] == "gt" and r.get("detected") and
                 r.get("status") == "ok"]  # fmt: skip
        found.sort(key=lambda r: (-(_num(r.get("background_focus")) or 0.0), r["index"]))
        fps = [r for r in mine if r["kind"] == "fp" and r.get("status") == "ok"]
        fps.sort(key=lambda r: (-(_num(r.get("score")) or 0.0), r["index"], r["box"]))
        for r in found[:per_class] + fps[:MAX_FALSE_POSITIVES]:
            out.append({
                "class": name, "kind": r["kind"], "id": str(r["id"]), "index": int(r["index"]),
                "box": int(r["box"]), "box_id": f"{r['id']}#{r['kind']}{r['box']}",
                "score": _num(r.get("score")),
                "background_focus": _num(r.get("background_focus")),
                "energy_in_mask": _num(r.get("energy_in_mask")),
                "x0": float(r["x0"]), "y0": float(r["y0"]),
                "x1": float(r["x1"]), "y1": float(r["y1"]),
            })  # fmt: skip
    return out


def draw_detection_gallery(
    run_dir: Path, picks: Sequence[Mapping[str, Any]], maps: Mapping[str, np.ndarray],
    dataset: Any, primary: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Draw ``picks`` (with ``maps[box_id]``, the low-resolution map) over the dataset's
    display images; the entries with ``file`` (relative to ``run_dir``) filled in. A pick
    whose image cannot be loaded again is listed with ``file: None`` and the reason."""
    from auditor.metrics.detection import box_masks
    from auditor.report.figures import gallery_panel
    from auditor.report.html import atomic_write

    out: list[dict[str, Any]] = []
    if picks:
        (Path(run_dir) / "gallery").mkdir(exist_ok=True)
    for k, p in enumerate(picks):
        entry = dict(p)
        try:
            image, _ = dataset.load_display(int(p["index"]))
        except Exception as exc:  # noqa: BLE001 - a vanished file: listed, not drawn
            entry.update(file=None, note=f"image not loaded: {type(exc).__name__}: {exc}")
            out.append(entry)
            continue
        image = np.asarray(image)
        box = [p["x0"], p["y0"], p["x1"], p["y1"]]
        mask = box_masks([box], image.shape[0], image.shape[1])[0]
        what = "found box" if p["kind"] == "gt" else "false detection"
        png = gallery_panel(
            image, mask, maps[p["box_id"]],
            title=f"{p['id']} · {p['class']} · {what}",
            subtitle=f"{primary} map of the detection (score {_fmt(p['score'])}); energy in "
                     f"box {_fmt(p['energy_in_mask'])}",
        )  # fmt: skip
        rel = f"gallery/det-{k + 1:03d}-{slugify(p['class'])}-{p['kind']}{p['box']}.png"
        atomic_write(Path(run_dir) / rel, png)
        entry["file"] = rel
        out.append(entry)
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
