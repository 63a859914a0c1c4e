"""Paired comparison of two audit runs on the same data (``auditor compare RUN_A RUN_B``).

Run A is the baseline (e.g. the model in production), run B the candidate. Both runs must have
audited the same evaluation set (same ``summary["dataset"]["sha256"]``, same classes). Samples
are paired by ``(index, id)``; every statistic is computed on the pairs, so the noise that the
two models share (hard images, small objects) cancels out.

Statistics, per class and overall, for every metric both runs measured
    * ``mean_a``, ``mean_b``: means over the pairs where both values are finite (NaN values,
      e.g. an empty mask, drop the pair and are counted in ``n_nan``); ``diff = mean_b −
      mean_a`` is then exactly the mean paired difference
      ``d̄ = (1/n) Σ_i (b_i − a_i)``.
    * ``[ci_low, ci_high]``: paired bootstrap interval of ``d̄``: the pairs are resampled
      together (the differences ``d_i`` are resampled), BCa with a percentile fallback
      (Efron & Tibshirani 1993, "An Introduction to the Bootstrap"; Efron 1987, "Better
      bootstrap confidence intervals", JASA). Per-class intervals use the same seed as the
      overall one (:func:`auditor.stats.grouped_bootstrap_mean_ci`).
    * ``p_value``: Wilcoxon signed-rank test of the ``d_i`` for continuous metrics (Wilcoxon
      1945, "Individual comparisons by ranking methods"); for correctness (accuracy and the
      intervention accuracies) McNemar's exact test: with ``n01`` pairs right in A only and
      ``n10`` right in B only, ``p = P(|X − m/2| ≥ |n10 − m/2|)``, ``X ~ Binomial(m, ½)``,
      ``m = n01 + n10`` (McNemar 1947, "Note on the sampling error of the difference between
      correlated proportions or percentages", Psychometrika; exact form via
      ``scipy.stats.binomtest``).
    * ``status``: ``"regressed"`` when the interval excludes 0 on the harmful side (the
      metric's ``higher_is_better`` from :data:`auditor.metrics.registry.METRICS`),
      ``"improved"`` when it excludes 0 on the beneficial side, ``"changed"`` for a metric
      without a good direction (entropy), ``"unchanged"`` when the interval contains 0, and
      ``"n/a"`` without pairs.

A class is *regressed* when its background focus or its accuracy (primary methods) regressed,
*improved* when one of them improved and neither regressed.

Gates (``[gates]`` shorthands with ``scope == "compare"``)
    ``max_<q>_increase = t``: for every class, ``mean_b − mean_a`` of ``q`` must be ``≤ t``;
    ``max_<q>_decrease = t``: ``mean_a − mean_b ≤ t``. A value that cannot be computed fails
    the gate (as in :func:`auditor.analysis.evaluate_gates`).

Outputs (in ``out``): ``comparison.json``, ``comparison.parquet`` (one row per paired sample
and comparison), ``gallery/moved-*.png``, ``junit.xml``, ``compare.html`` and ``compare.pdf``.
"""

from auditor.compare.core import (
    BINARY_QUANTITIES,
    DERIVED_QUANTITIES,
    POISSON_INTERVAL,
    STATUS_ORDER,
    STREAM_MIN_PAIRS,
    VERDICT_QUANTITIES,
    classify_change,
    higher_is_better,
    mcnemar_exact,
)
from auditor.compare.exact import compare_runs
from auditor.compare.gates import evaluate_comparison_gates, load_compare_gates
from auditor.compare.streamed import (
    CHUNK_PAIRS,
    MethodCounts,
    method_counts,
    stream_compare,
    wilcoxon_stream,
)
from auditor.report.compare import focus_comparison_figure, moved_panel
from auditor.results import COMPARISON_SCHEMA_VERSION, ComparisonResult

__all__ = [
    "BINARY_QUANTITIES",
    "CHUNK_PAIRS",
    "COMPARISON_SCHEMA_VERSION",
    "DERIVED_QUANTITIES",
    "POISSON_INTERVAL",
    "STATUS_ORDER",
    "STREAM_MIN_PAIRS",
    "VERDICT_QUANTITIES",
    "ComparisonResult",
    "MethodCounts",
    "classify_change",
    "compare_runs",
    "evaluate_comparison_gates",
    "focus_comparison_figure",
    "higher_is_better",
    "load_compare_gates",
    "mcnemar_exact",
    "method_counts",
    "moved_panel",
    "stream_compare",
    "wilcoxon_stream",
]
