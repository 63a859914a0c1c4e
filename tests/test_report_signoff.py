"""Recorded sign-off and checksum verification (issue 25): ``auditor sign`` / ``verify``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import make_run_dir  # noqa: E402

from auditor.cli import main  # noqa: E402
from auditor.report import render_report  # noqa: E402
from auditor.report.signoff import (  # noqa: E402
    load_signoffs,
    sha256_file,
    sign_run,
    verify_run,
    write_manifest,
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    run = make_run_dir(tmp_path_factory.mktemp("signed"))
    render_report(run, html=True, pdf=True)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_render_writes_a_manifest_of_every_artefact(rendered):
    doc = json.loads((rendered / "checksums.json").read_text())
    files = doc["files"]
    for name in ("summary.json", "report.html", "report.pdf", "samples.parquet"):
        assert files[name] == sha256_file(rendered / name)
    assert "checksums.json" not in files and "signoff.json" not in files
    assert verify_run(rendered) == []


def test_sign_round_trip_shows_in_the_report(rendered, tmp_path, capsys):
    run = _copy(rendered, tmp_path)
    pdf_before = sha256_file(run / "report.pdf")
    code = main(
        [
            "sign",
            str(run),
            "--by",
            "Ada Lovelace",
            "--role",
            "QA lead",
            "--decision",
            "reject",
            "--note",
            "shortcut on triangle",
        ]
    )
    assert code == 0
    records = load_signoffs(run)
    assert len(records) == 1
    r = records[0]
    assert (r["by"], r["role"], r["decision"], r["note"]) == (
        "Ada Lovelace",
        "QA lead",
        "reject",
        "shortcut on triangle",
    )
    assert r["report_pdf_sha256"] == pdf_before  # the document as signed, before re-rendering
    assert r["summary_sha256"] == sha256_file(run / "summary.json")
    assert r["at"].endswith("+00:00") and r["previous_sha256"] == ""
    html = (run / "report.html").read_text()
    assert "Ada Lovelace" in html and "shortcut on triangle" in html and pdf_before in html
    assert main(["verify", str(run)]) == 0
    # a second record chains to the first
    assert (
        main(
            ["sign", str(run), "--by", "B", "--role", "CTO", "--decision", "approve", "--no-render"]
        )
        == 0
    )
    second = load_signoffs(run)[1]
    assert second["previous_sha256"] and second["previous_sha256"] != second["summary_sha256"]
    assert main(["verify", str(run)]) == 0


def test_tampered_artefact_exits_2_naming_the_file(rendered, tmp_path, capsys):
    run = _copy(rendered, tmp_path)
    assert (
        main(["sign", str(run), "--by", "A", "--role", "R", "--decision", "approve", "--no-render"])
        == 0
    )
    capsys.readouterr()
    with open(run / "samples.parquet", "ab") as fh:
        fh.write(b"x")
    assert main(["verify", str(run)]) == 2
    err = capsys.readouterr().err
    assert "samples.parquet changed" in err


def test_summary_changed_after_signoff_is_caught_even_with_a_fresh_manifest(
    rendered, tmp_path, capsys
):
    run = _copy(rendered, tmp_path)
    sign_run(run, by="A", role="R", decision="approve")
    summary = json.loads((run / "summary.json").read_text())
    summary["overall"]["accuracy"] = 0.99
    (run / "summary.json").write_text(json.dumps(summary))
    write_manifest(run)  # somebody re-rendered after editing the numbers
    problems = verify_run(run)
    assert len(problems) == 1 and "summary.json changed after sign-off 1" in problems[0]
    assert main(["verify", str(run)]) == 2


def test_edited_signoff_record_breaks_the_chain(rendered, tmp_path):
    run = _copy(rendered, tmp_path)
    sign_run(run, by="A", role="R", decision="reject")
    sign_run(run, by="B", role="R", decision="approve")
    records = json.loads((run / "signoff.json").read_text())
    records[0]["decision"] = "approve"
    (run / "signoff.json").write_text(json.dumps(records))
    assert any("record 2 was altered" in p for p in verify_run(run))


def test_missing_and_added_files(rendered, tmp_path):
    run = _copy(rendered, tmp_path)
    (run / "report.html").unlink()
    (run / "extra.txt").write_text("x")
    problems = verify_run(run)
    assert "report.html missing (listed in checksums.json)" in problems
    assert "extra.txt added after checksums.json was written" in problems


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--by", " ", "--role", "R", "--decision", "approve"], "--by must be a non-empty"),
        (["--by", "A", "--role", "R", "--decision", "maybe"], "invalid choice"),
    ],
)
def test_bad_sign_arguments_exit_2(rendered, tmp_path, capsys, argv, match):
    run = _copy(rendered, tmp_path)
    with pytest.raises(SystemExit) if "maybe" in argv else _nullctx():
        code = main(["sign", str(run), *argv])
        assert code == 2
    assert match in capsys.readouterr().err
    assert not (run / "signoff.json").exists()


def test_sign_refuses_a_run_that_changed(rendered, tmp_path, capsys):
    run = _copy(rendered, tmp_path)
    (run / "report.pdf").write_bytes(b"%PDF-1.7 forged")
    assert main(["sign", str(run), "--by", "A", "--role", "R", "--decision", "approve"]) == 2
    assert "report.pdf changed" in capsys.readouterr().err
    assert not (run / "signoff.json").exists()


def test_verify_without_a_manifest_or_run(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


class _nullctx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
