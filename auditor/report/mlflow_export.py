"""``auditor export RUN --mlflow URI``: the audit as an MLflow run (issue 25).

One MLflow run per export, in the experiment ``[report] title`` or ``cam-auditor`` (override
with ``experiment=``), logged through :class:`mlflow.MlflowClient` (no global MLflow state):

- params: model name, model/dataset/config SHA-256, primary method, methods, seed, images
  evaluated, document id and model version when the configuration names them;
- metrics: ``overall.accuracy`` and ``overall.<metric>`` (primary method's mean), and per
  class ``class.<slug>.accuracy`` / ``class.<slug>.<metric>`` (slug: auditor.format.slugify,
  as MLflow keys allow only letters, digits and ``_-. /``); ``gates.passed`` (1/0) and
  ``gate.<rule>.<slug or all>`` (1 passed, 0 failed); ``findings.<severity>`` counts;
- tags: ``cam_auditor.verdict`` (``pass``/``fail``/``no gates``), the run directory;
- artefacts: summary.json, report.html, report.pdf, junit.xml, classes.csv, findings.csv,
  model_card.json/.md, checksums.json, signoff.json (those present).

mlflow is optional (``pip install 'cam-auditor[mlflow]'`` or ``mlflow-skinny``): without it
:func:`log_to_mlflow` raises :class:`auditor.errors.AuditorInputError` saying what to
install, which the CLI turns into exit 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from auditor.errors import AuditorInputError
from auditor.format import slugify
from auditor.results import AuditResult

__all__ = ["ARTEFACTS", "log_to_mlflow", "mlflow_payload"]

ARTEFACTS: tuple[str, ...] = (
    "summary.json",
    "report.html",
    "report.pdf",
    "junit.xml",
    "classes.csv",
    "findings.csv",
    "model_card.json",
    "model_card.md",
    "checksums.json",
    "signoff.json",
)


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _key(text: str) -> str:
    return slugify(text)[:200]


def mlflow_payload(result: AuditResult) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """(params, metrics, tags) of ``result``: the values logged (see the module docstring).

    A value that was not computed (None, NaN) is left out, never logged as 0.
    """
    run, model, data = result.run, result.model, result.dataset
    raw: dict[str, Any] = {
        "model": model.name,
        "model_sha256": model.sha256,
        "dataset_sha256": data.sha256,
        "config_sha256": run.config_sha256,
        "primary_method": result.primary_method,
        "methods": ",".join(result.methods),
        "seed": run.seed,
        "n_evaluated": data.n_evaluated,
    }
    params = {k: str(v)[:500] for k, v in raw.items() if v not in (None, "")}
    metrics: dict[str, float] = {}
    primary = result.primary_method or ""

    def put(key: str, value: Any) -> None:
        v = _finite(value)
        if v is not None:
            metrics[key] = v

    put("overall.accuracy", result.overall.accuracy)
    for name, s in (result.overall.metrics.get(primary) or {}).items():
        put(f"overall.{name}", s.mean)
    for cname, c in result.classes.items():
        slug = _key(cname)
        put(f"class.{slug}.accuracy", c.accuracy)
        for name, s in (c.metrics.get(primary) or {}).items():
            put(f"class.{slug}.{name}", s.mean)
    verdict = "no gates"
    if result.gates is not None and result.gates.results:
        put("gates.passed", 1.0 if result.gates.passed else 0.0)
        verdict = "pass" if result.gates.passed else "fail"
        for g in result.gates.results:
            where = "all" if g.cls is None else _key(g.cls)
            put(f"gate.{_key(g.rule)}.{where}", 1.0 if g.passed else 0.0)
    for sev in ("critical", "high", "medium", "low", "info"):
        put(f"findings.{sev}", sum(1 for f in result.findings if f.severity == sev))
    tags = {"cam_auditor.verdict": verdict}
    return params, metrics, tags


def log_to_mlflow(run_dir: Path, uri: str, *, experiment: str | None = None) -> str:
    """Log the run at ``run_dir`` to the MLflow tracking server or store at ``uri``.

    Returns the MLflow run id.

    MLflow 3 refuses a plain ``file://`` store unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set
    (its choice; a database or server URI needs nothing).

    Raises:
        AuditorInputError: mlflow is not installed, ``uri`` is empty, or MLflow refuses the
            store.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise AuditorInputError(f"--mlflow must be a tracking URI, got {uri!r}")
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise AuditorInputError(
            "--mlflow needs MLflow: pip install 'cam-auditor[mlflow]' (or mlflow-skinny)"
        ) from exc
    import time

    from auditor.report.context import load_result

    run_dir = Path(run_dir)
    result = load_result(run_dir)
    params, metrics, tags = mlflow_payload(result)
    from mlflow.exceptions import MlflowException

    name = experiment or "cam-auditor"
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        exp_id = found.experiment_id if found is not None else client.create_experiment(name)
    except MlflowException as exc:  # an unusable store: bad input, named with MLflow's reason
        reason = " ".join(str(exc).split())[:300]
        raise AuditorInputError(f"--mlflow {uri}: {reason}") from exc
    mlrun = client.create_run(exp_id, run_name=f"audit {result.model.name or run_dir.name}")
    run_id = str(mlrun.info.run_id)
    now = int(time.time() * 1000)
    tags["cam_auditor.run_dir"] = str(run_dir.resolve())
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for fname in ARTEFACTS:
        if (run_dir / fname).is_file():
            client.log_artifact(run_id, str(run_dir / fname))
    client.set_terminated(run_id)
    return run_id
