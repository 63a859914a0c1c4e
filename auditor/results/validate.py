"""Refuse a ``summary.json`` whose VALUES were edited or damaged (issue 27): ``auditor report``
would otherwise render wrong numbers with exit 0.

:func:`check_summary_values` raises :class:`AuditorInputError` (CLI exit 2) naming the file and
the key (a dotted path such as ``classes.circle.accuracy``) when

* a number is not finite (``NaN``/``Infinity``: this tool writes JSON with ``allow_nan=False``);
* a count (``n``, ``n_evaluated`` ...) is not an integer >= 0, or the counts disagree
  (``n_evaluated + n_skipped > n_samples``);
* a proportion (accuracy) lies outside [0, 1]; an interval is not ``[low, high]`` with
  ``low <= high`` inside [0, 1];
* a metric statistic (``mean``, ``ci_low``, ``ci_high``) is not a number, or lies outside the
  metric's declared range (``metrics_info[metric].range``), or ``ci_low > ci_high``;
* (classifier runs) the counts and the accuracy disagree with ``samples.parquet``: the number of
  evaluated samples, each class's ``n`` (samples whose ``label`` is the class index) and the
  overall accuracy (the mean of ``correct``, within 1e-6).

:func:`check_checksums` refuses a ``summary.json`` or ``samples.parquet`` whose SHA-256 differs
from the run's ``checksums.json`` (the manifest ``auditor verify`` checks), naming both files.

:func:`check_report_inputs` is the ONE check of a finished run's files (issue 23): ``auditor
report`` and the Python API ``auditor.load_run`` both call it, so the API refuses what the CLI
refuses. In order: ``summary.json`` present and a JSON object (:func:`check_summary`: the keys
of :data:`REQUIRED_SUMMARY_KEYS`, this ``schema_version``), its values
(:func:`check_summary_values`), ``samples.parquet`` present when samples were evaluated and
readable (its footer), then the checksums. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from auditor.errors import AuditorInputError

#: the report's own inputs, checked against checksums.json when it lists them
CHECKED_FILES = ("summary.json", "samples.parquet")
_EPS = 1e-9


def _bad(path: Path, key: str, what: str, value: Any) -> AuditorInputError:
    shown = json.dumps(value)[:80] if _jsonable(value) else repr(value)[:80]
    return AuditorInputError(
        f"{str(path)!r}: key {key!r} must be {what}, got {shown} (the file was edited or damaged;"
        f" run the audit again or restore it)"
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, node


def _count(path: Path, key: str, v: Any) -> int:
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise _bad(path, key, "an integer >= 0", v)
    return v


def _proportion(path: Path, key: str, v: Any, *, null_ok: bool = True) -> None:
    if v is None and null_ok:
        return
    if not (_is_number(v) and -_EPS <= v <= 1 + _EPS):
        raise _bad(path, key, "a number in [0, 1]" + (" or null" if null_ok else ""), v)


def _interval(path: Path, key: str, v: Any) -> None:
    if v is None:
        return
    ok = isinstance(v, list) and len(v) == 2 and all(x is None or _is_number(x) for x in v)
    if not ok:
        raise _bad(path, key, "[low, high] (numbers or null)", v)
    if None not in v:
        for x in v:
            _proportion(path, key, x)
        if v[0] > v[1] + _EPS:
            raise _bad(path, key, "[low, high] with low <= high", v)


def _metric_block(path: Path, key: str, block: Any, rng: Any) -> None:
    if not isinstance(block, Mapping):
        raise _bad(path, key, "an object of statistics", block)
    for stat in ("mean", "ci_low", "ci_high"):
        v = block.get(stat)
        if v is None:
            continue
        if not _is_number(v):
            raise _bad(path, f"{key}.{stat}", "a number or null", v)
        if isinstance(rng, list) and len(rng) == 2:
            low = -math.inf if rng[0] is None else float(rng[0])
            high = math.inf if rng[1] is None else float(rng[1])
            if not low - 1e-6 <= v <= high + 1e-6:
                raise _bad(path, f"{key}.{stat}", f"within the metric's range {rng}", v)
    for stat in ("n", "n_nan"):
        if stat in block:
            _count(path, f"{key}.{stat}", block[stat])
    lo: Any = block.get("ci_low")
    hi: Any = block.get("ci_high")
    if _is_number(lo) and _is_number(hi) and lo > hi + 1e-6:
        raise _bad(path, f"{key}.ci_low", f"<= ci_high ({hi})", lo)


def _metrics(path: Path, key: str, metrics: Any, info: Mapping[str, Any]) -> None:
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        raise _bad(path, key, "an object {method: {metric: statistics}}", metrics)
    for method, by_metric in metrics.items():
        if not isinstance(by_metric, Mapping):
            raise _bad(path, f"{key}.{method}", "an object {metric: statistics}", by_metric)
        for name, block in by_metric.items():
            meta = info.get(name) if isinstance(info, Mapping) else None
            rng = meta.get("range") if isinstance(meta, Mapping) else None
            _metric_block(path, f"{key}.{method}.{name}", block, rng)


def _group(path: Path, key: str, group: Any, info: Mapping[str, Any]) -> None:
    """``overall`` or one class: n, accuracy, its interval and the metric statistics."""
    if not isinstance(group, Mapping):
        raise _bad(path, key, "an object", group)
    if "n" in group:
        _count(path, f"{key}.n", group["n"])
    if "accuracy" in group:
        _proportion(path, f"{key}.accuracy", group["accuracy"])
    if "accuracy_ci" in group:
        _interval(path, f"{key}.accuracy_ci", group["accuracy_ci"])
    _metrics(path, f"{key}.metrics", group.get("metrics"), info)


#: keys every summary.json of schema 1 has (DESIGN 4.3); a file without them is not a run's
REQUIRED_SUMMARY_KEYS = ("schema_version", "methods", "overall", "classes", "dataset")


def check_summary(data: Any, path: Path) -> None:
    """Refuse a ``summary.json`` that is not one this version wrote: not an object, a key of
    :data:`REQUIRED_SUMMARY_KEYS` missing, or another ``schema_version``
    (:class:`AuditorInputError` naming the file; CLI exit 2)."""
    from auditor.results import SCHEMA_VERSION

    if not isinstance(data, dict):
        raise AuditorInputError(f"{str(path)!r}: not a summary (a JSON object is expected)")
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in data]
    if missing:
        raise AuditorInputError(
            f"{str(path)!r}: not a complete summary: missing key(s) {', '.join(missing)} (the "
            f"file was edited or damaged; run the audit again or restore it)"
        )
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > 1
        raise AuditorInputError(
            f"{str(path)!r}: key 'schema_version' is {version!r}, not {SCHEMA_VERSION}"
            + ("; written by a newer cam-auditor: upgrade to read it" if newer else "")
        )


def check_summary_values(data: Mapping[str, Any], path: Path) -> None:
    """Refuse impossible values in a structurally valid summary (see the module docstring);
    then, for classifier runs, their agreement with ``samples.parquet`` beside ``path``."""
    path = Path(path)
    for key, v in _walk(data):
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(path, key, "a finite number", v)
    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        raise _bad(path, "dataset", "an object", dataset)
    counts = {
        k: _count(path, f"dataset.{k}", dataset[k])
        for k in ("n_samples", "n_evaluated", "n_skipped")
        if k in dataset
    }
    if {"n_samples", "n_evaluated", "n_skipped"} <= set(counts):
        room = counts["n_samples"] - counts["n_skipped"]
        if counts["n_evaluated"] > room:
            raise _bad(
                path, "dataset.n_evaluated", f"<= n_samples - n_skipped = {room}",
                counts["n_evaluated"],
            )  # fmt: skip
    methods = data.get("methods")
    if not (isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods)):
        raise _bad(path, "methods", "a non-empty list of method names", methods)
    info = data.get("metrics_info") or {}
    _group(path, "overall", data.get("overall"), info)
    classes = data.get("classes")
    if not isinstance(classes, Mapping):
        raise _bad(path, "classes", "an object {class name: statistics}", classes)
    for name, group in classes.items():
        _group(path, f"classes.{name}", group, info)
    samples = path.parent / "samples.parquet"
    _check_samples_file(data, path, samples)
    if _is_classifier(data):
        _check_against_samples(data, path, samples)


def _check_samples_file(data: Mapping[str, Any], path: Path, samples: Path) -> None:
    """``samples.parquet`` exists when the summary reports evaluated samples, and its footer
    (schema and row groups) reads: a deleted or truncated file is refused here, not as an
    empty table or a raw ``ArrowInvalid`` later."""
    import pyarrow.parquet as pq

    n_eval = data["dataset"].get("n_evaluated") or 0
    if not samples.is_file():
        if n_eval > 0:
            raise AuditorInputError(
                f"{str(samples)!r}: missing, but {path.name} reports {n_eval} evaluated samples "
                f"(the run directory is incomplete; run the audit again or restore the file)"
            )
        return
    try:  # (a detection run's rows are boxes: zero rows can be right; the count is checked
        pq.read_metadata(samples)  # against the summary for classifier runs only, below)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign Parquet file is bad input
        raise AuditorInputError(
            f"{str(samples)!r}: unreadable ({type(exc).__name__}: {str(exc)[:200]}); the file is "
            f"damaged or truncated: run the audit again or restore it"
        ) from exc


def _is_classifier(data: Mapping[str, Any]) -> bool:
    """A single-label classifier run (multi-label and detection runs count pairs/boxes)."""
    if "labels" in data or "detection" in data:
        return False
    model = data.get("model")
    task = model.get("task") if isinstance(model, Mapping) else None
    return task in (None, "classification")


def _check_against_samples(data: Mapping[str, Any], path: Path, samples: Path) -> None:
    import pyarrow.parquet as pq

    if not samples.is_file():
        return  # load_run already refuses a missing file when samples were evaluated
    try:
        names = set(pq.read_schema(samples).names)
        key = "index" if "index" in names else "id"
        if not {key, "label", "correct"} <= names:
            return  # an older or foreign layout: nothing to compare with
        table = pq.read_table(samples, columns=[key, "label", "correct"])
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign Parquet file is bad input
        raise AuditorInputError(f"{str(samples)!r}: cannot read: {exc}") from exc
    frame = table.to_pandas().drop_duplicates(key)  # one row per sample x method
    n = len(frame)
    n_eval = data["dataset"].get("n_evaluated")
    if isinstance(n_eval, int) and n_eval != n:
        raise _bad(path, "dataset.n_evaluated", f"{n} (the samples in {samples.name})", n_eval)
    counts = frame["label"].value_counts().to_dict()
    for name, group in data["classes"].items():
        idx, got = group.get("index"), group.get("n")
        if isinstance(idx, int) and isinstance(got, int) and got != counts.get(idx, 0):
            raise _bad(
                path, f"classes.{name}.n", f"{counts.get(idx, 0)} (the samples in {samples.name})",
                got,
            )  # fmt: skip
    acc: Any = (data.get("overall") or {}).get("accuracy")
    if _is_number(acc) and n:
        true = float(frame["correct"].astype(bool).mean())
        if abs(float(acc) - true) > 1e-6:
            raise _bad(path, "overall.accuracy", f"{true!r} (the mean of 'correct' in "
                       f"{samples.name})", acc)  # fmt: skip


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_checksums(run_dir: Path, manifest: str = "checksums.json") -> None:
    """Refuse a report input (:data:`CHECKED_FILES`) whose SHA-256 differs from ``manifest``."""
    mpath = Path(run_dir) / manifest
    if not mpath.is_file():
        return
    try:
        files = json.loads(mpath.read_text("utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        raise AuditorInputError(
            f"{str(mpath)!r}: cannot read the checksum manifest: {exc}"
        ) from exc
    if not isinstance(files, Mapping):
        raise AuditorInputError(f"{str(mpath)!r}: no 'files' object")
    for name in CHECKED_FILES:
        target = Path(run_dir) / name
        if name in files and target.is_file() and _sha256(target) != files[name]:
            raise AuditorInputError(
                f"{str(target)!r}: changed since the run wrote it (SHA-256 differs from "
                f"{manifest}); `auditor verify {run_dir}` lists every change"
            )


def check_report_inputs(run_dir: str | Path) -> dict[str, Any]:
    """The one check of a finished run directory, used by ``auditor report`` and
    ``auditor.load_run`` (issue 23): ``summary.json`` present, readable and of this schema
    (:func:`check_summary`), its values and their agreement with ``samples.parquet``
    (:func:`check_summary_values`), then :func:`check_checksums`.

    Returns the parsed summary. Raises :class:`AuditorInputError` (CLI exit 2) naming the file
    and, for a value, its key.
    """
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise AuditorInputError(f"{str(path)!r}: not found (not a finished run directory)")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditorInputError(f"{str(path)!r}: cannot read the summary: {exc}") from exc
    check_summary(data, path)
    check_summary_values(data, path)
    check_checksums(Path(run_dir))
    return data
