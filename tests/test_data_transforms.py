"""Geometry, normalisation and box rasterisation against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data.transforms import (
    normalise,
    rasterise_boxes,
    resize_image,
    resize_mask,
    source_box,
)


def test_source_box() -> None:
    assert source_box(40, 30, (10, 10), "direct") == (0.0, 0.0, 40.0, 30.0)
    # scale = max(10/30, 10/40) = 1/3 -> crop 30x30 centred in 40x30
    assert source_box(40, 30, (10, 10), "shorter_center_crop") == pytest.approx((5, 0, 35, 30))
    # non-square output 10x20 from 40x40: scale 0.5 -> crop 40 wide, 20 high
    assert source_box(40, 40, (10, 20), "shorter_center_crop") == pytest.approx((0, 10, 40, 30))
    with pytest.raises(ValueError, match="`mode`"):
        source_box(4, 4, (2, 2), "stretch")


def test_resize_mask_nearest_by_hand() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = mask[3, 3] = True
    # 4 -> 2: output pixel i samples source centre (i + 0.5) * 2 = 1, 3
    assert resize_mask(mask, (2, 2), "direct").tolist() == [[True, False], [False, True]]
    up = resize_mask(np.array([[True, False]]), (2, 4), "direct")
    assert up.tolist() == [[True, True, False, False]] * 2
    # crop mode on 4 wide x 2 high -> 2x2 keeps the centre columns 1..2
    wide = np.array([[True, False, True, False]] * 2)
    assert resize_mask(wide, (2, 2), "shorter_center_crop").tolist() == [[False, True]] * 2
    assert resize_mask(mask, (4, 4), "direct").tolist() == mask.tolist()


def test_image_and_mask_stay_aligned() -> None:
    # A white square on black: after any resize, the mask must sit on the bright pixels.
    arr = np.zeros((30, 40, 3), dtype=np.uint8)
    arr[6:24, 12:36] = 255
    mask = arr[..., 0] > 0
    for mode in ("direct", "shorter_center_crop"):
        img = resize_image(Image.fromarray(arr), (15, 15), mode)
        m = resize_mask(mask, (15, 15), mode)
        rows, cols = np.mgrid[0:15, 0:15]
        w = img[..., 0].astype(np.float64)
        centre_img = ((rows * w).sum() / w.sum(), (cols * w).sum() / w.sum())
        centre_mask = (rows[m].mean(), cols[m].mean())
        # symmetric blur keeps the centroid; a shift of one pixel would not
        assert centre_img == pytest.approx(centre_mask, abs=0.25), mode


def test_normalise() -> None:
    img = np.zeros((1, 2, 3), dtype=np.uint8)
    img[0, 1] = (255, 51, 0)
    t = normalise(img, (0.5, 0.0, 0.0), (0.5, 0.2, 1.0))
    assert t.shape == (3, 1, 2) and t.dtype == torch.float32
    assert t[:, 0, 1].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert t[:, 0, 0].tolist() == pytest.approx([-1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        normalise(img.astype(np.float32), (0, 0, 0), (1, 1, 1))


def test_rasterise_boxes_by_hand() -> None:
    mask, notes, n = rasterise_boxes([(1, 1, 4, 3)], 4, 5)
    expected = np.zeros((4, 5), dtype=bool)
    expected[1:3, 1:4] = True
    assert n == 1 and notes == () and np.array_equal(mask, expected)
    # fractional: columns whose centre c + 0.5 lies in [0.6, 2.4) -> c = 1 only
    mask, _, _ = rasterise_boxes([(0.6, 0, 2.4, 1)], 1, 4)
    assert mask.tolist() == [[False, True, False, False]]
    # tiny box covering no pixel centre
    _, notes, n = rasterise_boxes([(0.1, 0.1, 0.4, 0.4)], 2, 2)
    assert n == 0 and "no pixel centre" in notes[0]
    _, notes, n = rasterise_boxes([(math.nan, 0, 1, 1), (2, 0, 1, 1), (1, 1, 1, 2)], 2, 2)
    assert n == 0 and "NaN" in notes[0] and "inverted" in notes[1] and "inverted" in notes[2]
    mask, notes, n = rasterise_boxes([(-5, -5, 1, 1), (9, 9, 12, 12)], 2, 2)
    assert n == 1 and mask.tolist() == [[True, False], [False, False]]
    assert "clipped" in notes[0] and "outside" in notes[1]
