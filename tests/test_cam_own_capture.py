"""Own-pass methods alone: their pass's forward is the batch's capture (issue 16).

When every requested method has its own pass (``legrad``, ``fullgrad``), the engine runs no
capture forward of its own: one forward + the backward(s) per batch. These tests compare that
fast path with the old one (``engine.own_pass_capture = False``: the shared capture forward, then
the own pass) and with a mixed list (``+ gradcam``: shared capture kept), on real small models:
same maps (bit for bit: the pass is the same computation with the same targets), same targets
and statuses, logits within float rounding (the own pass's forward is the model's, with timm's
attention written out instead of fused and without the capture's channels_last input: measured
<= 1e-6 here, asserted at atol 1e-5), and they count the model's forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from auditor.cam import CamEngine

LOGIT_ATOL = 1e-5


def _timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()


def _torchvision_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    ).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero
    return model


def _resnet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


CASES: dict[str, tuple[Callable[[], nn.Module], str, str | None]] = {
    "legrad-timm": (_timm_vit, "legrad", None),
    "legrad-torchvision": (_torchvision_vit, "legrad", None),
    "fullgrad-resnet": (_resnet, "fullgrad", "layer3"),  # 2x2 at 32x32 (layer4: 1x1, constant)
}
TARGETS: dict[str, Any] = {
    "predicted": "predicted",
    "label": torch.tensor([0, 2, 4]),
    "multi": torch.tensor([[0, 1], [2, 3], [4, 0]]),
}


class _Counter:
    """Counts the model's forwards (a forward hook on the model itself)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_args: object) -> None:
        self.calls += 1


def _run(
    model: nn.Module,
    methods: tuple[str, ...],
    layer: str | None,
    images: Tensor,
    targets: Any,
    fast: bool = True,
    **kw: Any,
) -> tuple[Any, int]:
    engine = CamEngine(model, layer, methods, example=images[:1], **kw)
    engine.own_pass_capture = fast
    counter = _Counter(model)  # after the engine's auto-detection probe
    try:
        with engine:
            batch = engine.run(images, targets)
    finally:
        counter.handle.remove()
    return batch, counter.calls


def _assert_same(old: Any, new: Any, method: str) -> None:
    torch.testing.assert_close(new.logits, old.logits, atol=LOGIT_ATOL, rtol=0)
    assert torch.equal(new.targets, old.targets)
    assert torch.equal(new.cams[method], old.cams[method])
    assert new.status[method] == old.status[method]


@pytest.mark.parametrize("target_kind", sorted(TARGETS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_own_capture_matches_the_old_path_with_one_forward(case: str, target_kind: str) -> None:
    build, method, layer = CASES[case]
    model = build()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = TARGETS[target_kind]
    old, old_forwards = _run(model, (method,), layer, images, targets, fast=False)
    new, new_forwards = _run(model, (method,), layer, images, targets, fast=True)
    assert (old_forwards, new_forwards) == (2, 1)
    _assert_same(old, new, method)
    assert float(new.cams[method].amax()) > 0
    if target_kind == "predicted":
        assert torch.equal(new.targets, new.logits.argmax(1))
    # a mixed list keeps the shared capture (2 forwards) and gives the same own-pass map
    mixed, mixed_forwards = _run(model, (method, "gradcam"), layer, images, targets)
    assert mixed_forwards == 2
    _assert_same(mixed, new, method)


@pytest.mark.parametrize("case", sorted(CASES))
def test_own_capture_decides_statuses_from_its_own_forward(case: str) -> None:
    """Sample 0's target-layer output made constant, sample 1's non-finite (a hook on the target
    layer, registered before the engine's): both paths report constant_activation/nonfinite."""
    build, method, layer = CASES[case]
    model = build()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 1, 1])
    with CamEngine(model, layer, (method,), example=images[:1]) as probe:
        name = probe.layer_names[0]
    module = model.get_submodule(name)

    def degrade(_module: nn.Module, _args: Any, output: Tensor) -> Tensor:
        out = output.clone()
        out[0] = 0.5
        out[1] = float("nan")
        return out

    handle = module.register_forward_hook(degrade)
    try:
        old, _ = _run(model, (method,), layer, images, targets, fast=False)
        new, forwards = _run(model, (method,), layer, images, targets, fast=True)
    finally:
        handle.remove()
    assert forwards == 1
    assert old.status[method][:2] == ["constant_activation", "nonfinite"]
    assert new.status[method] == old.status[method]
    assert new.status[method][2] == "ok"
    torch.testing.assert_close(
        new.cams[method].nan_to_num(0.0), old.cams[method].nan_to_num(0.0), atol=0, rtol=0
    )


def _state(model: nn.Module) -> tuple[Any, ...]:
    return (
        [m.training for m in model.modules()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        [getattr(m, "fused_attn", None) for m in model.modules()],
        ["forward" in vars(m) for m in model.modules()],
        [p.grad is None for p in model.parameters()],
    )


@pytest.mark.parametrize("phase", ["forward", "backward"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_own_capture_restores_the_model_on_error(case: str, phase: str) -> None:
    """A failure in the pass's forward (a hook raising) or in its backward (a tensor hook
    raising): the error surfaces, the model leaves as it came (training flags, hooks, timm's
    fused_attn, torchvision's instance forward), and the same engine then runs cleanly."""
    build, method, layer = CASES[case]
    model = build().train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = _state(model)
    inner = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # the head: on the graph

    def boom(*_args: object) -> None:
        raise RuntimeError("pass failed")

    def boom_backward(_module: nn.Module, _args: Any, output: Tensor) -> None:
        if output.requires_grad:
            output.register_hook(boom)

    engine = CamEngine(model, layer, (method,), example=images[:1])
    with engine:
        handle = inner.register_forward_hook(boom if phase == "forward" else boom_backward)
        try:
            with pytest.raises(RuntimeError, match="pass failed"):
                engine.run(images, torch.tensor([0, 1]))
        finally:
            handle.remove()
        assert not engine._observing and not engine._captured
        assert torch.is_grad_enabled()
        batch = engine.run(images, torch.tensor([0, 1]))  # the engine is still usable
    assert _state(model) == before
    old, _ = _run(model.eval(), (method,), layer, images, torch.tensor([0, 1]), fast=False)
    assert torch.equal(batch.cams[method], old.cams[method])


def test_own_capture_with_aug_smooth_matches_the_old_path() -> None:
    model = _resnet()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    old, old_forwards = _run(model, ("fullgrad",), "layer3", images, None, False, aug_smooth=True)
    new, new_forwards = _run(model, ("fullgrad",), "layer3", images, None, True, aug_smooth=True)
    assert (old_forwards, new_forwards) == (4, 2)  # the batch and its 5 augmentations (batched)
    _assert_same(old, new, "fullgrad")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["label", "predicted"])
def test_legrad_alone_through_the_runner_with_every_extra(
    tmp_path: Path, demo_inputs: Path, target: str
) -> None:
    """``legrad`` alone (the own capture) through ``audit()`` with interventions, faithfulness
    and the sanity check on: the same per-sample rows for ``legrad`` as ``legrad + gradcam``
    (shared capture), and every extra still produces its numbers."""
    import json

    import pyarrow.parquet as pq

    import auditor
    from auditor.config import AuditSettings
    from auditor.data import open_dataset

    timm = pytest.importorskip("timm")
    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    rows = {}
    for methods in (("legrad",), ("legrad", "gradcam")):
        torch.manual_seed(0)
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=64,
            depth=2,
            num_classes=len(dataset.classes),
        )
        settings = AuditSettings(
            methods=methods,
            target=target,
            limit=6,
            faithfulness_samples=2,
            sanity_check=True,
            clusters=False,
            interventions=True,
            bootstrap=20,
        )
        out = tmp_path / "-".join(methods)
        auditor.audit(model, dataset, out, settings=settings, render=False)
        table = pq.read_table(out / "samples.parquet").to_pandas()
        table = table[table["method"] == "legrad"].sort_values("id").reset_index(drop=True)
        rows[methods] = table
        summary = json.loads((out / "summary.json").read_text())
        assert summary["dataset"]["n_evaluated"] == 6
        assert summary.get("sanity"), summary.keys()
    alone, mixed = rows[("legrad",)], rows[("legrad", "gradcam")]
    assert len(alone) == 6 and (alone["cam_status"] == "ok").all()
    assert list(alone.columns) == list(mixed.columns)
    for column in alone.columns:
        a, b = alone[column], mixed[column]
        if a.dtype.kind == "f":
            assert np.allclose(a, b, atol=1e-5, equal_nan=True), column
        elif column == "top_probs":  # per-sample lists of float probabilities
            pa_, pb_ = np.stack(a.tolist()), np.stack(b.tolist())
            assert np.allclose(pa_, pb_, atol=1e-5, equal_nan=True), column
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), column
