"""``auditor compare`` per group (issue 24): paired differences and the gap's change.

Both runs' primary rows are paired by sample ``id`` (the group levels are run A's; the same
data gives the same levels). Per attribute level with at least ``min_group_size`` pairs:
accuracy and mean background focus of A and B and the paired difference B − A with a BCa
bootstrap interval over the pairs (Efron & Tibshirani 1993; :func:`auditor.stats.
paired_bootstrap_diff_ci`). Per attribute: the largest accuracy gap between shown groups in A
and in B and its change (B − A; positive = the gap opened). Smaller levels are listed as
suppressed, without numbers. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from auditor.data.groups import GROUP_PREFIX
from auditor.stats import paired_bootstrap_diff_ci

__all__ = ["compare_groups", "group_compare_gates"]


def _rows(run_dir: Path, primary: str) -> pd.DataFrame | None:
    path = run_dir / "samples.parquet"
    names = pq.read_schema(path).names
    groups = [n for n in names if n.startswith(GROUP_PREFIX)]
    if not groups:
        return None
    cols = ["id", "correct"] + (["background_focus"] if "background_focus" in names else [])
    table = pq.read_table(path, columns=cols + groups, filters=[("method", "==", primary)])
    return table.to_pandas().drop_duplicates("id").set_index("id")


def _min_size(run_dir: Path) -> int:
    try:
        raw = json.loads((run_dir / "summary.json").read_text("utf-8")).get("groups") or {}
        return int(raw.get("min_group_size", 10))
    except (OSError, ValueError, AttributeError):
        return 10


def _diff(a: np.ndarray, b: np.ndarray, confidence: float, n_boot: int, seed: int) -> dict:
    if not (np.isfinite(a) & np.isfinite(b)).any():
        return {"value": None, "ci_low": None, "ci_high": None}
    iv = paired_bootstrap_diff_ci(a, b, confidence=confidence, n_boot=n_boot, seed=seed)
    return {"value": iv.estimate, "ci_low": iv.low, "ci_high": iv.high}


def _gap(accs: list[float]) -> float | None:
    return max(accs) - min(accs) if len(accs) >= 2 else None


def compare_groups(
    dir_a: Path,
    dir_b: Path,
    primary_a: str,
    primary_b: str,
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """comparison.json ``groups`` (None when either run has no group columns)."""
    ra, rb = _rows(Path(dir_a), primary_a), _rows(Path(dir_b), primary_b)
    if ra is None or rb is None:
        return None
    min_size = max(_min_size(Path(dir_a)), _min_size(Path(dir_b)))
    both = ra.add_suffix("_a").join(rb.add_suffix("_b"), how="inner")
    attrs = [c for c in ra.columns if c.startswith(GROUP_PREFIX) and c in rb.columns]
    out = []
    for col in attrs:
        levels: list[dict[str, Any]] = []
        acc_a: list[float] = []
        acc_b: list[float] = []
        for lev, sub in both.groupby(f"{col}_a", sort=True):
            if len(sub) < min_size:
                levels.append({"level": str(lev), "n": None, "suppressed": True})
                continue
            ca = sub["correct_a"].to_numpy(dtype=np.float64)
            cb = sub["correct_b"].to_numpy(dtype=np.float64)
            acc_a.append(float(ca.mean()))
            acc_b.append(float(cb.mean()))
            entry = {
                "level": str(lev), "n": int(len(sub)), "suppressed": False,
                "accuracy_a": acc_a[-1], "accuracy_b": acc_b[-1],
                "accuracy_diff": _diff(ca, cb, confidence, n_boot, seed),
            }  # fmt: skip
            if "background_focus_a" in sub and "background_focus_b" in sub:
                fa = sub["background_focus_a"].to_numpy(dtype=np.float64)
                fb = sub["background_focus_b"].to_numpy(dtype=np.float64)
                entry["background_focus_diff"] = _diff(fa, fb, confidence, n_boot, seed)
            levels.append(entry)
        ga, gb = _gap(acc_a), _gap(acc_b)
        out.append({
            "name": col[len(GROUP_PREFIX):], "levels": levels, "gap_a": ga, "gap_b": gb,
            "gap_change": None if ga is None or gb is None else gb - ga,
        })  # fmt: skip
    return {"min_group_size": min_size, "confidence": confidence, "attributes": out}


def group_compare_gates(
    groups: Mapping[str, Any] | None, rule: Any, base: str, sign: int
) -> list[Any]:
    """The comparison gates on groups (``rule`` a :class:`~auditor.config.GateRule`):

    * ``max_group_accuracy_gap_increase``: per attribute, ``gap_b - gap_a`` (the largest
      accuracy gap between shown groups; ``cls`` = the attribute);
    * ``max_group_accuracy_decrease``: per shown group, ``accuracy_a - accuracy_b`` (the
      paired difference's mirror; ``cls`` = ``"attribute=level"``);
    * ``max_group_background_focus_increase``: per shown group, the paired background focus
      difference ``B - A``.

    Suppressed groups are never gated; an attribute whose groups are all suppressed, or no
    group in either run: one failed result saying so (a gate never passes by default)."""
    from auditor.analysis.gates import gate_result

    if not groups or not groups.get("attributes"):
        return [gate_result(rule, None, None, "no group results in both runs ([data] groups)")]
    out = []
    for attr in groups["attributes"]:
        name = str(attr.get("name"))
        if base == "group_accuracy_gap":
            out.append(gate_result(rule, name, attr.get("gap_change"), "fewer than two groups"))
            continue
        key = "accuracy_diff" if base == "group_accuracy" else "background_focus_diff"
        shown = [lev for lev in attr.get("levels") or () if not lev.get("suppressed")]
        if not shown:  # the attribute is configured but nothing of it can be gated
            out.append(gate_result(rule, name, None, "no group large enough to gate"))
        for lev in shown:
            diff = (lev.get(key) or {}).get("value")
            value = None if diff is None else sign * float(diff)
            out.append(gate_result(rule, f"{name}={lev['level']}", value, f"{key} not available"))
    return out
