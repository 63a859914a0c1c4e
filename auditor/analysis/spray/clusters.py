"""Strategy clusters of explanations: Spectral Relevance Analysis (SpRAy).

Lapuschkin, Wäldchen, Binder, Montavon, Samek, Müller 2019, "Unmasking Clever Hans predictors
and assessing what machines really learn" (Nature Communications 10:1096). The maps of one
class are clustered spectrally; a small cluster whose maps look elsewhere than the rest (e.g.
on a watermark or the image border) points at a "Clever Hans" strategy worth inspecting.

Pipeline (:func:`spray_clusters`):

1. each map :math:`M_i` is made non-negative (:math:`|M_i|`), average-pooled to at most
   ``resize_to x resize_to`` and normalised to sum 1 (an all-zero map becomes uniform);
2. a k-nearest-neighbour connectivity graph :math:`C` (Euclidean, ``n_neighbors``) is made
   symmetric, :math:`A = (C + C^\\top) / 2`;
3. the smallest ``max_k + 1`` eigenvalues :math:`\\lambda_0 \\le \\dots \\le \\lambda_{K}` of the
   normalised Laplacian :math:`L = I - D^{-1/2} A D^{-1/2}` are computed (dense ``eigh`` for
   small N, ARPACK ``eigsh`` on :math:`2I - L` otherwise) and the number of clusters is the
   largest eigengap, :math:`k = \\arg\\max_{1 \\le j \\le K} (\\lambda_j - \\lambda_{j-1})`
   (von Luxburg 2007, "A tutorial on spectral clustering");
4. ``sklearn.cluster.SpectralClustering(affinity="precomputed")`` partitions :math:`A` into
   :math:`k` clusters; clusters are relabelled by decreasing size (ties: smallest member index).

Choosing k by stability (``select_k="stability"``, what the audit uses): the eigengap rule
over-splits maps that vary smoothly (an object seen at different positions adds small
eigenvalues of its own). With ``select_k="stability"`` the number of clusters is the one whose
partition survives resampling (Ben-Hur, Elisseeff & Guyon 2002, "A stability based method for
discovering structure in clustered data"; Lange, Roth, Braun & Buhmann 2004): for
``n_resamples`` subsamples of ``resample_fraction * N`` maps (without replacement, seeded) the
k-NN graph and its spectral embedding are rebuilt and every candidate ``k`` is clustered again;
the stability of ``k`` is the mean adjusted Rand index (Hubert & Arabie 1985) between the
subsample's partition and the full data's partition restricted to the subsample:

.. math:: \\mathrm{stab}(k) = \\frac{1}{R}\\sum_{r=1}^{R} \\mathrm{ARI}\\big(\\ell^{(r)}_k,
          \\ell_k|_{S_r}\\big)

``k`` is the largest candidate (the finest partition) with :math:`\\mathrm{stab}(k) \\ge`
``min_stability`` whose smallest cluster has at least ``min_cluster_size`` members (the most
stable ``k`` favours ``k = 2`` and would merge a small subgroup into a large one); when none
qualifies, ``k = 1`` (nothing separates). Partitions come from the first ``k`` eigenvectors
of :math:`L` by the deterministic CPQR assignment ("cluster_qr", Damle, Minden & Ying 2019,
"Simple, direct and efficient multi-way spectral clustering"): with
:math:`V \\in \\mathbb{R}^{N\\times k}`, the pivots :math:`P` of a column-pivoted QR of
:math:`V^\\top`, and :math:`U\\Sigma W^\\top = V_{P,:}^\\top`, the label of row :math:`i` is
:math:`\\arg\\max_j |(V U W^\\top)_{ij}|`.

Outlier rule (documented, thresholds are parameters): a cluster is an *outlier cluster* when
``k >= 2``, its size is at most ``outlier_max_fraction * N`` (default 25 %) and its mean
background focus differs from the mean over all other samples by more than
``outlier_min_difference`` (default 0.2, in background-focus units, i.e. share of CAM mass).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Cluster", "ClusterResult", "adjusted_rand_index", "spray_clusters"]

_DENSE_MAX_N = 600
_SAMPLE_STREAM = 0x5A17  # random stream of the landmark sample (independent of the resamples)
_ASSIGN = ("cluster_qr", "kmeans", "discretize")
_SELECT = ("eigengap", "stability")


@dataclass(frozen=True)
class Cluster:
    """One group of explanations.

    Attributes:
        id: cluster label (0 = the largest cluster).
        size: number of members.
        members: indices into the input, ascending.
        exemplars: up to ``n_exemplars`` member indices whose (pooled, normalised) maps are
            closest to the cluster's mean map, closest first.
        mean_map: ``[h, w]`` mean of the members' pooled maps (each sums to 1).
        mean_background_focus: mean background focus of the members (NaN ignored), or None
            when no background focus was given.
    """

    id: int
    size: int
    members: np.ndarray
    exemplars: np.ndarray
    mean_map: np.ndarray
    mean_background_focus: float | None


@dataclass(frozen=True)
class ClusterResult:
    """Outcome of :func:`spray_clusters`.

    Attributes:
        k: number of clusters.
        eigengap: :math:`\\lambda_k - \\lambda_{k-1}` (0.0 for degenerate inputs).
        eigenvalues: the smallest eigenvalues of the normalised Laplacian, ascending (empty
            for degenerate inputs).
        labels: ``[N]`` cluster id of every input map.
        clusters: the clusters, by id.
        outlier_clusters: ids of the small clusters whose background focus differs from the
            rest (see the module docstring for the rule).
        k_rule: how ``k`` was chosen: ``"eigengap"``, ``"stability"`` or ``"fixed"``.
        stability: ``{k: mean adjusted Rand index over the resamples}`` for every candidate
            ``k >= 2`` (only with ``select_k="stability"``).
        sample: with ``max_maps`` and more maps than that, the indices (ascending) of the
            maps that were clustered; the others were assigned to the nearest cluster mean.
            None: every map was clustered.
    """

    k: int
    eigengap: float
    eigenvalues: np.ndarray
    labels: np.ndarray
    clusters: tuple[Cluster, ...]
    outlier_clusters: tuple[int, ...]
    k_rule: str = "eigengap"
    stability: dict[int, float] = field(default_factory=dict)
    sample: np.ndarray | None = None

    @property
    def n_clustered(self) -> int:
        """How many maps the spectral clustering itself saw (the rest were assigned)."""
        return int(self.labels.size if self.sample is None else self.sample.size)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _adaptive_avg_pool(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """``torch.nn.functional.adaptive_avg_pool2d`` of ``[N, h, w]`` float64 in numpy.

    Output cell ``(i, j)`` averages rows ``floor(i h / oh) .. ceil((i + 1) h / oh) - 1`` and
    the columns alike; the window is summed in row-major order and divided by its height,
    then by its width: the order of torch's CPU kernel, so the values are the same to the
    bit (``tests/test_clusters_scale.py``). No torch: finalisation never imports it.
    """
    n, h, w = x.shape
    out = np.empty((n, oh, ow), dtype=np.float64)
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            acc = np.zeros(n, dtype=np.float64)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    acc += x[:, r, c]
            out[:, i, j] = acc / float(r1 - r0) / float(c1 - c0)
    return out


def _prepare(maps: np.ndarray, resize_to: int | None) -> np.ndarray:
    """Abs, average-pool to at most ``resize_to`` per side, normalise each map to sum 1."""
    out = np.abs(maps).astype(np.float64)
    n, h, w = out.shape
    if resize_to is not None and (h > resize_to or w > resize_to):
        out = _adaptive_avg_pool(out, min(h, resize_to), min(w, resize_to))
    sums = out.reshape(n, -1).sum(1)
    uniform = np.full_like(out[0], 1.0 / out[0].size)
    zero = sums <= 0
    out = out / np.where(zero, 1.0, sums)[:, None, None]
    out[zero] = uniform
    return out


def _laplacian_eigenvalues(affinity: object, n_eig: int, seed: int) -> np.ndarray:
    from scipy.sparse import csr_matrix, identity
    from scipy.sparse.csgraph import laplacian
    from scipy.sparse.linalg import eigsh

    lap = laplacian(csr_matrix(affinity), normed=True)
    n = lap.shape[0]
    if n <= _DENSE_MAX_N or n_eig >= n - 1:
        vals = np.linalg.eigh(lap.toarray())[0][:n_eig]
    else:
        # largest eigenvalues of 2I - L (spectrum in [0, 2]) = smallest of L; converges fast
        v0 = np.random.default_rng(seed).uniform(0.5, 1.5, n)
        shifted = (2.0 * identity(n, format="csr") - lap).tocsr()
        top = eigsh(shifted, k=n_eig, which="LA", v0=v0, tol=1e-8)[0]
        vals = 2.0 - top
    return np.sort(np.clip(np.real(vals), 0.0, 2.0))


def spray_clusters(
    maps: np.ndarray,
    *,
    background_focus: np.ndarray | None = None,
    max_k: int = 8,
    n_neighbors: int = 10,
    seed: int = 0,
    n_exemplars: int = 4,
    resize_to: int | None = 16,
    assign_labels: str = "cluster_qr",
    outlier_max_fraction: float = 0.25,
    outlier_min_difference: float = 0.2,
    n_clusters: int | None = None,
    select_k: str = "eigengap",
    n_resamples: int = 20,
    resample_fraction: float = 0.8,
    min_stability: float = 0.9,
    min_cluster_size: int = 3,
    max_maps: int | None = None,
) -> ClusterResult:
    """Spectral Relevance Analysis (Lapuschkin et al. 2019) of a set of explanation maps.

    See the module docstring for the pipeline, the eigengap rule and the outlier rule.
    Deterministic for a given ``seed``. Degenerate inputs (fewer than 3 maps, or all maps
    identical after normalisation) give ``k = 1``. ``n_neighbors`` is reduced to
    ``max(1, (N - 1) // 2)`` when N is small (a complete graph carries no structure) and
    ``max_k`` to ``N - 1``.

    Args:
        maps: ``[N, h, w]`` (low-resolution) CAMs, finite; the magnitude is used.
        background_focus: ``[N]`` optional background focus per sample (NaN allowed).
        max_k: largest number of clusters considered.
        n_neighbors: neighbours of the k-NN affinity graph.
        seed: random state of the eigen solver start vector and of the label assignment.
        n_exemplars: exemplars kept per cluster.
        resize_to: side of the average-pooled maps (None: keep the size).
        assign_labels: ``SpectralClustering`` label assignment, ``"cluster_qr"`` (default,
            deterministic), ``"kmeans"`` (``n_init=10``) or ``"discretize"``.
        outlier_max_fraction: largest size of an outlier cluster, as a fraction of N.
        outlier_min_difference: smallest absolute difference in mean background focus.
        n_clusters: force the number of clusters instead of the eigengap choice (the
            eigenvalues are still reported; ``eigengap`` is then the gap at that k).
        select_k: ``"eigengap"`` (default) or ``"stability"`` (see the module docstring; the
            partition then comes from the CPQR assignment, ``assign_labels`` is not used).
        n_resamples, resample_fraction, min_stability, min_cluster_size: parameters of the
            stability rule.
        max_maps: with more maps than this, cluster a seeded uniform sample of ``max_maps``
            maps (without replacement; exactly the computation above on those maps) and assign
            every other map to the cluster whose mean pooled map is nearest (Euclidean, ties
            to the smaller id); cluster sizes, members, exemplars, means and the outlier rule
            then use all maps, ``eigenvalues``/``stability`` are the sample's and ``sample``
            says which maps were clustered. None (default): every map is clustered.

    Note:
        The eigengap rule finds groups that are well separated compared with their internal
        variation. Maps that vary continuously inside a group (e.g. an object seen at
        slightly different positions) add small eigenvalues of their own, and the largest gap
        may then split a strategy into several clusters; inspect ``eigenvalues`` or pass
        ``n_clusters``.
    """
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"`maps` must have shape [N, h, w], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"`maps` must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"`maps` must have non-empty spatial dims, got {arr.shape}")
    bad = ~np.isfinite(arr.reshape(arr.shape[0], arr.shape[1] * arr.shape[2])).all(1)
    if bad.any():
        raise ValueError(
            f"`maps` must be finite; non-finite values in maps {np.flatnonzero(bad)[:10].tolist()}"
        )
    n = arr.shape[0]
    max_k = _check_int("max_k", max_k, 1)
    n_neighbors = _check_int("n_neighbors", n_neighbors, 1)
    n_exemplars = _check_int("n_exemplars", n_exemplars, 1)
    if resize_to is not None:
        resize_to = _check_int("resize_to", resize_to, 1)
    if assign_labels not in _ASSIGN:
        raise ValueError(f"`assign_labels` must be one of {_ASSIGN}, got {assign_labels!r}")
    if not 0.0 < outlier_max_fraction <= 1.0:
        raise ValueError(f"`outlier_max_fraction` must be in (0, 1], got {outlier_max_fraction}")
    if outlier_min_difference < 0:
        raise ValueError(f"`outlier_min_difference` must be >= 0, got {outlier_min_difference}")
    if n_clusters is not None:
        n_clusters = _check_int("n_clusters", n_clusters, 1)
        if n and n_clusters > max(n - 1, 1):
            raise ValueError(
                f"`n_clusters` must be <= max(N - 1, 1) = {max(n - 1, 1)}, got {n_clusters}"
            )
    if select_k not in _SELECT:
        raise ValueError(f"`select_k` must be one of {_SELECT}, got {select_k!r}")
    n_resamples = _check_int("n_resamples", n_resamples, 2)
    min_cluster_size = _check_int("min_cluster_size", min_cluster_size, 1)
    if max_maps is not None:
        max_maps = _check_int("max_maps", max_maps, 3)
    if not 0.0 < resample_fraction < 1.0:
        raise ValueError(f"`resample_fraction` must be in (0, 1), got {resample_fraction}")
    if not 0.0 <= min_stability <= 1.0:
        raise ValueError(f"`min_stability` must be in [0, 1], got {min_stability}")
    focus: np.ndarray | None = None
    if background_focus is not None:
        focus = np.asarray(background_focus, dtype=np.float64)
        if focus.shape != (n,):
            raise ValueError(f"`background_focus` must have shape [N] = [{n}], got {focus.shape}")

    pooled = _prepare(arr, resize_to) if n else np.zeros((0, *arr.shape[1:]))
    features = pooled.reshape(n, pooled.shape[1] * pooled.shape[2])

    sample: np.ndarray | None = None
    eigenvalues = np.zeros(0)
    eigengap = 0.0
    stability: dict[int, float] = {}
    k_rule = "fixed" if n_clusters is not None else select_k
    if max_maps is not None and n > max_maps:
        # landmarks (issue 14): cluster a seeded sample of `max_maps` maps exactly as below,
        # assign every other map to the nearest cluster mean of the same pooled features
        sample = np.sort(
            np.random.default_rng([seed, _SAMPLE_STREAM]).choice(n, size=max_maps, replace=False)
        )
        sub = spray_clusters(
            arr[sample],
            max_k=max_k,
            n_neighbors=n_neighbors,
            seed=seed,
            n_exemplars=n_exemplars,
            resize_to=resize_to,
            assign_labels=assign_labels,
            n_clusters=n_clusters,
            select_k=select_k,
            n_resamples=n_resamples,
            resample_fraction=resample_fraction,
            min_stability=min_stability,
            min_cluster_size=min_cluster_size,
        )
        centres = np.stack([c.mean_map.reshape(-1) for c in sub.clusters])
        labels = _nearest_centre(features, centres)
        labels[sample] = sub.labels
        labels = _relabel(labels)
        eigenvalues, eigengap, stability, k_rule = (
            sub.eigenvalues,
            sub.eigengap,
            sub.stability,
            sub.k_rule,
        )
    else:
        # one BLAS thread: ARPACK's many small BLAS calls ran ~5x slower on 2 threads (issue
        # 14); the dense path (<= _DENSE_MAX_N maps) keeps the caller's threads, so its
        # eigenvalues stay the same to the last bit
        with _blas_single_thread(n > _DENSE_MAX_N):
            degenerate = n < 3 or bool(np.all(np.abs(features - features[:1]).max() <= 1e-12))
            if degenerate or n_clusters == 1:
                labels = np.zeros(n, dtype=np.int64)
            elif select_k == "stability":
                labels, eigenvalues, stability = _stable_partition(
                    features,
                    max_k=max_k,
                    n_neighbors=n_neighbors,
                    seed=seed,
                    n_resamples=n_resamples,
                    fraction=resample_fraction,
                    min_stability=min_stability,
                    min_size=min_cluster_size,
                    n_clusters=n_clusters,
                )
                k_sel = int(labels.max()) + 1
                gaps = np.diff(eigenvalues)
                eigengap = float(gaps[k_sel - 1]) if k_sel >= 2 and k_sel - 1 < gaps.size else 0.0
                labels = _relabel(labels)
            else:
                from sklearn.cluster import SpectralClustering
                from sklearn.neighbors import kneighbors_graph

                # with few maps, N - 1 neighbours would connect everything: cap at half the data
                nn_eff = min(n_neighbors, max(1, (n - 1) // 2))
                knn = kneighbors_graph(features, nn_eff, mode="connectivity", include_self=False)
                affinity = (0.5 * (knn + knn.T)).tocsr()
                k_max = min(max(max_k, n_clusters or 1), n - 1)
                eigenvalues = _laplacian_eigenvalues(affinity, k_max + 1, seed)
                gaps = np.diff(eigenvalues)
                k = n_clusters if n_clusters is not None else int(np.argmax(gaps)) + 1
                eigengap = float(gaps[k - 1]) if k - 1 < gaps.size else 0.0
                if k == 1:
                    labels = np.zeros(n, dtype=np.int64)
                else:
                    with warnings.catch_warnings():
                        # a disconnected k-NN graph is expected when strategies separate cleanly
                        warnings.filterwarnings("ignore", message=".*not fully connected.*")
                        model = SpectralClustering(
                            n_clusters=k,
                            affinity="precomputed",
                            random_state=seed,
                            assign_labels=assign_labels,
                            n_init=10,
                        )
                        labels = model.fit_predict(affinity).astype(np.int64)
                labels = _relabel(labels)

    clusters: list[Cluster] = []
    k_found = int(labels.max()) + 1 if n else 0
    for cid in range(k_found):
        members = np.flatnonzero(labels == cid)
        mean_map = pooled[members].mean(0)
        dist = np.linalg.norm(features[members] - mean_map.reshape(1, -1), axis=1)
        exemplars = members[np.argsort(dist, kind="stable")[:n_exemplars]]
        mbf: float | None = None
        if focus is not None:
            vals = focus[members]
            vals = vals[~np.isnan(vals)]
            mbf = float(vals.mean()) if vals.size else float("nan")
        clusters.append(
            Cluster(
                id=cid,
                size=int(members.size),
                members=members,
                exemplars=exemplars,
                mean_map=mean_map,
                mean_background_focus=mbf,
            )
        )

    outliers: list[int] = []
    if focus is not None and k_found >= 2:
        for c in clusters:
            if c.size > outlier_max_fraction * n or c.mean_background_focus is None:
                continue
            rest = focus[labels != c.id]
            rest = rest[~np.isnan(rest)]
            if not rest.size or np.isnan(c.mean_background_focus):
                continue
            if abs(c.mean_background_focus - float(rest.mean())) > outlier_min_difference:
                outliers.append(c.id)

    return ClusterResult(
        k=max(k_found, 1) if n else 0,
        eigengap=eigengap,
        eigenvalues=eigenvalues,
        labels=labels,
        clusters=tuple(clusters),
        outlier_clusters=tuple(outliers),
        k_rule=k_rule,
        stability=stability,
        sample=sample,
    )


@contextlib.contextmanager
def _blas_single_thread(active: bool = True) -> Iterator[None]:
    """Limit BLAS (OpenBLAS, MKL) to one thread inside the block when ``active``.

    SpRAy's eigensolver (ARPACK through scipy) makes thousands of tiny BLAS calls per class;
    on a 2-core machine the thread hand-offs cost more than the arithmetic (1.1 s -> 0.1 s
    for the 11 embeddings of a 1,000-map class). Results were checked to be the same bits
    with one thread or two on the ARPACK path (``tests/test_clusters_scale.py``).
    """
    if not active:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _nearest_centre(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean; ties to the smaller index) of every row."""
    best = np.full(features.shape[0], np.inf)
    labels = np.zeros(features.shape[0], dtype=np.int64)
    for j, c in enumerate(centres):
        d = ((features - c[None, :]) ** 2).sum(1)
        closer = d < best
        labels[closer] = j
        best[closer] = d[closer]
    return labels


def _knn_affinity(features: np.ndarray, n_neighbors: int) -> Any:
    """Symmetrised k-NN connectivity (Euclidean), as in :func:`spray_clusters` step 2."""
    from scipy.sparse import csr_matrix

    n = features.shape[0]
    nn_eff = min(n_neighbors, max(1, (n - 1) // 2))
    if n > 2000:
        from sklearn.neighbors import kneighbors_graph

        knn = kneighbors_graph(features, nn_eff, mode="connectivity", include_self=False)
    else:
        sq = (features**2).sum(1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * features @ features.T
        np.fill_diagonal(d2, np.inf)
        # stable order: ties go to the smaller index, deterministic
        nbr = _nearest_stable(d2, nn_eff)
        rows = np.repeat(np.arange(n), nn_eff)
        knn = csr_matrix((np.ones(rows.size), (rows, nbr.ravel())), shape=(n, n))
    return (0.5 * (knn + knn.T)).tocsr()


def _nearest_stable(d2: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(d2, axis=1, kind="stable")[:, :k]`` without sorting whole rows.

    The ``k``-th smallest value of each row (``np.partition``, linear time) bounds the
    candidates (every tie at the bound included); the candidates alone are sorted by (row,
    value, column), which is the stable order. Rows with a NaN or fewer than ``k``
    candidates fall back to the full sort. Same result, ``O(n^2)`` instead of
    ``O(n^2 log n)`` (issue 14: SpRAy on 1,000 classes).
    """
    n, m = d2.shape
    if k >= m:
        return np.argsort(d2, axis=1, kind="stable")[:, :k]
    bound = np.partition(d2, k - 1, axis=1)[:, k - 1]
    if not np.isfinite(bound).all() or np.isnan(d2).any():
        return np.argsort(d2, axis=1, kind="stable")[:, :k]
    rows, cols = np.nonzero(d2 <= bound[:, None])
    counts = np.bincount(rows, minlength=n)
    if (counts < k).any():
        return np.argsort(d2, axis=1, kind="stable")[:, :k]
    order = np.lexsort((cols, d2[rows, cols], rows))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pick = starts[:, None] + np.arange(k)[None, :]
    return cols[order][pick]


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two partitions (Hubert & Arabie 1985, "Comparing partitions").

    .. math:: \\mathrm{ARI} = \\frac{\\sum_{ij}\\binom{n_{ij}}{2} - E}{\\tfrac12
              (\\sum_i\\binom{a_i}{2} + \\sum_j\\binom{b_j}{2}) - E},\\quad
              E = \\frac{\\sum_i\\binom{a_i}{2}\\sum_j\\binom{b_j}{2}}{\\binom{n}{2}}

    with :math:`n_{ij}` the contingency table and :math:`a_i, b_j` its margins. Both
    partitions a single cluster (or identical trivial partitions): 1.0.
    """
    x = np.unique(np.asarray(a), return_inverse=True)[1]
    y = np.unique(np.asarray(b), return_inverse=True)[1]
    if x.shape != y.shape:
        raise ValueError(f"`a` and `b` must have the same length, got {x.shape} and {y.shape}")
    n = x.size
    table = np.zeros((int(x.max(initial=0)) + 1, int(y.max(initial=0)) + 1))
    np.add.at(table, (x, y), 1.0)

    def c2(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2.0).sum())

    s_ij, s_a, s_b = c2(table), c2(table.sum(1)), c2(table.sum(0))
    total = n * (n - 1) / 2.0
    if total == 0:
        return 1.0
    expected = s_a * s_b / total
    top = 0.5 * (s_a + s_b) - expected
    if top == 0:
        return 1.0
    return (s_ij - expected) / top


def _embedding(affinity: Any, n_vec: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest ``n_vec`` eigenpairs of the normalised Laplacian: (values asc, vectors N×n_vec)."""
    from scipy.sparse import identity
    from scipy.sparse.csgraph import laplacian
    from scipy.sparse.linalg import eigsh

    lap = laplacian(affinity, normed=True)
    n = lap.shape[0]
    if n <= _DENSE_MAX_N or n_vec >= n - 1:
        vals, vecs = np.linalg.eigh(lap.toarray())
        vals, vecs = vals[:n_vec], vecs[:, :n_vec]
    else:
        v0 = np.random.default_rng(seed).uniform(0.5, 1.5, n)
        shifted = (2.0 * identity(n, format="csr") - lap).tocsr()
        top, vecs = eigsh(shifted, k=n_vec, which="LA", v0=v0, tol=1e-8)
        vals = 2.0 - top
        order = np.argsort(vals, kind="stable")
        vals, vecs = vals[order], vecs[:, order]
    return np.clip(np.real(vals), 0.0, 2.0), np.real(vecs)


def _cluster_qr(vectors: np.ndarray) -> np.ndarray:
    """CPQR label assignment of Damle, Minden & Ying 2019 (see the module docstring)."""
    from scipy.linalg import qr

    k = vectors.shape[1]
    _, _, piv = qr(vectors.T, pivoting=True, mode="economic")
    u, _, wt = np.linalg.svd(vectors[piv[:k], :].T)
    return np.abs(vectors @ (u @ wt)).argmax(axis=1).astype(np.int64)


def _partitions(
    features: np.ndarray, ks: Sequence[int], n_neighbors: int, seed: int
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    affinity = _knn_affinity(features, n_neighbors)
    vals, vecs = _embedding(affinity, min(max(ks) + 1, features.shape[0]), seed)
    return {k: _cluster_qr(vecs[:, :k]) for k in ks}, vals


def _stable_partition(
    features: np.ndarray,
    *,
    max_k: int,
    n_neighbors: int,
    seed: int,
    n_resamples: int,
    fraction: float,
    min_stability: float,
    min_size: int,
    n_clusters: int | None,
) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Labels for the most stable k (module docstring), the eigenvalues, the stabilities."""
    n = features.shape[0]
    m = max(3, int(round(fraction * n)))
    k_hi = min(max_k, n - 1, m - 1)
    ks = list(range(2, k_hi + 1)) if n_clusters is None else [n_clusters]
    if not ks:
        return np.zeros(n, dtype=np.int64), np.zeros(0), {}
    full, vals = _partitions(features, ks, n_neighbors, seed)
    rng = np.random.default_rng(seed)
    scores: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(n_resamples):
        sub = np.sort(rng.choice(n, size=m, replace=False))
        part, _ = _partitions(features[sub], ks, n_neighbors, seed)
        for k in ks:
            scores[k].append(adjusted_rand_index(full[k][sub], part[k]))
    stability = {k: float(np.mean(v)) for k, v in scores.items()}
    if n_clusters is not None:
        return full[n_clusters], vals, stability
    best: int | None = None
    for k in ks:
        sizes = np.bincount(full[k], minlength=k)
        if stability[k] >= min_stability and sizes.min() >= min_size:
            best = k  # the finest partition that is still stable
    if best is None:
        return np.zeros(n, dtype=np.int64), vals, stability
    return full[best], vals, stability


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..k-1 by decreasing size, ties by smallest member index."""
    uniq = np.unique(labels)
    keys = sorted(uniq, key=lambda u: (-int((labels == u).sum()), int(np.argmax(labels == u))))
    lut = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    lut[np.asarray(keys, dtype=np.int64)] = np.arange(len(keys))
    return lut[labels]
