"""Background interventions (Xiao et al. 2021) on hand-checked tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.metrics.interventions import (
    derangement,
    masked_gaussian_blur,
    mixed_random,
    only_background,
    only_foreground,
)

IMG = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
MASK = torch.zeros(1, 4, 4, dtype=torch.bool)
MASK[0, 1:3, 1:3] = True  # centre 2x2: values 5, 6, 9, 10


def test_only_foreground_mean_hand_example() -> None:
    out = only_foreground(IMG, MASK)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1:3, 1:3] = torch.tensor([[5.0, 6.0], [9.0, 10.0]])
    assert torch.equal(out, expected)
    assert IMG[0, 0, 0, 0] == 0 and IMG[0, 0, 3, 3] == 15  # input untouched


def test_only_background_mean_hand_example() -> None:
    out = only_background(IMG, MASK)
    expected = IMG.clone()
    expected[0, 0, 1:3, 1:3] = 0.0
    assert torch.equal(out, expected)


def test_black_fill_uses_fill_value_per_channel() -> None:
    img = torch.ones(1, 3, 4, 4)
    fv = torch.tensor([-1.0, -2.0, -3.0])
    out = only_foreground(img, MASK, "black", fill_value=fv)
    for c in range(3):
        assert (out[0, c][~MASK[0]] == fv[c]).all()
        assert (out[0, c][MASK[0]] == 1.0).all()
    out = only_background(img, MASK, "black", fill_value=fv)
    for c in range(3):
        assert (out[0, c][MASK[0]] == fv[c]).all()
        assert (out[0, c][~MASK[0]] == 1.0).all()


def test_blur_does_not_leak_the_object() -> None:
    # background 5 everywhere, object 100: any leakage of the object into the fill shows up
    img = torch.full((1, 1, 8, 8), 5.0)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:6] = True
    img[0, 0][mask[0]] = 100.0
    fg = only_foreground(img, mask, "blur", blur_sigma=2.0)
    torch.testing.assert_close(fg, img)  # blurred constant background == background
    bg = only_background(img, mask, "blur", blur_sigma=2.0)
    torch.testing.assert_close(bg, torch.full_like(img, 5.0))  # in-painted from background


def test_blur_is_a_weighted_average_of_the_source() -> None:
    img = torch.zeros(1, 1, 1, 5)
    img[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    src = torch.tensor([[[True, False, False, False, True]]])
    out = masked_gaussian_blur(img, src, sigma=100.0)  # ~flat kernel: mean of {1, 5}
    torch.testing.assert_close(out[0, 0, 0, 2], torch.tensor(3.0), atol=1e-3, rtol=0)
    # no source at all -> mean colour (0)
    none = masked_gaussian_blur(img, torch.zeros_like(src), sigma=1.0)
    assert torch.equal(none, torch.zeros_like(img))


def test_all_true_and_all_false_masks() -> None:
    img = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    all_t = torch.ones(2, 5, 5, dtype=torch.bool)
    all_f = torch.zeros(2, 5, 5, dtype=torch.bool)
    assert torch.equal(only_foreground(img, all_t), img)
    assert torch.equal(only_foreground(img, all_f), torch.zeros_like(img))
    assert torch.equal(only_background(img, all_f), img)
    assert torch.equal(only_background(img, all_t), torch.zeros_like(img))
    assert torch.equal(only_background(img, all_t, "blur"), torch.zeros_like(img))
    assert torch.equal(only_foreground(img, all_t, "blur"), img)


def test_only_background_dilate() -> None:
    img = torch.ones(1, 1, 5, 5)
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    out = only_background(img, mask, dilate=1)
    assert (out == 0).sum().item() == 5  # the centre and its 4 neighbours (disk of radius 1)
    assert out[0, 0, 1, 1] == 1.0


def test_mixed_random_hand_example() -> None:
    # image i is constant i + 1; masks: 0 -> top-left pixel, 1 -> bottom row, 2 -> empty
    b = 3
    images = (torch.arange(b, dtype=torch.float32) + 1).view(b, 1, 1, 1).expand(b, 2, 3, 3)
    images = images.clone()
    masks = torch.zeros(b, 3, 3, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 2, :] = True
    g = torch.Generator().manual_seed(0)
    mixed, perm = mixed_random(images, masks, g)
    assert perm.dtype == torch.long and sorted(perm.tolist()) == [0, 1, 2]
    for i in range(b):
        j = int(perm[i])
        assert j != i
        expected = torch.full((2, 3, 3), float(j + 1))
        expected[:, masks[j]] = 0.0  # the background image's own object is filled first
        expected[:, masks[i]] = float(i + 1)  # then our object is pasted
        assert torch.equal(mixed[i], expected), (i, j)


def test_mixed_random_deterministic_and_deranged() -> None:
    images = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    masks = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5
    a, pa = mixed_random(images, masks, torch.Generator().manual_seed(7))
    b, pb = mixed_random(images, masks, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    perms = set()
    for seed in range(30):
        _, p = mixed_random(images, masks, torch.Generator().manual_seed(seed))
        assert not (p == torch.arange(6)).any()
        perms.add(tuple(p.tolist()))
    assert len(perms) > 5  # it is random, not a fixed shift


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_derangement(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    for _ in range(20):
        p = derangement(n, g)
        assert sorted(p.tolist()) == list(range(n))
        assert not (p == torch.arange(n)).any()
    assert derangement(2, g).tolist() == [1, 0]


def test_mixed_random_single_image() -> None:
    images = torch.randn(1, 3, 4, 4)
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    mixed, perm = mixed_random(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(mixed, images) and mixed is not images
    assert perm.tolist() == [-1]


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"`images` must have shape \[B, C, H, W\], got \(4, 4\)"):
        only_foreground(torch.zeros(4, 4), MASK)
    with pytest.raises(TypeError, match="`masks` must have dtype torch.bool"):
        only_foreground(IMG, MASK.float())
    with pytest.raises(ValueError, match=r"`masks` must have shape .* got \(1, 3, 3\)"):
        only_background(IMG, torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="`fill` must be one of"):
        only_background(IMG, MASK, "inpaint")  # "noise" is a fill since issue 22
    with pytest.raises(ValueError, match="`fill_value`"):
        only_background(IMG, MASK, "black")
    with pytest.raises(ValueError, match=r"`fill_value` must have shape \[1\]"):
        only_background(IMG, MASK, "black", fill_value=torch.zeros(3))
    with pytest.raises(ValueError, match="`fill_value` is only used"):
        only_foreground(IMG, MASK, "mean", fill_value=torch.zeros(1))
    with pytest.raises(ValueError, match="`blur_sigma`"):
        only_foreground(IMG, MASK, "blur", blur_sigma=0.0)
    with pytest.raises(TypeError, match="`generator`"):
        mixed_random(IMG, MASK, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`n` must be an int >= 2"):
        derangement(1, torch.Generator())


class _DropoutHead(torch.nn.Module):
    """The demo network with a dropout before its head: train mode would randomise forwards."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.features = net.features
        self.pool = net.pool
        self.drop = torch.nn.Dropout(0.5)
        self.fc = net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(self.features(x)), 1)))


@pytest.mark.slow
def test_audit_runs_every_forward_in_eval_mode_and_restores_flags(tmp_path, demo_inputs) -> None:
    import pyarrow.parquet as pq

    import auditor
    from auditor.config import AuditSettings
    from auditor.data import open_dataset
    from auditor.models import load_model

    cfg = auditor.load_config(demo_inputs)
    dataset = open_dataset(cfg.data)
    net = load_model(cfg.model, num_classes=len(dataset.classes)).module
    settings = AuditSettings(
        methods=("gradcam",),
        limit=24,
        faithfulness_samples=0,
        sanity_check=False,
        clusters=False,
        bootstrap=100,
    )
    tables = {}
    for mode in ("eval", "train"):
        model = _DropoutHead(net)
        model.train(mode == "train")
        model.features[0].train(False)  # mixed flags must come back as they were
        before = {name: m.training for name, m in model.named_modules()}
        auditor.audit(model, dataset, tmp_path / mode, settings=settings, render=False)
        assert {name: m.training for name, m in model.named_modules()} == before
        tables[mode] = pq.read_table(tmp_path / mode / "samples.parquet").to_pydict()
    cols = [c for c in tables["eval"] if c.startswith(("only_", "mixed_"))]
    assert cols, "the interventions ran"
    for col in [*cols, "confidence"]:
        a = np.asarray(tables["train"][col], dtype=float)
        b = np.asarray(tables["eval"][col], dtype=float)
        assert np.array_equal(a, b, equal_nan=True), col
