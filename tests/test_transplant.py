"""Causal confirmation by transplant (issue 22): the decision (Wilson / Newcombe, by hand), the
region rule (top-mass box, size cap, image borders, outside the object), the candidates, what a
confirmation does to the findings, the typed result's round trip, the config keys.

The end-to-end cases (the shipped tagged / clean subgroup models) run inside the audits of
tests/test_subgroups.py, which already exist: no extra audit is run here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from auditor.analysis.transplant import (
    TransplantRules,
    apply_transplants,
    candidates,
    choose_region,
    decide,
    region_heat,
)
from auditor.config import load_config
from auditor.errors import ConfigError
from auditor.results import (
    AuditResult,
    ClassClusters,
    ClassResult,
    Finding,
    SubgroupDetail,
    TransplantResult,
)

# ------------------------------------------------------------------------------------------
# the decision


def test_decide_newcombe_example_by_hand() -> None:
    # Newcombe (1998), example (b): 9/10 vs 3/10. Wilson 95 %: 9/10 (0.5958, 0.9821),
    # 3/10 (0.1078, 0.6032); L = 0.6 - sqrt((0.9 - 0.5958)^2 + (0.6032 - 0.3)^2) = 0.1705,
    # U = 0.6 + sqrt((0.9821 - 0.9)^2 + (0.3 - 0.1078)^2) = 0.8090 (his table: 0.1705, 0.8090)
    t = decide(9, 3, 10, source="subgroup", region=(0, 0, 4, 4), n_sources=5)
    assert t.status == "confirmed"
    assert t.flip_rate == pytest.approx(0.9) and t.control_rate == pytest.approx(0.3)
    assert t.flip_ci == pytest.approx((0.5958, 0.9821), abs=1e-4)
    assert t.control_ci == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert t.difference == pytest.approx(0.6)
    assert t.difference_ci == pytest.approx((0.1705, 0.8090), abs=1e-4)
    assert (t.n, t.flips, t.control_flips, t.margin) == (10, 9, 3, 0.25)


def test_decide_needs_both_the_interval_and_the_margin() -> None:
    # 3/10 vs 0/10: difference 0.30 >= 0.25 but L = 0.3 - sqrt(0.1922^2 + 0.2775^2) = -0.0376
    t = decide(3, 0, 10)
    assert t.difference == pytest.approx(0.3)
    assert t.difference_ci[0] == pytest.approx(-0.0376, abs=1e-4)
    assert t.status == "not_confirmed"
    # 100/200 vs 60/200: the interval excludes 0 but the difference 0.20 < 0.25
    t = decide(100, 60, 200)
    assert t.difference_ci[0] > 0 and t.difference == pytest.approx(0.2)
    assert t.status == "not_confirmed"
    # exactly at the margin (16/64 vs 0/64 = 0.25) with L > 0: confirmed
    t = decide(16, 0, 64)
    assert t.difference == pytest.approx(0.25) and t.difference_ci[0] > 0
    assert t.status == "confirmed"
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        decide(0, 0, 0)
    with pytest.raises(ValueError, match="successes"):
        decide(11, 0, 10)


# ------------------------------------------------------------------------------------------
# the region


def test_region_top_mass_box() -> None:
    heat = np.zeros((16, 16))
    heat[12:14, 1:4] = 1.0  # 6 equal hot pixels; 50 % of the mass: 3 of them (ties: raster order)
    assert choose_region(heat) == (1, 12, 4, 13)  # (x0, y0, x1, y1), half-open
    heat[12, 1:4] = 2.0  # the top row holds 6 / 9 of the mass
    assert choose_region(heat) == (1, 12, 4, 13)
    assert choose_region(heat, TransplantRules(top_mass=0.9)) == (1, 12, 4, 14)
    # 50 % of the mass: the 2 hottest pixels (0.4 + 0.3 >= 0.5), (y 5, x 5) and (y 5, x 6)
    heat = np.zeros((16, 16))
    heat[5, 5], heat[5, 6], heat[9, 9], heat[9, 10] = 0.4, 0.3, 0.2, 0.1
    assert choose_region(heat) == (5, 5, 7, 6)


def test_region_is_made_of_whole_map_cells_with_a_grid() -> None:
    heat = np.zeros((16, 16))
    heat[0, 0], heat[5, 5] = 1.0, 0.9  # cells (0, 0) and (1, 1) of a 4 x 4 grid
    assert choose_region(heat) == (0, 0, 1, 1)  # pixels: the hottest pixel alone
    assert choose_region(heat, grid=(4, 4)) == (0, 0, 4, 4)  # its whole cell
    heat[5, 6] = 0.2  # cell (1, 1) now holds 1.1 of 2.1: it alone is >= 50 %
    assert choose_region(heat, grid=(4, 4)) == (4, 4, 8, 8)
    # 5 x 5 cells on 16 pixels (nearest: rows 0-3, 4-6, 7-9, 10-12, 13-15)
    heat = np.zeros((16, 16))
    heat[8, 8] = 1.0
    assert choose_region(heat, grid=(5, 5)) == (7, 7, 10, 10)
    with pytest.raises(ValueError, match="`grid` must be"):
        choose_region(heat, grid=(32, 4))


def test_region_cap_is_centred_on_the_peak_and_shifted_inside_the_border() -> None:
    heat = np.zeros((16, 16))
    heat[0, 0], heat[15, 15], heat[0, 15] = 5.0, 4.0, 3.0  # top 50 % (6 of 12): 2 pixels
    # a 16 x 16 box; cap = round(0.375 * 16) = 6 per side, centred on the peak (0, 0):
    # [-3, 3) shifted inside → [0, 6)
    assert choose_region(heat) == (0, 0, 6, 6)
    heat = np.zeros((16, 16))
    heat[15, 14], heat[0, 1], heat[8, 8] = 5.0, 4.0, 3.0
    # peak (y 15, x 14): y [12, 18) → [10, 16); x [11, 17) → [10, 16)
    assert choose_region(heat) == (10, 10, 16, 16)
    # a cap of 0.25 x 16 = 4: y [13, 17) → [12, 16); x [12, 16)
    assert choose_region(heat, TransplantRules(max_side=0.25)) == (12, 12, 16, 16)
    with pytest.raises(ValueError, match="`heat` must be finite"):
        choose_region(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"`heat` must be \[H, W\]"):
        choose_region(np.ones(4))


def test_region_heat_upsamples_and_keeps_the_outside_of_the_object() -> None:
    # two 2 x 2 maps, each normalised to sum 1 then averaged; nearest upsampling to 4 x 4
    maps = [np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 2.0]])]
    heat, why = region_heat(maps, None, (4, 4))
    assert why is None and heat is not None
    assert heat[:2, :2] == pytest.approx(np.full((2, 2), 0.5))
    assert heat[2:, 2:] == pytest.approx(np.full((2, 2), 0.5))
    assert heat[:2, 2:].sum() == 0
    # the object covers the top-left cell in both images: only the bottom-right stays
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    heat, why = region_heat(maps, [mask, mask], (4, 4))
    assert heat is not None and heat[:2, :2].sum() == 0 and heat[2:, 2:].sum() == pytest.approx(2)
    # all the mass on the object: no region outside it
    heat, why = region_heat([maps[0]], [mask], (4, 4))
    assert heat is None and "0.0% of their mass outside the object" in str(why)
    heat, why = region_heat([np.zeros((2, 2)), np.full((2, 2), np.nan)], None, (4, 4))
    assert heat is None and "zero or not finite" in str(why)
    with pytest.raises(ValueError, match="`masks` must be"):
        region_heat(maps, [np.zeros((3, 3), bool)], (4, 4))


# ------------------------------------------------------------------------------------------
# candidates


def _prim(labels: list[int], preds: list[int]) -> pa.Table:
    n = len(labels)
    return pa.table(
        {
            "index": list(range(n)),
            "id": [f"s{i}" for i in range(n)],
            "label": labels,
            "pred": preds,
        }
    )


def test_candidates_sources_recipients_and_not_run_reasons() -> None:
    # 'a': 4 correct images but only one other-class image (4) is not predicted as 'a';
    # 'b': one correctly predicted image (4) as its source
    labels = [0] * 4 + [1] * 3 + [2] * 6
    preds = [0] * 4 + [1, 0, 0] + [0] * 6
    result = AuditResult(methods=("gradcam",), primary_method="gradcam")
    plans = candidates(
        result, _prim(labels, preds), ["a", "b", "c"], max_images=64, seed=0, annotated=False
    )
    a, b = plans["a"], plans["b"]
    assert isinstance(a, TransplantResult) and a.status == "not_run"
    assert a.source == "top_patch"
    assert a.reason == "1 image(s) of other classes not predicted as 'a'; at least 5 needed"
    assert isinstance(b, TransplantResult) and b.status == "not_run"
    assert b.reason is not None and b.reason.startswith("1 source image(s) of 'b'")
    c = plans["c"]  # no image of 'c' is predicted as 'c': no source
    assert isinstance(c, TransplantResult) and str(c.reason).startswith("0 source image(s)")
    # a subgroup finding's members are the sources; recipients capped at max_images
    labels = [0] * 10 + [1] * 10
    preds = list(labels)
    sg = Finding(
        kind="subgroup_shortcut",
        severity="medium",
        title="t",
        message="m",
        cls="a",
        evidence={"members": ["s1", "s3", "s5"]},
    )
    result = AuditResult(methods=("gradcam",), primary_method="gradcam", findings=(sg,))
    plans = candidates(result, _prim(labels, preds), ["a", "b"], max_images=6, seed=3,
                       annotated=True)  # fmt: skip
    a = plans["a"]
    assert not isinstance(a, TransplantResult)
    assert a.source == "subgroup" and a.sources == (1, 3, 5)
    assert len(a.recipients) == 6 and set(a.recipients) <= set(range(10, 20))
    assert a.donors == a.recipients[1:] + a.recipients[:1]  # the next recipient's patch
    b = plans["b"]
    assert not isinstance(b, TransplantResult) and b.source == "class_region"
    with pytest.raises(ValueError, match="`max_images` must be >= 1"):
        candidates(result, _prim(labels, preds), ["a", "b"], max_images=0, seed=0,
                   annotated=True)  # fmt: skip


# ------------------------------------------------------------------------------------------
# what a confirmation does to the findings


def _result(*findings: Finding) -> AuditResult:
    classes = {n: ClassResult(name=n, index=i, n=10) for i, n in enumerate(("a", "b"))}
    return AuditResult(
        methods=("gradcam",), primary_method="gradcam", classes=classes, findings=findings
    )


def test_confirmed_transplant_raises_the_matching_finding_only() -> None:
    sg = Finding(kind="subgroup_shortcut", severity="medium", title="t", message="Looks away.",
                 cls="a", evidence={"members": ["s1"]}, id="F2")  # fmt: skip
    other = Finding(kind="border_focus", severity="medium", title="u", message="x", cls="b",
                    id="F1")  # fmt: skip
    confirmed = decide(61, 2, 64, source="subgroup", region=(0, 28, 8, 32), n_sources=20)
    refuted = decide(5, 3, 64, source="top_patch", region=(0, 0, 2, 2), n_sources=20)
    out = apply_transplants(_result(other, sg), {"a": confirmed, "b": refuted}, size=(32, 32))
    raised = next(f for f in out.findings if f.cls == "a")
    assert raised.severity == "high" and raised.id == "F1"  # renumbered: high first
    assert raised.message.startswith("Looks away. Pasting the subgroup's region (x 0–8, y 28–32)")
    assert "onto 64 images of other classes flips 61 (95%, 95% [87%, 98%]) to 'a'" in (
        raised.message
    )
    assert "flips 2 (3%)" in raised.message
    assert raised.evidence["transplant"]["status"] == "confirmed"
    kept = next(f for f in out.findings if f.cls == "b")
    assert kept.severity == "medium" and "transplant" not in kept.evidence
    assert out.classes["a"].transplant == confirmed
    assert out.classes["b"].transplant == refuted
    assert out.classes["a"].flagged and out.classes["a"].flags == ("subgroup_shortcut",)
    # the subgroup itself (the report's Subgroups section) is raised with its finding
    sub = SubgroupDetail(cluster=1, size=1, members=("s1",), severity="medium")
    other_sub = SubgroupDetail(cluster=2, size=1, members=("s9",), severity="low")
    res = _result(other, sg).replace(clusters={"a": ClassClusters(k=3, subgroups=(sub, other_sub))})
    out = apply_transplants(res, {"a": confirmed}, size=(32, 32))
    assert out.clusters is not None
    subs = out.clusters["a"].subgroups or ()
    assert [g.severity for g in subs] == ["high", "low"]


def test_top_patch_confirms_border_focus_only_inside_the_border_band() -> None:
    bf = Finding(kind="border_focus", severity="medium", title="t", message="m", cls="a")
    bg = Finding(kind="background_focus", severity="medium", title="t", message="m", cls="a")
    centre = decide(60, 1, 64, source="top_patch", region=(12, 12, 20, 20), n_sources=9)
    out = apply_transplants(_result(bf, bg), {"a": centre}, size=(32, 32))
    assert [f.severity for f in out.findings] == ["medium", "medium"]  # may be the object
    corner = decide(60, 1, 64, source="top_patch", region=(0, 29, 3, 32), n_sources=9)
    out = apply_transplants(_result(bf, bg), {"a": corner}, size=(32, 32))
    sev = {f.kind: f.severity for f in out.findings}
    assert sev == {"border_focus": "high", "background_focus": "medium"}
    # a class region outside the object confirms the class's background findings
    region = decide(60, 1, 64, source="class_region", region=(12, 12, 20, 20), n_sources=9)
    out = apply_transplants(_result(bf, bg), {"a": region}, size=(32, 32))
    assert {f.severity for f in out.findings} == {"high"}


# ------------------------------------------------------------------------------------------
# the typed result and the config


def test_transplant_result_round_trip_and_validation() -> None:
    t = decide(9, 3, 10, source="class_region", region=(1, 2, 3, 4), n_sources=4,
               figure="gallery/t.png")  # fmt: skip
    again = TransplantResult.from_json(t.to_json())
    assert again == t and again.region == (1, 2, 3, 4)
    res = _result().replace()
    res = apply_transplants(res, {"a": t})
    back = AuditResult.from_json(res.to_json())
    assert back.classes["a"].transplant == t and back.classes["b"].transplant is None
    assert back.to_json()["classes"]["a"]["transplant"]["difference_ci"] == list(t.difference_ci)
    nr = TransplantResult(status="not_run", reason="why")
    assert TransplantResult.from_json(nr.to_json()) == nr
    with pytest.raises(ValueError, match="`status` must be one of"):
        TransplantResult(status="maybe")
    with pytest.raises(ValueError, match="`source` must be one of"):
        TransplantResult(status="not_run", source="elsewhere")
    with pytest.raises(ValueError, match="region"):
        TransplantResult.from_json({"status": "not_run", "region": [1, 2]})


BASE = """
[model]
factory = "auditor.demo:build_model"

[data]
manifest = "data/manifest.csv"
classes = ["a", "b"]
input_size = 32
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.csv").write_text("image,label\nx.png,a\n")
    p = tmp_path / "audit.toml"
    p.write_text(text)
    return p


def test_config_keys(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.audit.transplant is True and cfg.audit.transplant_max_images == 64
    cfg = load_config(_write(tmp_path, BASE + "[audit]\ntransplant = false\n"
                             "transplant_max_images = 8\n"))  # fmt: skip
    assert cfg.audit.transplant is False and cfg.audit.transplant_max_images == 8
    for text, match in (
        ("transplant = 'yes'", r"\[audit\] transplant must be bool, got 'yes'"),
        ("transplant_max_images = 0", r"\[audit\] transplant_max_images must be >= 1, got 0"),
        ("transplant_max_images = 2.5", r"\[audit\] transplant_max_images must be int"),
        ("transplant_max_images = true", r"\[audit\] transplant_max_images must be int"),
        ("transplant_images = 3", "transplant_images"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(_write(tmp_path, BASE + "[audit]\n" + text + "\n"))


# ------------------------------------------------------------------------------------------
# the forwards, with a hand-written "model" (no audit run)


def _planted(n: int = 10) -> tuple[object, dict[int, np.ndarray], pa.Table]:
    """Class 'a' carries a bright 4 x 4 tag in the top-left corner of a dark 16 x 16 image;
    its maps put all their mass on the tag's cell; 'b' is dark with uniform maps."""
    from auditor.data.api import dataset_from_torch

    items, cams = [], {}
    for i in range(2 * n):
        img = np.full((16, 16, 3), 40, np.uint8)
        label = i % 2
        cam = np.ones((4, 4))
        if label == 0:
            img[:4, :4] = 250
            cam = np.zeros((4, 4))
            cam[0, 0] = 1.0
        items.append((img, label))
        cams[i] = cam
    ds = dataset_from_torch(items, ["a", "b"], input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    labels = [i % 2 for i in range(2 * n)]
    return ds, cams, _prim(labels, labels)


def _tag_model(x: object) -> np.ndarray:
    """'a' when the top-left 4 x 4 corner is bright (normalised > 1), else 'b'."""
    import torch

    assert isinstance(x, torch.Tensor)
    return np.where(x[:, :, :4, :4].mean(dim=(1, 2, 3)).numpy() > 1.0, 0, 1)


def test_run_transplant_with_a_hand_written_model(tmp_path: Path) -> None:
    from auditor.audit.transplant import run_transplant
    from auditor.config import AuditSettings

    ds, cams, prim = _planted()
    res = AuditResult(
        methods=("gradcam",),
        primary_method="gradcam",
        classes={n: ClassResult(name=n, index=i, n=10) for i, n in enumerate(("a", "b"))},
    )
    out = run_transplant(tmp_path, res, cams, prim, ds, AuditSettings(batch_size=4), _tag_model)
    a = out.classes["a"].transplant
    assert a is not None and a.status == "confirmed" and a.source == "top_patch"
    assert a.region == (0, 0, 4, 4)  # the tag's map cell, upsampled
    assert (a.n, a.flips, a.control_flips, a.n_sources) == (10, 10, 0, 10)
    assert a.figure is not None and (tmp_path / a.figure).is_file()
    # 'b': uniform maps → the first 50 % of the pixels in raster order (rows 0-7), cut to
    # 6 x 6 around the first pixel; its dark corner pasted on 'a' images removes their tag
    b = out.classes["b"].transplant
    assert b is not None and b.region == (0, 0, 6, 6)
    assert (b.flips, b.control_flips, b.status) == (10, 0, "confirmed")

    def broken(x: object) -> np.ndarray:
        raise RuntimeError("boom")

    out = run_transplant(tmp_path, res, cams, prim, ds, AuditSettings(), broken)
    t = out.classes["a"].transplant
    assert t is not None and t.status == "not_run"
    assert t.reason == "the model raised RuntimeError: boom"
