"""Localisation metrics against hand-computed values on tiny tensors, and the NaN rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from auditor.metrics.localisation import (
    MASK_METRICS,
    METRIC_NAMES,
    background_focus,
    border_focus,
    concentration_entropy,
    dilate_masks,
    energy_in_mask,
    energy_lift,
    iou_at_threshold,
    localisation_auc,
    localisation_metrics,
    pointing_game,
    relevance_rank_accuracy,
    saliency_density_difference,
)

MASK_FNS = [
    energy_in_mask,
    background_focus,
    energy_lift,
    pointing_game,
    relevance_rank_accuracy,
    iou_at_threshold,
    localisation_auc,
    saliency_density_difference,
]


def t(rows: list) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float32)


def mk(rows: list) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.bool)


CAM = t([[1.0, 2.0], [3.0, 4.0]])
MASK_BR = mk([[0, 0], [0, 1]])  # bottom-right pixel (value 4)


def test_energy_hand_values() -> None:
    assert energy_in_mask(CAM, MASK_BR).item() == pytest.approx(0.4)
    assert background_focus(CAM, MASK_BR).item() == pytest.approx(0.6)
    assert energy_lift(CAM, MASK_BR).item() == pytest.approx(0.4 / 0.25)
    assert energy_in_mask(CAM, MASK_BR).dtype == torch.float64


def test_density_difference_hand_value() -> None:
    # mean in = 4, mean out = (1+2+3)/3 = 2, mean = 2.5 -> (4 - 2) / 2.5 = 0.8
    assert saliency_density_difference(CAM, MASK_BR).item() == pytest.approx(0.8)


def test_pointing_game_hit_miss_and_tie() -> None:
    assert pointing_game(CAM, MASK_BR).item() == 1.0
    assert pointing_game(CAM, mk([[1, 0], [0, 0]])).item() == 0.0
    tie = t([[4.0, 0.0], [0.0, 4.0]])
    assert pointing_game(tie, mk([[1, 0], [0, 0]])).item() == 0.5
    tie3 = t([[4.0, 4.0], [4.0, 1.0]])
    assert pointing_game(tie3, mk([[1, 0], [0, 0]])).item() == pytest.approx(1 / 3)


def test_pointing_game_tolerance_is_a_disk() -> None:
    cam = torch.zeros(1, 5, 5)
    cam[0, 0, 0] = 1.0
    side = torch.zeros(1, 5, 5, dtype=torch.bool)
    side[0, 0, 2] = True  # distance 2
    assert pointing_game(cam, side, tolerance=1).item() == 0.0
    assert pointing_game(cam, side, tolerance=2).item() == 1.0
    diag = torch.zeros(1, 5, 5, dtype=torch.bool)
    diag[0, 2, 2] = True  # distance 2.83: outside a radius-2 disk, inside its bounding square
    assert pointing_game(cam, diag, tolerance=2).item() == 0.0
    assert pointing_game(cam, diag, tolerance=3).item() == 1.0


def test_dilate_masks() -> None:
    m = torch.zeros(1, 5, 5, dtype=torch.bool)
    m[0, 2, 2] = True
    d1 = dilate_masks(m, 1)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[2, 1:4] = True
    expected[1:4, 2] = True
    assert torch.equal(d1[0], expected)
    assert dilate_masks(m, 0) is m
    assert dilate_masks(m, 2)[0].sum().item() == 13  # |{dx^2+dy^2 <= 4}| = 13


def test_relevance_rank_accuracy_hand_values_and_ties() -> None:
    cam = t([[4.0, 3.0], [2.0, 1.0]])
    # K = 2, top-2 = {4, 3}; mask {4, 1} -> 1 of 2
    assert relevance_rank_accuracy(cam, mk([[1, 0], [0, 1]])).item() == 0.5
    assert relevance_rank_accuracy(cam, mk([[1, 1], [0, 0]])).item() == 1.0
    # ties at the K-th value: [[4, 2], [2, 1]], mask {4, first 2}: K = 2, one slot left for
    # two tied pixels, one of them in the mask -> (1 + 1 * 1/2) / 2 = 0.75
    tie = t([[4.0, 2.0], [2.0, 1.0]])
    assert relevance_rank_accuracy(tie, mk([[1, 1], [0, 0]])).item() == 0.75
    # the same with the tie order swapped in memory gives the same value
    tie_swapped = t([[4.0, 2.0], [2.0, 1.0]]).transpose(1, 2).contiguous()
    assert relevance_rank_accuracy(tie_swapped, mk([[1, 0], [1, 0]])).item() == 0.75


def test_iou_hand_values() -> None:
    # threshold 0.5 * 4 = 2 -> binarised {2, 3, 4}
    assert iou_at_threshold(CAM, MASK_BR).item() == pytest.approx(1 / 3)
    assert iou_at_threshold(CAM, mk([[0, 0], [1, 1]])).item() == pytest.approx(2 / 3)
    assert iou_at_threshold(CAM, MASK_BR, threshold=1.0).item() == 1.0
    # pixels exactly at the threshold are included (>=)
    assert iou_at_threshold(CAM, mk([[0, 1], [1, 1]]), threshold=0.5).item() == 1.0


def test_auc_hand_value_and_ties() -> None:
    assert localisation_auc(CAM, MASK_BR).item() == 1.0
    assert localisation_auc(CAM, mk([[1, 0], [0, 0]])).item() == 0.0
    # object {2, 3} vs background {1, 4}: pairs (2>1, 2<4, 3>1, 3<4) -> 2/4
    assert localisation_auc(CAM, mk([[0, 1], [1, 0]])).item() == 0.5
    # a tie between object and background counts 1/2: [[2, 2], [1, 1]], object = first 2
    tie = t([[2.0, 2.0], [1.0, 1.0]])
    assert localisation_auc(tie, mk([[1, 0], [0, 0]])).item() == pytest.approx((1 + 1 + 0.5) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    cams = torch.randint(0, 4, (6, 7, 9), generator=g).float()  # many ties
    cams[3] = torch.rand(7, 9, generator=g)  # one without ties
    masks = torch.rand(6, 7, 9, generator=g) > 0.6
    got = localisation_auc(cams, masks).numpy()
    for i in range(6):
        if cams[i].max() == cams[i].min():
            continue
        want = roc_auc_score(masks[i].flatten().numpy(), cams[i].flatten().numpy())
        assert got[i] == pytest.approx(want, abs=1e-12)


def test_border_focus() -> None:
    cam = torch.ones(1, 5, 5)
    # width 0.2 * 5 = 1 px band: 25 - 9 = 16 pixels
    assert border_focus(cam, 0.2).item() == pytest.approx(16 / 25)
    centre = torch.zeros(1, 5, 5)
    centre[0, 2, 2] = 1.0
    assert border_focus(centre, 0.2).item() == 0.0
    edge = torch.zeros(1, 5, 5)
    edge[0, 0, 3] = 2.0
    edge[0, 2, 2] = 2.0
    assert border_focus(edge, 0.2).item() == 0.5
    # at least one pixel: 0.01 * 5 rounds to 0 -> 1
    assert border_focus(cam, 0.01).item() == pytest.approx(16 / 25)
    with pytest.raises(ValueError, match="width_fraction"):
        border_focus(torch.ones(1, 4, 4), 0.4)  # 2 px band on a 4 px image covers everything
    assert border_focus(cam, 0.4).item() == pytest.approx(24 / 25)  # 2 px band, 1 px interior
    with pytest.raises(ValueError, match="width_fraction"):
        border_focus(cam, 0.0)


def test_entropy() -> None:
    assert concentration_entropy(torch.ones(1, 4, 4)).item() == pytest.approx(1.0)
    one = torch.zeros(1, 4, 4)
    one[0, 1, 1] = 3.0
    assert concentration_entropy(one).item() == 0.0
    two = torch.zeros(1, 2, 2)
    two[0, 0, 0] = two[0, 1, 1] = 5.0
    assert concentration_entropy(two).item() == pytest.approx(math.log(2) / math.log(4))
    assert math.isnan(concentration_entropy(torch.ones(1, 1, 1)).item())


# ---------------------------------------------------------------------------------------------
# undefined cases
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", MASK_FNS)
def test_empty_and_full_mask_give_nan(fn) -> None:
    assert math.isnan(fn(CAM, mk([[0, 0], [0, 0]])).item())
    assert math.isnan(fn(CAM, mk([[1, 1], [1, 1]])).item())


@pytest.mark.parametrize("fn", MASK_FNS)
def test_zero_and_nonfinite_cam_give_nan(fn) -> None:
    assert math.isnan(fn(torch.zeros(1, 2, 2), MASK_BR).item())
    assert math.isnan(fn(t([[1.0, math.nan], [3.0, 4.0]]), MASK_BR).item())
    assert math.isnan(fn(t([[1.0, math.inf], [3.0, 4.0]]), MASK_BR).item())


def test_mask_free_metrics_nan_on_zero_and_nonfinite() -> None:
    for fn in (border_focus, concentration_entropy):
        bad = torch.zeros(2, 5, 5)
        bad[1, 0, 0] = math.nan
        assert torch.isnan(fn(bad)).all()


def test_constant_cam() -> None:
    cam = torch.full((1, 2, 2), 3.0)
    mask = mk([[1, 0], [0, 0]])
    assert energy_in_mask(cam, mask).item() == 0.25
    assert background_focus(cam, mask).item() == 0.75
    assert energy_lift(cam, mask).item() == 1.0
    assert localisation_auc(cam, mask).item() == 0.5
    assert saliency_density_difference(cam, mask).item() == 0.0
    for fn in (pointing_game, relevance_rank_accuracy, iou_at_threshold):
        assert math.isnan(fn(cam, mask).item()), fn.__name__


def test_rows_are_independent() -> None:
    g = torch.Generator().manual_seed(3)
    cams = torch.rand(5, 6, 6, generator=g)
    cams[1] = 0.0
    cams[2, 0, 0] = math.nan
    masks = torch.rand(5, 6, 6, generator=g) > 0.5
    masks[3] = False
    batch, _ = localisation_metrics(cams, masks, border_width=0.2)
    for i in range(5):
        single, _ = localisation_metrics(cams[i : i + 1], masks[i : i + 1], border_width=0.2)
        for name in METRIC_NAMES:
            torch.testing.assert_close(batch[name][i : i + 1], single[name], equal_nan=True)


# ---------------------------------------------------------------------------------------------
# localisation_metrics
# ---------------------------------------------------------------------------------------------
def test_localisation_metrics_status_and_nan() -> None:
    cams = torch.rand(7, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    masks = torch.zeros(7, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    cams[0, 0, 0] = math.inf  # nonfinite
    cams[1] = 0.0  # zero
    masks[2] = False  # empty
    masks[3] = True  # full
    cams[4] = 2.0  # constant
    has_mask = torch.tensor([True, True, True, True, True, True, False])
    metrics, status = localisation_metrics(cams, masks, has_mask=has_mask, border_width=0.25)
    assert status == [
        "nonfinite",
        "zero_cam",
        "empty_mask",
        "full_mask",
        "constant_cam",
        "ok",
        "no_mask",
    ]
    assert list(metrics) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert metrics[name].shape == (7,)
        assert torch.isnan(metrics[name][:2]).all(), name
    for name in MASK_METRICS:
        assert torch.isnan(metrics[name][2:4]).all(), name
        assert torch.isnan(metrics[name][6]), name
        assert not torch.isnan(metrics[name][5]), name
    for name in ("border_focus", "entropy"):
        assert not torch.isnan(metrics[name][[2, 3, 5, 6]]).any(), name
    for name in METRIC_NAMES:  # issue 11: a constant map gets no invented numbers
        assert torch.isnan(metrics[name][4]), name

    assert torch.isnan(metrics["pointing_game"][4])
    # has_mask=False rows hide a real mask: values are NaN, not the mask's values
    full, _ = localisation_metrics(cams, masks, border_width=0.25)
    assert not torch.isnan(full["energy_in_mask"][6])
    torch.testing.assert_close(full["energy_in_mask"][5], metrics["energy_in_mask"][5])
    # background_focus is the complement
    torch.testing.assert_close(
        metrics["background_focus"], 1 - metrics["energy_in_mask"], equal_nan=True
    )


def test_nearly_constant_upsampled_map_is_constant_cam() -> None:
    # a 1x1 layer map bilinearly upsampled: constant up to float rounding
    cams = torch.full((1, 6, 6), 0.3)
    cams[0, 2, 3] += 2e-7
    masks = torch.zeros(1, 6, 6, dtype=torch.bool)
    masks[0, :3] = True
    metrics, status = localisation_metrics(cams, masks)
    assert status == ["constant_cam"]
    assert math.isnan(metrics["energy_in_mask"].item())


def test_localisation_metrics_without_masks() -> None:
    cams = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    cams[2] = 0.0
    metrics, status = localisation_metrics(cams, None)
    assert status == ["no_mask", "no_mask", "zero_cam"]
    for name in MASK_METRICS:
        assert torch.isnan(metrics[name]).all()
    assert not torch.isnan(metrics["entropy"][:2]).any()
    assert not torch.isnan(metrics["border_focus"][:2]).any()
    torch.testing.assert_close(metrics["entropy"], concentration_entropy(cams), equal_nan=True)


def test_localisation_metrics_passes_options() -> None:
    cam = torch.zeros(1, 5, 5)
    cam[0, 0, 0] = 1.0
    cam[0, 4, 4] = 0.5
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 2] = True
    m0, _ = localisation_metrics(cam, mask, pointing_tolerance=0, border_width=0.2)
    m2, _ = localisation_metrics(cam, mask, pointing_tolerance=2, border_width=0.2)
    assert m0["pointing_game"].item() == 0.0
    assert m2["pointing_game"].item() == 1.0
    assert m0["border_focus"].item() == 1.0
    corner = torch.zeros(1, 5, 5, dtype=torch.bool)
    corner[0, 4, 4] = True
    # binarised at 0.5 * max: {(0,0), (4,4)} -> IoU 1/2; at 0.6 * max: {(0,0)} -> 0
    m5, _ = localisation_metrics(cam, corner, iou_threshold=0.5, border_width=0.2)
    m6, _ = localisation_metrics(cam, corner, iou_threshold=0.6, border_width=0.2)
    assert m5["iou"].item() == 0.5
    assert m6["iou"].item() == 0.0


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
def test_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`cams` must have shape \[B, H, W\], got \(2, 2\)"):
        energy_in_mask(torch.ones(2, 2), MASK_BR)
    with pytest.raises(TypeError, match="`cams`"):
        energy_in_mask(np.ones((1, 2, 2)), MASK_BR)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`cams` must be a floating"):
        energy_in_mask(torch.ones(1, 2, 2, dtype=torch.long), MASK_BR)
    with pytest.raises(TypeError, match="`masks` must have dtype torch.bool"):
        energy_in_mask(CAM, MASK_BR.float())
    with pytest.raises(ValueError, match=r"`masks` must have shape .* got \(1, 3, 3\)"):
        energy_in_mask(CAM, torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="`cams` must be >= 0"):
        energy_in_mask(t([[1.0, -0.5], [0.0, 1.0]]), MASK_BR)
    with pytest.raises(ValueError, match="`threshold`"):
        iou_at_threshold(CAM, MASK_BR, threshold=0.0)
    with pytest.raises(ValueError, match="`tolerance` must be >= 0, got -1"):
        pointing_game(CAM, MASK_BR, tolerance=-1)
    with pytest.raises(TypeError, match="`tolerance`"):
        pointing_game(CAM, MASK_BR, tolerance=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`has_mask` must have shape"):
        localisation_metrics(
            torch.ones(1, 5, 5),
            torch.ones(1, 5, 5, dtype=torch.bool),
            has_mask=torch.ones(2, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="`pointing_tolerance` must be >= 0"):
        localisation_metrics(torch.ones(1, 5, 5), None, pointing_tolerance=-2)


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------
def test_registry_covers_every_metric() -> None:
    from auditor.metrics import METRICS, MetricInfo, metric_info

    extra = {
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
        "only_fg_accuracy",
        "only_bg_accuracy",
        "mixed_rand_accuracy",
        "background_gap",
    }
    assert set(METRICS) == set(METRIC_NAMES) | extra
    for name in METRIC_NAMES:
        info = METRICS[name]
        assert info.name == name
        assert info.needs_mask == (name in MASK_METRICS)
        assert info.category in ("localisation", "concentration")
        assert info.formula and info.description and info.reference
    assert METRICS["background_focus"].higher_is_better is False
    assert METRICS["deletion_auc"].higher_is_better is False
    assert METRICS["average_drop"].higher_is_better is False
    assert METRICS["insertion_auc"].higher_is_better is True
    assert metric_info("auc").range == (0.0, 1.0)
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        metric_info("nope")
    with pytest.raises(TypeError):
        METRICS["x"] = METRICS["auc"]  # type: ignore[index]
    with pytest.raises(ValueError, match="`category` must be one of"):
        MetricInfo("x", "X", True, "vibes", False, None, "f", "d", "r")
