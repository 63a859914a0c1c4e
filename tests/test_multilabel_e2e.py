"""Multi-label audit end to end (issue 26): a tiny sigmoid model trained here in seconds.

``ring`` is planted on the background (a frame that appears with it; the ring itself is
nearly invisible): the audit must name ``ring``; ``bar`` and ``square`` are learnt from their
objects: no medium/high finding may name them. ``auditor run`` on a multi-label CSV manifest
writes summary.json (with ``labels``) and report.html; exit codes follow the contract.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import multilabel_fixtures as mf
import pyarrow.parquet as pq
import pytest
import torch

from auditor.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("multilabel")
    model = mf.train(n=256, steps=150)
    torch.save(model.state_dict(), out / "w.pt")
    manifest = mf.write_dataset(out / "data", 72, seed=1)
    shutil.copy(mf.__file__, out / "multilabel_fixtures.py")
    return {"out": out, "manifest": manifest, "weights": out / "w.pt"}


@pytest.fixture(scope="module")
def run(world: dict[str, Path]) -> Path:
    cfg = mf.write_config(
        world["out"], world["manifest"], world["weights"], "explain_negatives = 1"
    )
    run_dir = world["out"] / "run"
    assert main(["run", str(cfg), "--out", str(run_dir), "--no-pdf", "--quiet"]) == 0
    return run_dir


def test_planted_label_named_clean_labels_silent(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    serious = [f for f in summary["findings"] if f["severity"] in ("high", "medium")]
    named = {f["class"] for f in serious}
    assert "ring" in named, summary["findings"]
    assert not named & {"bar", "square"}, serious
    ring = summary["labels"]["labels"]["ring"]
    # the background alone keeps 'ring', the object alone does not
    assert ring["only_background_probability"]["ci_low"] > 0.5
    assert ring["only_object_probability"]["value"] < ring["only_background_probability"]["ci_low"]
    for name in ("bar", "square"):
        e = summary["labels"]["labels"][name]
        assert e["only_background_probability"]["ci_high"] < 0.5, name
        assert e["only_object_probability"]["ci_low"] > 0.5, name
    bf = {
        k: v["metrics"]["gradcam"]["background_focus"]["mean"]
        for k, v in summary["classes"].items()
    }
    assert bf["ring"] > max(bf["bar"], bf["square"])


def test_summary_labels_block_and_dataset_counts(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    labels = summary["labels"]
    assert labels["n_images"] == 72 and summary["dataset"]["n_evaluated"] == 72
    assert summary["dataset"]["n_samples"] == 72
    assert summary["output"] == "sigmoid"
    assert summary["confusion"] is None
    for name in mf.LABELS:
        e = labels["labels"][name]
        assert e["n"] == 72
        for key in ("prevalence", "sensitivity", "specificity", "auroc", "average_precision"):
            v = e[key]
            assert v["value"] is not None and v["ci_low"] <= v["value"] <= v["ci_high"], (name, key)
        assert summary["classes"][name]["n"] == e["n_positive"]


def test_samples_rows_per_image_and_label(run: Path) -> None:
    table = pq.read_table(run / "samples.parquet").to_pandas()
    assert len(table) == 72 * len(mf.LABELS)  # one method
    for col in ("image_index", "image_id", "positive", "explained", "label_set", "cluster"):
        assert col in table.columns, col
    assert table["index"].is_unique
    assert (table["index"] == table["image_index"] * 3 + table["label"]).all()
    pos = table[table["explained"] == "positive"]
    assert pos["positive"].all() and len(pos) == table["positive"].sum()
    neg = table[table["explained"] == "negative"]
    # explain_negatives = 1: one absent label per image that lacks at least one label
    n_lacking = int((table.groupby("image_index")["positive"].sum() < 3).sum())
    assert len(neg) == n_lacking and not neg["positive"].any()
    # the positive pair's mask is that label's own mask, not the union
    row = pos.iloc[0]
    assert 0 < row["mask_area"] < 0.2
    assert (table[table["explained"] == ""]["only_fg_confidence"].isna()).all()


def test_report_html_speaks_of_labels(run: Path) -> None:
    html = (run / "report.html").read_text()
    assert 'id="labels"' in html
    assert "AUROC" in html and "ring" in html


def test_gate_on_a_label_fails_with_exit_1(world: dict[str, Path]) -> None:
    cfg = mf.write_config(
        world["out"], world["manifest"], world["weights"], "\n[gates]\nmax_background_focus = 0.6"
    )
    code = main(["run", str(cfg), "--out", str(world["out"] / "gated"), "--no-pdf", "--quiet"])
    assert code == 1
    gates = json.loads((world["out"] / "gated" / "summary.json").read_text())["gates"]
    failed = {r["class"] for r in gates["results"] if r["passed"] is False}
    assert "ring" in failed and not failed & {"bar", "square"}


def test_bad_inputs_exit_2(world: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("image,labels\nimages/0000.png,bar;unicorn\n")
    cfg = mf.write_config(tmp_path, bad, world["weights"])
    text = cfg.read_text().replace("[data]\n", '[data]\nclasses = ["bar", "ring", "square"]\n')
    text = text.replace(
        f'manifest = "{bad}"', f'manifest = "{bad}"\nroot = "{world["manifest"].parent}"'
    )
    cfg.write_text(text)
    assert main(["run", str(cfg), "--out", str(tmp_path / "r1"), "--no-pdf", "--quiet"]) == 2
    # sigmoid without a labels column
    single = tmp_path / "single.csv"
    single.write_text("image,label\nimages/0000.png,bar\n")
    cfg2 = mf.write_config(tmp_path, single, world["weights"])
    assert main(["run", str(cfg2), "--out", str(tmp_path / "r2"), "--no-pdf", "--quiet"]) == 2
    # a labels column without output = "sigmoid"
    cfg3 = mf.write_config(tmp_path, world["manifest"], world["weights"])
    cfg3.write_text(cfg3.read_text().replace('output = "sigmoid"\n', ""))
    assert main(["run", str(cfg3), "--out", str(tmp_path / "r3"), "--no-pdf", "--quiet"]) == 2


def test_compare_two_multilabel_runs(run: Path, world: dict[str, Path]) -> None:
    cfg = mf.write_config(world["out"], world["manifest"], world["weights"], "seed = 1")
    other = world["out"] / "run-b"
    assert main(["run", str(cfg), "--out", str(other), "--no-pdf", "--quiet"]) == 0
    out = world["out"] / "cmp"
    assert main(["compare", str(run), str(other), "--out", str(out), "--no-pdf"]) in (0,)
    comparison = json.loads((out / "comparison.json").read_text())
    per_label = comparison["primary"]["classes"]
    assert set(per_label) == set(mf.LABELS)
    # positives only: each label compared over the images that carry it, as in the runs
    summary = json.loads((run / "summary.json").read_text())
    assert comparison["pairing"]["n_paired"] == sum(c["n"] for c in summary["classes"].values())


def test_load_run_and_pdf(run: Path) -> None:
    import auditor

    loaded = auditor.load_run(run)
    assert {"explained", "positive", "image_id"} <= set(loaded.samples.columns)
    assert set(loaded.classes.index) == set(mf.LABELS)
    assert loaded.summary.extra["labels"]["labels"]["ring"]["auroc"]["method"] == "delong"
    assert main(["report", str(run), "--pdf"]) == 0
    assert (run / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_absolute_background_chance_is_the_labels_negative_rate(run: Path) -> None:
    """Sigmoid labels are independent: the only-background test's chance is the label's
    positive rate on the images WITHOUT it (from samples.parquet by hand), never 1/K."""
    summary = json.loads((run / "summary.json").read_text())
    table = pq.read_table(run / "samples.parquet").to_pandas()
    by_label = {}
    for li, name in enumerate(mf.LABELS):
        neg = table[(table.label == li) & ~table.positive.astype(bool)]
        by_label[name] = float((neg.confidence >= 0.5).mean())
    absolute = [f for f in summary["findings"] if f["kind"] == "absolute_background"]
    assert absolute, summary["findings"]  # the planted label fails the absolute test
    for f in absolute:
        ev = f["evidence"]
        assert "positive rate on images without it" in ev["chance_basis"]
        assert ev["chance"] == pytest.approx(by_label[f["class"]])
        assert ev["chance"] != pytest.approx(1 / 3)
    assert {f["class"] for f in absolute if f["severity"] != "low"} <= {"ring"}
