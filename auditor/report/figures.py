"""Report figures: pure functions, data in, PNG bytes out.

Every report figure builds its own :class:`matplotlib.figure.Figure` attached to a
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`; nothing touches ``pyplot`` global
state, so figures can be drawn from threads or worker processes and never leak between calls.
The gallery and cluster panels (hundreds per run) are drawn as rasters with Pillow instead:
the same panels (images, object outline, ``jet`` overlay at alpha 0.5 with matplotlib's 256
levels, colour bar, DejaVu Sans titles) in a few milliseconds instead of ~0.2 s each.
No function computes a statistic: the values come from ``summary.json`` / ``samples.parquet``
and are only drawn. PNG bytes are deterministic for equal inputs (no timestamp metadata).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "background_focus_by_class",
    "cluster_panel",
    "confusion_matrix",
    "count_norm",
    "energy_distribution",
    "energy_vs_confidence",
    "gallery_panel",
    "interventions_by_class",
    "method_agreement",
    "plain_text",
]

#: Colours shared with report.css so figures and badges read as one document.
COLOURS = {
    "ink": "#1f2933",
    "muted": "#7b8794",
    "grid": "#e4e7eb",
    "accent": "#1d4e89",
    "correct": "#2f855a",
    "wrong": "#c53030",
    "baseline": "#b7791f",
    "fg": "#2b6cb0",
    "bg": "#c05621",
    "mixed": "#6b46c1",
    "orig": "#4a5568",
}

_PNG_METADATA = {"Software": None}


def plain_text(text: object, max_chars: int = 48) -> str:
    """Make an arbitrary user string safe for a matplotlib label.

    Dollar signs are escaped (matplotlib would parse ``$...$`` as mathtext and fail on odd
    input) and long strings are shortened with an ellipsis so a 300-character class name
    cannot blow up a figure's layout.
    """
    s = str(text).replace("\n", " ")
    if len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    return s.replace("$", r"\$")


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=_PNG_METADATA, facecolor="white")
    return buf.getvalue()


def _style_axes(ax: object) -> None:
    ax.spines["top"].set_visible(False)  # type: ignore[attr-defined]
    ax.spines["right"].set_visible(False)  # type: ignore[attr-defined]
    ax.tick_params(colors=COLOURS["ink"], labelsize=8)  # type: ignore[attr-defined]


def _as_float_array(values: Sequence[float | None] | np.ndarray, name: str) -> np.ndarray:
    try:
        arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a sequence of numbers or None, got {values!r}") from exc
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_lengths(n: int, **arrays: np.ndarray | Sequence[object]) -> None:
    for name, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"`{name}` must have length {n} (one per class), got {len(arr)}")


# --------------------------------------------------------------------------------------------
# Gallery panels
# --------------------------------------------------------------------------------------------


def _upsample_bilinear(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, like ``align_corners=False``) via Pillow mode F."""
    img = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), resample=Image.Resampling.BILINEAR))


def _normalise_cam(cam: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """Upsample ``cam`` to ``(height, width)`` and divide by its maximum.

    ``cam_n = up(cam) / max(up(cam))``. Non-finite entries are drawn as 0 and reported in the
    returned note; an all-zero (or all non-finite) map is drawn as zeros with a note, never
    divided by zero.
    """
    note = ""
    cam = np.asarray(cam, dtype=np.float64)
    finite = np.isfinite(cam)
    if not finite.all():
        note = "CAM has non-finite values (drawn as 0)"
        cam = np.where(finite, cam, 0.0)
    up = _upsample_bilinear(cam, height, width).astype(np.float64)
    peak = float(up.max()) if up.size else 0.0
    if peak > 0.0:
        return np.clip(up / peak, 0.0, 1.0), note
    return np.zeros_like(up), note or "CAM is zero everywhere"


# --------------------------------------------------------------------------------------------
# Raster drawing of the gallery and cluster panels (issue 14: ~0.2 s of matplotlib per panel
# was most of a 1,000-class finalisation's drawing time; these take a few milliseconds)
# --------------------------------------------------------------------------------------------

_DPI = 100
#: Text size of the gallery panels, in points at the panels' 100 dpi (25 px). A 900 px panel
#: shown 118 mm wide in the PDF prints it at 9.3 pt; on screen it is 9.0 px on a 390 px phone
#: (panel 323 px wide), 8.1 px at 360 px and 18 px at 1440 px (issue 25: panel text >= 6 pt
#: printed, >= 8 px on screen; it was 17 px, 6.1 px on the phone).
PANEL_FONT_PT = 18.0
PANEL_FONT_PX = round(PANEL_FONT_PT * 100 / 72.0)
#: Smallest text size of the cluster panels (300 to 1,100 px wide); wider panels draw larger
#: text (:func:`cluster_font_pt`).
CLUSTER_FONT_PT = 12.0
#: The width a full-width panel is shown at on a 390 px phone (the demo report's column).
PHONE_PANEL_PX = 323


def cluster_font_pt(width_px: int) -> float:
    """Text size (pt at 100 dpi) of a cluster panel ``width_px`` wide: at least
    :data:`CLUSTER_FONT_PT`, and large enough to be >= 8 px when the panel is shown
    :data:`PHONE_PANEL_PX` wide, ``ceil(8 * width / 323)`` px (issue 25)."""
    px = max(round(CLUSTER_FONT_PT * _DPI / 72.0), math.ceil(8.0 * width_px / PHONE_PANEL_PX))
    return px * 72.0 / _DPI


_FONT_CACHE: dict[int, Any] = {}
_JET_LUT: np.ndarray | None = None


def _font(points: float) -> Any:
    """DejaVu Sans (matplotlib's default face, shipped with it) at ``points`` and 100 dpi."""
    from PIL import ImageFont

    px = max(1, round(points * _DPI / 72.0))
    font = _FONT_CACHE.get(px)
    if font is None:
        try:
            import matplotlib

            path = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf"
            font = ImageFont.truetype(path, px)
        except (OSError, ImportError):  # pragma: no cover - matplotlib ships the font
            font = ImageFont.load_default()
        _FONT_CACHE[px] = font
    return font


def _jet_lut() -> np.ndarray:
    """``[256, 3]`` uint8: matplotlib's ``jet`` colour map at its 256 levels (what ``imshow``
    with ``cmap="jet"``, ``vmin=0``, ``vmax=1`` draws)."""
    global _JET_LUT
    if _JET_LUT is None:
        from matplotlib import colormaps

        rgba = colormaps["jet"](np.arange(256))
        _JET_LUT = np.round(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    return _JET_LUT


def _jet(values: np.ndarray) -> np.ndarray:
    """``[..., 3]`` float RGB in 0..255 of values in [0, 1] (matplotlib's quantisation)."""
    idx = np.clip((np.asarray(values, dtype=np.float64) * 256.0).astype(np.int64), 0, 255)
    return _jet_lut()[idx].astype(np.float64)


def _fit(h: int, w: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Size (w, h) of an ``h x w`` image scaled to fit a box, aspect kept (``imshow``)."""
    scale = min(box_w / w, box_h / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _nearest(rgb: np.ndarray, size: tuple[int, int]) -> Any:
    from PIL import Image as _Image

    return _Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize(
        size, _Image.Resampling.NEAREST
    )


def _blend(image: np.ndarray, cam_n: np.ndarray) -> np.ndarray:
    """Image with the jet-coloured normalised CAM alpha-blended at 0.5 (uint8)."""
    return np.round(0.5 * _jet(cam_n) + 0.5 * image.astype(np.float64)).astype(np.uint8)


def _outline(mask: np.ndarray, size: tuple[int, int], width: int = 2) -> np.ndarray:
    """``[h, w]`` bool at display size: the band of ``width`` pixels inside the edge of the
    mask (the 0.5 iso-contour of a 0/1 mask runs along its pixels' edges)."""
    from PIL import Image as _Image

    big = (
        np.asarray(
            _Image.fromarray(mask.astype(np.uint8) * 255).resize(size, _Image.Resampling.NEAREST)
        )
        > 0
    )
    inner = big.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return big & ~inner


def _text_centred(draw: Any, cx: float, y: float, text: str, font: Any, fill: str) -> float:
    """Draw ``text`` centred on ``cx`` with its top at ``y``; the y below it."""
    if not text:
        return y
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((cx - (right - left) / 2.0 - left, y - top), text, font=font, fill=fill)
    return y + (bottom - top) + 3


def _wrap(draw: Any, text: str, font: Any, max_w: float, max_lines: int) -> list[str]:
    """``text`` in at most ``max_lines`` lines no wider than ``max_w`` px: broken at spaces,
    the last line cut with "…" when the rest does not fit (no label is clipped by the canvas
    or drawn over its neighbour; issue 25)."""

    def width(t: str) -> float:
        left, _, right, _ = draw.textbbox((0, 0), t, font=font)
        return float(right - left)

    lines: list[str] = []
    words = text.split(" ")
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and width(line + " " + words[0]) <= max_w:
            line += " " + words.pop(0)
        lines.append(line)
    if words:  # left over: goes on the last line, cut to fit
        lines[-1] = lines[-1] + " " + " ".join(words)
    for i, line in enumerate(lines):
        if width(line) > max_w:
            while line and width(line + "…") > max_w:
                line = line[:-1]
            lines[i] = line.rstrip() + "…"
    return lines


def _colorbar(canvas: Any, x: int, y: int, height: int, *, label: str, points: float = 7.0) -> None:
    """A vertical jet colour bar 0..1 with ticks every 0.2 (and the label, rotated)."""
    from PIL import Image as _Image
    from PIL import ImageDraw

    bar_w = 12
    ramp = _jet(np.linspace(1.0, 0.0, height))[:, None, :].repeat(bar_w, axis=1)
    canvas.paste(_Image.fromarray(ramp.astype(np.uint8)), (x, y))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x, y, x + bar_w - 1, y + height - 1], outline=COLOURS["ink"])
    font = _font(points)
    for k in range(6):
        v = k / 5.0
        ty = y + round((1.0 - v) * (height - 1))
        draw.line([x + bar_w, ty, x + bar_w + 3, ty], fill=COLOURS["ink"])
        _, top, _, bottom = draw.textbbox((0, 0), f"{v:.1f}", font=font)
        draw.text(
            (x + bar_w + 5, ty - (bottom - top) / 2.0 - top),
            f"{v:.1f}",
            font=font,
            fill=COLOURS["ink"],
        )
    if label:
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = int(round(right - left)) + 2, int(round(bottom - top)) + 2
        txt = _Image.new("RGB", (tw, th), "white")
        ImageDraw.Draw(txt).text((-left + 1, -top + 1), label, font=font, fill=COLOURS["ink"])
        rot = txt.rotate(90, expand=True)
        tick_w = draw.textbbox((0, 0), "0.0", font=font)[2]
        canvas.paste(rot, (x + bar_w + 8 + tick_w, y + max(0, (height - rot.size[1]) // 2)))


def _png(canvas: Any) -> bytes:
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)  # zlib dominates the draw time
    return buf.getvalue()


def _label(text: object, max_chars: int) -> str:
    """:func:`plain_text` without the mathtext escape (the raster text draws ``$`` as is)."""
    return plain_text(text, max_chars).replace(r"\$", "$")


def gallery_panel(
    image: np.ndarray,
    mask: np.ndarray | None,
    cam: np.ndarray,
    *,
    title: str = "",
    subtitle: str = "",
    model_input: np.ndarray | None = None,
) -> bytes:
    """Draw one gallery panel: image | image + object outline | CAM overlay with colour bar.

    With ``model_input`` (an edited image the model was shown, e.g. the only-background image
    of :func:`auditor.report.background_only.background_only_display`) the first tile shows
    that image instead of the original, titled "background only (model input)" (issue 25: a
    panel shows the image its finding talks about).

    The CAM is bilinearly upsampled to the image size and normalised to its maximum,
    ``cam_n(x) = cam(x) / max_x cam(x)`` (an all-zero map stays zero), then alpha-blended
    over the image with the ``jet`` colour map. The object outline is the 0.5 iso-contour of
    the mask (its pixels' edge, 2 px wide). Drawn as a 900 x 340 px raster (Pillow).
    Grad-CAM overlays as in Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from
    Deep Networks via Gradient-based Localization".

    Args:
        image: ``[H, W, 3]`` ``uint8`` RGB image.
        mask: ``[H, W]`` boolean object mask, or ``None`` when the sample has no annotation.
        cam: ``[h, w]`` float class activation map (any non-negative scale).
        title: first line above the panel (e.g. the sample id).
        subtitle: second line (e.g. label, prediction, energy in object).
        model_input: ``[H, W, 3]`` ``uint8`` image shown in the first tile, or ``None``.

    Returns:
        PNG bytes.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"`image` must have shape [H, W, 3], got {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise TypeError(f"`image` must be uint8, got dtype {image.dtype}")
    height, width = int(image.shape[0]), int(image.shape[1])
    if height == 0 or width == 0:
        raise ValueError(f"`image` must not be empty, got shape {tuple(image.shape)}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise ValueError(
                f"`mask` must have shape [H, W] = {(height, width)}, got {tuple(mask.shape)}"
            )
        if mask.dtype != np.bool_:
            raise TypeError(f"`mask` must be bool, got dtype {mask.dtype}")
    cam, model_input = _checked_cam_and_input(cam, model_input, image.shape)
    cam_n, note = _normalise_cam(cam, height, width)
    if mask is None:
        mask_note = "no mask"
    elif not mask.any():
        mask_note = "empty mask"
    elif mask.all():
        mask_note = "mask covers the whole image"
    else:
        mask_note = "object outline"
    return _draw_gallery(
        (image, image if model_input is None else model_input),
        mask if mask_note == "object outline" else None,
        cam_n,
        titles=(
            "image" if model_input is None else "background only (model input)",
            mask_note,
            "CAM overlay" + (f" ({note})" if note else ""),
        ),
        heading=[_label(t, 80) for t in (title, subtitle) if t],
    )


def _checked_cam_and_input(
    cam: np.ndarray, model_input: np.ndarray | None, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`gallery_panel`'s ``cam`` (real ``[h, w]``) and ``model_input`` (``None`` or
    uint8 of the image's ``shape``) as arrays, or a ValueError/TypeError naming them."""
    cam = np.asarray(cam)
    if cam.ndim != 2 or 0 in cam.shape:
        raise ValueError(f"`cam` must have shape [h, w] with h, w > 0, got {tuple(cam.shape)}")
    if not np.issubdtype(cam.dtype, np.number) or np.iscomplexobj(cam):
        raise TypeError(f"`cam` must be a real float array, got dtype {cam.dtype}")
    if model_input is not None:
        model_input = np.asarray(model_input)
        if model_input.shape != tuple(shape) or model_input.dtype != np.uint8:
            raise ValueError(
                f"`model_input` must be uint8 {tuple(shape)} like `image`, got "
                f"{model_input.dtype} {tuple(model_input.shape)}"
            )
    return cam, model_input


def _draw_gallery(
    images: tuple[np.ndarray, np.ndarray],
    outline_mask: np.ndarray | None,
    cam_n: np.ndarray,
    *,
    titles: tuple[str, str, str],
    heading: list[str],
) -> bytes:
    """The 900 x 340 px raster of :func:`gallery_panel` (9 x 3.4 in at 100 dpi); ``images``:
    (the original, the image of the first tile)."""
    from PIL import Image as _Image
    from PIL import ImageDraw

    w_px, h_px = 900, 340
    canvas = _Image.new("RGB", (w_px, h_px), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(PANEL_FONT_PT)
    y = 6.0
    for line in heading:  # the figcaption repeats them in full: one line each here
        for part in _wrap(draw, line, font, w_px - 20, 1):
            y = _text_centred(draw, w_px / 2.0, y, part, font, COLOURS["ink"])
    y += 4 if heading else 0
    box_w, gap, left = 246, 16, 10
    wrapped = [_wrap(draw, t, font, box_w + gap - 4, 2) for t in titles]
    line_h = draw.textbbox((0, 0), "Ag", font=font)
    title_h = max(len(w) for w in wrapped) * (line_h[3] - line_h[1] + 3) + 4
    top = int(round(y + title_h))
    # the colour bar's end ticks are centred on its ends: half a line of room below it
    box_h = h_px - top - max(8, int(line_h[3] - line_h[1]) // 2 + 4)
    image, first = images
    size = _fit(image.shape[0], image.shape[1], box_w, box_h)
    blended = _blend(image, cam_n)
    shown = [first, image, blended]
    for k, rgb in enumerate(shown):
        x0 = left + k * (box_w + gap)
        px = x0 + (box_w - size[0]) // 2
        tile = _nearest(rgb, size)
        if k == 1 and outline_mask is not None:
            arr = np.asarray(tile).copy()
            arr[_outline(outline_mask, size)] = (0x39, 0xFF, 0x14)
            tile = _Image.fromarray(arr)
        canvas.paste(tile, (px, top))
        ty = y
        for part in wrapped[k]:
            ty = _text_centred(draw, x0 + box_w / 2.0, ty, part, font, COLOURS["muted"])
    cb_x = left + 3 * box_w + 2 * gap + 8
    _colorbar(canvas, cb_x, top, size[1], label="CAM / max", points=PANEL_FONT_PT)
    return _png(canvas)


def _checked_cluster_inputs(
    mean_map: np.ndarray, exemplars: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """:func:`cluster_panel`'s ``mean_map`` as an array after checking it and the
    ``exemplars``; a ValueError/TypeError naming the argument otherwise."""
    mean_map = np.asarray(mean_map)
    if mean_map.ndim != 2 or 0 in mean_map.shape:
        raise ValueError(f"`mean_map` must have shape [h, w], got {tuple(mean_map.shape)}")
    if not isinstance(exemplars, list):
        raise TypeError(f"`exemplars` must be a list of (image, cam), got {type(exemplars)}")
    for i, item in enumerate(exemplars):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"`exemplars[{i}]` must be a tuple (image, cam), got {item!r:.60}")
        img = np.asarray(item[0])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"`exemplars[{i}]` image must be [H, W, 3] uint8, got {tuple(img.shape)} "
                f"{img.dtype}"
            )
        if np.asarray(item[1]).ndim != 2:
            raise ValueError(
                f"`exemplars[{i}]` cam must be [h, w], got {tuple(np.asarray(item[1]).shape)}"
            )
    return mean_map


def cluster_panel(
    mean_map: np.ndarray,
    exemplars: list[tuple[np.ndarray, np.ndarray]],
    *,
    title: str,
) -> bytes:
    """Draw a cluster of explanations: its mean CAM, then exemplar images with CAM overlays.

    Each exemplar is ``(image [H, W, 3] uint8, cam [h, w] float)``; the CAM is upsampled and
    normalised as in :func:`gallery_panel`. Clusters of explanation maps follow the spectral
    relevance analysis of Lapuschkin et al. (2019), "Unmasking Clever Hans predictors and
    assessing what machines really learn".
    """
    mean_map = _checked_cluster_inputs(mean_map, exemplars)

    from PIL import Image as _Image
    from PIL import ImageDraw

    n = 1 + len(exemplars)
    w_px, h_px = round(max(3.0, 2.2 * n) * _DPI), round(2.6 * _DPI)
    canvas = _Image.new("RGB", (w_px, h_px), "white")
    draw = ImageDraw.Draw(canvas)
    pt = cluster_font_pt(w_px)
    font = _font(pt)
    y = 6.0
    for part in _wrap(draw, _label(title, 80), font, w_px - 16, 1):
        y = _text_centred(draw, w_px / 2.0, y, part, font, COLOURS["ink"])
    y += 2
    mean_n, note = _normalise_cam(mean_map, *mean_map.shape)
    titles = ["mean map" + (f" ({note})" if note else "")]
    titles += [f"exemplar {i}" for i in range(1, n)]
    left, gap = 8, 10
    cbar = max(54, 12 + 9 + int(draw.textbbox((0, 0), "0.0", font=font)[2]) + 4)
    box_w = (w_px - 2 * left - cbar - gap * (n - 1)) // n
    wrapped = [_wrap(draw, t, font, box_w + gap - 4, 2) for t in titles]
    line = draw.textbbox((0, 0), "Ag", font=font)
    line_h = int(line[3] - line[1])
    top = int(round(y + max(len(w) for w in wrapped) * (line_h + 3) + 4))
    box_h = h_px - top - max(8, line_h // 2 + 4)
    for k in range(n):
        x0 = left + k * (box_w + gap) + (cbar if k else 0)
        if k == 0:
            rgb = _jet(mean_n).astype(np.uint8)
            # the mean map is small (h x w): each cell drawn as a block
            size = _fit(rgb.shape[0], rgb.shape[1], box_w, box_h)
            tile = _nearest(rgb, size)
            _colorbar(
                canvas,
                x0 + (box_w + size[0]) // 2 + 4,
                top,
                size[1],
                label="",
                points=pt,
            )
        else:
            img = np.asarray(exemplars[k - 1][0])
            cam_n, _ = _normalise_cam(np.asarray(exemplars[k - 1][1]), img.shape[0], img.shape[1])
            size = _fit(img.shape[0], img.shape[1], box_w, box_h)
            tile = _nearest(_blend(img, cam_n), size)
        canvas.paste(tile, (x0 + (box_w - size[0]) // 2, top))
        ty, colour = y, COLOURS["ink"] if k == 0 else COLOURS["muted"]
        for part in wrapped[k]:
            ty = _text_centred(draw, x0 + box_w / 2.0, ty, part, font, colour)
    return _png(canvas)


# --------------------------------------------------------------------------------------------
# Report figures
# --------------------------------------------------------------------------------------------


def background_focus_by_class(
    names: Sequence[str],
    means: Sequence[float | None],
    ci_low: Sequence[float | None],
    ci_high: Sequence[float | None],
    *,
    baseline: float | None = None,
    threshold: float | None = None,
) -> bytes:
    """Horizontal interval plot of per-class background focus, ``1 − E_in``.

    Background focus of a CAM ``S`` and object mask ``M`` is
    ``BF = Σ_{x∉M} S(x) / Σ_x S(x)`` (energy outside the object; energy-based pointing of
    Wang et al. (2020), "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks"). Points are the class means, bars their confidence intervals (as given), the
    dashed line the dataset baseline and the dotted line the gate threshold when given. Classes
    are drawn in the order given (the caller passes them sorted by risk).
    """
    n = len(names)
    if n == 0:
        raise ValueError("`names` must contain at least one class, got 0")
    m = _as_float_array(means, "means")
    lo = _as_float_array(ci_low, "ci_low")
    hi = _as_float_array(ci_high, "ci_high")
    _check_lengths(n, means=m, ci_low=lo, ci_high=hi)

    fig = _new_figure(7.2, max(2.0, 0.26 * n + 1.0))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    has_ci = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(m)
    err = np.vstack([np.where(has_ci, m - lo, 0.0), np.where(has_ci, hi - m, 0.0)])
    ax.errorbar(
        np.where(np.isfinite(m), m, np.nan),
        y,
        xerr=np.clip(err, 0.0, None),
        fmt="o",
        color=COLOURS["accent"],
        ecolor="#90a4c3",
        elinewidth=2,
        capsize=2,
        markersize=4,
    )
    for yi, mi in zip(y, m):
        if not np.isfinite(mi):
            ax.text(0.01, yi, "no value", va="center", fontsize=7, color=COLOURS["muted"])
    if baseline is not None and math.isfinite(baseline):
        ax.axvline(baseline, color=COLOURS["baseline"], ls="--", lw=1.2, label="dataset baseline")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color=COLOURS["wrong"], ls=":", lw=1.4, label="gate threshold")
    ax.set_yticks(y)
    ax.set_yticklabels([plain_text(s, 40) for s in names], fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("background focus (share of CAM energy outside the object)", fontsize=8)
    ax.grid(axis="x", color=COLOURS["grid"], lw=0.8)
    _style_axes(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right", frameon=False)
    return _to_png(fig)


def energy_distribution(
    correct: Sequence[float] | np.ndarray,
    wrong: Sequence[float] | np.ndarray,
    *,
    bins: int = 20,
) -> bytes:
    """Histogram of per-sample energy in object, ``E_in = Σ_{x∈M} S(x) / Σ_x S(x)``, for
    correct vs wrong predictions (densities, so unequal group sizes compare; NaN excluded).

    Energy in the mask follows Wang et al. (2020), "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks" (energy-based pointing game).
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be a positive int, got {bins!r}")
    c = _as_float_array(np.asarray(correct, dtype=float).ravel(), "correct")
    w = _as_float_array(np.asarray(wrong, dtype=float).ravel(), "wrong")
    c, w = c[np.isfinite(c)], w[np.isfinite(w)]
    fig = _new_figure(6.4, 2.9)
    ax = fig.add_subplot()
    edges = np.linspace(0.0, 1.0, bins + 1).tolist()
    for data, colour, label in ((c, COLOURS["correct"], "correct"), (w, COLOURS["wrong"], "wrong")):
        if data.size:
            ax.hist(
                np.clip(data, 0.0, 1.0),
                bins=edges,
                density=True,
                alpha=0.55,
                color=colour,
                label=f"{label} (n = {data.size:,})",
                edgecolor="white",
                linewidth=0.5,
            )
    if not (c.size or w.size):
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("energy in object (share of CAM energy inside the mask)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.grid(axis="y", color=COLOURS["grid"], lw=0.8)
    _style_axes(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
    return _to_png(fig)


def energy_vs_confidence(
    energy: Sequence[float] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
) -> bytes:
    """Scatter of per-sample energy in object against the model's confidence in the target.

    Confidence is the softmax probability ``p_t = exp(z_t) / Σ_j exp(z_j)``; energy in object
    as in :func:`energy_distribution`. Points with a non-finite coordinate are not drawn.
    Large runs are drawn rasterised with small, translucent markers.
    """
    e = np.asarray(energy, dtype=float).ravel()
    p = np.asarray(confidence, dtype=float).ravel()
    ok = np.asarray(correct).ravel()
    if not (e.shape == p.shape == ok.shape):
        raise ValueError(
            f"`energy`, `confidence` and `correct` must have equal lengths, got "
            f"{e.shape[0]}, {p.shape[0]}, {ok.shape[0]}"
        )
    ok = ok.astype(bool)
    finite = np.isfinite(e) & np.isfinite(p)
    fig = _new_figure(6.4, 3.2)
    ax = fig.add_subplot()
    size = 10.0 if e.size < 2000 else 3.0
    alpha = 0.7 if e.size < 2000 else 0.25
    for sel, colour, label in (
        (ok, COLOURS["correct"], "correct"),
        (~ok, COLOURS["wrong"], "wrong"),
    ):
        idx = sel & finite
        if idx.any():
            ax.scatter(
                e[idx],
                p[idx],
                s=size,
                alpha=alpha,
                color=colour,
                label=label,
                linewidths=0,
                rasterized=True,
            )
    if not finite.any():
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("energy in object", fontsize=8)
    ax.set_ylabel("confidence in target class", fontsize=8)
    ax.grid(color=COLOURS["grid"], lw=0.8)
    _style_axes(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, loc="lower right", markerscale=2)
    return _to_png(fig)


#: Largest / smallest positive count above which :func:`confusion_matrix` colours on a log scale.
LOG_COUNT_SPAN = 1000.0


def count_norm(positive: np.ndarray) -> Normalize:
    """The colour scale of counts (the positive ones given): linear ``[0, max]`` unless
    ``max / min > LOG_COUNT_SPAN``, then logarithmic ``[min, max]``; ``[0, 1]`` when none."""
    positive = np.asarray(positive, dtype=float)
    if positive.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(positive.min()), float(positive.max())
    if hi / max(lo, 1e-9) > LOG_COUNT_SPAN:
        return LogNorm(vmin=max(lo, 1e-9), vmax=hi)
    return Normalize(0.0, max(hi, 1.0))


def confusion_matrix(
    classes: Sequence[str], matrix: Sequence[Sequence[float]] | np.ndarray
) -> bytes:
    """Confusion matrix heat map: rows are true classes, columns predictions (counts as given).

    Colours use a linear scale of the counts from 0 to the largest (zero cells are white);
    only when the positive counts span more than :data:`LOG_COUNT_SPAN` (largest / smallest)
    does the scale turn logarithmic, so that rare confusions stay visible next to a huge
    diagonal (issue 25: a log scale for counts 0-50 was hard to read). Counts are printed when
    the matrix is small enough to read.
    """
    mat = np.asarray(matrix, dtype=float)
    n = len(classes)
    if mat.ndim != 2 or mat.shape != (n, n):
        raise ValueError(
            f"`matrix` must have shape [{n}, {n}] (one row/column per class), got {mat.shape}"
        )
    if n == 0:
        raise ValueError("`classes` must contain at least one class, got 0")
    side = min(9.0, max(3.2, 0.32 * n + 1.8))
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    positive = mat[np.isfinite(mat) & (mat > 0)]
    shown = np.where(np.isfinite(mat) & (mat > 0), mat, np.nan)
    norm = count_norm(positive)
    im = ax.imshow(shown, cmap="Blues", norm=norm, interpolation="nearest")
    # (``fraction=`` would take the colour bar out of the constrained layout, which then
    # clips the tick labels; ``shrink`` keeps it in)
    fig.colorbar(im, ax=ax, shrink=0.85, label="count").ax.tick_params(labelsize=7)
    labels = [plain_text(s, 24) for s in classes]
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    fs = 8 if n <= 20 else 5
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    if n <= 15:
        vmax = np.nanmax(shown) if positive.size else 1.0
        for i in range(n):
            for j in range(n):
                v = mat[i, j]
                text = "—" if not np.isfinite(v) else f"{v:g}"
                colour = "white" if np.isfinite(v) and v > 0 and v >= 0.5 * vmax else "#1f2933"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    return _to_png(fig)


def interventions_by_class(
    names: Sequence[str],
    original: Sequence[float | None],
    only_fg: Sequence[float | None],
    only_bg: Sequence[float | None],
    mixed: Sequence[float | None],
) -> bytes:
    """Grouped bars of per-class accuracy on original images and on intervened images.

    Interventions follow Xiao et al. (2021), "Noise or Signal: The Role of Image Backgrounds
    in Object Recognition": *only-fg* keeps the object on a blank background, *only-bg*
    removes the object, *mixed-rand* pastes the object on a random other image's background.
    A model that relies on the object keeps its accuracy on only-fg and mixed, and drops to
    chance on only-bg. Missing values are drawn as absent bars.
    """
    n = len(names)
    if n == 0:
        raise ValueError("`names` must contain at least one class, got 0")
    arrays = {
        "original": _as_float_array(original, "original"),
        "only_fg": _as_float_array(only_fg, "only_fg"),
        "only_bg": _as_float_array(only_bg, "only_bg"),
        "mixed": _as_float_array(mixed, "mixed"),
    }
    _check_lengths(n, **arrays)
    labels = ("original", "only foreground", "only background", "mixed background")
    series = dict(zip(labels, arrays.values()))
    colours = [COLOURS["orig"], COLOURS["fg"], COLOURS["bg"], COLOURS["mixed"]]
    fig = _new_figure(7.2, max(2.4, 0.42 * n + 1.2))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1].astype(float)
    h = 0.2
    for k, ((label, vals), colour) in enumerate(zip(series.items(), colours)):
        ax.barh(
            y + (1.5 - k) * h,
            np.nan_to_num(vals, nan=0.0),
            height=h,
            color=colour,
            label=label,
        )
    ax.set_yticks(y)
    ax.set_yticklabels([plain_text(s, 40) for s in names], fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("accuracy", fontsize=8)
    ax.grid(axis="x", color=COLOURS["grid"], lw=0.8)
    _style_axes(ax)
    # above the plot, outside it: below, it sat on the axis title (issue 25)
    fig.legend(fontsize=7, frameon=False, ncols=4, loc="outside upper center")
    return _to_png(fig)


def method_agreement(methods: Sequence[str], spearman: Sequence[Sequence[float | None]]) -> bytes:
    """Heat map of the rank correlation between methods' maps (values as given).

    Spearman's ``ρ = 1 − 6 Σ d_i² / (n (n² − 1))`` between two maps' pixel rankings, averaged
    over samples by the analysis (Spearman, 1904, "The proof and measurement of association
    between two things"). Cells with no value show "—".
    """
    k = len(methods)
    mat = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in spearman], dtype=float
    )
    if k == 0 or mat.shape != (k, k):
        raise ValueError(f"`spearman` must have shape [{k}, {k}], got {mat.shape}")
    side = max(3.0, 0.7 * k + 1.6)
    fig = _new_figure(side + 0.8, side)
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.85, label="Spearman ρ").ax.tick_params(labelsize=7)
    labels = [plain_text(m, 20) for m in methods]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            txt = "—" if not np.isfinite(v) else f"{v:.2f}"
            colour = "white" if np.isfinite(v) and abs(v) > 0.6 else "#1f2933"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color=colour)
    return _to_png(fig)
