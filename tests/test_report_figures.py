"""Report figures: pure functions returning PNG bytes; hand-checked normalisation."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from auditor.report import figures as F


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


def _image(h=24, w=32):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[6:14, 8:20] = True
    return img, mask


def test_normalise_identity_size_divides_by_max():
    cam = np.array([[0.0, 1.0], [2.0, 4.0]])
    out, note = F._normalise_cam(cam, 2, 2)
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)
    assert note == ""


def test_bilinear_upsampling_uses_half_pixel_centres():
    # output centres map to x = -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1
    out = F._upsample_bilinear(np.array([[0.0, 2.0]]), 1, 4)
    np.testing.assert_allclose(out[0], [0.0, 0.5, 1.5, 2.0], atol=1e-5)


@pytest.mark.parametrize(
    "cam, expected_note",
    [
        (np.zeros((3, 3)), "CAM is zero everywhere"),
        (np.full((3, 3), np.nan), "non-finite"),
        (np.array([[np.nan, 1.0], [0.0, 2.0]]), "non-finite"),
    ],
)
def test_degenerate_cams_are_drawn_as_zero_with_a_note(cam, expected_note):
    out, note = F._normalise_cam(cam, 4, 4)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert expected_note in note


def test_constant_cam_normalises_to_one():
    out, note = F._normalise_cam(np.full((2, 2), 3.0), 4, 4)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    assert note == ""


def test_gallery_panel_png_and_deterministic():
    img, mask = _image()
    cam = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = F.gallery_panel(img, mask, cam, title="img/$x$.png", subtitle="label <b>")
    b = F.gallery_panel(img, mask, cam, title="img/$x$.png", subtitle="label <b>")
    assert a == b
    assert _png_size(a) == (900, 340)
    c = F.gallery_panel(img, mask, cam[::-1].copy())
    assert c != a  # the CAM is actually drawn


@pytest.mark.parametrize("mask_kind", ["none", "empty", "full"])
def test_gallery_panel_awkward_masks_without_warnings(mask_kind):
    img, mask = _image()
    m = {"none": None, "empty": np.zeros_like(mask), "full": np.ones_like(mask)}[mask_kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = F.gallery_panel(img, m, np.zeros((2, 2)))
    assert _png_size(data)[0] > 0


def test_gallery_panel_validates_arguments():
    img, mask = _image()
    cam = np.ones((3, 3))
    with pytest.raises(ValueError, match=r"`image` must have shape \[H, W, 3\], got \(24, 32\)"):
        F.gallery_panel(img[..., 0], mask, cam)
    with pytest.raises(TypeError, match="`image` must be uint8, got dtype float32"):
        F.gallery_panel(img.astype(np.float32), mask, cam)
    with pytest.raises(ValueError, match=r"`mask` must have shape .* got \(3, 3\)"):
        F.gallery_panel(img, np.ones((3, 3), bool), cam)
    with pytest.raises(TypeError, match="`mask` must be bool"):
        F.gallery_panel(img, mask.astype(np.uint8), cam)
    with pytest.raises(ValueError, match=r"`cam` must have shape \[h, w\]"):
        F.gallery_panel(img, mask, np.ones(3))
    with pytest.raises(ValueError, match=r"`cam` must have shape"):
        F.gallery_panel(img, mask, np.ones((0, 3)))


def test_cluster_panel():
    img, _ = _image()
    data = F.cluster_panel(np.ones((4, 4)), [(img, np.eye(3)), (img, np.zeros((3, 3)))], title="c$")
    assert _png_size(data)[0] > 0
    assert _png_size(F.cluster_panel(np.zeros((2, 2)), [], title="empty"))[0] > 0
    with pytest.raises(TypeError, match=r"`exemplars\[0\]`"):
        F.cluster_panel(np.ones((2, 2)), [img], title="x")  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"`exemplars\[0\]` image"):
        F.cluster_panel(np.ones((2, 2)), [(img[..., 0], np.ones((2, 2)))], title="x")
    with pytest.raises(ValueError, match="`mean_map`"):
        F.cluster_panel(np.ones(3), [], title="x")


def test_plain_text_escapes_mathtext_and_truncates():
    assert F.plain_text("a$b$") == r"a\$b\$"
    s = F.plain_text("y" * 300, 40)
    assert len(s) == 40 and s.endswith("…")


def test_report_figures_draw_and_validate():
    names = ["a", "b$", "<c>", "d" * 300]
    assert (
        _png_size(
            F.background_focus_by_class(
                names,
                [0.2, None, 0.9, float("nan")],
                [0.1, None, 0.8, 0.1],
                [0.3, None, 1.0, 0.2],
                baseline=0.4,
                threshold=0.6,
            )
        )[0]
        > 0
    )
    with pytest.raises(ValueError, match="`means` must have length 4"):
        F.background_focus_by_class(names, [0.1], [0.1], [0.1])
    with pytest.raises(ValueError, match="at least one class"):
        F.background_focus_by_class([], [], [], [])
    assert _png_size(F.energy_distribution([0.1, 0.9, np.nan], []))[0] > 0
    assert _png_size(F.energy_distribution([], []))[0] > 0  # nothing finite: a note, no error
    with pytest.raises(ValueError, match="`bins`"):
        F.energy_distribution([0.1], [0.2], bins=0)
    assert _png_size(F.energy_vs_confidence([0.1, np.nan], [0.5, 0.9], [True, False]))[0] > 0
    with pytest.raises(ValueError, match="equal lengths"):
        F.energy_vs_confidence([0.1], [0.5, 0.9], [True])
    assert _png_size(F.confusion_matrix(["a", "b"], [[3, 1], [0, 5]]))[0] > 0
    assert _png_size(F.confusion_matrix(["a", "b"], [[0, 0], [0, 0]]))[0] > 0
    with pytest.raises(ValueError, match=r"`matrix` must have shape \[2, 2\]"):
        F.confusion_matrix(["a", "b"], [[1, 2, 3]])
    assert _png_size(F.interventions_by_class(["a"], [0.9], [0.8], [None], [0.5]))[0] > 0
    with pytest.raises(ValueError, match="`only_bg` must have length 1"):
        F.interventions_by_class(["a"], [0.9], [0.8], [0.1, 0.2], [0.5])
    assert _png_size(F.method_agreement(["g", "c"], [[1.0, 0.5], [0.5, None]]))[0] > 0
    with pytest.raises(ValueError, match=r"`spearman` must have shape \[2, 2\]"):
        F.method_agreement(["g", "c"], [[1.0]])


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_gallery_overlay_is_the_jet_blend_and_the_outline_is_drawn():
    # raster panels (issue 14): the overlay is 0.5 * jet(cam / max) + 0.5 * image, the mask's
    # outline is drawn in #39ff14 on the middle panel only when the mask is partial
    img = np.full((32, 32, 3), 128, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    png = F.gallery_panel(img, mask, np.ones((4, 4)), title="t")
    px = _pixels(png)
    lut = F._jet_lut()
    assert lut.shape == (256, 3) and tuple(lut[255]) == (128, 0, 0)  # matplotlib's jet at 1
    want = np.round(0.5 * lut[255].astype(float) + 0.5 * 128).astype(np.uint8)
    right = px[:, 600:]  # the overlay tile spans x 534..780 and ~246 rows (12 pt text above)
    assert (right == want).all(-1).sum() > 0.8 * 180 * 240
    green = (px == (0x39, 0xFF, 0x14)).all(-1)
    assert 300 <= np.flatnonzero(green.any(0)).mean() <= 600 and green.sum() > 500
    assert (
        not (_pixels(F.gallery_panel(img, None, np.ones((4, 4)))) == (0x39, 0xFF, 0x14))
        .all(-1)
        .any()
    )


def test_cluster_panel_size_follows_the_number_of_exemplars():
    img, _ = _image(32, 32)
    for k in (0, 1, 4):
        data = F.cluster_panel(np.eye(4), [(img, np.eye(3))] * k, title="c")
        assert _png_size(data) == (round(max(3.0, 2.2 * (1 + k)) * 100), 260)
        assert data == F.cluster_panel(np.eye(4), [(img, np.eye(3))] * k, title="c")
