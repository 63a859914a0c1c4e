"""Tests of auditor.metrics.faithfulness against hand-computed values on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from auditor.metrics.faithfulness import (
    FAITHFULNESS_METRICS,
    FaithfulnessResult,
    _gaussian_blur,
    average_drop_increase,
    deletion_insertion,
    faithfulness,
    faithfulness_metrics,
)


class RegionModel(nn.Module):
    """logit_0 = sum_p W[p] * mean_c x[c, p]; logit_1 = 0, so p_0 = sigmoid(logit_0)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", weights.flatten().float())
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        s = (x.mean(1).flatten(1) * self.w).sum(1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def auc(values: list[float]) -> float:
    return (sum(values) - 0.5 * (values[0] + values[-1])) / (len(values) - 1)


W22 = torch.tensor([[2.0, 1.0], [0.0, -1.0]])
ONES = torch.ones(1, 3, 2, 2)
T0 = torch.tensor([0])


def test_deletion_insertion_2x2_hand_computed() -> None:
    model = RegionModel(W22)
    cam = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    d_auc, i_auc, (d_curve, i_curve) = deletion_insertion(
        model, ONES, cam, T0, steps=4, baseline="zero"
    )
    # deletion removes pixel 0 (w=2), 1 (w=1), 2 (w=0), 3 (w=-1): logit 2, 0, -1, -1, 0
    d_expected = [sig(v) for v in (2, 0, -1, -1, 0)]
    # insertion on a zero canvas reveals the same order: logit 0, 2, 3, 3, 2
    i_expected = [sig(v) for v in (0, 2, 3, 3, 2)]
    torch.testing.assert_close(d_curve[0], torch.tensor(d_expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(i_curve[0], torch.tensor(i_expected), atol=1e-6, rtol=0)
    assert d_auc.item() == pytest.approx(auc(d_expected), abs=1e-6)
    assert i_auc.item() == pytest.approx(auc(i_expected), abs=1e-6)
    assert d_curve.shape == (1, 5) and d_auc.shape == (1,)


def test_ties_broken_by_index_and_nan_last() -> None:
    model = RegionModel(W22)
    # order: pixel 1, pixel 2 (tie, lower index first), pixel 0, pixel 3
    cam = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    _, _, (d_curve, _) = deletion_insertion(model, ONES, cam, T0, steps=4, baseline="zero")
    torch.testing.assert_close(
        d_curve[0], torch.tensor([sig(v) for v in (2, 1, 1, -1, 0)]), atol=1e-6, rtol=0
    )
    # NaN pixel 0 is ranked last: order 1, 2, 3, 0
    cam_nan = torch.tensor([[[math.nan, 3.0], [2.0, 1.0]]])
    _, _, (d_curve, _) = deletion_insertion(model, ONES, cam_nan, T0, steps=4, baseline="zero")
    torch.testing.assert_close(
        d_curve[0], torch.tensor([sig(v) for v in (2, 1, 1, 2, 0)]), atol=1e-6, rtol=0
    )


def test_constant_cam_uses_index_order() -> None:
    model = RegionModel(W22)
    cam = torch.full((1, 2, 2), 7.0)
    _, _, (d_curve, _) = deletion_insertion(model, ONES, cam, T0, steps=4, baseline="zero")
    torch.testing.assert_close(
        d_curve[0], torch.tensor([sig(v) for v in (2, 0, -1, -1, 0)]), atol=1e-6, rtol=0
    )


def test_steps_not_dividing_pixels() -> None:
    model = RegionModel(W22)
    cam = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    # n_s = floor(s * 4 / 3) = 0, 1, 2, 4 pixels removed
    _, _, (d_curve, _) = deletion_insertion(model, ONES, cam, T0, steps=3, baseline="zero")
    torch.testing.assert_close(
        d_curve[0], torch.tensor([sig(v) for v in (2, 0, -1, 0)]), atol=1e-6, rtol=0
    )


def test_blur_baseline_constant_image_is_flat() -> None:
    model = RegionModel(W22)
    img = torch.full((1, 3, 2, 2), 0.5)
    cam = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    _, i_auc, (_, i_curve) = deletion_insertion(model, img, cam, T0, steps=4, baseline="blur")
    # blurring a constant image changes nothing: the insertion curve is flat at sig(0.5 * 2)
    torch.testing.assert_close(i_curve[0], torch.full((5,), sig(1.0)), atol=1e-6, rtol=0)
    assert i_auc.item() == pytest.approx(sig(1.0), abs=1e-6)


def test_gaussian_blur_matches_direct_convolution_inside() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 20)
    out = _gaussian_blur(x)
    r = torch.arange(-5, 6, dtype=torch.float32)
    k1 = torch.exp(-(r**2) / 50.0)
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    # direct 2D sum at an interior pixel, far enough from the border to need no padding
    expected = (x[:, :, 2:13, 3:14] * k2).sum((-1, -2))
    torch.testing.assert_close(out[:, :, 7, 8], expected, atol=1e-5, rtol=0)
    assert out.shape == x.shape


def _region_setup(b: int = 3, size: int = 8) -> tuple[RegionModel, torch.Tensor, torch.Tensor]:
    weights = torch.zeros(size, size)
    weights[:3, :3] = 0.5  # only the top-left 3x3 region drives the logit
    model = RegionModel(weights)
    torch.manual_seed(1)
    # bright object (+1) in the region on a dark (-1) background, plus noise: the blurred
    # canvas and the zero (deletion) value both lower the class-0 logit
    images = -torch.ones(b, 3, size, size) + 0.1 * torch.rand(b, 3, size, size)
    images[:, :, :3, :3] += 2.0
    perfect = (weights > 0).float().expand(b, size, size) + 0.01 * torch.rand(b, size, size)
    return model, images, perfect


def test_perfect_cam_beats_reversed_cam() -> None:
    model, images, perfect = _region_setup()
    targets = torch.zeros(3, dtype=torch.long)
    d_good, i_good, _ = deletion_insertion(model, images, perfect, targets, steps=16)
    d_bad, i_bad, _ = deletion_insertion(model, images, -perfect, targets, steps=16)
    assert (d_good < d_bad).all()
    assert (i_good > i_bad).all()
    assert ((d_good >= 0) & (d_good <= 1) & (i_good >= 0) & (i_good <= 1)).all()


def test_batching_invariance() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    images = torch.randn(4, 3, 8, 8)
    cams = torch.rand(4, 8, 8)
    targets = torch.tensor([0, 1, 4, 2])
    a = faithfulness(model, images, cams, targets, steps=5, forward_batch_size=1)
    b = faithfulness(model, images, cams, targets, steps=5, forward_batch_size=1000)
    c = faithfulness(model, images, cams, targets, steps=5, forward_batch_size=7)
    for name in FaithfulnessResult.__dataclass_fields__:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0)
        torch.testing.assert_close(getattr(a, name), getattr(c, name), atol=1e-6, rtol=0)


def test_average_drop_hand_computed() -> None:
    model = RegionModel(W22)
    images = torch.ones(3, 3, 2, 2)
    cams = torch.tensor(
        [
            [[4.0, 3.0], [2.0, 1.0]],  # norm [[1, 2/3], [1/3, 0]] -> logit 2 + 2/3 = 8/3
            [[1.0, 2.0], [3.0, 4.0]],  # norm [[0, 1/3], [2/3, 1]] -> logit 1/3 - 1 = -2/3
            [[5.0, 5.0], [5.0, 5.0]],  # constant: undefined
        ]
    )
    drop, inc = average_drop_increase(model, images, cams, torch.zeros(3, dtype=torch.long))
    y = sig(2.0)
    assert drop[0].item() == pytest.approx(0.0, abs=1e-7)
    assert inc[0].item() == 1.0
    assert drop[1].item() == pytest.approx((y - sig(-2 / 3)) / y, abs=1e-6)
    assert inc[1].item() == 0.0
    assert math.isnan(drop[2].item()) and math.isnan(inc[2].item())


def test_average_drop_zero_and_nan_cams_are_nan() -> None:
    model = RegionModel(W22)
    cams = torch.stack([torch.zeros(2, 2), torch.tensor([[1.0, math.nan], [0.0, 2.0]])])
    drop, inc = average_drop_increase(model, torch.ones(2, 3, 2, 2), cams, torch.tensor([0, 1]))
    assert torch.isnan(drop).all() and torch.isnan(inc).all()


def test_model_mode_restored_and_eval_during_call() -> None:
    model = RegionModel(W22)
    inner = nn.Dropout()
    model.add_module("inner", inner)
    model.train()
    inner.eval()  # a mixed state must come back exactly
    cam = torch.rand(1, 2, 2)
    faithfulness(model, ONES, cam, T0, steps=2)
    assert model.modes and not any(model.modes)
    assert model.training and not inner.training
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(model, ONES, cam, torch.tensor([5]), steps=2)
    assert model.training and not inner.training
    with pytest.raises(ValueError, match="targets"):
        average_drop_increase(model, ONES, cam, torch.tensor([5]))
    assert model.training and not inner.training


def test_results_are_ordinary_tensors() -> None:
    model = RegionModel(W22)
    d_auc, _, _ = deletion_insertion(model, ONES, torch.rand(1, 2, 2), T0, steps=2)
    d_auc[0] = 0.0  # would fail on an inference tensor


def test_faithfulness_metrics_multi_method_and_subset() -> None:
    model, images, perfect = _region_setup(b=4)
    targets = torch.zeros(4, dtype=torch.long)
    cams = {"good": perfect, "bad": -perfect}
    out = faithfulness_metrics(model, images, cams, targets, steps=8)
    assert set(out) == {"good", "bad"}
    assert set(out["good"]) == {
        "deletion_auc",
        "insertion_auc",
        "average_drop",
        "increase_in_confidence",
    }
    for name, cam in cams.items():
        ref = faithfulness(model, images, cam, targets, steps=8)
        torch.testing.assert_close(out[name]["deletion_auc"], ref.deletion_auc)
        torch.testing.assert_close(out[name]["insertion_auc"], ref.insertion_auc)
        torch.testing.assert_close(out[name]["average_drop"], ref.average_drop)
    sub = faithfulness_metrics(model, images, cams, targets, steps=8, subset=[2, 0])
    got = sub["good"]["deletion_auc"]
    assert torch.isnan(got[[1, 3]]).all()
    torch.testing.assert_close(got[[0, 2]], out["good"]["deletion_auc"][[0, 2]])
    assert set(FAITHFULNESS_METRICS) == set(out["good"])
    assert not FAITHFULNESS_METRICS["deletion_auc"].higher_is_better


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"baseline": "noise"}, "baseline"),
        ({"forward_batch_size": 0}, "forward_batch_size"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    model = RegionModel(W22)
    with pytest.raises(ValueError, match=match):
        deletion_insertion(model, ONES, torch.rand(1, 2, 2), T0, **kwargs)  # type: ignore[arg-type]


def test_bad_shapes() -> None:
    model = RegionModel(W22)
    with pytest.raises(ValueError, match="cams"):
        deletion_insertion(model, ONES, torch.rand(1, 3, 2), T0)
    with pytest.raises(ValueError, match="images"):
        deletion_insertion(model, torch.ones(3, 2, 2), torch.rand(1, 2, 2), T0)
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(model, ONES, torch.rand(1, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets"):
        deletion_insertion(model, ONES, torch.rand(1, 2, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="subset"):
        faithfulness_metrics(model, ONES, {"m": torch.rand(1, 2, 2)}, T0, subset=[3])


def test_empty_batch() -> None:
    model = RegionModel(W22)
    d, i, (dc, ic) = deletion_insertion(
        model,
        torch.ones(0, 3, 2, 2),
        torch.ones(0, 2, 2),
        torch.zeros(0, dtype=torch.long),
        steps=4,
    )
    assert d.shape == (0,) and dc.shape == (0, 5)
