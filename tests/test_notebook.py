"""auditor.load_run: a finished run as pandas tables, the same numbers as summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import auditor
from auditor.errors import AuditorInputError
from auditor.results import AuditResult


def test_load_run_round_trips_the_run(demo_run: Path) -> None:
    run = auditor.load_run(demo_run)
    data = json.loads((demo_run / "summary.json").read_text("utf-8"))
    assert isinstance(run.summary, AuditResult)
    assert run.summary.to_json() == data  # the typed summary is the file, unchanged
    primary = data["primary_method"]

    # samples: one row per sample x method
    s = run.samples
    assert len(s) == data["dataset"]["n_evaluated"] * len(data["methods"])
    assert set(s["method"]) == set(data["methods"])

    # classes: indexed by class, the summary's numbers
    c = run.classes
    assert list(c.index) == list(data["classes"])
    for name, entry in data["classes"].items():
        assert c.loc[name, "n"] == entry["n"]
        assert c.loc[name, "accuracy"] == pytest.approx(entry["accuracy"])
        bf = entry["metrics"][primary]["background_focus"]
        assert c.loc[name, "background_focus_mean"] == pytest.approx(bf["mean"])
        assert c.loc[name, "background_focus_ci_low"] == pytest.approx(bf["ci_low"])
        assert bool(c.loc[name, "flagged"]) is entry["flagged"]
        assert c.loc[name, "risk"] == pytest.approx(entry["risk"])
        # and the class means are the means of the samples' finite values
        rows = s[(s["method"] == primary) & (s["label_name"] == name)]
        vals = rows["background_focus"].to_numpy(float)
        assert np.nanmean(vals) == pytest.approx(bf["mean"])
    assert c.loc["triangle", "flagged"] and not c.loc["circle", "flagged"]

    # findings
    f = run.findings
    assert list(f.index) == [x["id"] for x in data["findings"]]
    assert list(f["severity"]) == [x["severity"] for x in data["findings"]]
    assert f.iloc[0]["evidence"] == data["findings"][0]["evidence"]

    # low-resolution maps, max-normalised, of the ids asked for
    ids = list(dict.fromkeys(s["id"].astype(str)))[:3]
    maps = run.cams(ids)
    assert list(maps) == ids
    for m in maps.values():
        assert m.ndim == 2 and math.isclose(float(m.max()), 1.0, rel_tol=1e-5)
    with pytest.raises(KeyError, match="not samples of this run"):
        run.cams(["no-such-id"])
    with pytest.raises(KeyError, match="`method` must be one of"):
        run.cams(ids, method="nope")

    # the Jupyter view: a short verdict table, escaped
    page = run._repr_html_()
    assert "FAILED" in page and "triangle" in page and "<script" not in page


def test_compare_with_itself_finds_no_change(demo_run: Path, tmp_path: Path) -> None:
    import shutil

    run = auditor.load_run(demo_run)
    twin = shutil.copytree(demo_run, tmp_path / "twin")  # the same run itself is refused
    res = run.compare(twin, out=tmp_path / "cmp", pdf=False, n_boot=200)
    assert res.passed
    assert res.comparison["regressed"] == [] and res.comparison["improved"] == []


def test_load_run_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(AuditorInputError, match="not found"):
        auditor.load_run(tmp_path)
    (tmp_path / "summary.json").write_text('{"schema_version": 7}', "utf-8")
    with pytest.raises(AuditorInputError, match="not a complete summary"):
        auditor.load_run(tmp_path)
    (tmp_path / "summary.json").write_text(
        '{"schema_version": 7, "methods": [], "overall": {}, "classes": {}, "dataset": {}}', "utf-8"
    )
    with pytest.raises(AuditorInputError, match="schema_version"):
        auditor.load_run(tmp_path)
    with pytest.raises(TypeError, match="`run_dir` must be a path"):
        auditor.load_run(3)  # type: ignore[arg-type]


def test_methodology_lists_every_formula_and_direction(demo_run: Path) -> None:
    import re

    page = (demo_run / "report.html").read_text("utf-8")
    method = page.split('id="methodology"', 1)[1].split("</section>", 1)[0]
    data = json.loads((demo_run / "summary.json").read_text("utf-8"))
    rows = re.findall(r"<tr><th scope=\"row\">(.*?)</tr>", method.split("<h3>Metrics", 1)[0], re.S)
    assert len(rows) == len(data["methods"])
    for name, row in zip(data["methods"], rows):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        formula, description, reference = cells[0], cells[1], cells[2]
        assert f"<code>{name}</code>" in row
        assert formula.strip() not in ("", "—") and "=" in formula, (name, formula)
        assert description.strip() not in ("", "—") and "registered CAM method" not in description
        assert reference.strip() not in ("", "—")
    defs = method.split("<h3>Metrics", 1)[1].split("<h3>", 1)[0]
    used = {k for m in data["overall"]["metrics"].values() for k in m}
    for metric in used:
        dt = defs.split(f"<code>{metric}</code>", 1)
        assert len(dt) == 2, metric
        entry = dt[1].split("</dd>", 1)[0]
        assert 'class="formula"' in entry, metric
        assert re.search(r'class="tag">(higher is better|lower is better|descriptive)<', entry)
    # the cover's verdict is one line, the evidence has readable labels
    cover = page.split('class="verdict-value">', 1)[1].split("</span>", 1)[0]
    assert cover == "2 of 6 gate checks failed"  # 5 configured + require_interpretable
    assert ">Confidence interval<" not in page and ">ci<" not in page
    assert ">other classes (baseline)<" in page
