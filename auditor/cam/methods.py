"""CAM methods: each one turns a capture (activations, gradients, helpers) into a map.

All the autograd, hooks and extra forwards live in :mod:`auditor.cam.engine`. A method here is a
pure function of a :class:`CamContext` returning a map ``[N, h, w]`` (float32, >= 0, *not*
normalised), where ``N`` is the number of (image, target) pairs and ``h, w`` the target layer's
resolution. Notation used in the docstrings:

* ``A_k`` (``A[n, k]``): activation map of channel ``k`` at the target layer, ``[h, w]``;
* ``G_k = dy_c / dA_k``: gradient of the raw logit ``y_c`` of the target class ``c``;
* ``Z = h * w`` the number of spatial positions.

Adding a method: write ``def _my(ctx: CamContext) -> Tensor`` and call :func:`register`.
The registry itself (:class:`CamMethod`, :func:`register`, :data:`METHODS`) lives in
:mod:`auditor.cam.registry`, which needs no torch; its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import _REGISTRY, METHODS, OWN_EXTRA_FORWARDS, CamMethod, register

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "CamContext",
    "CamMethod",
    "OwnForward",
    "register",
]


def _unavailable(*_args: object) -> Any:
    raise RuntimeError("this CAM method needs an engine helper that was not provided")


class OwnForward(Protocol):
    """The forward half of a method's own pass (``CamMethod.own_forward``).

    ``logits``: ``[B, C]`` the model's output of that forward (detached); ``maps(targets)``:
    the backward(s) for ``targets`` ``[B, T]`` giving ``[B*T, h', w']``, called at most once.
    """

    logits: Tensor

    def maps(self, targets: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class CamContext:
    """Everything a method may read for one target layer.

    Attributes:
        activations: ``A`` ``[N, K, h, w]`` float32, finite (non-finite samples are zeroed).
        gradients: ``G = dy_c/dA`` ``[N, K, h, w]`` float32, or ``None`` when no requested method
            needs gradients.
        targets: ``[N]`` long, the class explained for each row.
        logits: ``[N, C]`` float32 logits of the unperturbed forward.
        layer: the target layer's name.
        head_weight: lazily returns the weight ``[C, K]`` of the final linear layer (``cam``).
        masked_scores: lazily returns ``[N, K]``: softmax probability of the target class for the
            input masked by each normalised, upsampled channel (Score-CAM's extra forwards).
        ablated_scores: lazily returns ``[N, K]``: the target logit with channel ``k`` zeroed at
            the target layer (Ablation-CAM's extra forwards).
        hvp: ``H A`` ``[N, K, h, w]``, the Hessian of ``y_c`` w.r.t. ``A`` applied to ``A`` (one
            double backward through the layers after the target layer), for methods registered
            with ``needs_hvp=True``; else ``None``.
        eigen_smooth: replace the channel sum of the weighted activations by their first
            principal component (pytorch-grad-cam's ``eigen_smooth``).
        seed: seed of the engine's random draws (``randomcam``, noisy passes).
        noisy_gradients: ``(samples, std) -> [S, N, K, h, w]``: ``dy_c/dA`` for ``S`` copies of
            the input with Gaussian noise ``N(0, std^2)`` added (extra captures, batched).
        smoothed_scores: ``(samples, std) -> [N, K]``: mean over ``S`` draws of the target logit
            for ``X * (norm(up(A_k)) + noise)`` (SS-CAM's extra forwards).
        integrated_scores: ``(samples) -> [N, K]``: mean over ``i = 1..S`` of the target logit
            for ``c_i X * norm(up(A_k))``, ``c_i = sum_{j<=i} j/S`` (IS-CAM's extra forwards).
        own_map: ``(method) -> [N, h', w']``: the map computed by that method's own pass
            (``CamMethod.own_pass``: its own forward/backward on the model, once per batch,
            shared by every target layer), at the resolution the pass gives (LeGrad: the patch
            grid).
    """

    activations: Tensor
    gradients: Tensor | None
    targets: Tensor
    logits: Tensor
    layer: str
    head_weight: Callable[[], Tensor]
    masked_scores: Callable[[], Tensor]
    ablated_scores: Callable[[], Tensor]
    hvp: Tensor | None = None
    eigen_smooth: bool = False
    seed: int = 0
    noisy_gradients: Callable[[int, float], Tensor] = field(default=_unavailable)
    smoothed_scores: Callable[[int, float], Tensor] = field(default=_unavailable)
    integrated_scores: Callable[[int], Tensor] = field(default=_unavailable)
    own_map: Callable[[str], Tensor] = field(default=_unavailable)

    @property
    def grads(self) -> Tensor:
        """The gradients, or a :class:`RuntimeError` if the engine did not compute them."""
        if self.gradients is None:  # engine bug: needs_gradients was not honoured
            raise RuntimeError("this CAM method needs gradients but none were captured")
        return self.gradients


# --------------------------------------------------------------------------- helpers


def _weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``sum_k w[n, k] * A[n, k]`` -> ``[N, h, w]`` (one batched contraction)."""
    return torch.einsum("nk,nkhw->nhw", weights, acts)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0`` wherever ``den == 0`` (the 0/0 guard)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def _top_projection(centred: Tensor, positions_le_channels: bool) -> Tensor:
    """``X v_1`` for a batch of centred ``[hw, K]`` matrices, via the smaller Gram matrix."""
    if positions_le_channels:
        evals, evecs = torch.linalg.eigh(centred @ centred.transpose(-1, -2))  # ascending
        return evecs[..., :, -1] * evals[..., -1:].clamp_min(0).sqrt()
    _, evecs = torch.linalg.eigh(centred.transpose(-1, -2) @ centred)
    return torch.einsum("...pk,...k->...p", centred, evecs[..., :, -1])


def _svd_projection(centred: Tensor) -> Tensor:
    """``X v_1 = s_1 u_1`` from a (slower, more robust) SVD of one ``[hw, K]`` matrix."""
    u, svals, _ = torch.linalg.svd(centred, full_matrices=False)
    return u[:, 0] * svals[0]


def _first_component(x: Tensor, reference: Tensor) -> Tensor:
    """Projection of each sample's ``[hw, K]`` matrix on its first principal component.

    ``X_n`` (rows: positions, columns: channels) is centred per channel; with the SVD
    ``X_n = U S V^T`` the map is ``X_n v_1 = s_1 u_1``. Rather than a full batched SVD of the
    ``[hw, K]`` matrices (slow on CPU: ~1 s for 16 x 49 x 512), we take the top eigenpair of the
    smaller Gram matrix with :func:`torch.linalg.eigh`: ``X X^T = U S^2 U^T``
    (``hw <= K``: map ``= sqrt(lambda_1) u_1``) or ``X^T X = V S^2 V^T`` (map ``= X v_1``); the
    result is the same as the SVD's. The sign of a singular vector is arbitrary, so it is fixed
    to make the map correlate positively with ``reference`` (``[N, h, w]``).

    Robust to ill-conditioned activations (a trained network's layer can span 1e-8 .. 1e6):
    each matrix is divided by its largest absolute entry (the map scales back linearly) and the
    decomposition runs in float64. Where the batched ``eigh`` still fails, each sample is retried
    alone, then with an SVD; a sample for which both fail gets a NaN map, which the engine turns
    into a zero map with status ``"method_failed"`` (the rest of the batch is unaffected).
    """
    n, k, h, w = x.shape
    if h * w < 2:
        return torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    mat = x.reshape(n, k, h * w).transpose(1, 2).double()  # [N, hw, K]
    centred = mat - mat.mean(dim=1, keepdim=True)
    scale = centred.abs().flatten(1).amax(1)  # [N]
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, 1.0)
    centred = centred / scale[:, None, None]
    small = h * w <= k
    try:
        proj = _top_projection(centred, small)
    except RuntimeError:  # torch.linalg.LinAlgError: retry sample by sample
        rows = []
        for one in centred:
            try:
                rows.append(_top_projection(one, small))
            except RuntimeError:
                try:
                    rows.append(_svd_projection(one))
                except RuntimeError:
                    rows.append(torch.full((h * w,), float("nan"), dtype=one.dtype))
        proj = torch.stack([r.to(centred.device) for r in rows])
    proj = proj * scale[:, None]
    ref = reference.reshape(n, h * w).double()
    cov = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    sign = torch.where(cov < 0, -1.0, 1.0).to(proj.dtype)
    return F.relu(proj * sign[:, None]).reshape(n, h, w).to(x.dtype)


def _channel_map(ctx: CamContext, weights: Tensor) -> Tensor:
    """``ReLU(sum_k w_k A_k)``, or with ``eigen_smooth`` the first component of ``w_k A_k``."""
    if ctx.eigen_smooth:
        weighted = weights[:, :, None, None] * ctx.activations
        return _first_component(weighted, weighted.sum(dim=1))
    return F.relu(_weighted_sum(weights, ctx.activations))


def _elementwise_map(ctx: CamContext, weighted: Tensor) -> Tensor:
    """``ReLU(sum_k P_k)`` for per-position products ``P`` ``[N, K, h, w]`` (or eigen-smoothed)."""
    if ctx.eigen_smooth:
        return _first_component(weighted, weighted.sum(dim=1))
    return F.relu(weighted.sum(dim=1))


# --------------------------------------------------------------------------- methods


@register(
    "cam",
    smoothable=True,
    needs_gradients=False,
    kind="activation",
    title="CAM",
    formula="M_c = max(0, sum_k w_{c,k} A_k)",
    description=(
        "Channels of the target layer weighted by the classifier weights of the class; "
        "defined only for a global-average-pooling + linear head."
    ),
    reference="Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
)
def _cam(ctx: CamContext) -> Tensor:
    """CAM: ``M_c = max(0, sum_k w_{c,k} A_k)``.

    ``w_{c,k}`` is the weight of the final linear layer (after global average pooling) linking
    channel ``k`` to class ``c`` (Zhou et al. 2016). Only defined for a GAP + linear head; the
    engine raises a ``ValueError`` otherwise. Negative evidence is clamped to 0.
    """
    weight = ctx.head_weight()[ctx.targets]  # [N, K]
    return _channel_map(ctx, weight)


@register(
    "gradcam",
    smoothable=True,
    needs_gradients=True,
    kind="gradient",
    title="Grad-CAM",
    formula="alpha_k = (1/Z) sum_ij G_kij; M = ReLU(sum_k alpha_k A_k)",
    description=(
        "Channels weighted by their spatially averaged gradient: the standard, coarse "
        "class-discriminative map."
    ),
    reference=(
        "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via "
        "Gradient-based Localization"
    ),
)
def _gradcam(ctx: CamContext) -> Tensor:
    """Grad-CAM: ``alpha_k = (1/Z) sum_ij G_kij``; ``M = ReLU(sum_k alpha_k A_k)``.

    (Selvaraju et al. 2017.) For a GAP + linear head, ``G_kij = w_{c,k} / Z`` so Grad-CAM equals
    ``ReLU(CAM) / Z``.
    """
    alpha = ctx.grads.mean(dim=(2, 3))
    return _channel_map(ctx, alpha)


@register(
    "gradcam++",
    smoothable=True,
    needs_gradients=True,
    kind="gradient",
    title="Grad-CAM++",
    formula=(
        "alpha_kij = G_kij^2 / (2 G_kij^2 + sum_ab A_kab G_kij^3), "
        "w_k = sum_ij alpha_kij ReLU(G_kij), M = ReLU(sum_k w_k A_k)"
    ),
    description=(
        "Grad-CAM with per-position weights from higher-order terms; better when several "
        "instances of the class appear."
    ),
    reference=(
        "Chattopadhay et al. 2018, Grad-CAM++: Generalized Gradient-based Visual Explanations "
        "for Deep Convolutional Networks"
    ),
)
def _gradcam_pp(ctx: CamContext) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form with ``Y = exp(y_c)``.

    ``alpha_kij = G_kij^2 / (2 G_kij^2 + sum_ab A_kab G_kij^3), w_k = sum_ij alpha_kij
    ReLU(G_kij), M = ReLU(sum_k w_k A_k)``, with ``alpha = 0`` where the denominator is ``0``.
    For a piecewise-linear network the higher derivatives of ``exp(y_c)`` are powers of ``G``,
    which gives this closed form. The positive factor ``exp(y_c)`` of ``dY/dA`` is dropped (it
    scales the whole map and would overflow for large logits).
    """
    grads = ctx.grads
    acts = ctx.activations
    g2 = grads.pow(2)
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    alpha = _safe_div(g2, denom)
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3))
    return _channel_map(ctx, weights)


@register(
    "xgradcam",
    smoothable=True,
    needs_gradients=True,
    kind="gradient",
    title="XGrad-CAM",
    formula="w_k = sum_ij (A_kij / sum_ab A_kab) G_kij; M = ReLU(sum_k w_k A_k)",
    description=(
        "Grad-CAM with activation-normalised gradient weights, chosen to satisfy "
        "sensitivity and conservation axioms."
    ),
    reference=(
        "Fu et al. 2020, Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation "
        "of CNNs"
    ),
)
def _xgradcam(ctx: CamContext) -> Tensor:
    """XGrad-CAM: ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij``; ``M = ReLU(sum_k w_k A_k)``.

    (Fu et al. 2020.) Channels with ``sum_ab A_kab = 0`` get ``w_k = 0``.
    """
    acts = ctx.activations
    norm = _safe_div(acts, acts.sum(dim=(2, 3), keepdim=True))
    weights = (norm * ctx.grads).sum(dim=(2, 3))
    return _channel_map(ctx, weights)


@register(
    "layercam",
    smoothable=True,
    needs_gradients=True,
    kind="gradient",
    title="LayerCAM",
    formula="M_ij = ReLU(sum_k ReLU(G_kij) A_kij)",
    description=(
        "Element-wise positive-gradient weighting; finer maps, also usable at early layers."
    ),
    reference=(
        "Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for Localization"
    ),
)
def _layercam(ctx: CamContext) -> Tensor:
    """LayerCAM: ``M_ij = ReLU(sum_k ReLU(G_kij) A_kij)`` (Jiang et al. 2021)."""
    return _elementwise_map(ctx, F.relu(ctx.grads) * ctx.activations)


@register(
    "hirescam",
    smoothable=True,
    needs_gradients=True,
    kind="gradient",
    title="HiResCAM",
    formula="M_ij = ReLU(sum_k G_kij A_kij)",
    description=(
        "Element-wise gradient times activation without averaging; provably reflects the "
        "locations the score depends on for CNN heads."
    ),
    reference=(
        "Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks"
    ),
)
def _hirescam(ctx: CamContext) -> Tensor:
    """HiResCAM: ``M_ij = ReLU(sum_k G_kij A_kij)`` (Draelos & Carin 2020), no averaging."""
    return _elementwise_map(ctx, ctx.grads * ctx.activations)


@register(
    "eigencam",
    needs_gradients=False,
    kind="activation",
    title="Eigen-CAM",
    formula="M = ReLU(X v_1)",
    description=("First principal component of the activations: class-agnostic, no gradients."),
    reference=(
        "Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal Components"
    ),
)
def _eigencam(ctx: CamContext) -> Tensor:
    """Eigen-CAM: ``M = ReLU(X v_1)`` (Muhammad & Yeasin 2020).

    ``X`` is the per-sample ``[hw, K]`` activation matrix centred per channel and ``v_1`` its
    first right singular vector (computed from the Gram matrix). Class-agnostic. The sign is
    fixed so that the map correlates positively with the channel-mean activation
    ``(1/K) sum_k A_k``.
    """
    acts = ctx.activations
    return _first_component(acts, acts.mean(dim=1))


@register(
    "eigengradcam",
    needs_gradients=True,
    kind="gradient",
    title="Eigen-Grad-CAM",
    formula="M = ReLU(X v_1) with X the centred [hw, K] matrix of A_kij G_kij",
    description=(
        "First principal component of gradient-weighted activations: a smoother class-"
        "discriminative map."
    ),
    reference=(
        "Muhammad & Yeasin 2020, Eigen-CAM (applied to A * dy_c/dA, as in pytorch-grad-cam's "
        "EigenGradCAM)"
    ),
)
def _eigengradcam(ctx: CamContext) -> Tensor:
    """Eigen-Grad-CAM: Eigen-CAM on the gradient-weighted activations ``A * G``.

    ``M = ReLU(X v_1)`` with ``X`` the centred ``[hw, K]`` matrix of ``A_kij G_kij``; the sign is
    fixed to correlate positively with ``sum_k A_k G_k`` (class-discriminative, as HiResCAM).
    """
    prod = ctx.activations * ctx.grads
    return _first_component(prod, prod.sum(dim=1))


@register(
    "scorecam",
    smoothable=True,
    sanity_check=False,
    needs_gradients=False,
    kind="perturbation",
    title="Score-CAM",
    formula="s_k = softmax(f(X * H_k))_c, w = softmax_k(s) and M = ReLU(sum_k w_k A_k)",
    description=(
        "Channels weighted by the class probability of the input masked by each channel: "
        "gradient-free, one extra forward per channel."
    ),
    cost="1 forward (capture) + K masked forwards (K = channels of the target layer), batched",
    extra_forwards="K",
    reference=(
        "Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for Convolutional "
        "Neural Networks"
    ),
)
def _scorecam(ctx: CamContext) -> Tensor:
    """Score-CAM (Wang et al. 2020).

    ``H_k = norm(up(A_k))`` (bilinear upsampling to the input size, min-max to ``[0, 1]``;
    constant channels give ``H_k = 0``), ``s_k = softmax(f(X * H_k))_c``,
    ``w = softmax_k(s)`` and ``M = ReLU(sum_k w_k A_k)``. The ``N * K`` masked forwards run in
    large batches in the engine.
    """
    weights = torch.softmax(ctx.masked_scores(), dim=1)
    return _channel_map(ctx, weights)


@register(
    "ablationcam",
    smoothable=True,
    sanity_check=False,
    needs_gradients=False,
    kind="perturbation",
    title="Ablation-CAM",
    formula="w_k = (y_c - y_c^k) / y_c",
    description=(
        "Channels weighted by the drop of the class logit when the channel is zeroed: "
        "gradient-free, one extra tail forward per channel."
    ),
    cost=(
        "1 forward (capture) + K forwards of the layers after the target layer with channel k "
        "zeroed, batched"
    ),
    extra_forwards="K (tail only)",
    reference=(
        "Desai & Ramaswamy 2020, Ablation-CAM: Visual Explanation for Deep Convolutional "
        "Network via Gradient-free Localization"
    ),
)
def _ablationcam(ctx: CamContext) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020).

    ``w_k = (y_c - y_c^k) / y_c`` where ``y_c^k`` is the logit with channel ``k`` zeroed at the
    target layer (``w = 0`` where ``y_c = 0``), ``M = ReLU(sum_k w_k A_k)``.
    """
    y = ctx.logits.gather(1, ctx.targets[:, None])  # [N, 1]
    weights = _safe_div(y - ctx.ablated_scores(), y.expand(-1, ctx.activations.shape[1]))
    return _channel_map(ctx, weights)


# ----------------------------------------------------------------- parity with the peer libraries

FINER_COMPARISONS = 3
"""Finer-CAM compares the target with this many classes whose logits are closest to it."""
FINER_ALPHA = 1.0
"""Finer-CAM's comparison strength ``alpha``."""
SMOOTHGRAD_SAMPLES, SMOOTHGRAD_STD = 4, 0.3
"""SmoothGrad-CAM++ noisy copies and the noise's standard deviation (torch-cam's defaults)."""
SSCAM_SAMPLES, SSCAM_STD = 35, 2.0
"""SS-CAM noisy masks per channel and the noise's standard deviation (torch-cam's defaults)."""
ISCAM_SAMPLES = 10
"""IS-CAM integration steps (torch-cam's default)."""
FEM_K = 2.0
"""FEM's ``k``-sigma threshold (pytorch-grad-cam's default)."""


@register(
    "gradcam_elementwise",
    needs_gradients=True,
    kind="gradient",
    smoothable=True,
    title="Grad-CAM element-wise",
    formula="M_ij = sum_k ReLU(G_kij A_kij)",
    description=(
        "Grad-CAM without the spatial average: positive gradient-times-activation terms summed "
        "over channels, so a position's negative evidence in one channel cannot cancel another's."
    ),
    reference=(
        "Selvaraju et al. 2017 (Grad-CAM), element-wise variant as in pytorch-grad-cam's "
        "GradCAMElementWise (Gildenblat et al. 2021, PyTorch library for CAM methods)"
    ),
)
def _gradcam_elementwise(ctx: CamContext) -> Tensor:
    """Grad-CAM element-wise: ``M_ij = sum_k ReLU(G_kij A_kij)``.

    The ReLU is taken per channel and position before the channel sum (HiResCAM takes it after).
    """
    return _elementwise_map(ctx, F.relu(ctx.grads * ctx.activations))


@register(
    "randomcam",
    needs_gradients=False,
    kind="activation",
    smoothable=True,
    title="Random-CAM (null baseline)",
    formula="w_k ~ U(-1, 1) i.i.d., M = ReLU(sum_k w_k A_k)",
    description=(
        "Random channel weights: what a map that ignores the class scores on the same "
        "activations, the chance level against which a method's localisation is read."
    ),
    reference=(
        "Adebayo et al. 2018, Sanity Checks for Saliency Maps (random baselines); as "
        "pytorch-grad-cam's RandomCAM"
    ),
)
def _randomcam(ctx: CamContext) -> Tensor:
    """Random-CAM: ``w_k ~ U(-1, 1) i.i.d., M = ReLU(sum_k w_k A_k)``.

    The weights come from a CPU generator seeded with the engine's ``seed`` (a batch of the same
    composition always gets the same weights, so ``--resume`` reproduces a run).
    """
    n, k = ctx.activations.shape[:2]
    gen = torch.Generator().manual_seed(ctx.seed)
    weights = torch.rand(n, k, generator=gen).mul_(2).sub_(1).to(ctx.activations.device)
    return _channel_map(ctx, weights)


@register(
    "fem",
    needs_gradients=False,
    kind="activation",
    smoothable=True,
    title="FEM",
    formula="w_k = (1/Z) sum_ij 1[A_kij > mu_k + 2 sigma_k], M = ReLU(sum_k w_k A_k)",
    description=(
        "Feature Explanation Method: each channel weighted by the share of its positions that "
        "are outliers (above mean + 2 standard deviations); gradient-free and class-agnostic."
    ),
    reference=(
        "Fuad et al. 2020, Features Understanding in 3D CNNs for Actions Recognition in Video "
        "(IPTA)"
    ),
)
def _fem(ctx: CamContext) -> Tensor:
    """FEM: ``w_k = (1/Z) sum_ij 1[A_kij > mu_k + 2 sigma_k], M = ReLU(sum_k w_k A_k)``.

    ``mu_k`` and ``sigma_k`` are the spatial mean and (population) standard deviation of
    channel ``k`` (``k = 2`` in the threshold: :data:`FEM_K`).
    """
    acts = ctx.activations
    mean = acts.mean(dim=(2, 3), keepdim=True)
    std = acts.std(dim=(2, 3), keepdim=True, correction=0)
    weights = (acts > mean + FEM_K * std).float().mean(dim=(2, 3))
    return _channel_map(ctx, weights)


def _kernel_first_component(x: Tensor, reference: Tensor) -> Tensor:
    """Kernel PCA (sigmoid kernel) first component of each sample's centred ``[hw, K]`` matrix.

    ``k(a, b) = tanh(gamma <a, b> + 1)`` with ``gamma = 1/K``; the kernel matrix is centred
    (``K_c = K - 1K - K1 + 1K1``), and the map is ``sqrt(lambda_1) u_1`` of its top eigenpair
    (the training projection of kernel PCA), signed to correlate positively with ``reference``.
    Computed in float64; a sample whose decomposition fails gets a NaN map (``method_failed``).
    """
    n, k, h, w = x.shape
    if h * w < 2:
        return torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    mat = x.reshape(n, k, h * w).transpose(1, 2).double()
    centred = mat - mat.mean(dim=1, keepdim=True)
    gram = torch.tanh(centred @ centred.transpose(1, 2) / k + 1.0)  # [N, hw, hw]
    gram = gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True)
    gram = gram + gram.mean(dim=(1, 2), keepdim=True)
    try:
        evals, evecs = torch.linalg.eigh(gram)
        proj = evecs[:, :, -1] * evals[:, -1:].clamp_min(0).sqrt()
    except RuntimeError:
        rows = []
        for one in gram:
            try:
                ev, vec = torch.linalg.eigh(one)
                rows.append(vec[:, -1] * ev[-1].clamp_min(0).sqrt())
            except RuntimeError:
                rows.append(torch.full((h * w,), float("nan"), dtype=one.dtype))
        proj = torch.stack([r.to(gram.device) for r in rows])
    ref = reference.reshape(n, h * w).double()
    cov = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    sign = torch.where(cov < 0, -1.0, 1.0).to(proj.dtype)
    return F.relu(proj * sign[:, None]).reshape(n, h, w).to(x.dtype)


@register(
    "kpcacam",
    needs_gradients=False,
    kind="activation",
    title="KPCA-CAM",
    formula="M = ReLU(sqrt(lambda_1) u_1) of the centred kernel matrix tanh(<a_i, a_j>/K + 1)",
    description=(
        "Eigen-CAM with kernel PCA (sigmoid kernel) of the activations: the first non-linear "
        "principal component; class-agnostic, no gradients."
    ),
    reference=(
        "Karmani et al. 2024, KPCA-CAM: Visual Explainability of Deep Computer Vision Models "
        "using Kernel PCA"
    ),
)
def _kpcacam(ctx: CamContext) -> Tensor:
    """KPCA-CAM: ``M = ReLU(sqrt(lambda_1) u_1)`` of the centred kernel matrix
    ``tanh(<a_i, a_j>/K + 1)``.

    ``a_i`` is the channel vector at position ``i`` of the per-channel-centred activations,
    ``(lambda_1, u_1)`` the top eigenpair of the centred ``[hw, hw]`` kernel matrix (scikit-learn's
    ``KernelPCA(kernel="sigmoid")`` defaults, as pytorch-grad-cam). The sign, arbitrary in kernel
    PCA, is fixed to correlate positively with the channel-mean activation (as Eigen-CAM).
    """
    acts = ctx.activations
    return _kernel_first_component(acts, acts.mean(dim=1))


@register(
    "shapleycam",
    needs_gradients=True,
    needs_hvp=True,
    kind="gradient",
    smoothable=True,
    title="ShapleyCAM",
    formula="w_k = (1/Z) sum_ij (G_kij - 0.5 (H A)_kij), M = ReLU(sum_k w_k A_k)",
    description=(
        "Grad-CAM with a second-order (Hessian-vector) correction: the channel weights "
        "approximate Shapley values of the channels' contributions to the class score."
    ),
    cost=(
        "shared capture: 1 forward + 1 partial backward + 1 double backward through the layers "
        "after the target layer (no extra forward)"
    ),
    reference=("Cai 2024, CAMs as Shapley Value-based Explainers (ShapleyCAM, arXiv:2501.06261)"),
)
def _shapleycam(ctx: CamContext) -> Tensor:
    """ShapleyCAM: ``w_k = (1/Z) sum_ij (G_kij - 0.5 (H A)_kij), M = ReLU(sum_k w_k A_k)``.

    ``H = d^2 y_c / dA^2``; ``H A`` is one Hessian-vector product from the same capture. For a
    head that is linear in ``A`` (GAP + linear) ``H = 0`` and ShapleyCAM equals Grad-CAM.
    """
    hvp = ctx.hvp if ctx.hvp is not None else torch.zeros_like(ctx.grads)
    weights = (ctx.grads - 0.5 * hvp).mean(dim=(2, 3))
    return _channel_map(ctx, weights)


def finer_score(logits: Tensor, targets: Tensor) -> Tensor:
    """Finer-CAM's score ``s = sum_j p_j (y_c - alpha y_j) / sum_j p_j`` per row ``[N]``.

    ``j`` runs over the :data:`FINER_COMPARISONS` classes whose logits are closest to ``y_c``
    (``c`` excluded), ``p = softmax(y)`` (kept in the graph, as pytorch-grad-cam's
    ``FinerWeightedTarget``), ``alpha`` = :data:`FINER_ALPHA`. With a single class, ``s = y_c``.

    The weights ``p_j / sum_j p_j`` are computed as a softmax over the compared logits only
    (the full softmax's normaliser cancels): the same function and gradient, but no underflow
    when ``y_c`` leads by more than ~100 (there ``p_j`` rounds to 0 in float32 and the score,
    its gradient and the map would be 0).
    """
    n, classes = logits.shape
    y_c = logits.gather(1, targets[:, None])  # [N, 1]
    m = min(FINER_COMPARISONS, classes - 1)
    if m <= 0:
        return y_c[:, 0]
    gap = (logits.detach() - y_c.detach()).abs()
    gap = gap.scatter(1, targets[:, None], float("inf"))
    closest = gap.topk(m, dim=1, largest=False).indices  # exact ties: either tied class
    compared = logits.gather(1, closest)
    weights = compared.softmax(dim=1)  # = p_j / sum_j p_j, in log space
    diffs = y_c - FINER_ALPHA * compared
    return (weights * diffs).sum(1)


@register(
    "finercam",
    needs_gradients=True,
    kind="gradient",
    smoothable=True,
    score=finer_score,
    title="Finer-CAM",
    formula=(
        "s = sum_j p_j (y_c - alpha y_j) / sum_j p_j; alpha_k = (1/Z) sum_ij ds/dA_kij, "
        "M = ReLU(sum_k alpha_k A_k)"
    ),
    description=(
        "Grad-CAM of the target's margin over its closest classes (the three nearest logits): "
        "shows what separates a fine-grained class from its look-alikes."
    ),
    cost=(
        "shared capture: 1 forward + 2 partial backwards (target logit, Finer score; no extra "
        "forward)"
    ),
    reference=(
        "Zhang et al. 2025, Finer-CAM: Spotting the Difference Reveals Finer Details for Visual "
        "Explanation (CVPR)"
    ),
)
def _finercam(ctx: CamContext) -> Tensor:
    """Finer-CAM: ``s = sum_j p_j (y_c - alpha y_j) / sum_j p_j; alpha_k = (1/Z) sum_ij
    ds/dA_kij, M = ReLU(sum_k alpha_k A_k)``.

    Grad-CAM applied to the score :func:`finer_score` (``ctx.gradients`` holds ``ds/dA`` for
    this method: the engine runs its partial backward from the same capture).
    """
    return _channel_map(ctx, ctx.grads.mean(dim=(2, 3)))


@register(
    "smoothgradcam++",
    needs_gradients=True,
    kind="perturbation",
    smoothable=True,
    title="SmoothGrad-CAM++",
    formula=(
        "D_p = (1/S) sum_s (dy_c/dA(X + eps_s))^p, alpha_kij = D_2 / (2 D_2 + sum_ab A_kab D_3), "
        "w_k = sum_ij alpha_kij ReLU(D_1), M = ReLU(sum_k w_k A_k)"
    ),
    description=(
        "Grad-CAM++ with its derivatives averaged over noisy copies of the input (SmoothGrad): "
        "less gradient noise, sharper maps, at S extra captures per image."
    ),
    cost=(
        f"1 forward + 1 partial backward (capture) + S = {SMOOTHGRAD_SAMPLES} noisy forwards, "
        "each with a partial backward, batched"
    ),
    extra_forwards=SMOOTHGRAD_SAMPLES,
    reference=(
        "Omeiza et al. 2019, Smooth Grad-CAM++: An Enhanced Inference Level Visualization "
        "Technique for Deep Convolutional Neural Network Models"
    ),
)
def _smoothgradcam_pp(ctx: CamContext) -> Tensor:
    """SmoothGrad-CAM++: ``D_p = (1/S) sum_s (dy_c/dA(X + eps_s))^p, alpha_kij = D_2 / (2 D_2 +
    sum_ab A_kab D_3), w_k = sum_ij alpha_kij ReLU(D_1), M = ReLU(sum_k w_k A_k)``.

    ``eps_s ~ N(0, 0.3^2)`` per input value, ``S = 4`` (:data:`SMOOTHGRAD_SAMPLES`,
    :data:`SMOOTHGRAD_STD`: torch-cam's defaults), drawn from the engine's seeded generator;
    ``A`` is the clean input's activation. ``alpha = 0`` where its denominator is ``0``. As in
    torch-cam, the numerator of ``alpha`` is ``D_2`` (the paper prints ``D_1``); unlike torch-cam,
    the ``ReLU`` term is the averaged gradient ``D_1`` (the paper's), not the last noisy sample's.
    """
    noisy = ctx.noisy_gradients(SMOOTHGRAD_SAMPLES, SMOOTHGRAD_STD)  # [S, N, K, h, w]
    acts = ctx.activations
    d1, d2, d3 = noisy.mean(0), noisy.pow(2).mean(0), noisy.pow(3).mean(0)
    denom = 2 * d2 + acts.sum(dim=(2, 3), keepdim=True) * d3
    alpha = _safe_div(d2, denom)
    return _channel_map(ctx, (alpha * F.relu(d1)).sum(dim=(2, 3)))


@register(
    "sscam",
    needs_gradients=False,
    kind="perturbation",
    smoothable=True,
    title="SS-CAM",
    formula=(
        "s_k = (1/S) sum_s y_c(X * (norm(up(A_k)) + eps_s)), w = softmax_k(s), "
        "M = ReLU(sum_k w_k A_k)"
    ),
    description=(
        "Score-CAM with the channel scores averaged over noisy copies of each mask: smoother "
        "weights than Score-CAM, at S x K extra forwards per image."
    ),
    cost=(
        f"1 forward (capture) + S x K masked forwards (S = {SSCAM_SAMPLES}, K = channels of the "
        "target layer), batched"
    ),
    extra_forwards=f"{SSCAM_SAMPLES} K",
    reference=(
        "Wang et al. 2020, SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization"
    ),
)
def _sscam(ctx: CamContext) -> Tensor:
    """SS-CAM: ``s_k = (1/S) sum_s y_c(X * (norm(up(A_k)) + eps_s)), w = softmax_k(s),
    M = ReLU(sum_k w_k A_k)``.

    As torch-cam (the reference implementation): ``norm`` is the per-channel min-max
    ``(A_k - min) / (max - min + 1e-8)`` at the layer's resolution, ``up`` bilinear upsampling,
    ``eps_s ~ N(0, 2^2)`` per pixel (:data:`SSCAM_STD`), ``S = 35`` (:data:`SSCAM_SAMPLES`) and
    ``y_c`` the raw logit (subtracting the clean logit, as torch-cam does, leaves the softmax
    unchanged).
    """
    return _channel_map(ctx, torch.softmax(ctx.smoothed_scores(SSCAM_SAMPLES, SSCAM_STD), dim=1))


@register(
    "iscam",
    needs_gradients=False,
    kind="perturbation",
    smoothable=True,
    title="IS-CAM",
    formula=(
        "s_k = (1/S) sum_{i=1..S} y_c(c_i X * norm(up(A_k))), c_i = sum_{j<=i} j/S, "
        "w = softmax_k(s), M = ReLU(sum_k w_k A_k)"
    ),
    description=(
        "Score-CAM with the channel scores integrated along a path of scaled masks (as "
        "Integrated Gradients does for inputs), at S x K extra forwards per image."
    ),
    cost=(
        f"1 forward (capture) + at most S x K masked forwards (S = {ISCAM_SAMPLES}, K = channels "
        "of the target layer; repeated and constant maps share theirs), batched"
    ),
    extra_forwards=f"{ISCAM_SAMPLES} K",
    reference=("Naidu et al. 2020, IS-CAM: Integrated Score-CAM for axiomatic-based explanations"),
)
def _iscam(ctx: CamContext) -> Tensor:
    """IS-CAM: ``s_k = (1/S) sum_{i=1..S} y_c(c_i X * norm(up(A_k))), c_i = sum_{j<=i} j/S,
    w = softmax_k(s), M = ReLU(sum_k w_k A_k)``.

    ``S = 10`` (:data:`ISCAM_SAMPLES`); ``norm``, ``up`` and ``y_c`` as in SS-CAM. The
    cumulative coefficient ``c_i`` (which reaches ``(S + 1) / 2``) is torch-cam's reading of the
    paper's sum over the integration path.
    """
    return _channel_map(ctx, torch.softmax(ctx.integrated_scores(ISCAM_SAMPLES), dim=1))


def _fullgrad_pass(model: Any, images: Tensor, targets: Tensor) -> Tensor:
    from .fullgrad import fullgrad_saliency  # the hooks live beside the pass, not in the registry

    return fullgrad_saliency(model, images, targets)


def _fullgrad_forward(model: Any, images: Tensor) -> OwnForward:
    from .fullgrad import fullgrad_forward

    return fullgrad_forward(model, images)


def _fullgrad_check(model: Any) -> None:
    from .fullgrad import check_fullgrad_model

    check_fullgrad_model(model)


@register(
    "fullgrad",
    needs_gradients=False,
    kind="backprop",
    resolution="input",
    title="FullGrad",
    formula=(
        "S = sum_ch psi(grad_x y_c * x) + sum_l sum_k up(psi(dy_c/dz_{l,k} b_{l,k})), "
        "psi = norm(|.|), M = S - min S"
    ),
    description=(
        "Full-gradient saliency: the input-gradient term plus the bias-gradient maps of every "
        "conv and BatchNorm layer, at the input's resolution (finer than a layer CAM, "
        "independent of the target layer); convolutional networks with biased conv/BatchNorm "
        "layers only."
    ),
    cost=(
        "own pass: 1 forward from the input + 1 full backward to the input per image (batched, "
        "no parameter gradient); it is the capture when every method has its own pass, else "
        "the shared capture forward comes on top"
    ),
    extra_forwards=OWN_EXTRA_FORWARDS,
    reference=(
        "Srinivas & Fleuret 2019, Full-Gradient Representation for Neural Network "
        "Visualization (NeurIPS)"
    ),
    own_pass=_fullgrad_pass,
    check_model=_fullgrad_check,
    own_forward=_fullgrad_forward,
)
def _fullgrad(ctx: CamContext) -> Tensor:
    """FullGrad: ``S = sum_ch psi(grad_x y_c * x) + sum_l sum_k up(psi(dy_c/dz_{l,k} b_{l,k})),
    psi = norm(|.|), M = S - min S``.

    ``z_l`` is the output of biased ``nn.Conv2d`` / affine ``nn.BatchNorm2d`` layer ``l`` and
    ``b_l`` its bias (eval-mode BatchNorm: ``beta - mu gamma / sqrt(var + eps)``); ``norm`` is
    the per-(image, channel) min-max ``(t - min) / (max - min + 1e-7)``, ``up`` bilinear
    upsampling to the input size (pytorch-grad-cam's post-processing; Srinivas & Fleuret 2019).
    ``S`` comes from FullGrad's own batched pass (``ctx.own_map("fullgrad")``,
    :func:`auditor.cam.fullgrad.fullgrad_saliency`), not from the target layer; the map is at
    the INPUT resolution.
    The per-channel normalisation leaves a floor (``S >= 0`` everywhere); it is removed
    (``M = S - min S``, as the peers' final min-max does) so that energy metrics read contrast.
    """
    total = ctx.own_map("fullgrad")
    return total - total.flatten(1).amin(1)[:, None, None]


def _legrad_pass(model: Any, images: Tensor, targets: Tensor) -> Tensor:
    from .legrad import legrad_maps  # the hooks live beside the pass, not in the registry

    return legrad_maps(model, images, targets)


def _legrad_forward(model: Any, images: Tensor) -> OwnForward:
    from .legrad import legrad_forward

    return legrad_forward(model, images)


def _legrad_check(model: Any) -> None:
    from .legrad import legrad_check

    legrad_check(model)


@register(
    "legrad",
    needs_gradients=False,
    kind="attention",
    resolution="patch",
    title="LeGrad",
    formula=(
        "s^l = head(norm(mean_i z^l_i))_c, E^l = mean_{h,i} ReLU(ds^l/dA^l)[h, i, :], "
        "M = (1/L) sum_l E^l (patch tokens)"
    ),
    description=(
        "ViT-native: how sensitive the class score read at each block is to that block's "
        "attention, averaged over heads, queries and blocks, on the patch grid. Independent of "
        "the target layer; for timm and torchvision ViTs only (other models are refused)."
    ),
    cost=(
        "own pass: 1 forward with explicit attention maps + 1 backward per explained class, "
        "batched; it is the capture when every method has its own pass, else the shared "
        "capture forward comes on top"
    ),
    extra_forwards=OWN_EXTRA_FORWARDS,
    reference=(
        "Bousselham et al. 2024, LeGrad: An Explainability Method for Vision Transformers via "
        "Feature Formation Sensitivity (arXiv:2404.03214)"
    ),
    own_pass=_legrad_pass,
    check_model=_legrad_check,
    own_forward=_legrad_forward,
)
def _legrad(ctx: CamContext) -> Tensor:
    """LeGrad: ``s^l = head(norm(mean_i z^l_i))_c, E^l = mean_{h,i} ReLU(ds^l/dA^l)[h, i, :],
    M = (1/L) sum_l E^l (patch tokens)``.

    ``z^l``: the tokens after block ``l`` (all of them, prefix tokens included, as in the
    authors' code and torch-cam); ``norm`` and ``head``: the model's final norm and classifier;
    ``A^l`` ``[heads, tokens, tokens]``: block ``l``'s attention probabilities; ``h`` heads,
    ``i`` query tokens; every block ``l = 1..L``. The prefix (class, register) key tokens are
    dropped and ``M`` is reshaped to the patch grid. The pass is
    :func:`auditor.cam.legrad.legrad_maps`; the target layer plays no part.
    """
    return ctx.own_map("legrad")


GRADIENT_METHODS: tuple[str, ...] = tuple(
    name for name, method in _REGISTRY.items() if method.kind == "gradient"
)
"""Methods computed from the single forward + partial backward capture."""
