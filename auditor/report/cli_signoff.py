"""``auditor sign`` and ``auditor verify`` (the CLI stays thin: parsing in auditor.cli)."""

from __future__ import annotations

import argparse
import sys

from auditor.report.signoff import sign_run, verify_run
from auditor.safe_text import terminal_safe

__all__ = ["sign_command", "verify_command"]

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def sign_command(args: argparse.Namespace) -> int:
    """Append the record; re-render the report (HTML and PDF) so the sign-off block shows it,
    then rewrite the checksum manifest (the rendering does)."""
    record = sign_run(
        args.run_dir, by=args.by, role=args.role, decision=args.decision, note=args.note
    )
    print(
        terminal_safe(
            f"signed {args.run_dir}: {record['decision']} by {record['by']} ({record['role']}) "
            f"at {record['at']}; report.pdf sha256 {record['report_pdf_sha256']}"
        )
    )
    if not args.no_render:
        from auditor.report import render_report

        render_report(args.run_dir, html=True, pdf=True)
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    """Exit 0 when every artefact matches the manifest and the signed summary, else 2 with one
    line per problem (the first names the file)."""
    problems = verify_run(args.run_dir)
    if problems:
        for p in problems:
            print(terminal_safe(f"auditor: verify: {p}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(terminal_safe(f"{args.run_dir}: every file matches checksums.json"))
    return EXIT_OK
