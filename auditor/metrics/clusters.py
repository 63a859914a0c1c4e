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

Outlier rule (documented, thresholds are parameters): a cluster is an *outlier cluster* when
``k >= 2``, its size is at most ``outlier_max_fraction * N`` (default 25 %) and its mean
background focus differs from the mean over all other samples by more than
``outlier_min_difference`` (default 0.2, in background-focus units, i.e. share of CAM mass).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Cluster", "ClusterResult", "spray_clusters"]

_DENSE_MAX_N = 600
_ASSIGN = ("cluster_qr", "kmeans", "discretize")


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
    """

    k: int
    eigengap: float
    eigenvalues: np.ndarray
    labels: np.ndarray
    clusters: tuple[Cluster, ...]
    outlier_clusters: tuple[int, ...]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _prepare(maps: np.ndarray, resize_to: int | None) -> np.ndarray:
    """Abs, average-pool to at most ``resize_to`` per side, normalise each map to sum 1."""
    x = torch.from_numpy(np.abs(maps).astype(np.float64))
    n, h, w = x.shape
    if resize_to is not None and (h > resize_to or w > resize_to):
        x = F.adaptive_avg_pool2d(x[:, None], (min(h, resize_to), min(w, resize_to)))[:, 0]
    out = x.numpy()
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
    focus: np.ndarray | None = None
    if background_focus is not None:
        focus = np.asarray(background_focus, dtype=np.float64)
        if focus.shape != (n,):
            raise ValueError(f"`background_focus` must have shape [N] = [{n}], got {focus.shape}")

    pooled = _prepare(arr, resize_to) if n else np.zeros((0, *arr.shape[1:]))
    features = pooled.reshape(n, pooled.shape[1] * pooled.shape[2])

    degenerate = n < 3 or bool(np.all(np.abs(features - features[:1]).max() <= 1e-12))
    eigenvalues = np.zeros(0)
    eigengap = 0.0
    if degenerate or n_clusters == 1:
        labels = np.zeros(n, dtype=np.int64)
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
    )


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..k-1 by decreasing size, ties by smallest member index."""
    uniq = np.unique(labels)
    keys = sorted(uniq, key=lambda u: (-int((labels == u).sum()), int(np.argmax(labels == u))))
    lut = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    lut[np.asarray(keys, dtype=np.int64)] = np.arange(len(keys))
    return lut[labels]
