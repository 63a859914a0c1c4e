"""Issue 25's panel and figure fixes: the background-only image shown, legible panel text,
no clipped labels, a linear colour scale for small counts."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm
from PIL import Image, ImageDraw

from auditor.metrics.interventions import only_background
from auditor.report import figures as F
from auditor.report.background_only import background_only_display, only_background_normalised

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 20, 26))
    mask = np.zeros((20, 26), bool)
    mask[5:15, 4:20] = True
    mask[0, 0] = True  # a lone pixel at the corner: the blur's zero padding matters
    return x, mask


@pytest.mark.parametrize("fill", ["mean", "black", "blur", "image_mean"])
def test_numpy_only_background_equals_the_audit_loops_torch_edit(fill: str) -> None:
    x, mask = _inputs()
    fv = np.array([-2.1, -2.0, -1.8])
    want = only_background(
        torch.from_numpy(x[None]),
        torch.from_numpy(mask[None]),
        fill=fill,
        fill_value=torch.from_numpy(fv) if fill == "black" else None,
    )[0].numpy()
    got = only_background_normalised(x, mask, fill, fill_value=fv if fill == "black" else None)
    assert np.abs(got - want).max() < 1e-9
    assert np.array_equal(got[:, ~mask], x[:, ~mask])  # the background is kept as it was


def test_background_only_display_by_hand() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    # "mean": 0 in normalised space, i.e. 255 * mean per channel
    out = background_only_display(img, mask, "mean", MEAN, STD)
    assert out[1, 1].tolist() == [round(255 * m) for m in MEAN]  # [124, 116, 104]
    assert out[0, 0].tolist() == [200, 100, 50] and out.dtype == np.uint8
    # "black": pixel value 0; "image_mean" of a constant background: that constant
    assert background_only_display(img, mask, "black", MEAN, STD)[2, 2].tolist() == [0, 0, 0]
    assert background_only_display(img, mask, "image_mean", MEAN, STD)[1, 2].tolist() == [
        200,
        100,
        50,
    ]
    # "blur" of a constant background is that constant (normalised convolution)
    assert background_only_display(img, mask, "blur", MEAN, STD)[2, 1].tolist() == [200, 100, 50]
    # a grey model sees the luma (299 R + 587 G + 114 B) / 1000 = 124.4 -> 124, drawn grey
    grey = background_only_display(img, mask, "black", (0.5,), (0.25,))
    assert grey[0, 0].tolist() == [124, 124, 124] and grey[1, 1].tolist() == [0, 0, 0]
    # noise: the background's own statistics (constant background: std 0, the constant)
    assert background_only_display(img, mask, "noise", MEAN, STD)[1, 1].tolist() == [200, 100, 50]
    with pytest.raises(ValueError, match="`fill` must be one of"):
        background_only_display(img, mask, "median", MEAN, STD)
    with pytest.raises(ValueError, match="`mask` must be bool"):
        background_only_display(img, mask[:3], "mean", MEAN, STD)
    with pytest.raises(ValueError, match="`mean`/`std`"):
        background_only_display(img, mask, "mean", (0.5, 0.5), (0.2, 0.2))


def test_gallery_panel_first_tile_shows_the_model_input() -> None:
    img = np.full((32, 32, 3), 128, np.uint8)
    edited = img.copy()
    edited[8:24, 8:24] = (255, 0, 255)  # a colour nothing else in the panel has
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    px = _pixels(F.gallery_panel(img, mask, np.ones((4, 4)), title="t", model_input=edited))
    magenta = (px == (255, 0, 255)).all(-1)
    cols = np.flatnonzero(magenta.any(0))
    assert magenta.sum() > 0.2 * 246 * 246 and cols.max() < 256  # the first tile only
    plain = _pixels(F.gallery_panel(img, mask, np.ones((4, 4)), title="t"))
    assert not (plain == (255, 0, 255)).all(-1).any()
    with pytest.raises(ValueError, match="`model_input` must be uint8"):
        F.gallery_panel(img, mask, np.ones((4, 4)), model_input=edited[:16])


def _frame_is_white(data: bytes, width: int = 2) -> bool:
    """No ink on the outer ``width`` pixels: a label cut by the canvas edge would touch it."""
    px = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    frame = np.concatenate(
        [px[:width].ravel(), px[-width:].ravel(), px[:, :width].ravel(), px[:, -width:].ravel()]
    )
    return bool((frame >= 250).all())


def test_no_figure_or_panel_label_is_cut_by_its_canvas() -> None:
    methods = ["gradcam", "gradcam++", "layercam", "cam"]  # "gradcam++" was cut to "adcam++"
    names = ["triangle", "circle", "a rather long class name here", "x"]
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    figures = {
        "method_agreement": F.method_agreement(methods, np.full((4, 4), 0.86).tolist()),
        "confusion": F.confusion_matrix(names, np.diag([50, 46, 50, 42]).tolist()),
        "interventions": F.interventions_by_class(
            names, [1] * 4, [0.9] * 4, [1, 0, 0, 1], [0.5] * 4
        ),
        "focus": F.background_focus_by_class(names, [0.9] * 4, [0.8] * 4, [1.0] * 4, baseline=0.6),
        "panel": F.gallery_panel(
            img, np.ones((24, 32), bool), np.zeros((3, 3)), title="W" * 90, subtitle="M" * 90
        ),
    }
    assert [k for k, v in figures.items() if not _frame_is_white(v)] == []


def test_interventions_legend_is_above_the_plot_not_on_the_axis_title() -> None:
    px = _pixels(F.interventions_by_class(["a", "b"], [1, 1], [1, 1], [0, 0], [1, 1]))
    # the legend's four colour swatches sit in the top rows, above every bar
    swatch = (px == tuple(int(F.COLOURS["mixed"][i : i + 2], 16) for i in (1, 3, 5))).all(-1)
    rows = np.flatnonzero(swatch.any(1))
    assert rows.size and rows.min() < 0.15 * px.shape[0]  # swatch in the legend at the top
    bars_and_swatch = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    assert len(bars_and_swatch) == 3  # the legend swatch, then one bar per class, below it


def test_panel_titles_wrap_within_their_tile() -> None:
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = F._font(F.PANEL_FONT_PT)
    for text in ("CAM overlay (CAM is zero everywhere)", "background only (model input)",
                 "x" * 60, "image"):  # fmt: skip
        lines = F._wrap(draw, text, font, 258, 2)
        assert 1 <= len(lines) <= 2
        assert all(draw.textbbox((0, 0), t, font=font)[2] <= 258 for t in lines)
    assert F._wrap(draw, "image", font, 258, 2) == ["image"]
    assert F._wrap(draw, "x" * 60, font, 258, 1)[0].endswith("…")


def test_panel_text_is_legible_on_a_390px_phone_and_in_print() -> None:
    # a 900 px panel shown 323 px wide (the demo at 390 px) and printed 118 mm wide
    assert F.PANEL_FONT_PX * 323 / 900 >= 8.0
    assert F.PANEL_FONT_PX * (118 / 25.4 * 72) / 900 >= 6.0


def test_small_counts_use_a_linear_colour_scale() -> None:
    norm = F.count_norm(np.array([3.0, 4.0, 5.0, 42.0, 50.0]))
    assert not isinstance(norm, LogNorm)
    assert (norm.vmin, norm.vmax) == (0.0, 50.0) and float(norm(25.0)) == pytest.approx(0.5)
    wide = F.count_norm(np.array([1.0, 5000.0]))  # a 1:5000 span: rare confusions need log
    assert isinstance(wide, LogNorm) and float(wide(np.sqrt(5000.0))) == pytest.approx(0.5)
    assert (F.count_norm(np.array([])).vmin, F.count_norm(np.array([])).vmax) == (0.0, 1.0)


def test_demo_sufficiency_panels_show_the_background_only_image(
    demo_run: Path, demo_inputs: Path
) -> None:
    """The demo's background-sufficiency panels: left tile = the image the model saw."""
    from auditor.config import load_config
    from auditor.data import open_dataset

    summary = json.loads((demo_run / "summary.json").read_text())
    fill = summary["intervention_fills"]["only_bg"]["used"]
    panels = [p for ps in summary["gallery"].values() for p in ps if "sufficiency" in p["file"]]
    assert panels, "the demo's planted class has a background-sufficiency finding"
    ds = open_dataset(load_config(demo_inputs).data)
    index = {ds.sample_id(i): i for i in range(len(ds))}
    p = panels[0]
    i = index[p["id"]]
    image, mask = ds.load_display(i)
    assert f"{fill} fill" in p["why"]
    edited = background_only_display(image, mask, fill, ds.config.mean, ds.config.std, seed=i)
    assert (edited[mask] != image[mask]).any()  # the edit is visible
    cls = p["label"]
    want = F.gallery_panel(
        image, mask, np.ones((2, 2)), title=p["id"],
        subtitle=f"label {cls} · background alone ({fill} fill) predicted '{cls}'",
        model_input=edited,
    )  # fmt: skip
    got = _pixels((demo_run / p["file"]).read_bytes())
    assert np.array_equal(got[:, :256], _pixels(want)[:, :256])


def test_fmt_interval_adds_digits_only_when_bounds_print_alike() -> None:
    from auditor.format import fmt_interval

    assert fmt_interval(0.976, 0.984) == "97.6%–98.4%"  # was "98%–98%"
    assert fmt_interval(0.9801, 0.9804) == "98.01%–98.04%"
    assert fmt_interval(0.25, 0.29, ".2f") == "0.25–0.29"
    assert fmt_interval(0.98, 0.98) == "98%–98%"  # equal bounds stay as they are
    assert fmt_interval(None, 0.5, sep=" to ") == "n/a to 50%"
    with pytest.raises(ValueError, match="`spec`"):
        fmt_interval(0.1, 0.2, "g")


_RAW = re.compile(r"_|\b(ci|bg|fg|n|diff|max|min|conf)\b")


def test_every_evidence_key_the_rules_write_reads_as_words() -> None:
    from auditor.results import evidence_label

    keys = set()
    for path in Path("auditor").rglob("*.py"):
        if "findings" in path.parts or path.name in ("subgroup_findings.py", "detection.py"):
            keys |= set(re.findall(r'"([a-z][a-z0-9_]*)":', path.read_text()))
    assert {"only_bg_ci", "n_other", "diff", "lift_fires"} <= keys
    raw = {k: evidence_label(k) for k in keys if _RAW.search(evidence_label(k))}
    assert raw == {}


def test_demo_report_has_no_raw_keys_equal_intervals_or_one_cluster_eigengap(
    demo_run: Path,
) -> None:
    html = (demo_run / "report.html").read_text()
    rows = re.findall(r'<table class="evidence">.*?</table>', html, re.S)
    heads = [h for t in rows for h in re.findall(r'<th scope="row">([^<]*)</th>', t)]
    assert heads and [h for h in heads if _RAW.search(h)] == []
    assert re.search(r"(\d+(?:\.\d+)?%)–\1(?!\d)", html) is None  # no "98%–98%"
    assert "1 cluster, eigengap" not in html


def test_limitations_name_samples_without_masks_and_groups_too_small(tmp_path: Path) -> None:
    from auditor.report.compliance import derived_limitations
    from auditor.report.context import load_result
    from tests.report_fixtures import make_run_dir

    run = make_run_dir(tmp_path / "run", class_names=("a", "b"), n_per_class=6)
    summary = json.loads((run / "summary.json").read_text())
    primary = summary["primary_method"]
    summary["overall"]["status_counts"] = {primary: {"ok": 8, "no_mask": 3, "full_mask": 1}}
    level = {"n": 20, "suppressed": False}
    summary["groups"] = {
        "min_group_size": 10,
        "attributes": [
            {"name": "site", "levels": [{"level": "A", **level}, {"level": "B", "n": None,
                                                                   "suppressed": True}]},
        ],
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    text = " ".join(derived_limitations(load_result(run)))
    assert "3 without an object mask, 1 with a mask covering the whole image" in text
    assert "1 metadata group(s) have fewer than 10 images (site=B)" in text
    assert "site=A" not in text


@pytest.mark.parametrize("k", [0, 1, 4])
def test_cluster_panel_text_legible_on_a_phone_and_not_cut(k: int) -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    png = F.cluster_panel(np.eye(4), [(img, np.eye(3))] * k, title="W" * 90)
    width = Image.open(io.BytesIO(png)).size[0]
    px = round(F.cluster_font_pt(width) * 100 / 72)
    # shown at most PHONE_PANEL_PX wide on a 390 px phone (narrower panels at their own width)
    assert px * min(1.0, F.PHONE_PANEL_PX / width) >= 8.0
    assert px >= 17  # never smaller than before
    assert _frame_is_white(png)


@pytest.mark.parametrize(("rates", "named"), [
    ({"a": 1.0, "b": 0.0, "c": 0.05}, "a"),  # every background-only image goes to 'a'
    ({"a": 0.95, "b": 0.2, "c": 0.0}, None),  # 'b' keeps 20%: not one default answer
    ({"a": 0.85, "b": 0.0, "c": 0.0}, None),  # below the 0.9 bar
])  # fmt: skip
def test_background_only_caveat_names_the_empty_scene_class(
    tmp_path: Path, rates: dict[str, float], named: str | None
) -> None:
    from auditor.report.compliance import derived_limitations
    from auditor.report.context import load_result
    from tests.report_fixtures import make_run_dir

    run = make_run_dir(tmp_path / "run", class_names=tuple(rates), n_per_class=6)
    summary = json.loads((run / "summary.json").read_text())
    for name, rate in rates.items():
        summary["classes"][name]["interventions"]["only_bg_accuracy"] = rate
    (run / "summary.json").write_text(json.dumps(summary))
    caveats = [s for s in derived_limitations(load_result(run)) if "empty scene" in s]
    if named is None:
        assert caveats == []
    else:
        assert len(caveats) == 1 and f"class '{named}'" in caveats[0] and "(100%)" in caveats[0]
