"""Command line: parse arguments, call the API, map errors to exit codes (DESIGN 4.1).

Exit codes: 0 success and all gates passed; 1 audit completed but a gate failed; 2 bad input
(config, files, arguments) with a one-line reason naming the culprit; anything else is a bug.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from auditor._version import __version__
from auditor.errors import AuditorInputError, RenderError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_RENDER = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 too; keep the one-line style
        self.print_usage(sys.stderr)
        print(f"auditor: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="auditor", description="Audit where an image classifier looks.")
    p.add_argument("--version", action="version", version=f"cam-auditor {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="audit a synthetic dataset with a planted shortcut")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument(
        "--variant",
        choices=["shortcut", "fixed"],
        default="shortcut",
        help="demo model: 'shortcut' (learned the background cue) or 'fixed'",
    )
    d.add_argument("--no-pdf", action="store_true")
    d.add_argument("--limit", type=int)

    r = sub.add_parser("run", help="audit a model on a dataset described by a TOML config")
    r.add_argument("config", type=Path)
    r.add_argument("--out", type=Path, help="run directory (default: runs/<config stem>)")
    r.add_argument("--limit", type=int, help="audit only the first N samples")
    r.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    r.add_argument("--no-pdf", action="store_true", help="skip the PDF report")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    r.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow TorchScript / pickled models (they can execute code)",
    )
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--shard",
        metavar="I/N",
        help="compute only shard I of N (batches b with b mod N == I) into a shared --out; "
        "then `auditor finalize DIR`",
    )

    fin = sub.add_parser("finalize", help="combine the shards of a run directory into results")
    fin.add_argument("run_dir", type=Path)
    fin.add_argument("--config", type=Path, help="config file, if it moved since the shards ran")
    fin.add_argument("--no-pdf", action="store_true", help="skip the PDF report")

    rep = sub.add_parser("report", help="re-render the report of a run directory")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--pdf", action="store_true", help="also render report.pdf")
    rep.add_argument("--templates", type=Path, help="folder with template overrides")

    c = sub.add_parser("compare", help="paired comparison of two runs on the same data")
    c.add_argument("run_a", type=Path, help="baseline run (e.g. the production model)")
    c.add_argument("run_b", type=Path, help="candidate run")
    c.add_argument("--out", type=Path, default=None)
    c.add_argument("--config", type=Path, help="TOML with [gates] *_increase rules")
    c.add_argument("--no-pdf", action="store_true")
    return p


def _print_end(outcome: Any) -> None:
    s = outcome.summary
    findings = s.get("findings", [])
    by_sev: dict[str, int] = {}
    for f in findings:
        by_sev[f["severity"]] = by_sev.get(f["severity"], 0) + 1
    gates = s.get("gates", {})
    verdict = "PASSED" if gates.get("passed", True) else "FAILED"
    acc = s["overall"].get("accuracy")
    lines = [
        "",
        f"cam-auditor {__version__}: {s['model'].get('name')} on "
        f"{s['dataset']['n_evaluated']} images ({s['dataset']['n_skipped']} skipped)",
        f"  accuracy {acc:.1%}" if acc is not None else "  accuracy n/a",
        "  findings: " + (", ".join(f"{v} {k}" for k, v in by_sev.items()) or "none"),
    ]
    for f in findings[:5]:
        lines.append(f"    [{f['severity']}] {f['title']}")
    failed = [r for r in gates.get("results", []) if not r["passed"]]
    lines.append(
        f"  gates: {verdict} ({len(gates.get('results', [])) - len(failed)}/"
        f"{len(gates.get('results', []))} passed)"
    )
    for r in failed[:5]:
        lines.append(
            f"    ✗ {r['rule']}"
            + (f" [{r['class']}]" if r.get("class") else "")
            + f": {r['value'] if r['value'] is None else round(r['value'], 4)} "
            f"vs {r['bound']} {r['threshold']}"
        )
    for kind, path in outcome.report.items():
        lines.append(f"  {kind}: {path}")
    lines.append(f"  summary: {outcome.run_dir / 'summary.json'}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    command = "auditor " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        code = _dispatch(args, command)
    except AuditorInputError as exc:
        print(f"auditor: error: {exc}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except RenderError as exc:
        print(f"auditor: report rendering failed: {exc}", file=sys.stderr)
        code = EXIT_RENDER
    except KeyboardInterrupt:
        print("auditor: interrupted; completed batches are kept (use --resume)", file=sys.stderr)
        return 130
    from auditor.distributed import agree_exit_code

    return agree_exit_code(code)  # under torchrun every rank exits with rank 0's code


def _dispatch(args: argparse.Namespace, command: str) -> int:
    import auditor

    if args.command == "demo":
        outcome = auditor.run_demo(
            args.out, variant=args.variant, pdf=not args.no_pdf, limit=args.limit, command=command
        )
        _print_end(outcome)
        # the demo exists to show a failing gate: exit 0 when it ran as intended
        return EXIT_OK
    if args.command == "run":
        cfg = auditor.load_config(args.config)
        out = args.out or Path("runs") / args.config.stem
        if args.limit is not None and args.limit < 1:
            raise AuditorInputError(f"--limit must be >= 1, got {args.limit}")
        from auditor.distributed import parse_shard, torchrun_env

        spec = parse_shard(args.shard) if args.shard else None
        if spec is not None and torchrun_env() is not None:
            raise AuditorInputError(
                "--shard cannot be combined with torchrun (the rank is the shard)"
            )
        outcome = auditor.run_audit(
            cfg,
            out,
            limit=args.limit,
            device=args.device,
            resume=args.resume,
            pdf=False if args.no_pdf else None,
            progress=False if args.no_progress else None,
            trust_model_code=args.trust_model_code or None,
            command=command,
            shard=spec,
        )
        if not outcome.summary:  # a shard job, or a torchrun rank other than 0
            if spec is not None:
                print(
                    f"shard {spec.label} complete in {outcome.run_dir}; when all {spec.count} "
                    f"are, run: auditor finalize {shlex.quote(str(outcome.run_dir))}"
                )
            return EXIT_OK
        _print_end(outcome)
        return outcome.exit_code
    if args.command == "finalize":
        from auditor.runner import finalize_run

        outcome = finalize_run(
            args.run_dir,
            config_path=args.config,
            pdf=False if args.no_pdf else None,
            command=command,
        )
        _print_end(outcome)
        return outcome.exit_code
    if args.command == "report":
        if not (args.run_dir / "summary.json").is_file():
            raise AuditorInputError(
                f"RUN_DIR {args.run_dir}: no summary.json (not a run directory)"
            )
        paths = auditor.render_report(
            args.run_dir, html=True, pdf=args.pdf, templates=args.templates
        )
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return EXIT_OK
    if args.command == "compare":
        from auditor.compare import compare_runs

        result = compare_runs(
            args.run_a, args.run_b, out=args.out, config=args.config, pdf=not args.no_pdf
        )
        print(result.describe())
        return 0 if result.passed else EXIT_GATE_FAILED
    raise AssertionError(args.command)  # pragma: no cover - argparse restricts choices


if __name__ == "__main__":
    raise SystemExit(main())
