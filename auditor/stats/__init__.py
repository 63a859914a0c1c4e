"""Confidence intervals and paired tests for the report (numpy / scipy, NaN-aware).

Every function drops non-finite values (NaN, and +-inf) and counts them in ``n_nan``: a metric
is NaN where it is undefined (empty mask, all-zero CAM...), and an aggregate must say how many
samples it could not use.

Bootstrap of a mean
-------------------
For a sample ``x_1..x_m``, each bootstrap replicate draws ``m`` indices uniformly with
replacement; its mean is ``(1/m) sum_j c_j x_j`` with ``c`` the replicate's index counts. The
count matrix ``C`` (``n_boot x m``) depends only on ``(seed, m, n_boot)`` (drawn from
``numpy.random.default_rng(seed)``), so all samples of the same size share it and their
replicate means come out of one matrix product ``X @ C.T / m``. That makes
:func:`grouped_bootstrap_mean_ci` fast for many classes x many metrics, and it defines the seed
semantics: **the interval of group g equals** ``bootstrap_mean_ci(values[groups == g],
seed=seed)`` (the same counts, up to floating-point summation order). Groups of equal size
therefore reuse the same resampling pattern; this does not bias any interval (each is a valid
bootstrap) but their Monte Carlo errors are correlated.

Intervals: percentile (Efron 1979) or BCa, bias-corrected and accelerated (Efron 1987,
"Better Bootstrap Confidence Intervals", JASA; Efron & Tibshirani 1993, "An Introduction to the
Bootstrap", ch. 14)::

    z0 = Phi^-1( (#{theta* < theta_hat} + #{theta* == theta_hat} / 2) / B )
    a  = sum (x_i - mean)^3 / (6 (sum (x_i - mean)^2)^(3/2))   (jackknife acceleration of a mean)
    alpha_k = Phi( z0 + (z0 + z_k) / (1 - a (z0 + z_k)) ),  z_k = Phi^-1(alpha/2), Phi^-1(1-alpha/2)

and the interval is the ``alpha_1, alpha_2`` quantiles (linear interpolation) of the replicate
means. Where BCa is undefined (constant data: ``a`` is 0/0; ``z0`` infinite; a non-positive
denominator) the percentile interval is used and ``method`` says ``"percentile"``.
"""

from auditor.stats.bootstrap import (
    bootstrap_diff_ci,
    bootstrap_mean_ci,
    grouped_bootstrap_mean_ci,
    paired_bootstrap_diff_ci,
)
from auditor.stats.intervals import Interval, two_proportion_diff_ci, wilson_interval
from auditor.stats.tests import paired_test

__all__ = [
    "Interval",
    "bootstrap_diff_ci",
    "bootstrap_mean_ci",
    "grouped_bootstrap_mean_ci",
    "paired_bootstrap_diff_ci",
    "paired_test",
    "two_proportion_diff_ci",
    "wilson_interval",
]
