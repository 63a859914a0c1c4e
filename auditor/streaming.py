"""Flat-memory aggregation: per-group accumulators and a Poisson bootstrap over a stream.

The exact bootstrap of :mod:`auditor.stats` resamples ``m`` indices per replicate and needs
every value in memory. Over a stream of shards (1M samples × methods × metrics) we use the
**Poisson bootstrap** instead (Hanley & MacGibbon 2006, "Creating non-parametric bootstrap
samples using Poisson frequencies", Computer Methods and Programs in Biomedicine; Chamandy et
al. 2012, "Estimating uncertainty for massive data streams", Google): each sample ``i`` gets, in
replicate ``r``, an independent weight ``w_ir ~ Poisson(1)`` (the limit of the multinomial
counts ``Binomial(m, 1/m)``), and replicate ``r``'s mean is

    theta*_r = sum_i w_ir x_i / sum_i w_ir

so per group and column only ``sum_i w_ir x_i`` and ``sum_i w_ir`` are kept per replicate:
memory ``groups x columns x n_boot x 2`` floats, whatever the number of samples. A sample's
weights depend only on ``(seed, sample key)`` (drawn per block of :data:`BLOCK` keys from
``numpy.random.default_rng([seed, key // BLOCK])``), so the result does not depend on how the
stream is cut into shards or on their order, and the same sample gets the same weights in
every group and column (metrics of one sample are resampled together, as in the paired
bootstrap). The interval is BCa (Efron 1987) with ``z0`` from the replicates and the
acceleration from streamed power sums, ``a = sum (x - mean)^3 / (6 (sum (x - mean)^2)^1.5)``,
falling back to the percentile interval where BCa is undefined, exactly as in
:mod:`auditor.stats`. It agrees with the multinomial bootstrap within Monte-Carlo error
(``tests/test_streaming.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _sps

from auditor.stats import Interval, _row_quantiles

#: Keys per block of pre-drawn Poisson weights (one block is ``BLOCK x n_boot`` uint8).
BLOCK = 4096


class PoissonBootstrap:
    """Per-group, per-column means with Poisson-bootstrap intervals, fed in batches.

    ``update(groups, keys, values)``: ``groups`` int ``[n]`` in ``[0, n_groups)``, ``keys``
    int ``[n]`` (e.g. dataset indices: a key's weights are the same wherever it appears),
    ``values`` float ``[n, k]`` with NaN/inf for undefined (dropped per column and counted in
    ``n_nan``, as everywhere in :mod:`auditor.stats`).
    """

    def __init__(self, n_groups: int, columns: Sequence[str], *, n_boot: int = 2000, seed: int = 0):
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise ValueError(f"`n_groups` must be an int >= 1, got {n_groups!r}")
        if not columns:
            raise ValueError("`columns` must name at least one column, got none")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
            raise ValueError(f"`n_boot` must be an int >= 2, got {n_boot!r}")
        self.columns = list(columns)
        self.n_groups, self.n_boot, self.seed = n_groups, n_boot, int(seed)
        g, k = n_groups, len(self.columns)
        self._swx = np.zeros((g, k, n_boot))
        self._sw = np.zeros((g, k, n_boot))
        self._pow = np.zeros((g, k, 4))  # n, sum x, sum x^2, sum x^3 (finite values)
        self._nan = np.zeros((g, k), dtype=np.int64)
        self._block = -1
        self._weights = np.zeros((0, n_boot), dtype=np.uint8)

    def _weights_for(self, keys: np.ndarray) -> np.ndarray:
        out = np.empty((keys.size, self.n_boot), dtype=np.float64)
        blocks = keys // BLOCK
        for b in np.unique(blocks):
            if b != self._block:
                rng = np.random.default_rng([self.seed, int(b)])
                self._weights = rng.poisson(1.0, size=(BLOCK, self.n_boot)).astype(np.uint8)
                self._block = int(b)
            sel = blocks == b
            out[sel] = self._weights[keys[sel] % BLOCK]
        return out

    def update(self, groups: np.ndarray, keys: np.ndarray, values: np.ndarray) -> None:
        grp = np.asarray(groups, dtype=np.int64).reshape(-1)
        key = np.asarray(keys, dtype=np.int64).reshape(-1)
        x = np.asarray(values, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape != (grp.size, len(self.columns)) or key.shape != grp.shape:
            raise ValueError(
                f"`values` must be [n, {len(self.columns)}] with n = len(groups) = len(keys), "
                f"got values {x.shape}, groups {grp.shape}, keys {key.shape}"
            )
        if grp.size == 0:
            return
        if grp.min() < 0 or grp.max() >= self.n_groups:
            raise ValueError(
                f"`groups` must lie in [0, {self.n_groups}), got {grp.min()}..{grp.max()}"
            )
        if key.min() < 0:
            raise ValueError(f"`keys` must be >= 0, got {key.min()}")
        w = self._weights_for(key)
        ok = np.isfinite(x)
        xz = np.where(ok, x, 0.0)
        okf = ok.astype(np.float64)
        for g in np.unique(grp):
            sel = grp == g
            wg = w[sel]
            self._swx[g] += xz[sel].T @ wg
            self._sw[g] += okf[sel].T @ wg
            xs = xz[sel]
            self._pow[g, :, 0] += okf[sel].sum(0)
            self._pow[g, :, 1] += xs.sum(0)
            self._pow[g, :, 2] += (xs**2).sum(0)
            self._pow[g, :, 3] += (xs**3).sum(0)
            self._nan[g] += (~ok[sel]).sum(0)

    def merged(self) -> PoissonBootstrap:
        """One group holding every sample (the overall interval: the sums add up)."""
        out = PoissonBootstrap(1, self.columns, n_boot=self.n_boot, seed=self.seed)
        out._swx = self._swx.sum(0, keepdims=True)
        out._sw = self._sw.sum(0, keepdims=True)
        out._pow = self._pow.sum(0, keepdims=True)
        out._nan = self._nan.sum(0, keepdims=True)
        return out

    def interval(self, group: int, column: str, *, confidence: float = 0.95) -> Interval:
        """BCa (percentile where undefined) interval of the mean of ``column`` in ``group``."""
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
        c = self.columns.index(column)
        n, s1, s2, s3 = self._pow[group, c]
        n_nan = int(self._nan[group, c])
        if n == 0:
            return Interval(math.nan, math.nan, math.nan, 0, n_nan, "none")
        mean = s1 / n
        m2 = max(s2 - n * mean * mean, 0.0)
        m3 = s3 - 3 * mean * s2 + 2 * n * mean**3
        if m2 <= 1e-15 * max(1.0, s2):  # constant values: no resampling noise
            return Interval(float(mean), float(mean), float(mean), int(n), n_nan, "percentile")
        sw = self._sw[group, c]
        keep = sw > 0
        boots = np.sort(self._swx[group, c][keep] / sw[keep])
        alpha = 1.0 - confidence
        q = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
        method = "percentile"
        b = boots.size
        prop = ((boots < mean).sum() + 0.5 * (boots == mean).sum()) / b
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = float(_sps.norm.ppf(prop))
            acc = m3 / (6.0 * m2**1.5)
            zk = _sps.norm.ppf(q)
            den = 1.0 - acc * (z0 + zk)
            adj = _sps.norm.cdf(z0 + (z0 + zk) / den)
        if math.isfinite(z0) and math.isfinite(acc) and (den > 0).all() and np.isfinite(adj).all():
            q, method = adj, "bca"
        low, high = _row_quantiles(boots[None, :], np.asarray(q)[None, :])[0]
        return Interval(float(mean), float(low), float(high), int(n), n_nan, method)

    @property
    def nbytes(self) -> int:
        """Memory of the accumulators (independent of the number of samples)."""
        return int(self._swx.nbytes + self._sw.nbytes + self._pow.nbytes + self._weights.nbytes)
