"""Session-10 rules of issue 22 (fixed before the benchmark's seeds 1-2 were read): the border
band as a transplant candidate and the test of dependence of ``border_focus``; a location
mixture that nothing else separates is a LOW candidate subgroup that only a confirmed
transplant turns into a ``subgroup_shortcut``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from auditor.analysis.spray.subgroups import SubgroupRules, analyse_class, class_to_json
from auditor.analysis.transplant import apply_transplants, candidates, decide
from auditor.audit.transplant import border_band
from auditor.results import AuditResult, ClassResult, Finding
from auditor.subgroup_findings import subgroup_findings


def _prim(labels: list[int], preds: list[int]) -> pa.Table:
    n = len(labels)
    return pa.table(
        {"index": list(range(n)), "id": [f"s{i}" for i in range(n)], "label": labels,
         "pred": preds}
    )  # fmt: skip


def _result(*findings: Finding) -> AuditResult:
    classes = {n: ClassResult(name=n, index=i, n=10) for i, n in enumerate(("a", "b"))}
    return AuditResult(
        methods=("gradcam",), primary_method="gradcam", classes=classes, findings=findings
    )


def _border(severity: str = "medium") -> Finding:
    return Finding(kind="border_focus", severity=severity, title="attention on the image border",
                   message="38% of the CAM mass lies in the outer band.", cls="a")  # fmt: skip


# ------------------------------------------------------------------------------------------
# the band


def test_border_band_matches_the_metric_band_by_hand() -> None:
    band = border_band((10, 10), 0.1)  # round(0.1 * 10) = 1 px on every side
    assert band.sum() == 100 - 64
    assert band[0].all() and band[-1].all() and band[:, 0].all() and band[:, -1].all()
    assert not band[1:-1, 1:-1].any()
    wide = border_band((16, 32), 0.1)  # round(0.1 * min(16, 32)) = 2 px, the same on all sides
    assert wide.sum() == 16 * 32 - 12 * 28
    tiny = border_band((3, 3), 0.1)  # at least 1 px, never the whole image
    assert tiny.sum() == 8 and not tiny[1, 1]


# ------------------------------------------------------------------------------------------
# the candidate and what the outcome does to the finding


def test_a_class_with_border_focus_pastes_its_border_band() -> None:
    labels = [0] * 10 + [1] * 10
    res = _result(_border())
    for annotated in (False, True):
        plans = candidates(res, _prim(labels, labels), ["a", "b"], max_images=8, seed=0,
                           annotated=annotated)  # fmt: skip
        a, b = plans["a"], plans["b"]
        assert getattr(a, "source", None) == "border_band"
        assert getattr(b, "source", None) == ("class_region" if annotated else "top_patch")


def test_border_band_not_confirmed_lowers_border_focus_confirmed_raises_it() -> None:
    res = _result(_border())
    refuted = decide(3, 2, 64, source="border_band", region=(0, 0, 32, 32), n_sources=4)
    low = apply_transplants(res, {"a": refuted}, size=(32, 32)).findings[0]
    assert low.severity == "low"
    assert "Pasting the outer border band of 4 'a' images onto 64 images" in low.message
    assert low.message.endswith("The border attention is not shown to be used.")
    assert low.evidence["transplant"]["status"] == "not_confirmed"
    confirmed = decide(50, 2, 64, source="border_band", region=(0, 0, 32, 32), n_sources=9)
    high = apply_transplants(res, {"a": confirmed}, size=(32, 32)).findings[0]
    assert high.severity == "high" and high.evidence["transplant"]["flips"] == 50
    # not run (too few images, no model): the untested finding stays as it was
    from auditor.analysis.transplant import not_run

    kept = apply_transplants(res, {"a": not_run("1 source image(s)", "border_band")},
                             size=(32, 32)).findings[0]  # fmt: skip
    assert kept.severity == "medium" and "transplant" not in kept.evidence
    # a low border finding is never lowered further nor touched by a refutation
    again = apply_transplants(_result(_border("low")), {"a": refuted}, size=(32, 32))
    assert again.findings[0].severity == "low" and "transplant" not in again.findings[0].evidence


# ------------------------------------------------------------------------------------------
# a location mixture: a candidate subgroup, confirmed only by the transplant


def _maps(mixture: bool) -> tuple[np.ndarray, np.ndarray]:
    """40 maps 7 x 7; with ``mixture`` the first 12 put half their mass at (1, 5): inside the
    top-right cell of the 3 x 3 grid but OFF the 1-cell border ring, so ``border_focus`` does
    not separate them (no masks: no other statistic exists)."""
    rng = np.random.default_rng(0)
    maps = rng.gamma(0.5, 1.0, (40, 7, 7))
    maps /= maps.sum((1, 2), keepdims=True)
    if mixture:
        maps[:12] *= 0.5
        maps[:12, 1, 5] += 0.5
    band = np.zeros((7, 7), bool)
    band[0, :] = band[-1, :] = band[:, 0] = band[:, -1] = True
    return maps, (maps * band).sum((1, 2))


def _analyse(mixture: bool):  # type: ignore[no-untyped-def]
    maps, border = _maps(mixture)
    return analyse_class(maps, {"border_focus": border}, n_classes=4,
                         border_chance_share=24 / 49, n_boot=300,
                         rules=SubgroupRules(max_k=1))  # fmt: skip


def test_location_only_split_is_a_low_candidate_that_names_its_members() -> None:
    res = _analyse(True)
    assert len(res.subgroups) == 1
    sg = res.subgroups[0]
    assert sg.split is not None and sg.split["statistic"] == "region:top-right corner"
    assert sg.split.get("location_only") is True
    assert sg.severity == "low" and not sg.elsewhere
    members = set(map(int, sg.members))  # the 12 planted, and at most one natural high
    assert set(range(12)) <= members and len(members) <= 13
    assert sg.separating == ("region:top-right corner",)
    assert "border_focus" in sg.tests and not sg.tests["border_focus"].separates
    # its finding: a low strategy_cluster naming the members, the split in its evidence
    ids = [f"s{i}" for i in range(40)]
    findings = subgroup_findings({"a": class_to_json(res, ids)})
    assert [(f.kind, f.severity) for f in findings] == [("strategy_cluster", "info")]
    f = findings[0]
    assert set(ids[:12]) <= set(f.evidence["members"])
    assert f.evidence["split"]["location_only"] is True
    assert "share of the map in the top-right corner cell" in f.message
    assert f.message.endswith("not yet shown to be used: the transplant tests it.")
    assert f.message.startswith("A group of ")  # an evidence split, not a map cluster
    # the clean twin: no mixture, no candidate
    assert _analyse(False).subgroups == ()


def test_confirmed_location_candidate_becomes_a_subgroup_shortcut() -> None:
    res = _analyse(True)
    ids = [f"s{i}" for i in range(40)]
    cand = subgroup_findings({"a": class_to_json(res, ids)})[0]
    result = _result(cand)
    labels = [0] * 40 + [1] * 20
    plans = candidates(result, _prim(labels, labels), ["a", "b"], max_images=64, seed=0,
                       annotated=False)  # fmt: skip
    a = plans["a"]
    assert getattr(a, "source", None) == "subgroup"
    assert getattr(a, "sources", ()) == tuple(sorted(int(m[1:]) for m in cand.evidence["members"]))
    confirmed = decide(20, 1, 20, source="subgroup", region=(20, 0, 32, 12), n_sources=12)
    # without masks the pasted region may be the object itself: evidence kept, still low
    kept = apply_transplants(result, {"a": confirmed}, size=(32, 32)).findings[0]
    assert (kept.kind, kept.severity) == ("strategy_cluster", "low")
    assert kept.evidence["transplant"]["status"] == "confirmed"
    assert kept.message.endswith("annotate masks to tell a cue from the object.")
    # with masks (the paste excludes the source's object): a subgroup shortcut
    out = apply_transplants(result, {"a": confirmed}, size=(32, 32), annotated=True).findings[0]
    assert (out.kind, out.severity) == ("subgroup_shortcut", "high")
    n = len(cand.evidence["members"])
    assert out.title == f"{n} of 40 'a' images are predicted from the top-right corner"
    assert "Pasting the subgroup's region (x 20–32, y 0–12) of 12 'a' images" in out.message
    assert out.evidence["members"] == cand.evidence["members"]
    refuted = decide(2, 1, 20, source="subgroup", region=(20, 0, 32, 12), n_sources=12)
    same = apply_transplants(result, {"a": refuted}, size=(32, 32), annotated=True).findings[0]
    assert (same.kind, same.severity) == ("strategy_cluster", "info")
    assert "transplant" not in same.evidence and same == result.findings[0]  # unchanged


# ------------------------------------------------------------------------------------------
# the forwards, with a hand-written "model"


def test_run_transplant_pastes_the_border_band(tmp_path: Path) -> None:
    from auditor.audit.transplant import run_transplant
    from auditor.config import AuditSettings
    from auditor.data.api import dataset_from_torch

    items, cams = [], {}
    for i in range(20):  # 'a': a bright 4 x 4 corner tag on a dark 16 x 16 image; 'b': dark
        img = np.full((16, 16, 3), 40, np.uint8)
        if i % 2 == 0:
            img[:4, :4] = 250
        items.append((img, i % 2))
        cams[i] = np.ones((4, 4))
    ds = dataset_from_torch(items, ["a", "b"], input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    labels = [i % 2 for i in range(20)]

    def model(x: object) -> np.ndarray:  # 'a' when the top-left 4 x 4 corner is bright
        import torch

        assert isinstance(x, torch.Tensor)
        return np.where(x[:, :, :4, :4].mean(dim=(1, 2, 3)).numpy() > 1.0, 0, 1)

    out = run_transplant(tmp_path, _result(_border()), cams, _prim(labels, labels), ds,
                         AuditSettings(batch_size=4), model)  # fmt: skip
    a = out.classes["a"].transplant
    # the 2-px band holds 12 of the tag's 16 pixels: mean (12 * 1.92 - 4 * 1.37) / 16 > 1
    assert a is not None and a.source == "border_band" and a.region == (0, 0, 16, 16)
    assert (a.status, a.n, a.flips, a.control_flips) == ("confirmed", 10, 10, 0)
    assert out.findings[0].severity == "high"
