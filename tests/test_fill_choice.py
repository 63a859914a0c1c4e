"""Interventions that test the model, not the fill (issue 22): alternative fills.

A hand-built model reads the object's colour (red square: class a, green: b, blue: c) and also
answers "a" for any image with many pixels that are exactly the dataset mean (0 in
normalised space), as a model would for an out-of-distribution constant. With the default
``mean`` fill every edited image then collapses to "a"; the audit must notice, use the first
alternative fill that does not collapse (blur), say so, and raise no class finding from the
collapsed fill. Unit tests check the choice on hand-made rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from auditor.analysis.fill_choice import choose_fills, fill_sentences
from auditor.metrics.interventions import only_background, only_foreground

MODEL = '''
import torch
from torch import nn


class FillNet(nn.Module):
    """logit_c = mean relu(x_c - mean of the other channels), plus 50 x the share of exactly
    zero pixels on class a."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(-0.5)
            for c in range(3):
                self.conv.weight[c, c] = 1.0
        self.act = nn.ReLU()

    def forward(self, x):
        logits = self.act(self.conv(x)).mean((2, 3))
        zero = (x.abs().sum(1) < 1e-6).float().mean((1, 2))
        bonus = torch.zeros_like(logits)
        bonus[:, 0] = 50.0 * zero
        return logits + bonus


def build(num_classes=3):
    return FillNet(num_classes)
'''


def _write_data(root: Path, n: int = 30) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["image,label,mask"]
    (root / "img").mkdir(parents=True)
    for i in range(n):
        label = "abc"[i % 3]
        img = rng.integers(90, 166, size=(32, 32, 3)).astype(np.uint8)  # grey-ish noise
        mask = np.zeros((32, 32), dtype=np.uint8)
        y, x = int(rng.integers(2, 14)), int(rng.integers(2, 14))
        colour = [30, 30, 30]
        colour[i % 3] = 230
        img[y : y + 16, x : x + 16] = colour
        mask[y : y + 16, x : x + 16] = 255
        Image.fromarray(img).save(root / "img" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "img" / f"{i:03d}-m.png")
        rows.append(f"img/{i:03d}.png,{label},img/{i:03d}-m.png")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


CONFIG = """
[model]
factory = "fillnet:build"
target_layer = "act"

[data]
manifest = "manifest.csv"
classes = ["a", "b", "c"]
input_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam"]
batch_size = 30
bootstrap = 100
faithfulness_samples = 0
sanity_check = false
clusters = false
gallery_per_class = 0
intervention_fill = "{fill}"

[gates]
require_interpretable = false

[report]
pdf = false
"""


def _audit(tmp_path: Path, fill: str) -> dict:
    from auditor.cli import main

    root = tmp_path / fill
    _write_data(root)
    (root / "fillnet.py").write_text(MODEL)
    (root / "audit.toml").write_text(CONFIG.format(fill=fill))
    code = main(["run", str(root / "audit.toml"), "--out", str(root / "run"), "--no-pdf",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    return json.loads((root / "run" / "summary.json").read_text())


@pytest.mark.slow
def test_collapsing_mean_fill_is_replaced_by_blur(tmp_path: Path) -> None:
    s = _audit(tmp_path, "mean")
    rec = s["intervention_fills"]
    for key in ("only_bg", "only_fg"):
        assert rec[key]["configured"] == "mean" and rec[key]["collapsed"] is True, rec
        assert rec[key]["used"] == "blur" and rec[key]["tried"] == ["blur"], rec
    # with blur the object alone is recognised again (with the mean fill: every image "a")
    for cls in ("b", "c"):
        assert s["classes"][cls]["interventions"]["only_fg_accuracy"] > 0.9
    # no class finding rests on the collapsed fill; the report says what happened
    kinds = {(f["class"], f["kind"]) for f in s["findings"] if f["severity"] in ("medium", "high")}
    assert not kinds, kinds
    page = (tmp_path / "mean" / "run" / "report.html").read_text()
    assert "collapsed" in page and "&#39;blur&#39; fill" in page


def _rows(bg: list[int], fg: list[int], alt_bg: list[int], alt_fg: list[int]) -> pa.Table:
    n = len(bg)
    labels = [i % 2 for i in range(n)]
    return pa.table({
        "method": ["gradcam"] * n, "label": labels, "pred": labels,
        "only_bg_pred": bg, "only_bg_correct": [float(p == y) for p, y in zip(bg, labels)],
        "only_fg_pred": fg, "only_fg_correct": [float(p == y) for p, y in zip(fg, labels)],
        "only_bg_confidence": [0.9] * n, "only_fg_confidence": [0.9] * n,
        "only_bg_pred_blur": alt_bg, "only_fg_pred_blur": alt_fg,
    })  # fmt: skip


def test_choice_on_hand_made_rows() -> None:
    n = 40
    labels = [i % 2 for i in range(n)]
    # configured: every edited image of both classes read as class 0 (unedited: half are 0)
    collapsed = [0] * n
    good_bg = [(i // 2) % 2 for i in range(n)]  # half of each class's backgrounds each way
    table = _rows(collapsed, collapsed, good_bg, labels)
    out, rec = choose_fills(table, classes=["a", "b"], primary="gradcam", configured="mean")
    assert rec is not None
    assert rec["only_bg"]["used"] == "blur" and rec["only_fg"]["used"] == "blur"
    assert out.column("only_bg_pred").to_pylist() == good_bg
    assert out.column("only_fg_correct").to_pylist() == [1.0] * n
    assert all(np.isnan(out.column("only_bg_confidence").to_numpy()))
    # the alternative collapses too: nothing replaced, the intervention is uninformative
    table = _rows(collapsed, collapsed, [0] * n, [0] * n)
    out, rec = choose_fills(table, classes=["a", "b"], primary="gradcam", configured="mean")
    assert rec is not None and rec["only_bg"]["used"] is None
    assert rec["only_bg"]["tried"] == ["blur"] and rec["only_fg"]["used"] is None
    assert out.column("only_bg_pred").to_pylist() == collapsed
    assert "uninformative" in " ".join(fill_sentences(rec))
    # a configured fill that does not collapse is kept
    table = _rows(good_bg, labels, [0] * n, [0] * n)
    out, rec = choose_fills(table, classes=["a", "b"], primary="gradcam", configured="mean")
    assert rec is not None and not rec["only_bg"]["collapsed"] and rec["only_bg"]["used"] == "mean"
    assert out.equals(table) and fill_sentences(rec) == []


def test_own_statistics_fills_per_channel() -> None:
    img = torch.zeros(1, 2, 4, 4)
    img[0, 0] = torch.arange(16.0).view(4, 4)
    img[0, 1] = 5.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # the object: values 0, 1, 4, 5 in channel 0
    bg = only_background(img, mask, fill="image_mean")
    kept = img[0, 0][~mask[0]]
    assert torch.allclose(bg[0, 0][mask[0]], kept.mean().expand(4))  # the background's mean
    assert torch.allclose(bg[0, 1], torch.full((4, 4), 5.0))  # channel 1 stays 5
    fg = only_foreground(img, mask, fill="noise", seed=3)
    again = only_foreground(img, mask, fill="noise", seed=3)
    assert torch.equal(fg, again) and torch.equal(fg[0][:, mask[0]], img[0][:, mask[0]])
    assert torch.allclose(fg[0, 1][~mask[0]], torch.full((12,), 5.0))  # zero spread: constant
    with pytest.raises(ValueError, match="`fill` must be one of"):
        only_background(img, mask, fill="inpaint")
