"""``compare_runs``: the comparison in named steps, in-memory pairs or streamed chunks
(:mod:`auditor.compare.streamed`), and its outputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tomllib

from auditor._version import __version__
from auditor.audit.store import atomic_write_bytes, atomic_write_json
from auditor.compare import streamed as cs
from auditor.compare.core import (
    POISSON_INTERVAL,
    STREAM_MIN_PAIRS,
    LoadedRun,
    PairedMethods,
    TableSink,
    block_json,
    class_name,
    class_status,
    compare_methods,
    load_compared_run,
    num,
    paired_tables,
    sort_key,
    top_moved,
)
from auditor.compare.detection_run import compare_detection_runs, detection_task
from auditor.compare.gates import checked_gate_rules, evaluate_comparison_gates
from auditor.config import GateRule
from auditor.errors import AuditorError, AuditorInputError
from auditor.format import fmt, slugify
from auditor.report.compare import build_compare_context, moved_panel
from auditor.results import (
    COMPARISON_SCHEMA_VERSION,
    ComparisonResult,
)

log = logging.getLogger("auditor")


# --------------------------------------------------------------------------------------------
# display images
# --------------------------------------------------------------------------------------------
def _open_display_dataset(run: LoadedRun) -> Any | None:
    """The run's dataset, re-opened from its ``config.toml`` copy, or None when unavailable.

    Relative paths are tried against the run directory, its ``inputs/`` folder (``auditor
    demo``) and its parent; a dataset is accepted only when its annotation fingerprint equals
    the one recorded in ``summary.json``.
    """
    cfg = run.path / "config.toml"
    want = run.summary.dataset.annotation_sha256
    if not cfg.is_file() or not want:
        return None
    try:
        raw = tomllib.loads(cfg.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    data = raw.get("data")
    if not isinstance(data, dict):
        return None
    from auditor.data import open_dataset
    from auditor.data.config import parse_data_section

    for base in (run.path, run.path / "inputs", run.path.parent):
        try:
            ds = open_dataset(parse_data_section(data, base.resolve(), cfg.name))
            if ds.annotation_sha256() == want:
                return ds
        except (AuditorError, OSError, ValueError, TypeError):
            continue
    return None


def _display(ds: Any, index: int, sample_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if ds is None:
        return None, None
    try:
        if ds.sample_id(index) != sample_id:
            return None, None
        image, mask = ds.load_display(index)
        return image, mask
    except (AuditorError, OSError, ValueError, IndexError):
        return None, None


# --------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3, signed: bool = False) -> str:
    return fmt(v, f"{'+' if signed else ''}.{digits}f", missing="n/a")


def _pfmt(v: Any) -> str:
    return fmt(v, ".2g", missing="n/a")


def _check_stream_args(stream_min_pairs: Any, chunk_pairs: Any) -> None:
    if (
        isinstance(stream_min_pairs, bool)
        or not isinstance(stream_min_pairs, int | np.integer)
        or stream_min_pairs < 0
    ):
        raise ValueError(f"`stream_min_pairs` must be an int >= 0, got {stream_min_pairs!r}")
    if chunk_pairs is not None and (
        isinstance(chunk_pairs, bool) or not isinstance(chunk_pairs, int) or chunk_pairs < 64
    ):
        raise ValueError(f"`chunk_pairs` must be an int >= 64, got {chunk_pairs!r}")


def _check_args(n_boot: Any, seed: Any, confidence: Any, top_n: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 2:
        raise ValueError(f"`n_boot` must be an int >= 2, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"`seed` must be an int, got {seed!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise TypeError(f"`confidence` must be a float, got {confidence!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 0:
        raise ValueError(f"`top_n` must be an int >= 0, got {top_n!r}")


def _run_info(run: LoadedRun) -> dict[str, Any]:
    s = run.summary
    return {
        "path": str(run.path.resolve()),
        "name": run.name,
        "title": s.title,
        "model": s.model.to_json(),
        "primary_method": run.primary,
        "methods": list(s.methods),
        "n_evaluated": s.dataset.n_evaluated,
        "finished": s.run.finished,
        "tool_version": s.tool.get("version"),
    }


def _moved(
    ra: LoadedRun,
    rb: LoadedRun,
    prim: PairedMethods,
    classes: Sequence[str],
    out: Path,
    top_n: int,
    dataset: Any | None,
) -> list[dict[str, Any]]:
    """The ``top_n`` samples whose background focus moved most, with side-by-side panels."""
    from auditor.audit.store import RunStore

    if top_n == 0 or "background_focus" not in prim.quantities or prim.moved is None:
        return []
    cand = top_moved(prim.moved, top_n)
    a, b, d, idx = cand["a"], cand["b"], cand["d"], cand["index"]
    if idx.size == 0:
        return []
    order = range(idx.size)
    wanted = [int(i) for i in idx]
    try:
        cams_a = RunStore(ra.path).load_cams(prim.method_a, wanted)
        cams_b = RunStore(rb.path).load_cams(prim.method_b, wanted)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("compare: cannot read low-resolution CAMs: %s", exc)
        cams_a, cams_b = {}, {}
    ds = dataset if dataset is not None else _open_display_dataset(rb) or _open_display_dataset(ra)
    ids = list(cand["id"])
    preds_a, preds_b = cand["pred_a"], cand["pred_b"]
    out_list: list[dict[str, Any]] = []
    for rank, j in enumerate(order):
        i, sid = int(idx[j]), str(ids[rank])
        entry: dict[str, Any] = {
            "rank": rank + 1,
            "index": i,
            "id": sid,
            "label": classes[int(cand["label"][j])],
            "pred_a": class_name(classes, preds_a[j]),
            "pred_b": class_name(classes, preds_b[j]),
            "background_focus_a": num(a[j]),
            "background_focus_b": num(b[j]),
            "delta": num(d[j]),
            "file": None,
            "with_image": False,
        }
        if i in cams_a and i in cams_b:
            image, mask = _display(ds, i, sid)
            png = moved_panel(
                cams_a[i],
                cams_b[i],
                image=image,
                mask=mask,
                title=f"{sid} · label {entry['label']} · background focus "
                f"{_fmt(a[j], 2)} → {_fmt(b[j], 2)}",
                label_a=f"A: {ra.name} ({prim.method_a}) · BF {_fmt(a[j], 2)}",
                label_b=f"B: {rb.name} ({prim.method_b}) · BF {_fmt(b[j], 2)}",
            )
            fname = f"gallery/moved-{rank + 1:02d}-{slugify(sid)}.png"
            atomic_write_bytes(out / fname, png)
            entry["file"] = fname
            entry["with_image"] = image is not None
        out_list.append(entry)
    return out_list


#: Moved samples kept as candidates (the report shows at most ``top_n`` of them).


def _check_comparable(ra: LoadedRun, rb: LoadedRun) -> list[str]:
    """The runs' shared classes; an error when they audited different data or classes."""
    ha, hb = ra.summary.dataset.sha256, rb.summary.dataset.sha256
    if not ha or not hb or ha != hb:
        raise AuditorInputError(
            f"the runs audited different datasets: RUN_A {ra.path} has dataset sha256 {ha}, "
            f"RUN_B {rb.path} has {hb}; a paired comparison needs the same evaluation set"
        )
    ca = list(ra.summary.dataset.classes)
    cb = list(rb.summary.dataset.classes)
    if ca != cb or not ca:
        raise AuditorInputError(
            f"the runs have different classes: RUN_A {ca[:6]}{'…' if len(ca) > 6 else ''} "
            f"({len(ca)}), RUN_B {cb[:6]}{'…' if len(cb) > 6 else ''} ({len(cb)})"
        )
    return ca


def _out_dir(out: str | Path | None, ra: LoadedRun, rb: LoadedRun) -> Path:
    """The comparison directory (default ``<run_b>-vs-<run_a name>`` beside run B), created."""
    out_dir = Path(out) if out is not None else rb.path.parent / f"{rb.path.name}-vs-{ra.path.name}"
    for r in (ra, rb):
        if out_dir.resolve() == r.path.resolve():
            raise AuditorInputError(f"--out {out_dir}: must not be a run directory ({r.role})")
    from auditor.audit.store import claim_output_dir
    from auditor.compare.gates import COMPARE_MARKER

    return claim_output_dir(out_dir, COMPARE_MARKER, "comparison directory")


def _pair_methods(
    ra: LoadedRun,
    rb: LoadedRun,
    classes: Sequence[str],
    settings: Mapping[str, Any],
    sink: TableSink,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
    *,
    chunk_pairs: int | None = None,
    top_n: int = 8,
    tmp_root: Path | None = None,
) -> tuple[PairedMethods, dict[str, PairedMethods]]:
    """The primary methods' paired statistics (with accuracy) and each shared method's.

    One comparison at a time, its rows written to ``sink`` (comparison.parquet) as they are
    computed. A comparison whose method has at least ``stream_min_pairs`` rows in both runs
    runs in flat memory, a chunk of ``chunk_pairs`` pairs at a time
    (:func:`auditor.compare_stream.stream_compare`); otherwise both tables are read and
    paired in memory and released once written (the statistics stay).
    """

    chunk = cs.CHUNK_PAIRS if chunk_pairs is None else int(chunk_pairs)
    kw = {**settings, "stream_min_pairs": stream_min_pairs}
    keep = max(int(top_n), 1)
    counted: dict[str, cs.MethodCounts] = {}

    def counts(run: LoadedRun) -> cs.MethodCounts:
        if run.role not in counted:
            counted[run.role] = cs.method_counts(run, chunk)
        return counted[run.role]

    def large(ma: str, mb: str) -> bool:
        if "explained" in ra.columns or "explained" in rb.columns:
            return False  # multi-label runs (issue 26): paired in memory (positives only)
        rows = min(_file_rows(ra), _file_rows(rb))
        if rows < stream_min_pairs:
            return False  # the files hold fewer rows than the threshold: no need to count
        return min(counts(ra).rows.get(ma, 0), counts(rb).rows.get(mb, 0)) >= stream_min_pairs

    def one(ma: str, mb: str, key: str, with_accuracy: bool) -> PairedMethods:
        if large(ma, mb):
            return cs.stream_compare(
                ra, rb, ma, mb, classes, counts_a=counts(ra), counts_b=counts(rb), key=key,
                sink=sink, with_accuracy=with_accuracy, chunk=chunk, moved_keep=keep,
                tmp_root=tmp_root, **kw,
            )  # fmt: skip
        res = compare_methods(
            ra, rb, ma, mb, classes, with_accuracy=with_accuracy, moved_keep=keep, **kw
        )
        if res.n_pairs == 0 and with_accuracy:
            return res
        for table in paired_tables(key, res, classes):
            sink.write(table)
        res.ta, res.tb = res.ta.slice(0, 0), res.tb.slice(0, 0)  # on disk now
        return res

    prim = one(ra.primary, rb.primary, "primary", True)
    if prim.n_pairs == 0:
        raise AuditorInputError(
            f"no sample of RUN_A {ra.path} could be paired with RUN_B {rb.path} by (index, id)"
        )
    methods_b = list(rb.summary.methods)
    shared = [m for m in ra.summary.methods if m in methods_b]
    others: dict[str, PairedMethods] = {}
    for m in shared:
        if m == ra.primary == rb.primary:
            others[m] = prim
        else:
            others[m] = one(m, m, m, False)
    return prim, others


def _file_rows(run: LoadedRun) -> int:
    """Rows of the run's samples.parquet (all methods), from its footer."""
    try:
        return int(pq.read_metadata(run.samples).num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise AuditorInputError(
            f"{run.role.upper()} {run.samples}: unreadable samples.parquet: {exc}"
        ) from exc


def _comparison_json(
    ra: LoadedRun,
    rb: LoadedRun,
    prim: PairedMethods,
    others: Mapping[str, PairedMethods],
    classes: Sequence[str],
    settings: Mapping[str, Any],
    top_n: int,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
) -> dict[str, Any]:
    """``comparison.json`` up to the class ranking, gates, moved samples and metrics_info."""
    n_a, n_b = prim.n_rows_a, prim.n_rows_b
    streamed = prim.streamed or any(p.streamed for p in others.values())
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "kind": "comparison",
        "tool": {"name": "cam-auditor", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_a": _run_info(ra),
        "run_b": _run_info(rb),
        "dataset": {
            "sha256": ra.summary.dataset.sha256,
            "name": ra.summary.dataset.name,
            "annotation_sha256": ra.summary.dataset.annotation_sha256,
            "n_samples": ra.summary.dataset.n_samples,
            "classes": list(classes),
        },
        "pairing": {
            "key": ["index", "id"],
            "n_paired": int(prim.n_pairs),
            "n_only_a": int(n_a - prim.n_pairs),
            "n_only_b": int(n_b - prim.n_pairs),
        },
        "settings": {
            **settings,
            "interval": "paired bootstrap (BCa, percentile fallback) of mean(B − A)",
            "test": "wilcoxon signed-rank (zsplit); accuracies: McNemar exact",
            "top_n": top_n,
            "stream_min_pairs": int(stream_min_pairs),
            "overall_interval": POISSON_INTERVAL if streamed else "exact",
        },
        "primary": block_json(prim, classes),
        "methods": {m: block_json(p, classes) for m, p in others.items()},
    }


def _rank_classes(comparison: dict[str, Any], classes: Sequence[str]) -> None:
    """Each primary class's status, ``class_order`` (worst first), ``regressed``, ``improved``."""
    for entry in comparison["primary"]["classes"].values():
        entry["status"] = class_status(entry["metrics"]) if entry["n"] else "n/a"
    ranked = sorted(classes, key=lambda nm: sort_key(comparison, nm))
    comparison["class_order"] = ranked
    comparison["regressed"] = [
        c for c in ranked if comparison["primary"]["classes"][c]["status"] == "regressed"
    ]
    comparison["improved"] = [  # most improved first
        c for c in reversed(ranked) if comparison["primary"]["classes"][c]["status"] == "improved"
    ]


def _metrics_info() -> dict[str, Any]:
    from auditor.config import to_jsonable
    from auditor.metrics.registry import METRICS

    return {k: to_jsonable(v) for k, v in METRICS.items()}


def _write_outputs(
    out_dir: Path,
    comparison: dict[str, Any],
    sink: TableSink,
    ra: LoadedRun,
    rb: LoadedRun,
) -> dict[str, Any]:
    """Write comparison.json, comparison.parquet (its rows are already in ``sink``) and
    junit.xml; the JSON as written (NaN → null)."""
    atomic_write_json(out_dir / "comparison.json", comparison)
    sink.commit()
    from auditor.export import write_junit

    write_junit(
        out_dir / "junit.xml",
        {"gates": comparison["gates"], "model": {"name": f"{rb.name} vs {ra.name}"}},
    )
    loaded: dict[str, Any] = json.loads((out_dir / "comparison.json").read_text("utf-8"))
    return loaded


def _render(
    comparison: Mapping[str, Any], out_dir: Path, *, pdf: bool, templates: Path | None
) -> dict[str, Path]:
    """compare.html (and compare.pdf with ``pdf``) from the written comparison."""
    from auditor.report import render_document

    context = build_compare_context(comparison, out_dir)
    out_pdf = out_dir / "compare.pdf" if pdf else None
    render_document(
        "compare.html.j2",
        context,
        out_dir / "compare.html",
        out_pdf=out_pdf,
        base_dir=out_dir,
        templates=templates,
    )
    report = {"html": out_dir / "compare.html"}
    if out_pdf is not None:
        report["pdf"] = out_pdf
    return report


def _load_pair(run_a: Path, run_b: Path) -> tuple[LoadedRun, LoadedRun]:
    """Both runs, loaded and checked; the same directory twice is refused (the API refuses
    what the CLI refuses)."""
    ra, rb = load_compared_run(run_a, "run_a"), load_compared_run(run_b, "run_b")
    if ra.path.samefile(rb.path):
        raise AuditorInputError(
            f"run_a and run_b are the same run directory ({ra.path}): a run compared with "
            f"itself shows no change and passes every gate"
        )
    return ra, rb


def _add_groups(
    comparison: dict[str, Any], ra: LoadedRun, rb: LoadedRun, settings: Mapping[str, Any]
) -> None:
    """The groups' paired comparison (issue 24, an additive key) where both runs have one."""
    from auditor.analysis.groups.compare import compare_groups

    groups = compare_groups(
        ra.path, rb.path, ra.summary.primary_method, rb.summary.primary_method,
        confidence=float(settings["confidence"]), n_boot=min(int(settings["n_boot"]), 1000),
        seed=int(settings["seed"]),
    )  # fmt: skip
    if groups is not None:
        comparison["groups"] = groups


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    *,
    out: str | Path | None = None,
    config: str | Path | None = None,
    gates: Sequence[GateRule] = (),
    pdf: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    top_n: int = 8,
    dataset: Any | None = None,
    templates: Path | None = None,
    render: bool = True,
    stream_min_pairs: int = STREAM_MIN_PAIRS,
    chunk_pairs: int | None = None,
) -> ComparisonResult:
    """Paired comparison of run B (candidate) against run A (baseline) on the same data.

    See the module docstring for the statistics. ``config``: a TOML file whose ``[gates]``
    section holds ``max_<metric>_increase`` / ``max_<metric>_decrease`` rules (a full audit
    config works too); ``gates``: more rules (``scope == "compare"``). ``out`` defaults to
    ``<run_b>-vs-<run_a name>`` beside ``run_b``. ``dataset``: an optional
    :class:`auditor.data.EvalDataset` for the display images of the moved samples (default:
    re-opened from the runs' ``config.toml`` when the data can be found, else CAMs only).
    ``render=False`` skips compare.html/compare.pdf. ``stream_min_pairs``: from this many
    pairs of a method on, its overall intervals come from the streamed Poisson bootstrap keyed
    by dataset index (flat memory, one pass for every quantity; agrees with the exact paired
    bootstrap within Monte-Carlo error); below it, the exact paired bootstrap.

    ``chunk_pairs`` (default :data:`auditor.compare_stream.CHUNK_PAIRS`, at least 64): the
    chunk of the flat-memory path.

    Memory: below ``stream_min_pairs`` rows of a method, each run's rows of it are read with
    only the needed columns, paired in memory and released once written to
    comparison.parquet. From ``stream_min_pairs`` rows on, the comparison is streamed a chunk
    of pairs at a time (:mod:`auditor.compare_stream`: index-range partitions, class-group
    spill files, exact per-class statistics up to a chunk of pairs, Poisson bootstrap and
    streamed Wilcoxon tests beyond), so memory does not grow with the number of samples.

    Raises:
        AuditorInputError: not a run directory, different datasets (sha256) or classes.
        ConfigError: an invalid ``config``.
        RenderError: the report could not be rendered.
    """
    _check_args(n_boot, seed, confidence, top_n)
    from auditor.progress import phase

    phase("comparison", f"{run_b} against {run_a}")
    _check_stream_args(stream_min_pairs, chunk_pairs)
    gate_rules = checked_gate_rules(config, gates)
    ra, rb = _load_pair(Path(run_a), Path(run_b))
    classes = _check_comparable(ra, rb)
    detection = detection_task(ra, rb, gate_rules)  # issue 26: paired boxes, not images
    out_dir = _out_dir(out, ra, rb)
    settings = {"n_boot": int(n_boot), "seed": int(seed), "confidence": float(confidence)}
    if detection:
        return compare_detection_runs(ra, rb, classes, out_dir, settings, gate_rules, pdf=pdf,
                                      templates=templates, render=render)  # fmt: skip
    sink = TableSink(out_dir / "comparison.parquet")
    prim, others = _pair_methods(
        ra, rb, classes, settings, sink, int(stream_min_pairs), chunk_pairs=chunk_pairs,
        top_n=int(top_n), tmp_root=out_dir,
    )  # fmt: skip
    comparison = _comparison_json(
        ra, rb, prim, others, classes, settings, int(top_n), int(stream_min_pairs)
    )
    _rank_classes(comparison, classes)
    _add_groups(comparison, ra, rb, settings)  # before the gates, which read it
    comparison["gates"] = evaluate_comparison_gates(comparison, gate_rules)
    comparison["moved"] = _moved(ra, rb, prim, classes, out_dir, int(top_n), dataset)
    comparison["metrics_info"] = _metrics_info()
    comparison = _write_outputs(out_dir, comparison, sink, ra, rb)
    if render:
        phase("rendering", f"comparison report in {out_dir}" + (" (html, pdf)" if pdf else ""))
    report = _render(comparison, out_dir, pdf=pdf, templates=templates) if render else {}
    return ComparisonResult.from_json(comparison, out_dir=out_dir, report=report)
