"""Multi-label (sigmoid) runs: the randomisation sanity check and the alternative fills run
(issue 26; both were "not run" for sigmoid heads before).

* the collapse tests of :mod:`auditor.analysis.multilabel_fills` by hand: a fill that moves
  every label at once collapses, one label that needs its context does not;
* the fill choice replaces a collapsed outcome by the first alternative that does not
  collapse, and removes it when every fill collapses;
* end to end on the tiny multi-label world: sanity.json ran on the sigmoid head (the gradient
  map changes when the head is randomised), the alternative fills' outcomes in
  samples.parquet equal a recomputation by hand, summary.json records the multi-label test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import multilabel_fixtures as mf
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from auditor.analysis.multilabel_fills import choose_label_fills, label_fill_collapse
from auditor.cli import main

CHANCE = (0.1, 0.1, 0.1)


def _pairs(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(3), n)
    return labels, np.ones(3 * n)


def test_only_bg_collapses_when_every_label_fires_on_background() -> None:
    labels, unedited = _pairs()
    every = np.ones(36)  # every label still present without its object
    collapsed, reason = label_fill_collapse("only_bg", labels, every, unedited, CHANCE)
    assert collapsed and "every one of the 3" in reason
    one = np.where(labels == 1, 1.0, 0.0)  # only label 1 fires: a finding, not a collapse
    assert label_fill_collapse("only_bg", labels, one, unedited, CHANCE) == (False, "no collapse")


def test_only_fg_collapses_when_every_label_goes_absent() -> None:
    labels, unedited = _pairs()
    none = np.zeros(36)
    collapsed, _ = label_fill_collapse("only_fg", labels, none, unedited, CHANCE)
    assert collapsed
    one_lost = np.where(labels == 2, 0.0, 1.0)  # one label needs its context: no collapse
    assert not label_fill_collapse("only_fg", labels, one_lost, unedited, CHANCE)[0]
    # labels that were never detected unedited cannot collapse
    assert not label_fill_collapse("only_fg", labels, none, np.zeros(36), CHANCE)[0]
    # unknown chance or too few images: untested
    few = label_fill_collapse("only_fg", labels[:6], none[:6], unedited[:6], CHANCE)
    assert few == (False, "too few labels with edited images to test")


def _table(only_fg: np.ndarray, blur: np.ndarray, noise: np.ndarray) -> pa.Table:
    labels, _ = _pairs()
    n = len(labels)
    return pa.table({
        "method": ["gradcam"] * n, "label": labels, "correct": np.ones(n),
        "only_bg_correct": np.zeros(n), "only_bg_confidence": np.full(n, 0.1),
        "only_fg_correct": only_fg, "only_fg_confidence": np.full(n, 0.2),
        "only_fg_pred_blur": blur, "only_fg_pred_noise": noise,
        "only_bg_pred_blur": np.full(n, 3), "only_bg_pred_noise": np.full(n, 3),
    })  # fmt: skip


def test_choice_uses_the_first_alternative_that_does_not_collapse() -> None:
    labels, _ = _pairs()
    absent = np.full(36, 3)  # L = 3: absent
    table = _table(np.zeros(36), blur=absent, noise=labels)  # blur collapses too, noise not
    out, rec = choose_label_fills(table, primary="gradcam", configured="mean", chance=CHANCE)
    assert rec is not None
    assert rec["only_fg"]["collapsed"] and rec["only_fg"]["tried"] == ["blur", "noise"]
    assert rec["only_fg"]["used"] == "noise" and rec["only_fg"]["test"] == "multi-label"
    assert out.column("only_fg_correct").to_pylist() == [1.0] * 36
    assert np.isnan(out.column("only_fg_confidence").to_numpy()).all()
    assert not rec["only_bg"]["collapsed"]
    assert out.column("only_bg_confidence").to_pylist() == [0.1] * 36  # untouched
    # every fill collapses: the outcome is removed, nothing rests on it
    out2, rec2 = choose_label_fills(_table(np.zeros(36), absent, absent), primary="gradcam",
                                    configured="mean", chance=CHANCE)  # fmt: skip
    assert rec2 is not None and rec2["only_fg"]["used"] is None
    assert np.isnan(out2.column("only_fg_correct").to_numpy()).all()


def test_sanity_targets_are_the_first_carried_label_or_the_top_score() -> None:
    from auditor.audit.runner import _sanity_targets

    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    sets = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    images = torch.tensor([[0.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    got = _sanity_targets(model, SimpleNamespace(label_sets=sets), images)
    assert got.tolist() == [1, 2, 0]
    plain = SimpleNamespace(label_sets=None, labels=torch.tensor([2, 0, 1]))
    assert _sanity_targets(model, plain, images).tolist() == [2, 0, 1]


@pytest.mark.slow
def test_sigmoid_run_runs_sanity_and_alternative_fills(tmp_path: Path) -> None:
    model = mf.train(n=256, steps=150)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    manifest = mf.write_dataset(tmp_path / "data", 32, seed=2)  # one batch of 32
    shutil.copy(mf.__file__, tmp_path / "multilabel_fixtures.py")
    # head-only: the point is that Eigen-CAM ignores the head (the default cascade also
    # re-draws the target block, which Eigen-CAM does read)
    cfg = mf.write_config(
        tmp_path, manifest, tmp_path / "w.pt", "sanity_samples = 16\nsanity_randomise = \"head\""
    )
    text = cfg.read_text().replace("sanity_check = false", "sanity_check = true")
    cfg.write_text(text.replace('methods = ["gradcam"]', 'methods = ["gradcam", "eigencam"]'))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf", "--quiet"]) == 0
    sanity = json.loads((out / "sanity.json").read_text())
    assert sanity["_status"]["run"] is True, sanity
    assert "head" in sanity["_status"]["randomised"]
    g = sanity["gradcam"]
    assert g["n"] >= 1 and g["similarity"] < g["threshold"] and g["trustworthy"]
    # Eigen-CAM ignores the head: its maps do not change, the check must say so
    e = sanity["eigencam"]
    assert e["similarity"] > 0.99 and not e["trustworthy"]
    summary = json.loads((out / "summary.json").read_text())
    fills = summary["intervention_fills"]
    assert fills["only_bg"]["test"] == fills["only_fg"]["test"] == "multi-label"
    assert fills["only_fg"]["reason"] != "not run"
    rows = pq.read_table(out / "samples.parquet").to_pandas()
    pos = rows[(rows["explained"] == "positive") & (rows["mask_area"] > 0)]
    for fill in ("blur", "noise", "image_mean"):
        for key in ("only_bg", "only_fg"):
            v = pos[f"{key}_pred_{fill}"]
            assert (v >= 0).all() and set(v) <= set(range(4)), (fill, key)
            assert ((v == pos["label"]) | (v == 3)).all()
    assert (rows[rows["explained"] != "positive"]["only_bg_pred_blur"] == -1).all()
    # the stored blur outcome of one pair, recomputed by hand
    from PIL import Image

    from auditor.metrics.interventions import only_background

    row = pos.iloc[0]
    img = np.array(Image.open(tmp_path / "data" / "images" / f"{int(row.image_index):04d}.png"))
    x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    name = mf.LABELS[int(row.label)]
    mask_png = tmp_path / "data" / "masks" / f"{int(row.image_index):04d}_{name}.png"
    m = np.asarray(Image.open(mask_png))
    mask = torch.from_numpy(m > 127)[None]
    seed = 0  # [audit] seed 0, batch 0: seed * 1_000_003 + batch
    with torch.no_grad():
        p = torch.sigmoid(model(only_background(x[None], mask, fill="blur", seed=seed)))
    want = int(row.label) if float(p[0, int(row.label)]) >= 0.5 else 3
    assert int(row["only_bg_pred_blur"]) == want
