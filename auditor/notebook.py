"""A finished run in a notebook, as pandas tables: ``auditor.load_run(DIR)``.

::

    import auditor
    run = auditor.load_run("runs/v2")
    run.summary.passed                      # the typed result (auditor.results.AuditResult)
    run.classes.sort_values("risk", ascending=False).head()
    run.samples.query("method == 'gradcam' and label_name == 'triangle'")
    run.findings[["id", "class", "severity", "title"]]
    maps = run.cams(["images/0001.png"])     # {id: low-resolution map [h, w], max-normalised}
    diff = run.compare("runs/v1")           # paired comparison (auditor.compare_runs)
    run                                     # in Jupyter: a short verdict table

Nothing is recomputed: the tables are views of ``summary.json`` and ``samples.parquet``, so
the numbers are those of the report.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.errors import AuditorInputError
from auditor.format import fmt_pct
from auditor.results import SEVERITIES, AuditResult, thaw
from auditor.results.validate import REQUIRED_SUMMARY_KEYS, check_report_inputs, check_summary

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

__all__ = ["REQUIRED_SUMMARY_KEYS", "Run", "check_summary", "load_run"]


def load_run(run_dir: str | Path) -> Run:
    """Open the run directory ``run_dir`` (as written by ``auditor run`` / ``audit``).

    The run's files pass the checks ``auditor report`` makes
    (:func:`auditor.results.validate.check_report_inputs`): the API refuses what the CLI refuses.

    Raises:
        TypeError: ``run_dir`` is not a path.
        AuditorInputError: not a directory; ``summary.json`` missing, unreadable, of another
            schema, without a required key, or with an impossible value (non-finite, a count or
            interval that cannot be, accuracy or ``n`` disagreeing with ``samples.parquet``);
            ``samples.parquet`` missing or unreadable; a checksum mismatch. The message names
            the file and the key.
    """
    if not isinstance(run_dir, str | Path):
        raise TypeError(f"`run_dir` must be a path, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if not path.is_dir():
        raise AuditorInputError(f"`run_dir` must be a run directory, got {str(path)!r}")
    data = check_report_inputs(path)  # the checks of `auditor report`, the one function
    sp = path / "summary.json"
    try:
        result = AuditResult.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AuditorInputError(f"{str(sp)!r}: cannot read the summary: {exc}") from exc
    return Run(path, result)


class Run:
    """One audit run: ``.summary`` (typed), ``.samples``, ``.classes``, ``.findings``
    (pandas DataFrames), ``.cams(ids)`` and ``.compare(other)``."""

    def __init__(self, path: Path, summary: AuditResult) -> None:
        self.path = Path(path)
        self.summary = summary

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.summary.model.name!r})"

    # -- tables ---------------------------------------------------------------------------
    @cached_property
    def samples(self) -> pd.DataFrame:
        """One row per sample × method (``samples.parquet``); empty if the run has no rows."""
        import pandas as pd

        p = self.path / "samples.parquet"
        if not p.is_file():
            if self.summary.dataset.n_evaluated:
                raise AuditorInputError(f"{str(p)!r}: missing (the run has evaluated samples)")
            return pd.DataFrame()
        import pyarrow as pa

        from auditor.audit.store import read_samples

        try:
            return read_samples(p).to_pandas()
        except (OSError, ValueError, pa.ArrowException) as exc:  # ArrowInvalid: a ValueError
            raise AuditorInputError(
                f"{str(p)!r}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); the file is "
                f"damaged or truncated"
            ) from exc

    @cached_property
    def classes(self) -> pd.DataFrame:
        """One row per class, indexed by class name: ``n``, ``accuracy`` and its interval,
        each metric of the primary method as ``<metric>_mean`` / ``_ci_low`` / ``_ci_high``,
        the intervention accuracies, ``flagged``, ``flags`` (list) and ``risk``.

        The same columns as ``classes.csv`` (plus ``risk``), with missing values as NaN.
        """
        import pandas as pd

        from auditor.export import per_class_rows

        rows = per_class_rows(self.summary)
        frame = pd.DataFrame(rows[1:], columns=rows[0])
        frame["risk"] = [c.risk for c in self.summary.classes.values()]
        frame = frame.set_index("class")
        numeric = [c for c in frame.columns if c not in ("method", "flags", "flagged")]
        frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
        frame["flagged"] = frame["flagged"].astype(bool)
        for name, c in self.summary.classes.items():  # detection runs (issue 26)
            det = c.extra.get("detection")
            for key, value in (det or {}).items():
                if value is None or isinstance(value, int | float):
                    frame.loc[name, f"detection_{key}"] = value
        return frame

    @cached_property
    def findings(self) -> pd.DataFrame:
        """One row per finding (``id`` index): class, kind, severity, title, message,
        evidence (dict) and examples (list of sample ids)."""
        import pandas as pd

        cols = ["id", "class", "kind", "severity", "title", "message", "evidence", "examples"]
        rows = [
            [
                f.id,
                f.cls,
                f.kind,
                f.severity,
                f.title,
                f.message,
                thaw(f.evidence),
                list(f.examples),
            ]
            for f in self.summary.findings
        ]
        return pd.DataFrame(rows, columns=cols).set_index("id")

    @cached_property
    def groups(self) -> pd.DataFrame:
        """One row per attribute level (summary.json ``groups``; empty without ``[data]
        groups``): see :func:`auditor.report.groups.groups_frame`."""
        from auditor.report.groups import groups_frame

        return groups_frame(self.summary)

    @cached_property
    def group_classes(self) -> pd.DataFrame:
        """One row per class × attribute level: one-vs-rest sensitivity, specificity, AUROC
        and class-wise ECE with intervals (:func:`auditor.report.groups.group_classes_frame`)."""
        from auditor.report.groups import group_classes_frame

        return group_classes_frame(self.summary)

    # -- maps -----------------------------------------------------------------------------
    def cams(self, ids: Iterable[str] | str, method: str | None = None) -> dict[str, np.ndarray]:
        """Low-resolution maps ``[h, w]`` (scaled to a maximum of 1) of the samples ``ids``
        for ``method`` (default: the primary method), read from the run's shards.

        Raises:
            KeyError: an id that is not a sample of this run, or an unknown method.
        """
        from auditor.audit.store import RunStore

        wanted = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        method = method or self.summary.primary_method
        if method not in self.summary.methods:
            raise KeyError(f"`method` must be one of {list(self.summary.methods)}, got {method!r}")
        if "detection" in self.summary.extra:  # one map per box: ids "<image id>#gt0", "#fp3"
            from auditor.audit.detection_finish import read_box_maps

            return read_box_maps(self.path, wanted, method)
        prim = self.samples
        if prim.empty:
            index: dict[str, int] = {}
        else:
            prim = prim[prim["method"] == method]
            index = dict(zip(prim["id"].astype(str), prim["index"].astype(int)))
        missing = [i for i in wanted if i not in index]
        if missing:
            raise KeyError(f"`ids`: not samples of this run: {missing[:5]}")
        try:
            maps = RunStore(self.path).load_cams(method, [index[i] for i in wanted])
        except (OSError, ValueError) as exc:
            raise AuditorInputError(
                f"{str(self.path / 'shards')!r}: the maps cannot be read "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc
        lost = [i for i in wanted if index[i] not in maps]
        if lost:
            raise AuditorInputError(
                f"{str(self.path / 'shards')!r}: no stored map for {lost[:5]} (method "
                f"{method!r}); the run's shards are missing or incomplete"
            )
        return {i: maps[index[i]] for i in wanted}

    # -- comparison -----------------------------------------------------------------------
    def compare(self, other: Run | str | Path, **kwargs: Any) -> Any:
        """Paired comparison with ``other`` as the baseline (A) and this run as the candidate
        (B): :func:`auditor.compare_runs` (keyword arguments passed on; ``render=False``
        unless given)."""
        from auditor.compare import compare_runs

        base = other.path if isinstance(other, Run) else Path(other)
        if base.is_dir() and base.samefile(self.path):
            raise AuditorInputError(
                f"`other` is this run ({self.path}): a run compared with itself shows no change "
                f"and passes every gate; compare a baseline run with a candidate run"
            )
        kwargs.setdefault("render", False)
        return compare_runs(base, self.path, **kwargs)

    # -- Jupyter --------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        r = self.summary
        e = html.escape
        counts = {s: sum(1 for f in r.findings if f.severity == s) for s in SEVERITIES}
        if r.gates is None or not r.gates.results:
            verdict = "no release gates configured"
        elif r.gates.passed:
            verdict = f"PASSED: all {len(r.gates.results)} gate checks"
        else:
            verdict = f"FAILED: {r.gates.n_failed} of {len(r.gates.results)} gate checks"
        flagged = [c for c in r.classes.values() if c.flagged]
        flagged.sort(key=lambda c: -(c.risk or 0.0))
        rows = [
            ("Model", e(str(r.model.name))),
            ("Run", e(str(self.path))),
            ("Images", f"{r.dataset.n_evaluated} evaluated, {r.dataset.n_skipped} skipped"),
            ("Accuracy", e(fmt_pct(r.overall.accuracy))),
            ("Verdict", f"<b>{e(verdict)}</b>"),
            ("Findings", e(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none")),
            ("Flagged classes", e(", ".join(c.name for c in flagged[:10]) or "none")),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table class='cam-auditor-run'>{body}</table>"
