"""Group audit end to end (issue 24): a planted site marker is named; clean twins stay silent.

Site ``B``'s images all carry the demo's striped background (the marker the shortcut model
learnt as "triangle"); site ``A`` follows the evaluation distribution. The shortcut model must
be named for site B (lower accuracy, higher background focus); the fixed model (trained with
stripes independent of the class) on the same data, and the shortcut model with a site column
assigned at random, must give no group finding.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import auditor
from auditor.cli import main
from auditor.demo import CLASSES, render_sample, weights_path

pytestmark = pytest.mark.slow

N_PER_SITE_CLASS = 15


def _dataset(out: Path, *, random_site: bool = False) -> Path:
    rng = np.random.default_rng(7)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    rows = []
    i = 0
    for site in ("A", "B"):
        for _ in range(N_PER_SITE_CLASS):
            for label, name in enumerate(CLASSES):
                striped = site == "B" or name == "triangle"
                img, mask = render_sample(label, rng, striped=striped)
                fn = f"{i:04d}.png"
                Image.fromarray(img).save(out / "images" / fn)
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / fn)
                shown_site = ("A", "B")[int(rng.integers(2))] if random_site else site
                age = "" if i % 17 == 0 else str(int(rng.integers(20, 90)))
                rows.append([f"images/{fn}", name, f"masks/{fn}", shown_site, age, "x"])
                i += 1
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "mask", "Site", "age", "rare"])
        w.writerows(rows)
    return out / "manifest.csv"


def _config(tmp: Path, manifest: Path, variant: str, extra: str = "") -> Path:
    cfg = tmp / f"audit-{variant}.toml"
    cfg.write_text(f"""
[model]
factory = "auditor.demo:build_model"
weights = "{weights_path(variant)}"

[data]
manifest = "{manifest}"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
groups = ["site", "age"]

[data.bins]
age = [0, 40, 65, 120]

[audit]
methods = ["gradcam"]
faithfulness_samples = 0
sanity_check = false
bootstrap = 200
{extra}
""")
    return cfg


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("groups")
    manifest = _dataset(tmp / "data")
    return manifest


@pytest.fixture(scope="module")
def runs(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shortcut model (with group gates) and the fixed model on the planted data."""
    tmp = tmp_path_factory.mktemp("group-runs")
    gates = "[gates]\nmin_group_accuracy = {site = 0.8}\nmax_group_accuracy_gap = 0.9\n"
    out = {}
    for variant, extra, rc in (("shortcut", gates, (1,)), ("fixed", "", (0, 1))):
        cfg = _config(tmp, planted, variant, extra)
        out[variant] = tmp / variant
        args = ["run", str(cfg), "--out", str(out[variant]), "--no-pdf", "--no-progress"]
        assert main(args) in rc
    return out


def test_planted_site_is_named_and_gated(runs: dict[str, Path]) -> None:
    out = runs["shortcut"]
    s = json.loads((out / "summary.json").read_text())
    site = next(a for a in s["groups"]["attributes"] if a["name"] == "site")
    b = next(g for g in site["levels"] if g["level"] == "B")
    a = next(g for g in site["levels"] if g["level"] == "A")
    assert b["n"] == a["n"] == 4 * N_PER_SITE_CLASS
    assert b["flagged"] and not a["flagged"]
    assert site["worst"] == "B"
    found = [f for f in s["findings"] if f["kind"] == "group_disparity"]
    assert found and all(f["evidence"]["group"] == "B" for f in found), found
    assert found[0]["message"].startswith("'site = B' (n = 60): accuracy ")
    assert b["background_focus"]["value"] is not None
    # the explanation subgroups get their source: site B's striped squares form a subgroup
    subs = [f for f in s["findings"] if f["kind"] in ("subgroup_shortcut", "strategy_cluster")]
    sources = [(f["class"], src["attribute"], src["level"]) for f in subs
               for src in f["evidence"].get("group_sources", [])]  # fmt: skip
    assert ("square", "site", "B") in sources, sources
    sq = next(f for f in subs if f["class"] == "square" and f["evidence"].get("group_sources"))
    assert "images in this subgroup are from 'site = B'" in sq["message"]
    gates = {(g["rule"], g["class"]): g for g in s["gates"]["results"]}
    assert gates[("min_group_accuracy[site]", "site")]["passed"] is False
    assert gates[("max_group_accuracy_gap", "site")]["passed"] is True
    # the samples table carries the attributes; missing ages are their own level
    frame = pd.read_parquet(out / "samples.parquet")
    assert set(frame["group_site"]) == {"A", "B"}
    assert "missing" in set(frame["group_age"])
    assert set(frame["group_age"]) <= {"missing", "[0, 40)", "[40, 65)", "[65, 120]"}
    run = auditor.load_run(out)
    g = run.groups
    assert {"attribute", "level", "n", "accuracy", "ci_low", "ci_high"} <= set(g.columns)
    assert g[(g.attribute == "site") & (g.level == "B")]["flagged"].item()
    html = (out / "report.html").read_text()
    assert "Groups" in html and "site = B" in html
    # class × group AUROC from the stored probability vectors equals scikit-learn's
    from sklearn.metrics import roc_auc_score

    prim = frame[frame.method == "gradcam"]
    cells = run.group_classes
    assert {"auroc", "auroc_low", "auroc_high", "ece", "auroc_note"} <= set(cells.columns)
    for _, cell in cells[cells.attribute == "site"].iterrows():
        sub = prim[prim.group_site == cell.level]
        c = ["circle", "square", "triangle", "cross"].index(cell["class"])
        p_c = [dict(zip(k, v))[c] for k, v in zip(sub.top_classes, sub.top_probs)]
        assert cell.auroc == pytest.approx(roc_auc_score(sub.label == c, p_c))
        assert "AUROC" in html
    # the streamed finalisation (shard jobs, torchrun, large runs) gives the same groups
    from auditor.audit.runner import finalize_run

    finalize_run(out, aggregation="streaming", render=False)
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["run"]["aggregation"] == "streaming"
    assert s2["groups"] == s["groups"]
    # the transplant (issue 22) needs the model: the run made it, `auditor finalize` cannot
    made = {c["transplant"]["status"] for c in s["classes"].values()}
    assert made <= {"confirmed", "not_confirmed"}
    for c in s2["classes"].values():
        assert c["transplant"]["status"] == "not_run"
        assert c["transplant"]["reason"].startswith("finalised without the model")
    again = pd.read_parquet(out / "samples.parquet")
    assert again["group_site"].tolist() == frame["group_site"].tolist()


def test_clean_model_no_group_finding(runs: dict[str, Path]) -> None:
    s = json.loads((runs["fixed"] / "summary.json").read_text())
    assert not [f for f in s["findings"] if f["kind"] == "group_disparity"]
    assert s["groups"]["attributes"][0]["levels"]


def test_compare_per_group(runs: dict[str, Path], tmp_path: Path) -> None:
    from auditor.compare import compare_runs
    from auditor.config import GateRule

    rules = [
        GateRule(name="max_group_accuracy_decrease", quantity="group_accuracy_decrease",
                 scope="compare", max=0.0),
        GateRule(name="max_group_accuracy_gap_increase", quantity="group_accuracy_gap_increase",
                 scope="compare", max=0.0),
    ]  # fmt: skip
    res = compare_runs(runs["shortcut"], runs["fixed"], out=tmp_path / "cmp", pdf=False,
                       gates=rules)  # fmt: skip
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "Per-group differences" in html and "site = B" in html and "the gap closed" in html
    got = {(g.rule, g.cls): g for g in res.gates.results}
    assert got[("max_group_accuracy_gap_increase", "site")].passed
    assert got[("max_group_accuracy_decrease", "site=B")].value < 0
    groups = res.extra["groups"]
    site = next(a for a in groups["attributes"] if a["name"] == "site")
    b = next(lv for lv in site["levels"] if lv["level"] == "B")
    # the fixed model closes site B's gap: B's paired accuracy change is positive
    assert b["accuracy_diff"]["ci_low"] > 0
    assert b["accuracy_b"] - b["accuracy_a"] == pytest.approx(b["accuracy_diff"]["value"])
    assert site["gap_change"] < 0


def test_random_site_no_group_finding(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "data", random_site=True)
    out = tmp_path / "run"
    main(["run", str(_config(tmp_path, manifest, "shortcut")), "--out", str(out),
          "--no-pdf", "--no-progress"])  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    assert not [f for f in s["findings"] if f["kind"] == "group_disparity"], s["findings"]
    # a site drawn at random is no subgroup's source
    assert not [f for f in s["findings"] if f["evidence"].get("group_sources")]


def test_misspelled_group_column_exits_2(planted: Path, tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, planted, "shortcut")
    cfg.write_text(cfg.read_text().replace('groups = ["site", "age"]', 'groups = ["sitee"]')
                   .replace("[data.bins]\nage = [0, 40, 65, 120]\n", ""))  # fmt: skip
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-pdf", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'sitee'" in err and "manifest.csv" in err and "'site'" in err


def test_shard_jobs_give_the_same_groups(runs: dict[str, Path], planted: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    """Two shard jobs finalised by `auditor finalize` (exact, then streamed) give the groups
    (statistics, cells, slices, subgroup sources) of the single-process run."""
    cfg = _config(tmp_path, planted, "shortcut",
                  "batch_size = 32\n[gates]\nmin_group_accuracy = {site = 0.8}\n"
                  "max_group_accuracy_gap = 0.9\n")  # fmt: skip
    out = tmp_path / "sharded"
    base = ["run", str(cfg), "--no-pdf", "--no-progress", "--out", str(out)]
    for s in ("0/2", "1/2"):
        assert main([*base, "--shard", s]) == 0
    single = json.loads((runs["shortcut"] / "summary.json").read_text())
    for aggregation in ("exact", "streaming"):
        assert main(["finalize", str(out), "--no-pdf", "--aggregation", aggregation]) == 1
        s = json.loads((out / "summary.json").read_text())
        assert s["groups"] == single["groups"], aggregation
        src = [f["evidence"].get("group_sources") for f in s["findings"]]
        assert src == [f["evidence"].get("group_sources") for f in single["findings"]]


_SETTINGS = [
    "overall_accuracy",
    "overall_background_focus",
    "min_group_size",
    "confidence",
    "adjustment",
    "n_tests",
    "accuracy_margin",
    "background_focus_margin",
]
_SUPPRESSED = ["level", "n", "suppressed"]
_LEVEL_KEYS = [
    "level",
    "n",
    "suppressed",
    "accuracy",
    "background_focus",
    "energy_in_mask",
    "only_bg_accuracy",
    "only_fg_accuracy",
    "ece",
    "accuracy_vs_rest",
    "background_focus_vs_rest",
    "accuracy_vs_best",
    "flagged",
]


def test_groups_block_of_a_real_run_round_trips_byte_identically(runs: dict[str, Path]) -> None:
    """summary.json ``groups`` read into the typed results and written back (the codec, issue
    21) gives the same bytes as the file."""
    from auditor.audit.store import dumps_json
    from auditor.group_results import GroupsResult

    for variant, run in runs.items():
        raw = (run / "summary.json").read_bytes()
        summary = json.loads(raw)
        groups = summary["groups"]
        assert groups["attributes"], variant
        # the schema-1 keys, in order (the run is written by the same code: pin the format)
        assert list(groups) == [*_SETTINGS, "attributes", "slices"]
        for attr in groups["attributes"]:
            assert list(attr) == [
                "name",
                "levels",
                "worst",
                "worst_accuracy",
                "largest_gap",
                "classes",
            ]
            assert list(attr["largest_gap"]) == ["value", "ci_low", "ci_high"]
            for g in attr["levels"]:
                assert list(g) == (_SUPPRESSED if g["suppressed"] else _LEVEL_KEYS)
        summary["groups"] = GroupsResult.from_json(summary["groups"]).to_json()
        assert dumps_json(summary) == raw, variant
