"""Score-CAM's inference copy: exact BatchNorm folding, validation, fallbacks, sharing masks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from auditor.cam import CamEngine, upsample_cams
from auditor.cam.engine import AUTO_SCORE_BATCH, _logits_of
from auditor.cam.replica import build_replica, fold_batchnorm


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (fresh BNs are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


class ConvBn(nn.Module):
    def __init__(self, bias: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4, affine=affine)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_matches_hand_formula(bias: bool, affine: bool) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(ConvBn(bias, affine))
    gm = fx.symbolic_trace(copy.deepcopy(model))
    assert fold_batchnorm(gm) == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    # by hand: W' = W * s, b' = (b - mu) * s + beta, s = gamma / sqrt(var + eps)
    bn, conv = model.bn, model.conv
    s = (bn.weight if affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    b = conv.bias if bias else torch.zeros(4)
    beta = bn.bias if affine else torch.zeros(4)
    torch.testing.assert_close(gm.conv.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(gm.conv.bias, (b - bn.running_mean) * s + beta)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)
    assert model.bn.running_var.min() >= 0.5  # the original is untouched


class SharedConv(nn.Module):
    """One conv called twice; a conv output used twice (residual): neither may be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn3 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn1(self.conv(x))
        b = self.bn2(self.conv(a))
        c = self.conv2(b)
        return (self.bn3(c) + c).mean((2, 3))


def test_fold_batchnorm_skips_unsafe_pairs() -> None:
    model = _randomise_bn(SharedConv())
    gm = fx.symbolic_trace(copy.deepcopy(model))
    assert fold_batchnorm(gm) == 0
    train = ConvBn().train()
    gm = fx.symbolic_trace(copy.deepcopy(train))
    assert fold_batchnorm(gm) == 0  # batch statistics: not an affine map


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(torchvision.models.resnet18(num_classes=5))


def _param_state(model: nn.Module) -> list[tuple[str, int, torch.Tensor, bool]]:
    return [
        (n, p.data_ptr(), p.detach().clone(), p.is_contiguous())
        for n, p in model.state_dict(keep_vars=True).items()
    ]


def test_replica_matches_model_and_leaves_it_untouched() -> None:
    model = _resnet()
    x = torch.randn(3, 3, 64, 64)
    before = _param_state(model)
    # a user hook that changes the output must be in the copy too, or validation would fail
    model.fc.register_forward_hook(lambda m, i, o: o * 2 + 1)
    replica, reason = build_replica(model, x.shape, _logits_of)
    assert replica is not None, reason
    assert replica.channels_last and replica.traced and replica.folded == 20
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(replica(x), expected, atol=1e-4, rtol=1e-4)
    after = _param_state(model)
    assert [(n, p, c) for n, p, _, c in before] == [(n, p, c) for n, p, _, c in after]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(before, after))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(p.requires_grad is False for p in model.parameters())
    assert len(model.fc._forward_hooks) == 1


class ViewNet(nn.Module):
    """Uses .view() on a conv output: fails on channels_last tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_replica_falls_back_to_contiguous_for_view_models() -> None:
    torch.manual_seed(0)
    model = ViewNet().eval()
    x = torch.randn(2, 3, 16, 16)
    replica, reason = build_replica(model, x.shape, _logits_of)
    assert replica is not None and not replica.channels_last
    assert "channels_last: RuntimeError" in reason
    with torch.inference_mode():
        torch.testing.assert_close(replica(x), model(x))


class BranchyNet(nn.Module):
    """Data-dependent control flow: not fx-traceable, still copyable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        if h.mean() > 100:  # never true, but fx cannot know
            h = h * 0
        return h.mean((2, 3))


def test_untraceable_model_uses_plain_copy() -> None:
    model = _randomise_bn(BranchyNet())
    x = torch.randn(2, 3, 8, 8)
    replica, reason = build_replica(model, x.shape, _logits_of)
    assert replica is not None and not replica.traced and replica.folded == 0
    assert "not fx-traceable" in reason


class DriftingNet(nn.Module):
    """Output depends on a call counter shared by all copies: the copy cannot agree."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        DriftingNet.calls += 1
        return self.fc(x.mean((2, 3))) + float(DriftingNet.calls)


class NoCopy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))

    def __deepcopy__(self, memo: dict[int, Any]) -> NoCopy:
        raise RuntimeError("not copyable")


def test_disagreeing_or_uncopyable_models_are_rejected() -> None:
    x = torch.randn(2, 3, 8, 8)
    replica, reason = build_replica(DriftingNet().eval(), x.shape, _logits_of)
    assert replica is None and "max |difference|" in reason
    replica, reason = build_replica(NoCopy().eval(), x.shape, _logits_of)
    assert replica is None and "cannot be deep-copied" in reason


def _scorecam(model: nn.Module, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> tuple[Any, ...]:
    with CamEngine(model, "layer4", ("scorecam",), **kw) as engine:
        maps = engine.run(x, t).cams["scorecam"]
    return maps, engine


class TupleOut(nn.Module):
    """A model whose forward returns ``(logits, probabilities)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits.softmax(1)


def test_scorecam_same_maps_with_and_without_copy_also_for_tuple_outputs() -> None:
    """The copy's maps equal the eager model's; a model returning a tuple (same weights) gives
    the same maps through its copy and eagerly (three 512-forward runs: the plain model's
    copy, the tuple model's copy, the tuple model eagerly)."""
    model = _resnet()
    x = torch.randn(1, 3, 64, 64)  # one image: 512 masked forwards per run
    t = torch.tensor([3])
    fast, engine = _scorecam(model, x, t, score_batch_size=64)
    assert engine.replica_status.startswith("used: fx-traced copy, 20 BatchNorm folded")
    assert float(fast.abs().max()) > 0
    tup = TupleOut(model).eval()
    with CamEngine(tup, "net.layer4", ("scorecam",), score_batch_size=64) as tup_fast:
        a = tup_fast.run(x, t).cams["scorecam"]
    with CamEngine(
        tup, "net.layer4", ("scorecam",), score_batch_size=64, inference_copy=False
    ) as slow:
        b = slow.run(x, t).cams["scorecam"]
    assert tup_fast.replica_status.startswith("used: fx-traced copy, 20 BatchNorm folded")
    assert slow.replica_status == ""
    assert engine.masked_forwards == tup_fast.masked_forwards == slow.masked_forwards
    torch.testing.assert_close(fast, b, atol=1e-5, rtol=1e-4)  # copy == eager
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # tuple outputs, both ways


def test_copy_reused_across_with_blocks_until_the_model_changes() -> None:
    model = _resnet()
    x = torch.randn(1, 3, 32, 32)
    engine = CamEngine(model, "layer4", ("scorecam",), score_batch_size=128)
    with engine:
        engine.run(x, torch.tensor([0]))
    first = engine._replica
    assert first is not None
    with engine:
        engine.run(x, torch.tensor([0]))
    assert engine._replica is first
    with torch.no_grad():
        model.fc.weight.mul_(2.0)  # in place: the copy is stale
    with engine:
        maps = engine.run(x, torch.tensor([0])).cams["scorecam"]
    assert engine._replica is not first and engine._replica is not None
    expected, _ = _scorecam(model, x, torch.tensor([0]), inference_copy=False)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)


class DupNet(nn.Module):
    """``layer4`` outputs channels (a, 2a, b, b): channels 0/1 and 2/3 normalise alike."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.layer4 = nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        a, b = h[:, :1], h[:, 1:]
        z = self.layer4(torch.cat([a, 2 * a, b, b], 1))
        return self.fc(z.mean((2, 3)))


def _brute_force_scorecam(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """The paper's definition, one forward per channel, no sharing."""
    acts: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = acts[0][0]
    scores = []
    for k in range(a.shape[0]):
        up = upsample_cams(a[k][None], tuple(x.shape[-2:]))[0]
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
        with torch.no_grad():
            scores.append(model(x * mask).softmax(1)[0, target])
    w = torch.softmax(torch.stack(scores), 0)
    return F.relu((w[:, None, None] * a).sum(0))


def test_duplicate_masks_share_one_forward_and_match_the_definition() -> None:
    torch.manual_seed(3)
    model = DupNet().eval()
    x = torch.rand(1, 3, 16, 16)
    for copy_ in (True, False):
        maps, engine = _scorecam(model, x, torch.tensor([2]), inference_copy=copy_)
        assert engine.masked_forwards == 2  # 4 channels, 2 distinct masks
        expected = _brute_force_scorecam(model, x, 2)
        torch.testing.assert_close(maps[0], expected, atol=1e-5, rtol=1e-4)


def test_constant_channels_share_the_zero_input_forward() -> None:
    torch.manual_seed(3)
    model = DupNet().eval()
    with torch.no_grad():
        model.conv.weight[1].zero_()
        model.conv.bias[1] = -1.0  # channel b = relu(-1) = 0 everywhere: constant
    x = torch.rand(1, 3, 16, 16)
    maps, engine = _scorecam(model, x, torch.tensor([0]))
    assert engine.masked_forwards == 2  # one shared mask for a/2a+1, one zero-input forward
    torch.testing.assert_close(maps[0], _brute_force_scorecam(model, x, 0), atol=1e-5, rtol=1e-4)


def test_score_batch_size_auto_and_validation() -> None:
    model = DupNet().eval()
    assert AUTO_SCORE_BATCH["cpu"] == 16
    assert CamEngine(model, "layer4", ("scorecam",)).score_batch_size is None
    assert CamEngine(model, "layer4", ("scorecam",))._chunk_size(torch.device("cpu")) == 16
    assert CamEngine(model, "layer4", ("scorecam",))._chunk_size(torch.device("meta")) == 128
    assert CamEngine(model, "layer4", score_batch_size=5)._chunk_size(torch.device("cpu")) == 5
    for bad in (0, -1, 1.5, True, "16"):
        with pytest.raises(ValueError, match="score_batch_size"):
            CamEngine(model, "layer4", ("scorecam",), score_batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inference_copy"):
        CamEngine(model, "layer4", ("scorecam",), inference_copy="yes")  # type: ignore[arg-type]


def test_fixed_shapes_get_a_validated_onednn_trace() -> None:
    model = _resnet()
    x = torch.randn(4, 3, 32, 32)
    replica, reason = build_replica(model, (4, 3, 32, 32), _logits_of, script=True)
    assert replica is not None and replica.script, reason
    flag = torch.jit.onednn_fusion_enabled()
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(replica(x), expected, atol=1e-4, rtol=1e-4)
        assert not replica.scripts  # the eager path never traces
        torch.testing.assert_close(replica.fixed(x), expected, atol=1e-4, rtol=1e-4)
        assert isinstance(replica.scripts[(4, 3, 32, 32)], torch.jit.ScriptModule)
        first = replica.fixed(x)
        # the fast tier really is oneDNN Graph fusion, not plain TorchScript
        graph = str(torch.jit.last_executed_optimized_graph())
        assert "oneDNNFusionGroup" in graph and "aten::conv2d" not in graph
        # the traced result does not depend on what ran before: a fresh copy agrees bit for bit
        fresh, _ = build_replica(model, (2, 3, 32, 32), _logits_of, script=True)
        assert fresh is not None
        assert torch.equal(fresh.fixed(x), first)
        assert torch.equal(replica.fixed(x), first)
    assert torch.jit.onednn_fusion_enabled() == flag  # the global flag is restored
    assert "traced: batches of 4" in replica.description


class Output:
    """A model output object with ``.logits`` (as Hugging Face models return)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class ObjectOut(nn.Module):
    """The engine reads ``.logits``; TorchScript cannot trace an object output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(self.conv(x).mean((2, 3)))


def test_untraceable_shapes_stay_eager_with_a_note() -> None:
    torch.manual_seed(0)
    model = ObjectOut().eval()
    x = torch.randn(2, 3, 8, 8)
    replica, reason = build_replica(model, x.shape, _logits_of, script=True)
    assert replica is not None, reason
    with torch.inference_mode():
        for _ in range(2):
            torch.testing.assert_close(_logits_of(replica.fixed(x)), model(x).logits)
    assert replica.scripts == {(2, 3, 8, 8): None}
    assert "TorchScript trace failed" in replica.description


def test_scorecam_maps_do_not_depend_on_earlier_batches() -> None:
    """What --resume relies on: a batch gives the same bits whatever the engine computed before.
    (layer1: 64 channels, so 64 masked forwards per run in 4 traced batches of 16.)"""
    model = _resnet()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)  # layer1: 16x16
    t = torch.tensor([1])
    engine = CamEngine(model, "layer1", ("scorecam",), score_batch_size=16)
    with engine:
        engine.run(a, t)
        after_a = engine.run(b, t).cams["scorecam"]
    with CamEngine(model, "layer1", ("scorecam",), score_batch_size=16) as fresh:
        alone = fresh.run(b, t).cams["scorecam"]
    assert "traced: batches of 16" in fresh.replica_status
    assert torch.equal(after_a, alone)


def test_forward_logits_outside_the_with_block() -> None:
    model = _resnet()
    engine = CamEngine(model, "layer4", ("gradcam",))
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(engine.forward_logits(x), expected, atol=1e-4, rtol=1e-4)
    assert engine.replica_status.startswith("used:")
    with engine:  # inside: the engine's capture hook is on the model, not in the copy's output
        torch.testing.assert_close(engine.forward_logits(x), expected, atol=1e-4, rtol=1e-4)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


class SideConv(nn.Module):
    """Reads the conv's weight outside the conv (a get_attr use): folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).mean((2, 3))
        return y + F.conv2d(x, self.conv.weight, padding=1).mean((2, 3))


def test_fold_that_changes_results_falls_back_to_the_unfolded_copy() -> None:
    model = _randomise_bn(SideConv())
    replica, reason = build_replica(model, (2, 3, 8, 8), _logits_of)
    assert replica is not None and replica.folded == 0, reason
    assert "folded channels_last: max |difference|" in reason
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(replica(x), model(x), atol=1e-5, rtol=1e-5)


def test_hooks_on_inlined_modules_keep_the_copy_untraced() -> None:
    model = _resnet()
    model.layer4.register_forward_hook(lambda m, i, o: o * 0.5)  # fx would inline layer4
    model.register_forward_hook(lambda m, i, o: o + 3.0)  # and the root
    replica, reason = build_replica(model, (2, 3, 64, 64), _logits_of)
    assert replica is not None and not replica.traced, reason
    assert "hooks on <root>, layer4" in reason
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(replica(x), model(x), atol=1e-4, rtol=1e-4)


def test_autocast_copy_of_a_tuple_output_model() -> None:
    """(Its maps with and without the copy: the test above.)"""
    model = TupleOut(_resnet()).eval()
    x = torch.randn(1, 3, 32, 32)
    with CamEngine(model, "net.layer4", ("scorecam",), autocast=torch.bfloat16) as engine:
        # 32 px: layer4 is 1x1, every mask is the same constant, so one masked forward (bf16
        # Score-CAM's 512 forwards are slow on CPU); the autocast copy is what is checked
        engine.run(x, torch.tensor([0]))
    assert engine.replica_status.startswith("used:")
    assert "TorchScript" not in engine.replica_status  # no traced tier under autocast


def test_capture_forward_channels_last_and_fallback_for_view_models() -> None:
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([1, 2])
    maps = {}
    for layout in (True, False):
        with CamEngine(model, "layer4", ("gradcam", "layercam"), channels_last=layout) as e:
            out = e.run(x, t)
        maps[layout] = out
        assert e.layout_note == ""
    for m in ("gradcam", "layercam"):
        torch.testing.assert_close(maps[True].cams[m], maps[False].cams[m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps[True].logits, maps[False].logits, atol=1e-5, rtol=1e-4)

    torch.manual_seed(0)
    view_model = ViewNet().eval()
    xv = torch.randn(2, 3, 16, 16)
    with CamEngine(view_model, "conv", ("gradcam",)) as engine:  # auto: channels_last on CPU
        first = engine.run(xv, torch.tensor([0, 1])).cams["gradcam"]
        assert "channels_last input rejected" in engine.layout_note
        assert engine.channels_last is False  # decided once, for every later batch
        again = engine.run(xv, torch.tensor([0, 1])).cams["gradcam"]
    with CamEngine(view_model, "conv", ("gradcam",), channels_last=False) as plain:
        expected = plain.run(xv, torch.tensor([0, 1])).cams["gradcam"]
    assert torch.equal(first, expected) and torch.equal(again, expected)
    with pytest.raises(TypeError, match="channels_last"):
        CamEngine(view_model, "conv", channels_last="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("layer", ["layer4", "layer3.1.conv2", "layer3.1.bn2"])
def test_capture_copy_keeps_target_layers_and_matches_the_model(layer: str) -> None:
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([1, 2])
    methods = ("gradcam", "gradcam++", "layercam", "eigencam")
    with CamEngine(model, layer, methods, capture_copy=True) as fast:
        a = fast.run(x, t)
    with CamEngine(model, layer, methods, inference_copy=False, channels_last=False) as slow:
        b = slow.run(x, t)
    assert fast.capture_status.startswith("used: copy,"), fast.capture_status
    # a target conv or BatchNorm is never folded into or away: its output stays the layer's
    folded = int(fast.capture_status.split()[2])
    assert folded == (15 if layer == "layer4" else 19)
    assert slow.capture_status == ""
    for m in methods:
        torch.testing.assert_close(a.cams[m], b.cams[m], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20  # model untouched
