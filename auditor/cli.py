"""Command line: parse arguments, call the API, map errors to exit codes (DESIGN 4.1).

Exit codes (the contract, as code: :func:`exit_code_for`):

* 0 the audit completed and every gate passed;
* 1 the audit completed and a gate failed: NOTHING else exits 1;
* 2 bad input (config, files, arguments, a locked or unwritable run directory, a full disk,
  a model that keeps raising) with one line naming the culprit;
* 3 the report could not be rendered (results are kept; ``auditor report RUN_DIR`` retries);
* 4 internal error: a bug in cam-auditor. One line on stderr; the traceback goes to the run
  directory's ``auditor.log`` (or a temporary file when there is no run directory yet);
* 130 / 143 interrupted (Ctrl-C / SIGTERM); completed batches are kept for ``--resume``. The
  first Ctrl-C stops after the current batch, a second quits at once; no traceback either way
  (:mod:`auditor.audit.interrupt`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import shlex
import signal
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from auditor._version import __version__
from auditor.errors import AuditorInputError, RenderError
from auditor.format import gate_verdict  # (also imported from here by tests and scripts)
from auditor.safe_text import one_line, terminal_safe

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_RENDER, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
LOG_NAME = "auditor.log"


class _Terminated(BaseException):  # noqa: N818 - a signal, not an error
    """SIGTERM turned into an exception, so ``finally`` blocks (locks, temp files) run."""


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception escaping a command (the one place that decides it)."""
    from auditor.audit.store import is_storage_error

    if isinstance(exc, _Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, AuditorInputError):
        return EXIT_BAD_INPUT
    if isinstance(exc, RenderError):
        return EXIT_RENDER
    if is_storage_error(exc) or isinstance(exc, FileNotFoundError | MemoryError):
        return EXIT_BAD_INPUT
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA/MPS)
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL


def _message(exc: BaseException, code: int, log_path: Path | None) -> str:
    from auditor.audit.store import is_storage_error, storage_error

    if code == EXIT_INTERRUPTED:
        return "auditor: interrupted; completed batches are kept (use --resume)"
    if code == EXIT_TERMINATED:
        return "auditor: terminated (SIGTERM); completed batches are kept (use --resume)"
    if code == EXIT_RENDER:
        return f"auditor: report rendering failed: {one_line(exc)}"
    if code == EXIT_BAD_INPUT:
        if is_storage_error(exc) and isinstance(exc, OSError):
            where = Path(str(exc.filename)) if exc.filename else Path(".")
            return f"auditor: error: {one_line(storage_error(exc, where))}"
        if isinstance(exc, FileNotFoundError):
            return f"auditor: error: file not found: {one_line(exc.filename or exc)}"
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
            return (
                f"auditor: error: out of memory ({one_line(str(exc)[:200]) or type(exc).__name__}"
                f"); lower [audit] batch_size or [data] input_size"
            )
        return f"auditor: error: {one_line(exc)}"
    logged = f"traceback in {log_path}" if log_path else "no log could be written"
    return (
        f"auditor: internal error (a bug in cam-auditor {__version__}, exit 4): "
        f"{type(exc).__name__}: {one_line(str(exc)[:300])} ({logged})"
    )


def _log_dir(args: argparse.Namespace | None) -> Path | None:
    """The run directory a command writes into, if it exists and is ours."""
    from auditor.audit.store import RUN_MARKER

    if args is None:
        return None
    cand: Path | None = None
    if args.command == "run":
        cand = args.out or Path("runs") / Path(args.config).stem
    elif args.command in ("demo", "compare"):
        cand = args.out
    else:
        cand = getattr(args, "run_dir", None) or getattr(args, "out", None)
    if cand is None or not Path(cand).is_dir():
        return None
    from auditor.compare.gates import COMPARE_MARKER

    names = (RUN_MARKER, COMPARE_MARKER)  # only folders this tool created (issue 27)
    return Path(cand) if any((Path(cand) / n).exists() for n in names) else None


def write_traceback(
    exc: BaseException, args: argparse.Namespace | None, command: str
) -> Path | None:
    """Append ``exc``'s traceback to ``<run>/auditor.log`` (or a temporary file); its path."""
    text = (
        f"--- {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} "
        f"cam-auditor {__version__} pid {os.getpid()}: {command}\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    folder = _log_dir(args)
    candidates = ([folder / LOG_NAME] if folder else []) + [
        Path(tempfile.gettempdir()) / f"cam-auditor-{os.getpid()}.log"
    ]
    for path in candidates:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
            return path
        except OSError:
            continue
    return None


def _install_signals() -> None:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_term)
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit: EFBIG (exit 2), not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 too; keep the one-line style
        self.print_usage(sys.stderr)
        print(f"auditor: error: {one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--quiet`` (progress goes to stderr: a bar on a terminal, lines
    elsewhere, one line per phase; see :mod:`auditor.progress`)."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (batch counter and phase lines: analysis, clustering, "
        "rendering, pdf); the end summary is still printed",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress, no warnings and no end summary; errors still go to stderr, the "
        "exit code says the verdict",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``auditor`` command line: one sub-command each, in the order ``--help`` lists them."""
    p = _Parser(prog="auditor", description="Audit where an image classifier looks.")
    p.add_argument("--version", action="version", version=f"cam-auditor {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_audit_commands(sub)
    _add_run_dir_commands(sub)
    _add_compare_command(sub)
    sub.add_parser("gates", help="list every gate key: where it applies and what it needs")
    return p


def _add_audit_commands(sub: Any) -> None:
    """``demo``, ``run`` and ``finalize``: the commands that audit (or finish an audit)."""
    d = sub.add_parser("demo", help="audit a synthetic dataset with a planted shortcut")
    d.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)"
    )
    d.add_argument(
        "--variant",
        choices=["shortcut", "fixed"],
        default="shortcut",
        help="demo model: 'shortcut' (learned the background cue) or 'fixed'",
    )
    d.add_argument("--no-pdf", action="store_true", help="skip the PDF report")
    d.add_argument("--limit", type=int, help="audit only the first N of the demo's images")
    _progress_flags(d)

    r = sub.add_parser("run", help="audit a model on a dataset described by a TOML config")
    r.add_argument("config", type=Path, help="the audit's TOML config ([model], [data], ...)")
    r.add_argument("--out", type=Path, help="run directory (default: runs/<config stem>)")
    r.add_argument("--limit", type=int, help="audit only the first N samples")
    r.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    r.add_argument("--no-pdf", action="store_true", help="skip the PDF report")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run")
    r.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow `[model] file` to be a fully pickled model (unpickling can execute code "
        "from the file: only for files you trust); TorchScript archives stay refused (no hooks)",
    )
    _progress_flags(r)
    r.add_argument(
        "--baseline",
        type=Path,
        metavar="RUN",
        help="a finished run of the previous model on the same data: the config's comparison "
        "gates (max_<quantity>_increase / _decrease) are evaluated against it",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --out (the old one is kept aside until the new one "
        "finishes, and restored if it fails)",
    )
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
    fin.add_argument(
        "--aggregation",
        choices=("auto", "exact", "streaming"),
        help="override [audit] aggregation: exact (one table) or streaming (shard by shard, "
        "flat memory); auto streams above 100,000 evaluated samples",
    )
    _progress_flags(fin)


def _add_run_dir_commands(sub: Any) -> None:
    """``report``, ``sign``, ``verify`` and ``export``: the commands on a finished run."""
    rep = sub.add_parser("report", help="re-render the report of a run directory")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--pdf", action="store_true", help="also render report.pdf")
    rep.add_argument("--templates", type=Path, help="folder with template overrides")
    _progress_flags(rep)

    sg = sub.add_parser("sign", help="record a release decision on a run (signoff.json)")
    sg.add_argument("run_dir", type=Path)
    sg.add_argument("--by", required=True, help="the reviewer's name")
    sg.add_argument("--role", required=True, help="the reviewer's role")
    sg.add_argument("--decision", required=True, choices=["approve", "reject"])
    sg.add_argument("--note", default="")
    sg.add_argument("--no-render", action="store_true", help="do not re-render the report")

    ver = sub.add_parser("verify", help="check a run's files against its checksum manifest")
    ver.add_argument("run_dir", type=Path)

    ex = sub.add_parser("export", help="write model_card.json and model_card.md into a run")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument(
        "--mlflow",
        metavar="URI",
        default=None,
        help="also log params, per-class metrics, gates and the reports to this MLflow "
        "tracking URI (needs the mlflow extra)",
    )


def _add_compare_command(sub: Any) -> None:
    """``compare``: the paired comparison of two runs."""
    c = sub.add_parser("compare", help="paired comparison of two runs on the same data")
    c.add_argument("run_a", type=Path, help="baseline run (e.g. the production model)")
    c.add_argument("run_b", type=Path, help="candidate run")
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        help="comparison directory (default: <run_b>-vs-<run_a name>); only a new, empty or "
        "earlier comparison folder is accepted",
    )
    c.add_argument(
        "--config",
        type=Path,
        help="TOML whose [gates] holds comparison gates only: max_<quantity>_increase and "
        "max_<quantity>_decrease for any run quantity (metrics, accuracy, interventions; "
        "`auditor gates` lists them); run gates, [[gates.rule]] and unknown keys are refused "
        "(exit 2). A full audit config is accepted too: validated whole, its comparison gates "
        "are used and its run gates left to the run",
    )
    c.add_argument("--no-pdf", action="store_true", help="skip compare.pdf")
    _progress_flags(c)


def _detection_line(s: dict[str, Any]) -> list[str]:
    """The detection audit's recall/precision line (issue 26), else nothing."""
    d = s.get("detection")
    if not isinstance(d, dict) or d.get("recall") is None:
        return []
    prec = d.get("precision")
    return [
        f"  detection: recall {d['recall']:.1%} of {d.get('n_boxes')} boxes, precision "
        + (f"{prec:.1%}" if prec is not None else "n/a")
        + f" (score >= {d.get('score_threshold')}, IoU >= {d.get('iou_threshold')})"
    ]


def _print_end(outcome: Any, extra_gates: Sequence[dict[str, Any]] = (), code: int = 0) -> None:
    """The end-of-run summary; every user string (model, class, finding) is neutralised."""
    s = outcome.summary
    t = terminal_safe
    findings = s.get("findings", [])
    by_sev: dict[str, int] = {}
    for f in findings:
        by_sev[f["severity"]] = by_sev.get(f["severity"], 0) + 1
    gates = dict(s.get("gates") or {})
    gates["results"] = list(gates.get("results") or []) + list(extra_gates)
    acc = s["overall"].get("accuracy")
    lines = [
        "",
        f"cam-auditor {__version__}: {t(s['model'].get('name'))} on "
        f"{s['dataset']['n_evaluated']} images ({s['dataset']['n_skipped']} skipped)",
        f"  accuracy {acc:.1%}" if acc is not None else "  accuracy n/a",
        *_detection_line(s),
        "  findings: " + (", ".join(f"{v} {t(k)}" for k, v in by_sev.items()) or "none"),
    ]
    for f in findings[:5]:
        lines.append(f"    [{t(f['severity'])}] {t(f['title'])}")
    lines.append("  gates: " + gate_verdict(gates["results"]))
    failed = [r for r in gates["results"] if not r["passed"]]
    for r in failed[:5]:
        lines.append(
            f"    ✗ {t(r['rule'])}"
            + (f" [{t(r['class'])}]" if r.get("class") else "")
            + f": {r['value'] if r['value'] is None else round(r['value'], 4)} "
            f"vs {r['bound']} {r['threshold']}"
        )
    for kind, path in outcome.report.items():
        lines.append(f"  {kind}: {t(path)}")
    lines.append(f"  summary: {t(outcome.run_dir / 'summary.json')}")
    _say(terminal_safe("\n".join(lines), keep_newlines=True), code)


def _say(text: str, code: int = EXIT_OK) -> None:
    """Print ``text`` to stdout; a closed stdout (``auditor ... | head``) ends the command
    with ``code`` (its real verdict), not as an internal error."""
    try:
        print(text, flush=True)
    except BrokenPipeError as exc:
        from auditor.run_options import quiet_broken_pipe

        quiet_broken_pipe()
        exc.auditor_code = code  # type: ignore[attr-defined]
        raise


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (see the module docstring). Never raises,
    except ``SystemExit`` from ``--help``/``--version`` and argument errors (exit 2)."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False) and not args.verbose  # --quiet: errors only
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    command = "auditor " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM,)}
    _install_signals()
    from auditor.audit import interrupt

    restore_sigint = interrupt.install()  # Ctrl-C: stop after the batch; twice: quit (130)
    from auditor.progress import configure

    # the CLI shows progress on stderr (lines when it is no terminal) unless told not to
    configure(not (getattr(args, "quiet", False) or getattr(args, "no_progress", False)))
    try:
        code = _dispatch(args, command)
    except BaseException as exc:  # noqa: BLE001 - the one place that maps errors to codes
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, BrokenPipeError) and getattr(exc, "auditor_code", None) is not None:
            # the reader of stdout went away (`auditor ... | head`): not a bug (issue 27)
            code = int(getattr(exc, "auditor_code", EXIT_OK))
        else:
            code = exit_code_for(exc)
            log_path = write_traceback(exc, args, command) if code == EXIT_INTERNAL else None
            print(_message(exc, code, log_path), file=sys.stderr)
    finally:
        configure(None)  # in-process callers (tests, notebooks) get the automatic default back
        restore_sigint()
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):  # not the main thread / not restorable
                pass
    from auditor.audit.distributed import agree_exit_code

    return agree_exit_code(code)  # under torchrun every rank exits with rank 0's code


def _check_report_run(run_dir: Path) -> None:
    """What ``auditor report`` refuses before rendering (exit 2): no summary.json; a schema,
    key or file ``load_run`` refuses; tampered values or checksums (issue 27). ``load_run``
    runs :func:`auditor.results.validate.check_report_inputs`: one check for CLI and API."""
    if not (run_dir / "summary.json").is_file():
        raise AuditorInputError(f"RUN_DIR {run_dir}: no summary.json (not a run directory)")
    from auditor.notebook import load_run

    load_run(run_dir)


def _dispatch(args: argparse.Namespace, command: str) -> int:
    """Run the parsed sub-command; its exit code."""
    import auditor

    if args.command == "demo":
        outcome = auditor.run_demo(
            args.out, variant=args.variant, pdf=not args.no_pdf, limit=args.limit, command=command
        )
        if not args.quiet:
            _print_end(outcome)
        # the demo exists to show a failing gate: exit 0 when it ran as intended
        return EXIT_OK
    if args.command == "gates":
        from auditor.run_options import gates_listing

        _say(gates_listing())
        return EXIT_OK
    if args.command == "run":
        return _run(args, command)
    if args.command == "finalize":
        return _finalize(args, command)
    if args.command == "report":
        return _report(args)
    if args.command == "export":
        return _export(args)
    if args.command in ("sign", "verify"):
        from auditor.report.cli_signoff import sign_command, verify_command

        if args.command == "sign":
            return sign_command(args)
        return verify_command(args)
    if args.command == "compare":
        return _compare(args)
    raise AuditorInputError(f"unknown command {args.command!r}")  # argparse restricts choices


def _finalize(args: argparse.Namespace, command: str) -> int:
    """``auditor finalize``: combine a run directory's shards into results."""
    from auditor.audit.runner import finalize_run

    outcome = finalize_run(
        args.run_dir,
        config_path=args.config,
        pdf=False if args.no_pdf else None,
        command=command,
        aggregation=args.aggregation,
    )
    if not args.quiet:
        _print_end(outcome, code=outcome.exit_code)
    return outcome.exit_code


def _report(args: argparse.Namespace) -> int:
    """``auditor report``: re-render a run's report (its summary checked first)."""
    import auditor

    _check_report_run(args.run_dir)  # schema, keys, files, tampered values: exit 2 first
    paths = auditor.render_report(args.run_dir, html=True, pdf=args.pdf, templates=args.templates)
    if not args.quiet:
        _say("\n".join(f"{kind}: {terminal_safe(path)}" for kind, path in paths.items()))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    """``auditor export``: the model card (and an MLflow run) from a verified run."""
    if not (args.run_dir / "summary.json").is_file():
        raise AuditorInputError(f"RUN_DIR {args.run_dir}: no summary.json (not a run directory)")
    from auditor.report.model_card import write_model_card
    from auditor.report.signoff import MANIFEST, verify_run, write_manifest

    manifest = (args.run_dir / MANIFEST).is_file()
    problems = verify_run(args.run_dir) if manifest else []
    if problems:  # never bake a changed file into a fresh manifest
        raise AuditorInputError(f"cannot export from {args.run_dir}: {problems[0]}")
    for path in write_model_card(args.run_dir):
        print(f"model card: {terminal_safe(path)}")
    if manifest:
        write_manifest(args.run_dir)
    if args.mlflow is not None:
        from auditor.report.mlflow_export import log_to_mlflow

        run_id = log_to_mlflow(args.run_dir, args.mlflow)
        print(f"mlflow run: {terminal_safe(run_id)} at {terminal_safe(args.mlflow)}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    """``auditor compare``: the paired comparison of two distinct runs."""
    from auditor.compare import compare_runs

    if args.run_a.is_dir() and args.run_b.is_dir() and args.run_a.samefile(args.run_b):
        # a careless CI line (`compare runs/v1 runs/v1`) would pass every gate, forever
        raise AuditorInputError(
            f"RUN_A and RUN_B are the same run directory ({args.run_a}): a run compared "
            f"with itself shows no change and passes every gate; pass the baseline run "
            f"and the candidate run"
        )
    result = compare_runs(
        args.run_a, args.run_b, out=args.out, config=args.config, pdf=not args.no_pdf
    )
    code = 0 if result.passed else EXIT_GATE_FAILED
    if not args.quiet:
        _say(terminal_safe(result.describe(), keep_newlines=True), code)
    return code


def _run(args: argparse.Namespace, command: str) -> int:
    """``auditor run``: config (+ --baseline) checked before the model, then the audit."""
    import auditor
    from auditor.config import split_gates
    from auditor.run_options import check_baseline, evaluate_baseline, replacing

    cfg = auditor.load_config(args.config, baseline=args.baseline is not None)
    out = args.out or Path("runs") / args.config.stem
    run_gates, cmp_gates = split_gates(cfg.gates)
    if args.baseline is not None:
        check_baseline(args.baseline, out)
    if args.limit is not None and args.limit < 1:
        raise AuditorInputError(f"--limit must be >= 1, got {args.limit}")
    if args.overwrite and args.resume:
        raise AuditorInputError("--overwrite and --resume contradict each other; pass one")
    from dataclasses import replace

    from auditor.audit.distributed import parse_shard, torchrun_env

    spec = parse_shard(args.shard) if args.shard is not None else None
    if spec is not None and torchrun_env() is not None:
        raise AuditorInputError("--shard cannot be combined with torchrun (the rank is the shard)")
    if args.overwrite and (spec is not None or torchrun_env() is not None):
        raise AuditorInputError("--overwrite cannot be combined with --shard or torchrun")
    with replacing(out, args.overwrite):
        outcome = auditor.run_audit(
            replace(cfg, gates=run_gates),
            out,
            limit=args.limit,
            device=args.device,
            resume=args.resume,
            pdf=False if args.no_pdf else None,
            progress=False if (args.no_progress or args.quiet) else True,
            trust_model_code=args.trust_model_code or None,
            command=command,
            shard=spec,
        )
    if not outcome.summary:  # a shard job, or a torchrun rank other than 0
        if spec is not None and not args.quiet:
            _say(
                f"shard {spec.label} complete in {terminal_safe(outcome.run_dir)}; when all "
                f"{spec.count} are, run: auditor finalize "
                f"{terminal_safe(shlex.quote(str(outcome.run_dir)))}"
            )
        return EXIT_OK
    code = outcome.exit_code
    extra: list[dict[str, Any]] = []
    if args.baseline is not None:
        comparison = evaluate_baseline(args.baseline, outcome.run_dir, cmp_gates)
        extra = [
            dict(r.to_json(), rule=f"{r.rule} (vs baseline)") for r in comparison.gates.results
        ]
        if code == EXIT_OK and not comparison.passed:
            code = EXIT_GATE_FAILED
    if not args.quiet:
        _print_end(outcome, extra, code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
