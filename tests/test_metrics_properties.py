"""Property tests (hypothesis) for the localisation metrics."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from auditor.metrics.localisation import METRIC_NAMES, localisation_metrics

SETTINGS = settings(max_examples=50, deadline=None)
SHARES = (
    "energy_in_mask",
    "background_focus",
    "pointing_game",
    "relevance_rank_accuracy",
    "iou",
    "auc",
    "border_focus",
    "entropy",
)


@st.composite
def batches(draw: st.DrawFn, max_value: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued CAMs (many exact ties) and random masks, B in 1..3, H, W in 3..6."""
    b = draw(st.integers(1, 3))
    h = draw(st.integers(3, 6))
    w = draw(st.integers(3, 6))
    cams = draw(st.lists(st.integers(0, max_value), min_size=b * h * w, max_size=b * h * w))
    masks = draw(st.lists(st.booleans(), min_size=b * h * w, max_size=b * h * w))
    return (
        torch.tensor(cams, dtype=torch.float32).reshape(b, h, w),
        torch.tensor(masks, dtype=torch.bool).reshape(b, h, w),
    )


def _metrics(cams: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    return localisation_metrics(cams, masks, pointing_tolerance=1, border_width=0.2)[0]


@SETTINGS
@given(batches(), st.floats(1e-3, 1e3))
def test_invariant_to_positive_scaling(data, scale: float) -> None:
    cams, masks = data
    a = _metrics(cams, masks)
    b = _metrics(cams * scale, masks)
    for name in METRIC_NAMES:
        torch.testing.assert_close(a[name], b[name], equal_nan=True, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(batches())
def test_bounds(data) -> None:
    cams, masks = data
    m = _metrics(cams, masks)
    for name in SHARES:
        v = m[name][~torch.isnan(m[name])]
        assert ((v >= -1e-12) & (v <= 1 + 1e-12)).all(), (name, v)
    frac = masks.flatten(1).double().mean(dim=1)
    lift = m["energy_lift"]
    ok = ~torch.isnan(lift)
    assert (lift[ok] >= 0).all()
    assert (lift[ok] <= 1 / frac[ok] + 1e-9).all()
    dd = m["density_diff"]
    ok = ~torch.isnan(dd)
    assert (dd[ok] <= 1 / frac[ok] + 1e-9).all()
    assert (dd[ok] >= -1 / (1 - frac[ok]) - 1e-9).all()


@SETTINGS
@given(batches())
def test_complement_and_nan_pattern(data) -> None:
    cams, masks = data
    m = _metrics(cams, masks)
    ok = ~torch.isnan(m["energy_in_mask"])
    total = m["background_focus"][ok] + m["energy_in_mask"][ok]
    assert torch.allclose(total, torch.ones_like(total), rtol=0, atol=1e-12)
    same_nan = torch.isnan(m["background_focus"]) == torch.isnan(m["energy_in_mask"])
    assert same_nan.all()
    area = masks.flatten(1).sum(dim=1)
    undefined = (area == 0) | (area == masks[0].numel()) | (cams.flatten(1).sum(dim=1) == 0)
    for name in ("energy_in_mask", "energy_lift", "auc", "density_diff"):
        assert torch.equal(torch.isnan(m[name]), undefined), name


@SETTINGS
@given(batches())
def test_oracle_masks(data) -> None:
    _, masks = data
    area = masks.flatten(1).sum(dim=1)
    informative = (area > 0) & (area < masks[0].numel())
    good = masks.float() * 2.5
    m = _metrics(good, masks)
    for name in ("energy_in_mask", "pointing_game", "iou", "auc", "relevance_rank_accuracy"):
        assert (m[name][informative] == 1.0).all(), name
        assert torch.isnan(m[name][~informative]).all(), name
    chance = masks.flatten(1).double().mean(1)
    lift = m["energy_lift"][informative]
    assert torch.allclose(lift, 1 / chance[informative], rtol=1e-12, atol=0)
    bad = (~masks).float()
    m = _metrics(bad, masks)
    for name in ("energy_in_mask", "auc", "iou"):
        assert (m[name][informative] == 0.0).all(), name
    # top-K with K = |M| > |background| must spill over into the (tied, zero) mask pixels
    k = area.double()
    spill = (2 * k - masks[0].numel()).clamp_min(0) / k
    assert torch.allclose(m["relevance_rank_accuracy"][informative], spill[informative])
    # with tolerance 1 the maxima next to the mask still count; without tolerance they do not
    pg0 = localisation_metrics(bad, masks, border_width=0.2)[0]["pointing_game"]
    assert (pg0[informative] == 0.0).all()


@SETTINGS
@given(batches(max_value=3))
def test_auc_matches_sklearn(data) -> None:
    cams, masks = data
    auc = _metrics(cams, masks)["auc"]
    for i in range(cams.shape[0]):
        y = masks[i].flatten().numpy()
        s = cams[i].flatten().numpy()
        if y.all() or not y.any() or s.sum() == 0:
            assert math.isnan(auc[i].item())
        else:
            assert np.isclose(auc[i].item(), roc_auc_score(y, s), rtol=0, atol=1e-12)


@SETTINGS
@given(batches(max_value=2), st.randoms(use_true_random=False))
def test_invariant_to_pixel_permutation(data, rnd) -> None:
    """Ties are resolved fractionally, so reordering pixels changes nothing (mask metrics)."""
    cams, masks = data
    b, h, w = cams.shape
    perm = list(range(h * w))
    rnd.shuffle(perm)
    idx = torch.tensor(perm)
    cams_p = cams.flatten(1)[:, idx].reshape(b, h, w)
    masks_p = masks.flatten(1)[:, idx].reshape(b, h, w)
    a = localisation_metrics(cams, masks)[0]
    p = localisation_metrics(cams_p, masks_p)[0]
    for name in (
        "energy_in_mask",
        "energy_lift",
        "relevance_rank_accuracy",
        "iou",
        "auc",
        "density_diff",
        "pointing_game",
        "entropy",
    ):
        torch.testing.assert_close(a[name], p[name], equal_nan=True, rtol=1e-12, atol=1e-12)
