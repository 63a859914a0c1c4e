"""The CAM engine's split: train flags through the one helper, perturbation scoring, copies."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import auditor.cam.engine as engine_module
from auditor.audit.modelstate import preserved_training_flags
from auditor.cam import CamEngine, compute_cams
from auditor.cam import perturbation as pert
from auditor.cam.copies import ModelCopies, state_key


class FrozenStemNet(nn.Module):
    """A model with a custom ``train()``: its stem's BatchNorm stays in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3))
        self.fc = nn.Linear(4, 3)

    def train(self, mode: bool = True) -> FrozenStemNet:
        super().train(mode)
        self.stem[1].eval()  # the custom flag: the user's train() keeps this one frozen
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


class Boom(FrozenStemNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.block(self.stem(x))
        raise RuntimeError("head failed")


def _flags(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, m.training) for name, m in model.named_modules()]


@pytest.mark.parametrize("model_cls", [FrozenStemNet, Boom])
def test_engine_restores_train_flags_through_the_one_helper(
    model_cls: type[FrozenStemNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    @contextlib.contextmanager
    def spy(model: nn.Module, *, eval: bool = False) -> Iterator[nn.Module]:  # noqa: A002
        calls.append(eval)
        with preserved_training_flags(model, eval=eval) as m:
            assert all(not sub.training for sub in m.modules())
            yield m

    monkeypatch.setattr(engine_module, "preserved_training_flags", spy)
    torch.manual_seed(0)
    model = model_cls().train()
    model.block[2].eval()  # and one the user set by hand
    before = _flags(model)
    assert ("stem.1", False) in before and ("block.1", True) in before
    images = torch.randn(2, 3, 8, 8)
    with contextlib.ExitStack() as stack:
        if model_cls is Boom:
            stack.enter_context(pytest.raises(RuntimeError, match="head failed"))
        compute_cams(model, images, [0, 1], methods=("gradcam", "scorecam"), layer="block.1")
    assert calls == [True]
    assert _flags(model) == before
    assert all(not m._forward_hooks for m in model.modules())


def test_engine_not_reentrant_and_reusable() -> None:
    model = FrozenStemNet().eval()
    engine = CamEngine(model, "block.1", ("gradcam",))
    with engine:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            engine.__enter__()
    with pytest.raises(RuntimeError, match="inside `with engine:`"):
        engine.run(torch.randn(1, 3, 8, 8))
    with engine:  # enters again after exit
        assert engine.run(torch.randn(1, 3, 8, 8)).cams["gradcam"].shape == (1, 8, 8)


def test_masked_scores_share_identical_masks_and_the_zero_input() -> None:
    a = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.75, 0.0, 0.5, 0.25, 1.0]).reshape(1, 1, 3, 3)
    acts = torch.cat([a, 2 * a + 1, torch.full_like(a, 0.5)], 1)  # a, 2a+1 alike; one constant
    images = torch.rand(1, 3, 6, 6)
    seen: list[int] = []

    def forward(x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
        seen.append(x.shape[0])
        return torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], 1)

    scores, forwards = pert.masked_scores(images, acts, torch.tensor([[0]]), forward, size=16)
    assert forwards == 2 and sum(seen) == 2
    assert scores.shape == (1, 3, 1)
    torch.testing.assert_close(scores[0, 0], scores[0, 1])
    torch.testing.assert_close(scores[0, 2], torch.tensor([0.5]))  # zero input: softmax of 0, 0


def test_chunks_cover_the_range() -> None:
    assert [(c.start, c.stop) for c in pert.chunks(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    assert pert.chunk_size(None, torch.device("cpu")) == pert.AUTO_SCORE_BATCH["cpu"]
    assert pert.chunk_size(7, torch.device("cpu")) == 7
    assert engine_module.AUTO_SCORE_BATCH is pert.AUTO_SCORE_BATCH


def test_copies_rebuild_when_the_model_changes() -> None:
    model = FrozenStemNet().eval()
    copies = ModelCopies(
        model,
        ("block.1",),
        inference_copy=True,
        capture_copy=False,
        autocast=None,
        make_hook=lambda name: lambda m, i, o: None,
        hook_ids=set,
    )
    x = torch.randn(2, 3, 8, 8)
    key = state_key(model)
    out = copies.perturbed_logits(x)
    first = copies.replica
    assert first is not None and copies.replica_status.startswith("used:")
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)
        model.fc.weight.mul_(2.0)
    assert state_key(model) != key
    copies.perturbed_logits(x)
    assert copies.replica is not first
    assert copies.capture_module(x)[0] is model  # capture_copy off: the model itself
