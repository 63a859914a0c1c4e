"""SS-CAM / IS-CAM batching (auditor.cam.perturbation): the chunking, the shared forwards and
the noise stream never change the scores, compared with the plain per-sample loop."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from auditor.cam import CamEngine
from auditor.cam import methods as methods_module
from auditor.cam import perturbation as sweep

torch.manual_seed(0)
W_LIN = torch.randn(3 * 8 * 8, 5, dtype=torch.float64)


def linear_forward(calls: list[int]) -> sweep.PerturbedForward:
    """A deterministic 'model': logits = flatten(x) @ W in float64 (exact under re-batching)."""

    def forward(inputs: Tensor, fixed: bool = False) -> Tensor:
        calls.append(int(inputs.shape[0]))
        return (inputs.double().flatten(1) @ W_LIN).float()

    return forward


def acts_with_repeats() -> Tensor:
    """[2, 6, 2, 2]: channel 1 repeats channel 0, channels 2 and 5 are constant, the rest are
    distinct (with torch-cam's ``1e-8`` in the normaliser, a rescaled channel is not a repeat)."""
    gen = torch.Generator().manual_seed(3)
    acts = torch.rand(2, 6, 2, 2, generator=gen)
    acts[:, 1] = acts[:, 0]
    acts[:, 2] = 0.7
    acts[:, 5] = 0.0
    return acts


def naive_masks(acts: Tensor, size: tuple[int, int]) -> Tensor:
    flat = acts.flatten(2)
    norm = flat - flat.amin(2, keepdim=True)
    norm = (norm / (norm.amax(2, keepdim=True) + 1e-8)).reshape(acts.shape)
    return torch.nn.functional.interpolate(norm, size=size, mode="bilinear", align_corners=False)


def naive_integrated(images: Tensor, acts: Tensor, targets: Tensor, samples: int) -> Tensor:
    masks = naive_masks(acts, images.shape[-2:])
    out = torch.zeros(*acts.shape[:2], targets.shape[1])
    coeff = 0.0
    forward = linear_forward([])
    for step in range(samples):
        coeff += (step + 1) / samples
        for b in range(acts.shape[0]):
            for k in range(acts.shape[1]):
                logits = forward(images[b : b + 1] * (coeff * masks[b, k]))
                out[b, k] += logits[0, targets[b]]
    return out / samples


def naive_smoothed(
    images: Tensor, acts: Tensor, targets: Tensor, samples: int, std: float, seed: int
) -> Tensor:
    """torch-cam's order: one [B, K, H, W] noise draw per sample."""
    masks = naive_masks(acts, images.shape[-2:])
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(*acts.shape[:2], targets.shape[1])
    forward = linear_forward([])
    for _ in range(samples):
        noise = torch.randn(masks.shape, generator=gen) * std
        for b in range(acts.shape[0]):
            for k in range(acts.shape[1]):
                inputs = images[b : b + 1] * (masks[b, k] + noise[b, k])
                out[b, k] += forward(inputs)[0, targets[b]]
    return out / samples


IMAGES = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([[1, 4], [0, 2]])


@pytest.mark.parametrize("chunk", [1, 3, 5, 16, 64])
def test_integrated_scores_match_the_definition_for_any_chunk(chunk: int) -> None:
    calls: list[int] = []
    acts = acts_with_repeats()
    got = sweep.integrated_scores(
        IMAGES, acts, TARGETS, 3, forward=linear_forward(calls), chunk=chunk
    )
    torch.testing.assert_close(got, naive_integrated(IMAGES, acts, TARGETS, 3))
    # 2 images x 3 distinct varying maps x 3 steps, + one zero input for the constant maps
    assert sum(calls) == 2 * 3 * 3 + 1
    assert max(calls) <= chunk
    assert sum(1 for c in calls[:-1] if c < chunk) <= 1  # at most one partial chunk


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("cache", [True, False])
def test_smoothed_scores_noise_is_one_draw_per_sample_for_any_chunk(
    chunk: int, cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cache:
        monkeypatch.setattr(sweep, "MASK_CACHE_BYTES", 0)
    calls: list[int] = []
    acts = torch.rand(2, 20, 2, 2, generator=torch.Generator().manual_seed(4))  # 40 rows/sample
    got = sweep.smoothed_scores(
        IMAGES, acts, TARGETS, 3, 0.5, forward=linear_forward(calls), chunk=chunk, seed=7
    )
    expected = naive_smoothed(IMAGES, acts, TARGETS, 3, 0.5, seed=7)
    torch.testing.assert_close(got, expected)
    assert sum(calls) == 3 * 2 * 20 and max(calls) <= chunk


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@pytest.mark.parametrize("method", ["sscam", "iscam"])
@pytest.mark.parametrize("copy", [False, True])
def test_engine_chunk_size_does_not_change_the_maps(
    method: str, copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(methods_module, "SSCAM_SAMPLES", 3)
    monkeypatch.setattr(methods_module, "ISCAM_SAMPLES", 3)
    model = SmallNet().eval()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = []
    for chunk in (1, 7, 16, 128):
        with CamEngine(
            model, "features.5", (method,), score_batch_size=chunk, inference_copy=copy
        ) as engine:
            maps.append(engine.run(images, torch.tensor([0, 1, 3])).cams[method])
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], atol=1e-5, rtol=1e-4)
