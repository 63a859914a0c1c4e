"""The transplant intervention in the report (issue 22): its figure (drawn once, in the audit's
transplant phase, as ``RUN_DIR/gallery/transplant-<class>.png``) and the view model of the
"Causal confirmation by transplant" section. Nothing is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from auditor.report.figures import COLOURS, _font, _label, _nearest, _png
from auditor.report.view import TransplantRow, TransplantView
from auditor.results import AuditResult
from auditor.results.transplant import class_transplant

__all__ = ["transplant_context", "transplant_panel"]

#: The result's fields a row copies (all but ``extra``; ``name`` and ``uri`` are the row's).
_ROW_FIELDS = tuple(f.name for f in fields(TransplantRow) if f.name not in ("name", "uri"))
_TILE = 120  # px per image tile
_PAD = 8


def transplant_panel(
    pasted: Sequence[np.ndarray],
    controls: Sequence[np.ndarray],
    pasted_pred: Sequence[str],
    control_pred: Sequence[str],
    region: tuple[int, int, int, int],
    *,
    title: str,
) -> bytes:
    """Draw the transplanted recipients (top row) and their controls (bottom row), each with
    the pasted region outlined and the model's prediction under it; PNG bytes.

    Args:
        pasted, controls: ``[H, W, 3]`` uint8 images (the same number, at least one).
        pasted_pred, control_pred: the predicted class name of each image.
        region: ``(x0, y0, x1, y1)`` of the pasted box in the images' pixels (half-open).
        title: the line above the panel.
    """
    from PIL import Image, ImageDraw

    n = len(pasted)
    if n == 0 or len(controls) != n or len(pasted_pred) != n or len(control_pred) != n:
        raise ValueError(
            f"`pasted`, `controls`, `pasted_pred`, `control_pred` must have the same length "
            f">= 1, got {n}, {len(controls)}, {len(pasted_pred)}, {len(control_pred)}"
        )
    font = _font(10.0)
    line = font.size + 6
    width = _PAD + n * (_TILE + _PAD) + 90
    height = line + 2 * (_TILE + line + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_PAD, 2), _label(title, 110), font=font, fill=COLOURS["ink"])
    for row, (images, preds, name) in enumerate(
        ((pasted, pasted_pred, "transplant"), (controls, control_pred, "control"))
    ):
        y = line + row * (_TILE + line + _PAD)
        draw.text((_PAD + n * (_TILE + _PAD), y + _TILE // 2), name, font=font,
                  fill=COLOURS["muted"])  # fmt: skip
        for k, (img, pred) in enumerate(zip(images, preds)):
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"images must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
            h, w = img.shape[:2]
            x = _PAD + k * (_TILE + _PAD)
            canvas.paste(_nearest(img, (_TILE, _TILE)), (x, y))
            x0, y0, x1, y1 = region
            sx, sy = _TILE / w, _TILE / h
            draw.rectangle(
                [x + x0 * sx, y + y0 * sy, x + x1 * sx - 1, y + y1 * sy - 1],
                outline=COLOURS["wrong"],
                width=2,
            )
            draw.text((x, y + _TILE + 2), "→ " + _label(pred, 16), font=font,
                      fill=COLOURS["ink"])  # fmt: skip
    return _png(canvas)


def transplant_context(result: AuditResult, images: Any) -> TransplantView | None:
    """Rows of the report's transplant section (``None`` when the run has no transplant).

    ``images``: the report's PNG reader (``.uri(rel)`` → ``data:`` URI)."""
    rows: list[TransplantRow] = []
    for name, cr in result.classes.items():
        t = class_transplant(cr)
        if t is None:
            continue
        rows.append(
            TransplantRow(
                name=name,
                **{k: getattr(t, k) for k in _ROW_FIELDS},
                uri=images.uri(t.figure) if t.figure else None,
            )
        )
    if not rows:
        return None
    from auditor.analysis.transplant import TransplantRules

    return TransplantView(rows=tuple(rows), rule=TransplantRules().describe())
