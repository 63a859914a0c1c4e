"""Localisation metrics: where does a class activation map put its mass?

Every function is vectorised on the batch (no Python loop over samples) and takes

* ``cams``: ``Tensor[B, H, W]``, floating, ``>= 0``, *not* normalised (any positive scale);
* ``masks``: ``Tensor[B, H, W]``, ``torch.bool``, the annotated object region (same ``H, W``).

and returns a ``float64`` ``Tensor[B]`` on the device of ``cams`` (``float32`` on MPS, which
has no ``float64``). Computations run in that precision, so rank sums stay exact.

Undefined values are NaN, never 0 or 1
--------------------------------------
Let ``N = H * W``, ``A = |mask|`` (mask area) and ``S = sum(cam)``.

========================  ==================================================================
situation                 result
========================  ==================================================================
NaN / inf in the CAM      NaN for *every* metric (border and entropy included);
                          status ``"nonfinite"`` (formerly ``"nonfinite_cam"``)
all-zero CAM (``S = 0``)  NaN for every metric (no mass to distribute); ``"zero_cam"``
empty mask (``A = 0``)    NaN for every mask metric; ``"empty_mask"``
full mask (``A = N``)     NaN for every mask metric: a mask covering the whole image is
                          uninformative (every CAM is "inside"); ``"full_mask"``
constant CAM (``> 0``)    the CAM carries no localisation. Metrics whose definition still
                          gives a value keep it: ``energy_in_mask = A / N``,
                          ``background_focus = 1 - A / N``, ``energy_lift = 1``,
                          ``auc = 0.5``, ``density_diff = 0``, ``border_focus`` = band area
                          share, ``entropy = 1``. Metrics that select the "top" pixels are
                          NaN: ``pointing_game`` (every pixel is a maximum), ``iou`` (every
                          pixel passes the threshold) and ``relevance_rank_accuracy`` (the
                          top-K set is arbitrary). Status ``"constant_cam"``; in
                          :func:`localisation_metrics` (the audit) EVERY metric of a
                          constant CAM is NaN: its "localisation" would only restate the
                          mask area. Constant means ``max - min <= 1e-5 * max`` (a 1x1 layer
                          map upsampled carries rounding noise, not localisation).
no mask for the sample    mask metrics NaN, border/entropy given; ``"no_mask"``
========================  ==================================================================

Negative CAM values are an error (``ValueError``): every share below assumes a non-negative
mass. Ties are compared exactly (``==``), in the working precision.

References
----------
* Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
  Networks" (CVPR-W): energy-based pointing game.
* Arras, Osman & Samek 2022, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation
  of neural network explanations" (Information Fusion): relevance mass / rank accuracy.
* Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop" (IJCV): pointing game.
* Zhou et al. 2016, "Learning Deep Features for Discriminative Localization" (CVPR): CAM
  thresholding for localisation (IoU at a fraction of the maximum).
* Mann & Whitney 1947; Hanley & McNeil 1982: AUC as the normalised U statistic.
* Shannon 1948: entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from auditor.metrics.names import MASK_METRICS, METRIC_NAMES, STATUSES

__all__ = [
    "MASK_METRICS",
    "METRIC_NAMES",
    "STATUSES",
    "background_focus",
    "band_width",
    "border_focus",
    "concentration_entropy",
    "dilate_masks",
    "energy_in_mask",
    "energy_lift",
    "iou_at_threshold",
    "localisation_auc",
    "localisation_metrics",
    "pointing_game",
    "relevance_rank_accuracy",
    "saliency_density_difference",
]


# --------------------------------------------------------------------------------------------
# validation and shared pieces
# --------------------------------------------------------------------------------------------
def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_cams(cams: object) -> Tensor:
    if not isinstance(cams, Tensor):
        raise TypeError(f"`cams` must be a torch.Tensor, got {type(cams).__name__}")
    if cams.ndim != 3:
        raise ValueError(f"`cams` must have shape [B, H, W], got {tuple(cams.shape)}")
    if not cams.is_floating_point():
        raise TypeError(f"`cams` must be a floating tensor, got dtype {cams.dtype}")
    if cams.shape[1] * cams.shape[2] == 0:
        raise ValueError(f"`cams` must have H, W >= 1, got {tuple(cams.shape)}")
    finite = torch.isfinite(cams)
    if bool(((cams < 0) & finite).any()):
        raise ValueError(
            f"`cams` must be >= 0 (apply ReLU before the metrics), got min "
            f"{float(cams[finite].min()):.6g}"
        )
    return cams


def _check_masks(masks: object, cams: Tensor) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"`masks` must be a torch.Tensor, got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"`masks` must have dtype torch.bool, got {masks.dtype}")
    if masks.shape != cams.shape:
        raise ValueError(
            f"`masks` must have shape [B, H, W] = {tuple(cams.shape)} like `cams`, "
            f"got {tuple(masks.shape)}"
        )
    return masks.to(cams.device)


class _CamState:
    """Per-sample facts about a CAM batch, computed once (flattened to ``[B, N]``)."""

    def __init__(self, cams: Tensor) -> None:
        cams = _check_cams(cams)
        dtype = _work_dtype(cams.device)
        b, h, w = cams.shape
        flat = cams.reshape(b, h * w).to(dtype)
        self.finite = torch.isfinite(flat).all(dim=1)
        # Non-finite rows are zeroed so that they cannot poison sorts or sums; they are
        # reported as NaN at the end anyway.
        self.x = torch.where(self.finite[:, None], flat, torch.zeros_like(flat))
        self.total = self.x.sum(dim=1)
        self.max = self.x.amax(dim=1)
        self.min = self.x.amin(dim=1)
        self.zero = self.total <= 0
        # relative tolerance: an upsampled 1x1 map differs from constant by rounding only
        self.constant = ((self.max - self.min) <= 1e-5 * self.max.abs()) & ~self.zero
        self.shape = (b, h, w)
        self.dtype = dtype
        self._sorted: tuple[Tensor, Tensor] | None = None

    @property
    def sorted(self) -> tuple[Tensor, Tensor]:
        """Ascending sort of each row, ``(values, indices)``, computed once."""
        if self._sorted is None:
            res = torch.sort(self.x, dim=1)
            self._sorted = (res.values, res.indices)
        return self._sorted

    @property
    def bad(self) -> Tensor:
        """Rows where no metric is defined: non-finite or all-zero CAM."""
        return ~self.finite | self.zero


class _MaskState:
    def __init__(self, masks: Tensor, cam: _CamState) -> None:
        b, h, w = cam.shape
        self.m = masks.reshape(b, h * w)
        self.area = self.m.sum(dim=1).to(cam.dtype)
        self.n = h * w
        self.empty = self.area == 0
        self.full = self.area == self.n

    @property
    def bad(self) -> Tensor:
        return self.empty | self.full


def _nan_where(values: Tensor, invalid: Tensor) -> Tensor:
    return torch.where(invalid, torch.full_like(values, math.nan), values)


def _prepare(cams: Tensor, masks: Tensor) -> tuple[_CamState, _MaskState]:
    cs = _CamState(cams)
    ms = _MaskState(_check_masks(masks, cams), cs)
    return cs, ms


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def dilate_masks(masks: Tensor, radius: int) -> Tensor:
    """Dilate boolean masks ``[B, H, W]`` by a Euclidean disk of ``radius`` pixels.

    A pixel ``p`` is in the result iff some mask pixel ``q`` has ``|p - q|_2 <= radius``
    (binary dilation with the disk structuring element; implemented as one batched
    convolution). ``radius = 0`` returns the masks unchanged.
    """
    radius = _check_int("radius", radius, 0)
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool or masks.ndim != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"`masks` must be a bool tensor [B, H, W], got {shape}")
    if radius == 0:
        return masks
    offs = torch.arange(-radius, radius + 1, device=masks.device, dtype=torch.float32)
    disk = ((offs[:, None] ** 2 + offs[None, :] ** 2) <= radius**2).to(torch.float32)
    out = torch.nn.functional.conv2d(
        masks[:, None].to(torch.float32), disk[None, None], padding=radius
    )
    return out[:, 0] > 0.5


# --------------------------------------------------------------------------------------------
# energy metrics
# --------------------------------------------------------------------------------------------
def energy_in_mask(cams: Tensor, masks: Tensor) -> Tensor:
    r"""Share of the CAM mass inside the object mask.

    .. math:: \mathrm{EIM} = \frac{\sum_p c_p\,[p \in M]}{\sum_p c_p} \in [0, 1]

    Wang et al. 2020, "Score-CAM" (energy-based pointing game); Arras et al. 2022, "CLEVR-XAI"
    (relevance mass accuracy). Higher is better. A constant CAM gives the mask area fraction
    ``|M| / N`` (chance level). NaN for an empty or full mask, an all-zero or non-finite CAM.

    >>> energy_in_mask(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[False, True]]]))
    tensor([0.7500], dtype=torch.float64)
    """
    return _energy_in_mask(*_prepare(cams, masks))


def _energy_in_mask(cs: _CamState, ms: _MaskState) -> Tensor:
    inside = (cs.x * ms.m).sum(dim=1)
    return _nan_where(inside / cs.total.clamp_min(1e-300), cs.bad | ms.bad)


def background_focus(cams: Tensor, masks: Tensor) -> Tensor:
    r"""Share of the CAM mass outside the object: ``1 - energy_in_mask``.

    .. math:: \mathrm{BF} = \frac{\sum_p c_p\,[p \notin M]}{\sum_p c_p} \in [0, 1]

    Complement of the energy-based pointing game (Wang et al. 2020, "Score-CAM"). Lower is
    better. Same NaN rules as :func:`energy_in_mask`.
    """
    return 1.0 - energy_in_mask(cams, masks)


def energy_lift(cams: Tensor, masks: Tensor) -> Tensor:
    r"""Energy in the mask relative to chance (the mask's area fraction).

    .. math:: \mathrm{lift} = \frac{\mathrm{EIM}}{|M| / N} \in [0, N / |M|]

    1 means "no better than a uniform map", above 1 the CAM concentrates on the object.
    Normalising by area makes small and large objects comparable (the raw energy share is
    biased towards large masks; cf. Arras et al. 2022, "CLEVR-XAI", and the proportional
    energy variant of Wang et al. 2020, "Score-CAM"). Constant CAM gives exactly 1.
    NaN for an empty or full mask, an all-zero or non-finite CAM.
    """
    return _energy_lift(*_prepare(cams, masks))


def _energy_lift(cs: _CamState, ms: _MaskState) -> Tensor:
    return _energy_in_mask(cs, ms) * ms.n / ms.area.clamp_min(1)


# --------------------------------------------------------------------------------------------
# metrics on the top of the map
# --------------------------------------------------------------------------------------------
def pointing_game(cams: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    r"""Pointing game: does the CAM's maximum fall in the (dilated) object mask?

    .. math:: \mathrm{PG} = \frac{|\{p : c_p = \max c\} \cap D_r(M)|}{|\{p : c_p = \max c\}|}

    where :math:`D_r(M)` is the mask dilated by a Euclidean disk of radius ``tolerance``
    pixels (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop", used 15 px
    at the input resolution). With a single maximum this is the usual hit (1) / miss (0).
    **Ties**: when several pixels share the maximum (exact equality), the score is the
    fraction of the tied maxima that fall in the dilated mask, i.e. the expected hit of a
    uniformly random choice among them, so the result does not depend on scan order (a two-way
    tie with one maximum inside gives 0.5). A constant CAM (every pixel a maximum) gives NaN, as
    do an empty or full mask and an all-zero or non-finite CAM.
    """
    tolerance = _check_int("tolerance", tolerance, 0)
    return _pointing_game(*_prepare(cams, masks), tolerance)


def _pointing_game(cs: _CamState, ms: _MaskState, tolerance: int) -> Tensor:
    b, h, w = cs.shape
    region = dilate_masks(ms.m.reshape(b, h, w), tolerance).reshape(b, h * w)
    is_max = cs.x == cs.max[:, None]
    hits = (is_max & region).sum(dim=1).to(cs.dtype)
    n_max = is_max.sum(dim=1).to(cs.dtype)
    return _nan_where(hits / n_max, cs.bad | ms.bad | cs.constant)


def relevance_rank_accuracy(cams: Tensor, masks: Tensor) -> Tensor:
    r"""Relevance rank accuracy: share of the top-``K`` CAM pixels inside the mask, ``K = |M|``.

    .. math:: \mathrm{RRA} = \frac{|P_K \cap M|}{K},\quad
              P_K = \text{the } K \text{ pixels with the highest CAM values}

    Arras, Osman & Samek 2022, "CLEVR-XAI" (Information Fusion). **Ties at the K-th value**
    are counted fractionally: with ``v`` the K-th largest value, ``g`` pixels strictly above
    ``v`` (``g_in`` of them in the mask) and ``t`` pixels equal to ``v`` (``t_in`` in the
    mask), the ``K - g`` remaining slots are filled in expectation:

    .. math:: \mathrm{RRA} = \frac{g_{in} + (K - g)\, t_{in} / t}{K}

    which is the mean over all tie-breaking orders, so the result does not depend on the
    sort. Constant CAM, empty or full mask, all-zero or non-finite CAM: NaN.
    """
    return _relevance_rank_accuracy(*_prepare(cams, masks))


def _relevance_rank_accuracy(cs: _CamState, ms: _MaskState) -> Tensor:
    n = ms.n
    k = ms.area.to(torch.long)
    asc = cs.sorted[0]
    # the K-th largest value sits at ascending position N - K
    v_k = asc.gather(1, (n - k).clamp(0, n - 1)[:, None])  # [B, 1]
    greater = cs.x > v_k
    equal = cs.x == v_k
    g = greater.sum(dim=1).to(cs.dtype)
    g_in = (greater & ms.m).sum(dim=1).to(cs.dtype)
    t = equal.sum(dim=1).to(cs.dtype).clamp_min(1)
    t_in = (equal & ms.m).sum(dim=1).to(cs.dtype)
    kf = ms.area
    score = (g_in + (kf - g) * t_in / t) / kf.clamp_min(1)
    return _nan_where(score, cs.bad | ms.bad | cs.constant)


def iou_at_threshold(cams: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    r"""IoU between the thresholded CAM and the mask.

    .. math:: B = \{p : c_p \ge \tau \max c\},\qquad \mathrm{IoU} = \frac{|B \cap M|}{|B \cup M|}

    The threshold ``tau`` (``threshold``, in ``(0, 1]``) is relative to the per-image maximum,
    as in the weakly supervised localisation protocol of Zhou et al. 2016, "Learning Deep
    Features for Discriminative Localization" (CAM; 0.2 for boxes there, 0.5 here by default).
    Constant CAM (every pixel passes), empty or full mask, all-zero or non-finite CAM: NaN.
    """
    threshold = _check_threshold(threshold)
    return _iou(*_prepare(cams, masks), float(threshold))


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"`threshold` must be a float, got {type(threshold).__name__}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must be in (0, 1], got {threshold}")
    return float(threshold)


def _iou(cs: _CamState, ms: _MaskState, threshold: float) -> Tensor:
    binar = cs.x >= threshold * cs.max[:, None]
    inter = (binar & ms.m).sum(dim=1).to(cs.dtype)
    union = (binar | ms.m).sum(dim=1).to(cs.dtype)
    return _nan_where(inter / union.clamp_min(1), cs.bad | ms.bad | cs.constant)


def _average_ranks(cs: _CamState) -> tuple[Tensor, Tensor]:
    """Ascending ranks 1..N per row with ties averaged; returns (ranks in sorted order, order)."""
    x = cs.x
    b, n = x.shape
    s, order = cs.sorted
    pos = torch.arange(1, n + 1, device=x.device, dtype=x.dtype).expand(b, n)
    starts = torch.ones((b, n), dtype=torch.bool, device=x.device)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = torch.ones((b, n), dtype=torch.bool, device=x.device)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    big = torch.full_like(pos, float(n + 1))
    last = torch.where(ends, pos, big).flip(1).cummin(dim=1).values.flip(1)
    return (first + last) / 2.0, order


def localisation_auc(cams: Tensor, masks: Tensor) -> Tensor:
    r"""ROC-AUC of the CAM values as scores for "pixel belongs to the mask".

    Rank-based (Mann & Whitney 1947; Hanley & McNeil 1982) with average ranks for ties:

    .. math:: \mathrm{AUC} = \frac{R_M - |M|(|M|+1)/2}{|M|\,(N - |M|)}

    where :math:`R_M` is the sum of the (ascending, tie-averaged) ranks of the mask pixels.
    Equals the probability that a random object pixel outscores a random background pixel
    (ties count 1/2). 0.5 = chance; a constant CAM gives exactly 0.5. Empty or full mask
    (one class absent), all-zero or non-finite CAM: NaN. Vectorised over the batch (one sort
    per row, no loop).
    """
    return _auc(*_prepare(cams, masks))


def _auc(cs: _CamState, ms: _MaskState) -> Tensor:
    ranks, order = _average_ranks(cs)
    m_sorted = ms.m.gather(1, order).to(cs.dtype)
    r_m = (ranks * m_sorted).sum(dim=1)
    n1 = ms.area
    n0 = ms.n - n1
    auc = (r_m - n1 * (n1 + 1) / 2) / (n1 * n0).clamp_min(1)
    return _nan_where(auc, cs.bad | ms.bad)


def saliency_density_difference(cams: Tensor, masks: Tensor) -> Tensor:
    r"""Mean CAM inside minus mean CAM outside, relative to the mean CAM over the image.

    .. math:: \mathrm{DD} = \frac{\bar c_{M} - \bar c_{\bar M}}{\bar c}
              = \frac{\mathrm{EIM}}{f} - \frac{1 - \mathrm{EIM}}{1 - f},\quad f = |M| / N

    Dividing by the image mean makes it invariant to the CAM's scale. 0 = no preference
    (a constant CAM gives 0), range :math:`[-1/(1-f),\ 1/f]`. A saliency-density contrast in
    the spirit of the inside/outside comparisons of Arras et al. 2022, "CLEVR-XAI". Empty or
    full mask, all-zero or non-finite CAM: NaN.
    """
    return _density_diff(*_prepare(cams, masks))


def _density_diff(cs: _CamState, ms: _MaskState) -> Tensor:
    inside = (cs.x * ms.m).sum(dim=1)
    mean_in = inside / ms.area.clamp_min(1)
    mean_out = (cs.total - inside) / (ms.n - ms.area).clamp_min(1)
    mean_all = cs.total / ms.n
    return _nan_where((mean_in - mean_out) / mean_all.clamp_min(1e-300), cs.bad | ms.bad)


# --------------------------------------------------------------------------------------------
# mask-free metrics
# --------------------------------------------------------------------------------------------
def band_width(h: int, w: int, width_fraction: float) -> int:
    """Width in pixels of the outer band that :func:`border_focus` measures on an ``h x w``
    grid: ``max(1, round(width_fraction * min(h, w)))``, the same on every side; refused when
    it would cover the whole image."""
    if isinstance(width_fraction, bool) or not isinstance(width_fraction, (int, float)):
        raise TypeError(f"`width_fraction` must be a float, got {type(width_fraction).__name__}")
    if not 0.0 < float(width_fraction) < 0.5:
        raise ValueError(f"`width_fraction` must be in (0, 0.5), got {width_fraction}")
    band = max(1, round(float(width_fraction) * min(h, w)))
    if 2 * band >= min(h, w):
        raise ValueError(
            f"`width_fraction` = {width_fraction} gives a {band}-px border band that covers the "
            f"whole {h}x{w} image"
        )
    return band


def border_focus(cams: Tensor, width_fraction: float = 0.1) -> Tensor:
    r"""Share of the CAM mass in the outer band of the image (frames, watermarks, rulers).

    .. math:: \mathrm{BorderFocus} = \frac{\sum_{p \in \mathcal{B}} c_p}{\sum_p c_p}

    :math:`\mathcal{B}` = pixels within ``w`` px of the image edge, with
    ``w = max(1, round(width_fraction * min(H, W)))``; the band must leave an interior
    (``2w < min(H, W)``). Needs no mask. A constant CAM gives the band's area share
    (chance level). All-zero or non-finite CAM: NaN. Lower is usually better; a shortcut
    detector in the spirit of Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and
    assessing what machines really learn" (Nature Communications).
    """
    cs = _CamState(cams)
    return _border_focus(cs, band_width(cs.shape[1], cs.shape[2], width_fraction))


def _border_focus(cs: _CamState, bw: int) -> Tensor:
    b, h, w = cs.shape
    band = torch.ones((h, w), dtype=torch.bool, device=cs.x.device)
    band[bw : h - bw, bw : w - bw] = False
    share = (cs.x * band.reshape(1, h * w)).sum(dim=1) / cs.total.clamp_min(1e-300)
    return _nan_where(share, cs.bad)


def concentration_entropy(cams: Tensor) -> Tensor:
    r"""Normalised Shannon entropy of the CAM seen as a distribution over pixels.

    .. math:: p_i = \frac{c_i}{\sum_j c_j},\qquad
              H_{norm} = \frac{-\sum_i p_i \log p_i}{\log N} \in [0, 1]

    (Shannon 1948; :math:`0 \log 0 = 0`). 0 = all mass on one pixel, 1 = uniform (a constant
    CAM). Needs no mask. All-zero or non-finite CAM, or a 1-pixel image (``log N = 0``): NaN.
    Lower means a more concentrated explanation.
    """
    return _entropy(_CamState(cams))


def _entropy(cs: _CamState) -> Tensor:
    n = cs.x.shape[1]
    p = cs.x / cs.total.clamp_min(1e-300)[:, None]
    ent = -torch.special.xlogy(p, p).sum(dim=1)
    if n == 1:
        return torch.full_like(ent, math.nan)
    return _nan_where((ent / math.log(n)).clamp(0.0, 1.0), cs.bad)


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------
def _present(has_mask: Tensor | None, any_mask: bool, b: int, device: torch.device) -> Tensor:
    """``[B]`` bool: the samples whose mask row is real (``has_mask``, checked), else all
    (``any_mask``: masks were given) or none."""
    if has_mask is None:
        return torch.full((b,), any_mask, dtype=torch.bool, device=device)
    if not isinstance(has_mask, Tensor) or has_mask.dtype != torch.bool:
        raise TypeError(
            f"`has_mask` must be a bool tensor [B], got "
            f"{has_mask.dtype if isinstance(has_mask, Tensor) else type(has_mask).__name__}"
        )
    if tuple(has_mask.shape) != (b,):
        raise ValueError(f"`has_mask` must have shape [{b}], got {tuple(has_mask.shape)}")
    return has_mask.to(device)


def localisation_metrics(
    cams: Tensor,
    masks: Tensor | None,
    *,
    has_mask: Tensor | None = None,
    pointing_tolerance: int = 0,
    iou_threshold: float = 0.5,
    border_width: float = 0.1,
) -> tuple[dict[str, Tensor], list[str]]:
    """All localisation metrics for a batch, plus a per-sample status.

    Returns ``(metrics, status)``: ``metrics`` maps each name of :data:`METRIC_NAMES`
    (``energy_in_mask``, ``background_focus``, ``energy_lift``, ``pointing_game``,
    ``relevance_rank_accuracy``, ``iou``, ``auc``, ``density_diff``, ``border_focus``,
    ``entropy``) to a ``Tensor[B]``; ``status`` is a list of ``B`` strings from
    :data:`STATUSES`, the first that applies in the order ``nonfinite``, ``zero_cam``,
    ``no_mask``, ``empty_mask``, ``full_mask``, ``constant_cam``, ``ok``.

    ``masks=None`` means no sample has a mask; ``has_mask`` (``Tensor[B]`` bool) marks the
    samples whose mask row is real (the others may hold anything). For samples without a mask
    every mask metric is NaN while ``border_focus`` and ``entropy`` are still computed. The
    NaN rules of each metric are in the module docstring.
    """
    pointing_tolerance = _check_int("pointing_tolerance", pointing_tolerance, 0)
    iou_threshold = _check_threshold(iou_threshold)
    cs = _CamState(cams)
    b, h, w = cs.shape
    bw = band_width(h, w, border_width)
    device = cs.x.device
    present = _present(has_mask, masks is not None, b, device)

    out: dict[str, Tensor] = {}
    nan = torch.full((b,), math.nan, dtype=cs.dtype, device=device)
    if masks is None:
        for name in METRIC_NAMES:
            if name in MASK_METRICS:
                out[name] = nan.clone()
        empty = full = torch.zeros((b,), dtype=torch.bool, device=device)
    else:
        masks = _check_masks(masks, cams)
        # Rows without a real mask get an all-False mask: finite work, NaN'd below.
        masks = masks & present[:, None, None]
        ms = _MaskState(masks, cs)
        empty, full = ms.empty, ms.full
        eim = _energy_in_mask(cs, ms)
        out["energy_in_mask"] = eim
        out["background_focus"] = 1.0 - eim
        out["energy_lift"] = eim * ms.n / ms.area.clamp_min(1)
        out["pointing_game"] = _pointing_game(cs, ms, pointing_tolerance)
        out["relevance_rank_accuracy"] = _relevance_rank_accuracy(cs, ms)
        out["iou"] = _iou(cs, ms, iou_threshold)
        out["auc"] = _auc(cs, ms)
        out["density_diff"] = _density_diff(cs, ms)
        for name in MASK_METRICS:
            out[name] = _nan_where(out[name], ~present)
    out["border_focus"] = _border_focus(cs, bw)
    out["entropy"] = _entropy(cs)
    # a constant map localises nothing: no metric, not even the ones that would restate the
    # mask area (energy_in_mask = A / N) or chance (auc = 0.5)
    metrics = {name: _nan_where(out[name], cs.constant) for name in METRIC_NAMES}

    conditions = (
        ~cs.finite,
        cs.zero,
        ~present,
        empty,
        full,
        cs.constant,
    )
    code = torch.full((b,), len(STATUSES) - 1, dtype=torch.long, device=device)
    for i in reversed(range(len(conditions))):
        code = torch.where(conditions[i], torch.full_like(code, i), code)
    status = [STATUSES[i] for i in code.tolist()]
    return metrics, status
