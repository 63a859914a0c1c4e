"""Subgroup shortcuts (SpRAy within a class), background sufficiency, and silence on clean models.

The end-to-end case (auditor.demo_subgroup): 45 % of the 'circle' images carry a corner tag the
tagged model relies on for exactly those images; the clean model was trained without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from auditor.analysis.spray.clusters import adjusted_rand_index, spray_clusters
from auditor.analysis.spray.subgroups import (
    analyse_class,
    border_chance,
    describe_location,
    peak_distance,
)
from auditor.results import Finding
from auditor.stats import bootstrap_diff_ci
from auditor.subgroup_findings import subgroup_findings, sufficiency_findings

# ------------------------------------------------------------------------------------------
# units, hand-computed


def test_peak_distance_hand_computed() -> None:
    maps = np.zeros((4, 4, 4))
    maps[0, 0, 0] = 1.0  # corner pixel centre (0.125, 0.125): d = |(-.375,-.375)| / sqrt(.5)
    maps[1, 1:3, 1:3] = 1.0  # four tied maxima around the centre: mean position = centre
    maps[3] = np.nan
    d = peak_distance(maps)
    assert d[0] == pytest.approx(math.hypot(0.375, 0.375) / math.sqrt(0.5))
    assert d[1] == pytest.approx(0.0)
    assert math.isnan(d[2])  # constant (all-zero) map: no peak
    assert math.isnan(d[3])  # non-finite
    with pytest.raises(ValueError, match="maps"):
        peak_distance(np.zeros((3, 3)))


def test_describe_location() -> None:
    m = np.zeros((9, 9))
    m[7:, :2] = 1.0
    name, cell, share, border = describe_location(m)
    assert name == "bottom-left corner" and cell == (2, 0) and share == pytest.approx(1.0)
    assert border == pytest.approx(0.75)  # 1-px band: (7,0), (8,0), (8,1) of the 4 pixels
    frame = np.zeros((10, 10))
    frame[[0, -1], :] = 1.0
    frame[:, [0, -1]] = 1.0
    assert describe_location(frame)[0] == "image border"
    centre = np.zeros((9, 9))
    centre[4, 4] = 1.0
    assert describe_location(centre)[0] == "centre"
    assert border_chance((10, 10), 0.1) == pytest.approx(1 - 64 / 100)


def test_bootstrap_diff_ci() -> None:
    iv = bootstrap_diff_ci(np.full(5, 0.7), np.array([0.2, 0.2, np.nan]), n_boot=200)
    assert iv.estimate == pytest.approx(0.5)
    assert iv.low == pytest.approx(0.5) and iv.high == pytest.approx(0.5)
    assert iv.n == 7 and iv.n_nan == 1
    empty = bootstrap_diff_ci(np.array([np.nan]), np.ones(3))
    assert math.isnan(empty.estimate) and empty.method == "none"
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 400)
    iv = bootstrap_diff_ci(a, b, n_boot=1000, seed=1)
    assert iv.low < a.mean() - b.mean() < iv.high
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * math.sqrt(2 / 400), rel=0.15)


def test_adjusted_rand_index() -> None:
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([5, 5, 2, 2])) == 1.0
    # Hubert & Arabie: n_ij = [[2,0],[1,1]] → sum C(n_ij,2)=1; a: C(2,2)+C(2,2)=2; b: C(3,2)=3
    # E = 2*3/6 = 1 → ARI = (1 - 1) / (2.5 - 1) = 0
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == 0.0


def _maps(n_a: int, n_b: int, n_tag: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    out = []
    for cy, cx, count in ((3, 3, n_a), (4, 5, n_b)):
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
        out += [blob + 0.05 * rng.random((8, 8)) for _ in range(count)]
    tag = np.zeros((8, 8))
    tag[6:, :2] = 1.0
    out += [tag + 0.05 * rng.random((8, 8)) for _ in range(n_tag)]
    return np.stack(out)


def test_stability_keeps_a_small_subgroup_and_k1_for_noise() -> None:
    maps = _maps(0, 30, 10)
    res = spray_clusters(maps, select_k="stability", n_resamples=5, n_neighbors=6)
    assert res.k == 2 and res.k_rule == "stability"
    assert set(res.clusters[1].members.tolist()) == set(range(30, 40))
    noise = np.random.default_rng(1).random((30, 8, 8))
    assert spray_clusters(noise, select_k="stability", n_resamples=5, n_neighbors=6).k == 1


def test_analyse_class_finds_the_tagged_subgroup_and_tests_the_difference() -> None:
    maps = _maps(0, 30, 10)
    n = len(maps)
    tagged = np.arange(n) >= 30
    stats = {
        "background_focus": np.where(tagged, 0.8, 0.2) + 0.01 * np.arange(n) % 3 * 0.01,
        "only_bg_hit": tagged.astype(float),
        "correct": np.ones(n),
    }
    res = analyse_class(maps, stats, n_classes=3, border_chance_share=0.36, n_boot=300)
    assert res.k == 2 and len(res.subgroups) == 1  # k = 2: the mirror cluster is not repeated
    sg = res.subgroups[0]
    assert set(sg.members.tolist()) == set(range(30, 40))
    assert sg.severity == "high" and sg.elsewhere and sg.needed
    assert sg.where == "bottom-left corner"
    t = sg.tests["background_focus"]
    assert t.diff == pytest.approx(0.6, abs=0.01) and t.ci[0] is not None and t.ci[0] > 0.15
    assert "correct" not in sg.separating  # identical accuracy: no separation
    assert t.confidence > 0.95  # Bonferroni-adjusted
    # the same maps without masks and without interventions: border focus decides → medium
    res2 = analyse_class(
        maps,
        {"border_focus": np.where(tagged, 0.9, 0.1)},
        n_classes=3,
        border_chance_share=0.36,
        n_boot=300,
    )
    assert res2.subgroups[0].severity == "medium"
    assert res2.subgroups[0].elsewhere_statistic == "border_focus"
    # a cluster that differs on no statistic is not reported as a cluster; since session 10
    # the evidence split still sees WHERE its maps lie (a location mixture) and keeps it as a
    # low candidate for the transplant, never as a shortcut by itself
    res3 = analyse_class(
        maps,
        {"background_focus": np.full(n, 0.3), "peak_distance": np.full(n, 0.5)},
        n_classes=3,
        border_chance_share=0.36,
        n_boot=300,
    )
    assert res3.k == 2 and len(res3.subgroups) == 1
    cand = res3.subgroups[0]
    assert cand.severity == "low" and not cand.elsewhere
    assert cand.split is not None and cand.split.get("location_only") is True
    assert cand.split["statistic"] == "region:bottom-left corner"
    assert set(cand.members.tolist()) == set(range(30, 40))


def test_analyse_class_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown statistic"):
        analyse_class(
            np.zeros((5, 2, 2)), {"nope": np.zeros(5)}, n_classes=2, border_chance_share=0.5
        )
    with pytest.raises(ValueError, match=r"stats\['border_focus'\]"):
        analyse_class(
            np.zeros((5, 2, 2)), {"border_focus": np.zeros(4)}, n_classes=2, border_chance_share=0.5
        )
    with pytest.raises(ValueError, match="n_classes"):
        analyse_class(np.zeros((5, 2, 2)), {}, n_classes=0, border_chance_share=0.5)


def test_sufficiency_hand_computed() -> None:
    # a: 9 of 10 backgrounds → a; b: 1 of 20 → a, the rest → c; c (the default): all → c
    labels = np.array([0] * 10 + [1] * 20 + [2] * 10)
    pred = np.array([0] * 9 + [2] + [0] + [2] * 19 + [2] * 10)
    ids = [f"s{i}" for i in range(40)]
    out = sufficiency_findings(labels, pred, ids, ["a", "b", "c"])
    assert [f.cls for f in out] == ["a"]  # c: 10/10 against 20/30, interval too wide
    f = out[0]
    assert isinstance(f, Finding) and f.kind == "background_sufficiency"
    assert f.evidence["only_bg_accuracy"] == pytest.approx(0.9)
    assert f.evidence["baseline"] == pytest.approx(1 / 30)
    assert f.extra["support"]["estimate"] == pytest.approx(0.9 - 1 / 30)
    assert f.extra["support"]["ci"][0] > 0.5 and f.severity == "high"
    assert f.examples == tuple(ids[:8])  # at most 8 examples
    assert f.to_json()["support"]["statistic"] == "only_bg_accuracy"  # beside the evidence
    # a default class (every background predicted as it) is NOT flagged: baseline is high
    assert sufficiency_findings(labels, np.zeros(40, int), ids, ["a", "b", "c"]) == []
    # not run (-1) → nothing
    assert sufficiency_findings(labels, np.full(40, -1), ids, ["a", "b", "c"]) == []
    with pytest.raises(ValueError, match="same length"):
        sufficiency_findings(labels, pred[:5], ids, ["a", "b", "c"])


# ------------------------------------------------------------------------------------------
# end to end: the tagged model and its clean control


def _audit(
    variant: str, out: Path, *, masks: bool, render: bool = False, fill: str = "blur"
) -> Any:
    from auditor import demo_subgroup as D
    from auditor.audit.runner import audit
    from auditor.config import AuditSettings
    from auditor.data.api import dataset_from_torch

    images, m, labels, tagged = D.generate(40, 7, variant)
    items = [
        (images[i], int(labels[i]), m[i]) if masks else (images[i], int(labels[i]))
        for i in range(len(labels))
    ]
    ds = dataset_from_torch(items, list(D.CLASSES), input_size=32, mean=D.MEAN, std=D.STD)
    settings = AuditSettings(
        methods=("gradcam",),
        faithfulness_samples=0,
        sanity_check=False,
        bootstrap=300,
        batch_size=128,
        intervention_fill=fill,
        inference_copy=False,
        gallery_per_class=2,
    )
    outcome = audit(
        D.load(variant), ds, out, settings=settings, pdf=False, render=render, progress=False
    )
    return outcome, tagged


@pytest.fixture(scope="session")
def tagged_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _audit("tagged", tmp_path_factory.mktemp("sg") / "tagged", masks=True)


def _recovery(summary: dict[str, Any], tagged: np.ndarray) -> tuple[float, float, dict]:
    shortcut = [f for f in summary["findings"] if f["kind"] == "subgroup_shortcut"]
    assert len(shortcut) == 1, [f["title"] for f in summary["findings"]]
    f = shortcut[0]
    members = set(f["evidence"]["members"])
    truth = {str(i) for i in np.flatnonzero(tagged)}
    return len(members & truth) / len(members), len(members & truth) / len(truth), f


def test_tagged_subgroup_recovered_with_masks(tagged_run: Any) -> None:
    outcome, tagged = tagged_run
    s = outcome.summary
    purity, recall, f = _recovery(s, tagged)
    assert purity >= 0.9 and recall >= 0.9
    assert f["class"] == "circle" and f["severity"] == "high"
    assert f["evidence"]["where"] == "bottom-left corner"
    assert f["title"].startswith(f"{f['evidence']['size']} of 40 'circle' images")
    assert f["support"]["ci"][0] > 0  # the interval excludes the rest of the class
    assert f["evidence"]["intervention"] == "only_bg_hit"
    assert f["evidence"]["only_bg_rate"] >= 0.9
    # the class-level sufficiency evidence fires too, with its baseline
    suff = [g for g in s["findings"] if g["kind"] == "background_sufficiency"]
    assert [g["class"] for g in suff] == ["circle"]
    assert suff[0]["evidence"]["ci"][0] > 0.25
    # ... with the gallery of those images (drawn, listed under the class)
    panels = [g for g in s["gallery"]["circle"] if g["why"].startswith("background alone")]
    assert panels and {g["id"] for g in panels} <= set(suff[0]["examples"])
    assert all((outcome.run_dir / g["file"]).is_file() for g in panels)
    # samples.parquet: `cluster` for every row; members share the subgroup's cluster id
    t = pq.read_table(outcome.run_dir / "samples.parquet").to_pandas()
    assert "cluster" in t.columns and "only_bg_pred" in t.columns
    prim = t[t.method == "gradcam"]
    sub = prim[prim.id.isin(f["evidence"]["members"])]
    assert set(sub.cluster) == {f["evidence"]["cluster"]}
    assert (prim[prim.label != 0].cluster >= 0).all()  # other classes clustered too (k=1 → 0)
    # the report's Subgroups section: the finding, the members, both panels, the statistic
    from auditor.report import render_report

    render_report(outcome.run_dir, html=True, pdf=False)
    html = (outcome.run_dir / "report.html").read_text("utf-8").replace("&#39;", "'")
    section = html[html.index('<section id="subgroups">') :]
    section = section[: section.index("</section>")]
    assert f["title"] in section and f["evidence"]["members"][0] in section
    assert "The rest of the class" in section and "Background focus" in section
    assert section.count("<img") == 2
    assert "Rests on: <b>background focus</b>" in html


def test_tagged_subgroup_recovered_without_masks(tmp_path: Path) -> None:
    outcome, tagged = _audit("tagged", tmp_path / "nomask", masks=False)
    s = outcome.summary
    assert s["dataset"]["annotated"] is False
    purity, recall, f = _recovery(s, tagged)
    assert purity >= 0.9 and recall >= 0.9
    assert f["support"]["statistic"] == "border_focus"
    assert f["evidence"]["where"] == "bottom-left corner"
    # no mask-based intervention can test it; the transplant (issue 22) confirms it: the
    # members' bottom-left region pasted onto other classes' images makes them 'circle'
    assert f["severity"] == "high"
    t = s["classes"]["circle"]["transplant"]
    assert t["status"] == "confirmed" and t["source"] == "subgroup"
    x0, y0, x1, y1 = t["region"]
    assert x0 == 0 and y1 == 32 and x1 <= 12 and y0 >= 20  # inside the bottom-left corner
    assert t["n"] == 64 and t["flip_rate"] >= 0.9 and t["control_rate"] <= 0.1
    assert t["difference_ci"][0] > 0 and t["n_sources"] == f["evidence"]["size"]
    assert f["evidence"]["transplant"] == t and "Pasting the subgroup's region" in f["message"]
    assert "No mask-based intervention could test it. Pasting" in f["message"]
    assert (outcome.run_dir / t["figure"]).is_file()
    # round trip: load_run gives the typed result
    from auditor import load_run
    from auditor.results import TransplantResult

    typed = load_run(outcome.run_dir).summary.classes["circle"].transplant
    assert isinstance(typed, TransplantResult) and typed.to_json() == t


@pytest.mark.parametrize("fill", ["blur", "mean"])
def test_clean_model_is_silent(tmp_path: Path, fill: str) -> None:
    # "mean" (the default fill) once raised a medium disagreement on 'cross': its accuracy
    # drops on a flat grey surround but not on other images' backgrounds (mixed-rand)
    outcome, _ = _audit("clean", tmp_path / "clean", masks=True, fill=fill)
    s = outcome.summary
    loud = [f for f in s["findings"] if f["severity"] in ("high", "medium")]
    assert loud == [], [f["title"] for f in loud]
    # the clean twin: nothing outside the object makes other classes 'circle' (issue 22)
    t = s["classes"]["circle"]["transplant"]
    # (the class region, or since session 10 a location-only candidate subgroup of the class)
    assert t["source"] in ("class_region", "subgroup") and t["status"] == "not_confirmed"
    assert not [f for f in s["findings"] if "transplant" in f["evidence"]]
    assert not [f for f in s["findings"] if f["kind"] == "subgroup_shortcut"]
    for name, res in s["clusters"].items():
        assert res["k_rule"] == "stability"
        assert res["subgroups"] == [] or all(g["severity"] == "low" for g in res["subgroups"])


def test_subgroup_findings_skip_blocks_without_tests() -> None:
    assert subgroup_findings({"a": {"k": 1, "clusters": [], "subgroups": []}}) == []
    assert subgroup_findings(None) == []
