"""From per-sample rows to per-class statistics, findings and gates.

Everything here reads the run store (``samples`` rows: one per sample × method) and returns
plain dictionaries that go into ``summary.json`` unchanged; rendering only formats them.

Statistics
    Means of every metric per class and overall with bootstrap confidence intervals
    (BCa; Efron 1987) that exclude NaN and count it; accuracies with Wilson intervals
    (Wilson 1927); intervention drops with paired bootstrap intervals over the same samples.

Findings (rules are recorded verbatim in ``summary["rules"]``)
    * ``background_focus``: the class's mean background focus (primary method) has its whole
      confidence interval above the baseline of the other classes by at least ``margin``.
      Severity high when the lower bound clears the baseline by 3×margin.
    * ``background_reliance``: accuracy on only-foreground images (background removed,
      Xiao et al. 2021) drops by more than ``drop_margin`` with the interval's lower bound > 0.
      With background focus also flagged it is *confirmed* (high); alone it is reported as a
      disagreement between attention and intervention evidence.
    * ``right_for_wrong_reasons``: among correct predictions, the share whose CAM puts less mass
      on the object than its area (energy lift < 1) has a Wilson lower bound above 0.5.
    * ``border_focus``: mean CAM mass in the outer band above the other classes' baseline by
      ``margin`` (interval rule) and above the band's area share (frames, watermarks).
    * ``method_disagreement``: two methods' mean background focus for a class differ by > 0.25.
    * ``subgroup_shortcut`` / ``strategy_cluster``: a SpRAy cluster of a class tested against
      the rest of its class (``auditor.metrics.subgroups``, ``auditor.subgroup_findings``).
    * ``background_sufficiency``: the background alone is predicted as the class far more
      often than other classes' backgrounds are (Xiao et al. 2021).
    * ``sanity_check``: a method whose maps barely change when the head is randomised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from auditor.config import AuditSettings, GateRule
from auditor.metrics.localisation import METRIC_NAMES
from auditor.metrics.subgroups import SubgroupRules
from auditor.stats import (
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
    wilson_interval,
)
from auditor.subgroup_findings import SufficiencyRules

#: Localisation metrics aggregated per class (names as in DESIGN 4.3/4.4).
AGG_METRICS = METRIC_NAMES
FAITH_METRICS = ("deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence")
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}


@dataclass(frozen=True)
class FindingRules:
    """Thresholds of the finding rules (printed in the report's methodology)."""

    margin: float = 0.05
    lift_ratio: float = 0.75
    drop_margin: float = 0.10
    sanity_strong: float = 0.8
    disagreement: float = 0.25
    wrong_reasons_share: float = 0.5
    border_band_share: float = 0.36

    def describe(self, confidence: float) -> dict[str, str]:
        c = f"{confidence:.0%}"
        return {
            "background_focus": (
                f"Flag a class when the lower bound of the {c} interval of its mean background "
                f"focus exceeds the mean of all other classes by more than {self.margin:.2f} "
                f"AND the upper bound of its mean energy lift (energy in object ÷ object area, "
                f"which removes the effect of object size) is below {self.lift_ratio:.2f}× the "
                f"other classes' mean lift. High severity when the interventions confirm it or "
                f"the lift is below chance (< 1); when the interventions refute it (accuracy "
                f"without background stays within {self.drop_margin:.2f}) it is reported as a "
                f"low-severity disagreement instead."
            ),
            "background_reliance": (
                f"Accuracy on only-foreground images drops by more than {self.drop_margin:.2f} "
                f"with a {c} paired-bootstrap interval above 0. Confirmed (high) when the "
                f"background-focus rule also fires; otherwise reported as a disagreement."
            ),
            "right_for_wrong_reasons": (
                f"Among correct predictions, the share with energy lift < 1 (less CAM mass on "
                f"the object than its area) has a Wilson {c} lower bound above "
                f"{self.wrong_reasons_share:.2f}."
            ),
            "border_focus": (
                f"Mean CAM mass in the outer band exceeds the other classes' mean by more than "
                f"{self.margin:.2f} (interval lower bound) and the band's area share."
            ),
            "method_disagreement": (
                f"Two methods' mean background focus for the class differ by more than "
                f"{self.disagreement:.2f}."
            ),
            "subgroup_shortcut": SubgroupRules().describe(confidence),
            "strategy_cluster": (
                "A SpRAy cluster that separates from the rest of its class on some statistic "
                "(same intervals as subgroup_shortcut) but does not look elsewhere, or is "
                "shown by the interventions not to be needed: low severity."
            ),
            "background_sufficiency": SufficiencyRules().describe(confidence),
            "sanity_check": (
                "A method whose maps keep a Spearman correlation of at least 0.5 with the "
                "original maps after the classifier head is re-initialised (Adebayo et al. "
                "2018) is marked untrustworthy; a finding of medium (primary method) or low "
                f"severity from {self.sanity_strong:.1f}, informational below."
            ),
        }


def _col(table: pa.Table, name: str, dtype: Any = None) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    arr = table.column(name).to_numpy(zero_copy_only=False)
    if dtype is not None:
        if dtype is float:
            arr = (
                np.asarray([np.nan if v is None else v for v in arr], float)
                if arr.dtype == object
                else arr.astype(float)
            )
        else:
            arr = arr.astype(dtype)
    return arr


def _interval_dict(iv: Any) -> dict[str, Any]:
    d = iv.to_dict()
    return {k: d.get(k) for k in ("mean", "ci_low", "ci_high", "n", "n_nan")}


def metric_block(
    table: pa.Table,
    classes: Sequence[str],
    methods: Sequence[str],
    metrics: Sequence[str],
    settings: AuditSettings,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, dict[str, dict[str, Any]]]]]:
    """(overall {method: {metric: interval}}, per class {class: {method: {metric: interval}}})."""
    overall: dict[str, dict[str, dict[str, Any]]] = {}
    per_class: dict[str, dict[str, dict[str, dict[str, Any]]]] = {c: {} for c in classes}
    method_col = _col(table, "method", str)
    labels_all = _col(table, "label", int)
    for method in methods:
        sel = method_col == method
        labels = labels_all[sel]
        overall[method] = {}
        for c in classes:
            per_class[c][method] = {}
        for metric in metrics:
            if metric not in table.column_names:
                continue
            values = _col(table, metric, float)[sel]
            conf, n_boot, seed = settings.confidence, settings.bootstrap, settings.seed
            overall[method][metric] = _interval_dict(
                bootstrap_mean_ci(values, confidence=conf, n_boot=n_boot, seed=seed)
            )
            grouped = grouped_bootstrap_mean_ci(
                values, labels, confidence=conf, n_boot=n_boot, seed=seed
            )
            for ci, c in enumerate(classes):
                if ci in grouped:
                    per_class[c][method][metric] = _interval_dict(grouped[ci])
                else:
                    per_class[c][method][metric] = {
                        "mean": None,
                        "ci_low": None,
                        "ci_high": None,
                        "n": 0,
                        "n_nan": 0,
                    }
    return overall, per_class


def _acc(correct: np.ndarray, confidence: float) -> tuple[float | None, list[float | None]]:
    ok = correct[~np.isnan(correct)] if correct.dtype.kind == "f" else correct
    n = int(len(ok))
    if n == 0:
        return None, [None, None]
    k = int(np.sum(ok))
    iv = wilson_interval(k, n, confidence=confidence)
    return k / n, [iv.low, iv.high]


def analyse(
    table: pa.Table,
    *,
    classes: Sequence[str],
    methods: Sequence[str],
    settings: AuditSettings,
    rules: FindingRules | None = None,
    clusters: Mapping[str, Any] | None = None,
    sanity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate the sample rows into the statistical part of summary.json."""
    rules = rules or FindingRules()
    primary = settings.primary
    metrics = [m for m in AGG_METRICS if m in table.column_names]
    overall_m, class_m = metric_block(table, classes, methods, metrics, settings)
    method_col = _col(table, "method", str)
    prim = table.filter(pa.array(method_col == primary))
    labels = _col(prim, "label", int)
    correct = _col(prim, "correct", float)
    preds = _col(prim, "pred", int)
    n_cls = len(classes)

    acc, acc_ci = _acc(correct, settings.confidence)
    status_counts: dict[str, dict[str, int]] = {}
    if "status" in table.column_names:
        st = _col(table, "status", str)
        for method in methods:
            vals, counts = np.unique(st[method_col == method], return_counts=True)
            status_counts[method] = {str(v): int(c) for v, c in zip(vals, counts)}

    has_iv = "only_fg_correct" in prim.column_names
    iv_cols = {}
    if has_iv:
        for name in ("only_fg_correct", "only_bg_correct", "mixed_rand_correct"):
            iv_cols[name] = _col(prim, name, float)

    faith: dict[str, Any] = {}
    # faithfulness ran on a seeded subset: samples outside it are not "undefined", just not run
    in_subset = (
        _col(table, "faithfulness_subset").astype(bool)
        if "faithfulness_subset" in table.column_names
        else np.ones(table.num_rows, bool)
    )
    for method in methods:
        sel = (method_col == method) & in_subset
        block = {}
        for metric in FAITH_METRICS:
            if metric in table.column_names:
                vals = _col(table, metric, float)[sel]
                if np.isfinite(vals).any():
                    block[metric] = _interval_dict(
                        bootstrap_mean_ci(
                            vals,
                            confidence=settings.confidence,
                            n_boot=settings.bootstrap,
                            seed=settings.seed,
                        )
                    )
        if block:
            faith[method] = block

    bf_all = _col(prim, "background_focus", float)
    border_all = _col(prim, "border_focus", float)
    lift_all = _col(prim, "energy_lift", float)

    class_out: dict[str, Any] = {}
    findings: list[dict[str, Any]] = []
    for ci, name in enumerate(classes):
        sel = labels == ci
        n = int(sel.sum())
        c_acc, c_acc_ci = _acc(correct[sel], settings.confidence)
        entry: dict[str, Any] = {
            "index": ci,
            "n": n,
            "accuracy": c_acc,
            "accuracy_ci": c_acc_ci,
            "metrics": class_m[name],
            "interventions": None,
            "flagged": False,
            "flags": [],
            "risk": 0.0,
        }
        if has_iv and n:
            iv: dict[str, Any] = {"accuracy": c_acc, "n": n}
            for key, col in iv_cols.items():
                vals = col[sel]
                finite = vals[np.isfinite(vals)]
                iv[key.replace("_correct", "_accuracy")] = (
                    float(finite.mean()) if len(finite) else None
                )
            base = correct[sel]
            fg = iv_cols["only_fg_correct"][sel]
            drop = paired_bootstrap_diff_ci(
                fg,
                base,
                confidence=settings.confidence,
                n_boot=settings.bootstrap,
                seed=settings.seed,
            )
            iv["only_fg_drop"] = drop.estimate if drop.n else None
            iv["only_fg_drop_ci"] = [drop.low, drop.high] if drop.n else [None, None]
            mixed = iv.get("mixed_rand_accuracy")
            iv["background_gap"] = (
                (c_acc - mixed) if (c_acc is not None and mixed is not None) else None
            )
            entry["interventions"] = iv
        class_out[name] = entry

        # ---- findings for this class ------------------------------------------------
        bf = class_m[name].get(primary, {}).get("background_focus")
        lift = class_m[name].get(primary, {}).get("energy_lift")
        others = bf_all[(labels != ci) & np.isfinite(bf_all)]
        baseline = float(others.mean()) if len(others) else None
        other_lift = lift_all[(labels != ci) & np.isfinite(lift_all)]
        baseline_lift = float(other_lift.mean()) if len(other_lift) else None
        # (a) more mass off the object than the other classes (interval rule), and (b) not
        # explained by a smaller object: the size-adjusted lift is also clearly lower
        bf_flag = bool(
            bf
            and bf.get("ci_low") is not None
            and baseline is not None
            and bf["ci_low"] - baseline > rules.margin
            and lift
            and lift.get("ci_high") is not None
            and baseline_lift is not None
            and lift["ci_high"] < rules.lift_ratio * baseline_lift
        )
        ivd = entry["interventions"]
        reliance = refuted = False
        if ivd and ivd.get("only_fg_drop") is not None:
            lo, hi = ivd["only_fg_drop_ci"]
            reliance = ivd["only_fg_drop"] > rules.drop_margin and lo is not None and lo > 0
            refuted = hi is not None and hi < rules.drop_margin
        if bf_flag:
            assert bf is not None and lift is not None and baseline is not None
            evidence = {
                "background_focus": bf["mean"],
                "ci": [bf["ci_low"], bf["ci_high"]],
                "baseline": baseline,
                "energy_lift": lift["mean"],
                "baseline_lift": baseline_lift,
                "method": primary,
            }
            message = (
                f"{primary} puts {bf['mean']:.0%} of its mass outside the object (interval "
                f"{bf['ci_low']:.0%}–{bf['ci_high']:.0%}) against {baseline:.0%} for the "
                f"other classes; size-adjusted (energy lift) {lift['mean']:.2f} against "
                f"{baseline_lift:.2f}."
            )
            if refuted and ivd:
                findings.append(
                    {
                        "class": name,
                        "kind": "evidence_disagreement",
                        "severity": "low",
                        "title": (
                            f"'{name}': attention on the background, but accuracy holds without it"
                        ),
                        "message": message
                        + (
                            f" Yet accuracy on only-foreground images stays at "
                            f"{ivd['only_fg_accuracy']:.0%} (from {ivd['accuracy']:.0%}): the "
                            f"background is looked at without being needed."
                        ),
                        "evidence": evidence
                        | {
                            "only_fg_accuracy": ivd["only_fg_accuracy"],
                            "only_fg_drop": ivd["only_fg_drop"],
                            "only_fg_drop_ci": ivd["only_fg_drop_ci"],
                        },
                    }
                )
            else:
                # confirmed by the interventions, or below chance (lift < 1) → high
                strong = reliance or (lift["ci_high"] is not None and lift["ci_high"] < 1)
                findings.append(
                    {
                        "class": name,
                        "kind": "background_focus",
                        "severity": "high" if strong else "medium",
                        "title": f"'{name}': attention on the background",
                        "message": message,
                        "evidence": evidence,
                    }
                )
        if reliance and ivd:
            findings.append(
                {
                    "class": name,
                    "kind": "background_reliance" if bf_flag else "evidence_disagreement",
                    "severity": "high" if bf_flag else "medium",
                    "title": (
                        f"'{name}': confirmed reliance on the background"
                        if bf_flag
                        else f"'{name}': accuracy depends on the background, "
                        "attention does not show it"
                    ),
                    "message": (
                        f"Accuracy falls from {ivd['accuracy']:.0%} to "
                        f"{ivd['only_fg_accuracy']:.0%} when the background is removed"
                        + (
                            f"; on background alone the model still says '{name}' for "
                            f"{ivd['only_bg_accuracy']:.0%} of the images"
                            if ivd.get("only_bg_accuracy") is not None
                            else ""
                        )
                        + "."
                    ),
                    "evidence": {
                        "accuracy": ivd["accuracy"],
                        "only_fg_accuracy": ivd["only_fg_accuracy"],
                        "only_bg_accuracy": ivd.get("only_bg_accuracy"),
                        "mixed_rand_accuracy": ivd.get("mixed_rand_accuracy"),
                        "only_fg_drop": ivd["only_fg_drop"],
                        "only_fg_drop_ci": ivd["only_fg_drop_ci"],
                    },
                }
            )
        # right for the wrong reasons
        cs = sel & (correct == 1) & np.isfinite(lift_all)
        k_wrong = int(np.sum(lift_all[cs] < 1))
        n_corr = int(cs.sum())
        if n_corr >= 5:
            w = wilson_interval(k_wrong, n_corr, confidence=settings.confidence)
            if w.low > rules.wrong_reasons_share:
                findings.append(
                    {
                        "class": name,
                        "kind": "right_for_wrong_reasons",
                        "severity": "medium",
                        "title": f"'{name}': right for the wrong reasons",
                        "message": (
                            f"{k_wrong} of {n_corr} correct predictions put less CAM mass on the "
                            f"object than its area would by chance (energy lift < 1)."
                        ),
                        "evidence": {"share": k_wrong / n_corr, "ci": [w.low, w.high], "n": n_corr},
                    }
                )
        # border focus
        bb = class_m[name].get(primary, {}).get("border_focus")
        oth_b = border_all[(labels != ci) & np.isfinite(border_all)]
        if bb and bb.get("ci_low") is not None and len(oth_b):
            base_b = float(oth_b.mean())
            if bb["ci_low"] - base_b > rules.margin and bb["mean"] > rules.border_band_share:
                findings.append(
                    {
                        "class": name,
                        "kind": "border_focus",
                        "severity": "medium",
                        "title": f"'{name}': attention on the image border",
                        "message": (
                            f"{bb['mean']:.0%} of the CAM mass lies in the outer band "
                            f"(other classes: {base_b:.0%}): check for frames, watermarks or "
                            f"padding artefacts."
                        ),
                        "evidence": {
                            "border_focus": bb["mean"],
                            "ci": [bb["ci_low"], bb["ci_high"]],
                            "baseline": base_b,
                        },
                    }
                )
        # methods that disagree
        means: dict[str, float] = {}
        for m in methods:
            v = class_m[name].get(m, {}).get("background_focus", {}).get("mean")
            if v is not None:
                means[m] = float(v)
        if len(means) >= 2:
            hi_m, lo_m = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
            if means[hi_m] - means[lo_m] > rules.disagreement:
                findings.append(
                    {
                        "class": name,
                        "kind": "method_disagreement",
                        "severity": "info",
                        "title": f"'{name}': CAM methods disagree",
                        "message": (
                            f"Background focus is {means[hi_m]:.0%} with {hi_m} but "
                            f"{means[lo_m]:.0%} with {lo_m}: read this class's maps with care."
                        ),
                        "evidence": {"background_focus_by_method": means},
                    }
                )

    # subgroups (SpRAy clusters tested against their class) and background sufficiency
    from auditor.subgroup_findings import subgroup_findings, sufficiency_findings

    findings.extend(subgroup_findings(clusters))
    if "only_bg_pred" in prim.column_names:
        findings.extend(
            sufficiency_findings(
                labels,
                _col(prim, "only_bg_pred", int),
                [str(v) for v in _col(prim, "id", str)],
                classes,
                confidence=settings.confidence,
            )
        )
    for method, res in (sanity or {}).items():
        if not res.get("trustworthy", True):
            findings.append(
                {
                    "class": None,
                    "kind": "sanity_check",
                    "severity": (
                        "info"
                        if (res.get("similarity") or 0.0) < rules.sanity_strong
                        else "medium"
                        if method == primary
                        else "low"
                    ),
                    "title": (
                        f"{method}: fails the randomisation sanity check"
                        if (res.get("similarity") or 0.0) >= rules.sanity_strong
                        else f"{method}: maps change only moderately when the head is randomised"
                    ),
                    "message": (
                        f"{method}'s maps keep a rank correlation of "
                        f"{_fmt(res.get('similarity'), '.2f')} after the classifier head is "
                        + (
                            "randomised: they do not reflect what the model learned."
                            if (res.get("similarity") or 0.0) >= rules.sanity_strong
                            else "randomised: they depend partly on the activations alone; "
                            "read them alongside another method or the interventions."
                        )
                    ),
                    "evidence": dict(res),
                }
            )

    for f in findings:
        if f["class"] is not None and f["severity"] in ("high", "medium"):
            entry = class_out[f["class"]]
            entry["flagged"] = True
            if f["kind"] not in entry["flags"]:
                entry["flags"].append(f["kind"])
        elif f["class"] is not None and f["kind"] not in class_out[f["class"]]["flags"]:
            class_out[f["class"]]["flags"].append(f["kind"])
    for entry in class_out.values():
        bf_mean = entry["metrics"].get(primary, {}).get("background_focus", {}).get("mean")
        fg_drop = (entry["interventions"] or {}).get("only_fg_drop")
        entry["risk"] = float(
            (bf_mean or 0.0) + max(fg_drop or 0.0, 0.0) + 0.25 * len(entry["flags"])
        )
    findings.sort(key=lambda f: (SEVERITY_ORDER[f["severity"]], str(f["class"]), f["kind"]))
    for i, f in enumerate(findings):
        f["id"] = f"F{i + 1}"
        f.setdefault("examples", [])

    confusion = np.zeros((n_cls, n_cls), dtype=int)
    ok = (labels >= 0) & (preds >= 0) & (preds < n_cls)
    np.add.at(confusion, (labels[ok], preds[ok]), 1)

    return {
        "overall": {
            "n": int(len(labels)),
            "accuracy": acc,
            "accuracy_ci": acc_ci,
            "metrics": overall_m,
            "status_counts": status_counts,
        },
        "classes": class_out,
        "findings": findings,
        "rules": rules.describe(settings.confidence),
        "confusion": {"classes": list(classes), "matrix": confusion.tolist()},
        "method_agreement": method_agreement(table, methods),
        "faithfulness": faith or None,
    }


def _fmt(v: Any, spec: str = ".0%") -> str:
    return "n/a" if v is None else format(v, spec)


def method_agreement(table: pa.Table, methods: Sequence[str]) -> dict[str, Any] | None:
    """Spearman correlation between methods of the per-sample energy in the object."""
    if len(methods) < 2 or "energy_in_mask" not in table.column_names:
        return None
    from scipy.stats import spearmanr

    method_col = _col(table, "method", str)
    idx = _col(table, "index", int)
    values = _col(table, "energy_in_mask", float)
    per = {}
    for m in methods:
        sel = method_col == m
        per[m] = dict(zip(idx[sel].tolist(), values[sel].tolist()))
    mat: list[list[float | None]] = []
    for a in methods:
        row: list[float | None] = []
        for b in methods:
            keys = [
                k
                for k in per[a]
                if k in per[b] and np.isfinite(per[a][k]) and np.isfinite(per[b][k])
            ]
            if len(keys) < 3:
                row.append(None)
                continue
            va = np.array([per[a][k] for k in keys])
            vb = np.array([per[b][k] for k in keys])
            if np.ptp(va) == 0 or np.ptp(vb) == 0:
                row.append(None)
                continue
            row.append(float(spearmanr(va, vb).statistic))
        mat.append(row)
    return {"methods": list(methods), "metric": "energy_in_mask", "spearman": mat}


# -------------------------------------------------------------------------------------------
# gates


def _lookup(
    summary: Mapping[str, Any], scope_block: Mapping[str, Any], rule: GateRule, primary: str
) -> float | None:
    q = rule.quantity
    if q == "accuracy":
        if rule.stat == "mean":
            return scope_block.get("accuracy")
        ci = scope_block.get("accuracy_ci") or [None, None]
        return ci[0] if rule.stat == "ci_low" else ci[1]
    if q in (
        "only_fg_drop",
        "background_gap",
        "only_fg_accuracy",
        "only_bg_accuracy",
        "mixed_rand_accuracy",
    ):
        iv = scope_block.get("interventions") or {}
        if q == "only_fg_drop" and rule.stat != "mean":
            ci = iv.get("only_fg_drop_ci") or [None, None]
            return ci[0] if rule.stat == "ci_low" else ci[1]
        return iv.get(q)
    block = scope_block.get("metrics", {}).get(rule.method or primary, {}).get(q)
    if not block:
        return None
    return block.get(rule.stat)


def gate_result(
    rule: GateRule, cls: str | None, value: float | None, missing: str = "value not available"
) -> dict[str, Any]:
    """One gate check as it appears in ``summary["gates"]["results"]``; a missing value fails."""
    if value is None:
        passed, note = False, missing
    else:
        passed = (rule.max is None or value <= rule.max) and (rule.min is None or value >= rule.min)
        note = ""
    return {
        "rule": rule.name,
        "class": cls,
        "quantity": rule.quantity,
        "stat": rule.stat,
        "value": value,
        "threshold": rule.max if rule.max is not None else rule.min,
        "bound": "max" if rule.max is not None else "min",
        "passed": bool(passed),
        "note": note,
    }


def evaluate_gates(summary: Mapping[str, Any], rules: Sequence[GateRule]) -> dict[str, Any]:
    """Check every gate rule against the summary; a value that is missing fails the gate."""
    primary = summary["primary_method"]
    results: list[dict[str, Any]] = []

    def check(rule: GateRule, cls: str | None, value: float | None) -> None:
        results.append(gate_result(rule, cls, value))

    for rule in rules:
        if rule.scope == "compare":
            continue
        if rule.scope == "findings":
            sev = rule.quantity.split("_", 1)[1]
            count = sum(1 for f in summary.get("findings", []) if f["severity"] == sev)
            check(rule, None, float(count))
        elif rule.scope == "overall":
            overall = dict(summary["overall"])
            overall.setdefault("interventions", None)
            check(rule, None, _lookup(summary, overall, rule, primary))
        else:
            for cls, block in summary["classes"].items():
                if rule.classes and cls not in rule.classes:
                    continue
                if not block.get("n"):
                    continue
                check(rule, cls, _lookup(summary, block, rule, primary))
    return {"passed": all(r["passed"] for r in results), "results": results}
