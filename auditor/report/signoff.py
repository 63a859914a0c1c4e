"""Recorded sign-off and the run's checksum manifest (``auditor sign`` / ``auditor verify``).

* ``checksums.json``: ``{"algorithm": "sha256", "written": ISO-8601 UTC, "files":
  {relative path: hex digest}}`` over every file of the run directory except the manifest,
  ``signoff.json``, ``auditor.log``, ``locks/`` and hidden/temporary files; written after
  each rendering.
* ``signoff.json``: an append-only list of records ``{by, role, decision, note, at (UTC),
  report_pdf_sha256, summary_sha256, previous_sha256}``. ``previous_sha256`` is the SHA-256
  of the canonical JSON of the record before it (empty for the first), so editing or removing
  an earlier record breaks the chain.

:func:`verify_run` returns the problems found: a file listed in the manifest that is missing
or whose digest changed, a file added since, a broken chain, or a ``summary.json`` that is not
the one a reviewer signed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from auditor.errors import AuditorInputError

__all__ = [
    "DECISIONS",
    "MANIFEST",
    "SIGNOFF",
    "load_signoffs",
    "sha256_file",
    "sign_run",
    "verify_run",
    "write_manifest",
]

MANIFEST = "checksums.json"
SIGNOFF = "signoff.json"
DECISIONS = ("approve", "reject")
_EXCLUDED = {MANIFEST, SIGNOFF, "auditor.log"}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _artefacts(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or path.is_symlink():
            continue
        if rel.as_posix() in _EXCLUDED or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts[0] == "locks":  # auditor.audit.store's lock files come and go
            continue
        if path.suffix in (".lock", ".tmp"):
            continue
        out[rel.as_posix()] = sha256_file(path)
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _run_dir(run_dir: Path) -> Path:
    path = Path(run_dir)
    if not (path / "summary.json").is_file():
        raise AuditorInputError(f"RUN_DIR {str(path)!r}: no summary.json (not a run directory)")
    return path


def write_manifest(run_dir: Path) -> Path:
    """Write ``run_dir/checksums.json`` over the run's current files; return its path."""
    from auditor.audit.store import atomic_write_bytes

    run_dir = _run_dir(run_dir)
    doc = {"algorithm": "sha256", "written": _now(), "files": _artefacts(run_dir)}
    path = run_dir / MANIFEST
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditorInputError(f"{what} {str(path)!r} is unreadable: {exc}") from exc


def load_signoffs(run_dir: Path) -> list[dict[str, Any]]:
    """The run's sign-off records, oldest first (``[]`` when nobody signed)."""
    path = Path(run_dir) / SIGNOFF
    if not path.is_file():
        return []
    records = _read_json(path, "sign-off file")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise AuditorInputError(f"sign-off file {str(path)!r} must hold a JSON list of objects")
    return records


def _record_digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def sign_run(run_dir: Path, *, by: str, role: str, decision: str, note: str = "") -> dict[str, Any]:
    """Append a sign-off record to ``run_dir/signoff.json`` and return it.

    The run must have a ``report.pdf`` and must verify clean first (nobody signs a run whose
    files changed since they were written).
    """
    run_dir = _run_dir(run_dir)
    for name, value in (("--by", by), ("--role", role)):
        if not isinstance(value, str) or not value.strip():
            raise AuditorInputError(f"{name} must be a non-empty name, got {value!r}")
    if decision not in DECISIONS:
        raise AuditorInputError(f"--decision must be one of {DECISIONS}, got {decision!r}")
    pdf = run_dir / "report.pdf"
    if not pdf.is_file():
        raise AuditorInputError(
            f"{str(pdf)!r} not found: render the PDF first (auditor report RUN_DIR --pdf)"
        )
    problems = verify_run(run_dir)
    if problems:
        raise AuditorInputError(f"cannot sign {str(run_dir)!r}: {problems[0]}")
    records = load_signoffs(run_dir)
    record = {
        "by": by.strip(),
        "role": role.strip(),
        "decision": decision,
        "note": note or "",
        "at": _now(),
        "report_pdf_sha256": sha256_file(pdf),
        "summary_sha256": sha256_file(run_dir / "summary.json"),
        "previous_sha256": _record_digest(records[-1]) if records else "",
    }
    from auditor.audit.store import atomic_write_bytes

    text = json.dumps([*records, record], indent=1) + "\n"
    atomic_write_bytes(run_dir / SIGNOFF, text.encode("utf-8"))
    return record


def _manifest_problems(run_dir: Path) -> list[str]:
    path = run_dir / MANIFEST
    if not path.is_file():
        return [f"{MANIFEST} missing: no checksum manifest to verify against"]
    doc = _read_json(path, "checksum manifest")
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return [f"{MANIFEST} has no 'files' object"]
    current = _artefacts(run_dir)
    problems = [
        f"{rel} changed (SHA-256 {current[rel][:12]}…, manifest {str(digest)[:12]}…)"
        for rel, digest in files.items()
        if rel in current and current[rel] != digest
    ]
    problems += [f"{rel} missing (listed in {MANIFEST})" for rel in files if rel not in current]
    problems += [f"{rel} added after {MANIFEST} was written" for rel in current if rel not in files]
    return problems


def verify_run(run_dir: Path) -> list[str]:
    """Problems with the run's integrity, one line each naming the file (``[]`` = intact)."""
    run_dir = _run_dir(run_dir)
    problems = _manifest_problems(run_dir)
    records = load_signoffs(run_dir)
    summary = sha256_file(run_dir / "summary.json")
    for i, rec in enumerate(records):
        expected = _record_digest(records[i - 1]) if i else ""
        if rec.get("previous_sha256", "") != expected:
            problems.append(f"{SIGNOFF} record {i + 1} was altered or a record was removed")
        if rec.get("summary_sha256") != summary:
            problems.append(
                f"summary.json changed after sign-off {i + 1} by {rec.get('by')!r} "
                f"({rec.get('at')})"
            )
    return problems
