"""CAM methods: each one turns a capture (activations, gradients, helpers) into a map.

All the autograd, hooks and extra forwards live in :mod:`auditor.cam.engine`. A method here is a
pure function of a :class:`CamContext` returning a map ``[N, h, w]`` (float32, >= 0, *not*
normalised), where ``N`` is the number of (image, target) pairs and ``h, w`` the target layer's
resolution. Notation used in the docstrings:

* ``A_k`` (``A[n, k]``): activation map of channel ``k`` at the target layer, ``[h, w]``;
* ``G_k = dy_c / dA_k``: gradient of the raw logit ``y_c`` of the target class ``c``;
* ``Z = h * w`` the number of spatial positions.

Adding a method: write ``def _my(ctx: CamContext) -> Tensor`` and call :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "CamContext",
    "CamMethod",
    "register",
]


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
    """

    activations: Tensor
    gradients: Tensor | None
    targets: Tensor
    logits: Tensor
    layer: str
    head_weight: Callable[[], Tensor]
    masked_scores: Callable[[], Tensor]
    ablated_scores: Callable[[], Tensor]

    @property
    def grads(self) -> Tensor:
        """The gradients, or a :class:`RuntimeError` if the engine did not compute them."""
        if self.gradients is None:  # engine bug: needs_gradients was not honoured
            raise RuntimeError("this CAM method needs gradients but none were captured")
        return self.gradients


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method and the metadata the report prints about it.

    Attributes:
        name: registry key (``"gradcam"``).
        fn: ``CamContext -> Tensor[N, h, w]``.
        needs_gradients: whether the engine must run the partial backward.
        kind: ``"gradient"`` (single capture with gradients), ``"activation"`` (single capture,
            no gradient) or ``"perturbation"`` (batched extra forwards).
        reference: the paper (authors, year, title).
        title: display name (``"Grad-CAM"``).
        formula: the defining formula, the same text as in ``fn``'s docstring.
        description: one or two plain sentences: what the map shows and when to use it.
        cost: what one image costs, in forwards and backwards (``"shared capture: 1 forward +
            1 partial backward"``).
        extra_forwards: forwards per image beyond the shared capture, as a number where it is
            fixed (``0`` for capture-only methods), else a short expression (``"K"``: one per
            channel of the target layer).
    """

    name: str
    fn: Callable[[CamContext], Tensor]
    needs_gradients: bool
    kind: str
    reference: str
    title: str = ""
    formula: str = ""
    description: str = ""
    cost: str = ""
    extra_forwards: int | str = 0

    def info(self) -> dict[str, str | int]:
        """The metadata as a JSON-ready dict (``title``, ``formula``, ``reference``, ...)."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "formula": self.formula,
            "reference": self.reference,
            "description": self.description,
            "cost": self.cost,
            "extra_forwards": self.extra_forwards,
        }


_REGISTRY: dict[str, CamMethod] = {}
METHODS: Mapping[str, CamMethod] = MappingProxyType(_REGISTRY)

_KINDS = ("gradient", "activation", "perturbation")
COST_CAPTURE_GRAD = "shared capture: 1 forward + 1 partial backward (no extra pass)"
COST_CAPTURE = "shared capture: 1 forward (no extra pass, no backward)"


def _squash(text: str) -> str:
    """Whitespace- and backtick-insensitive form used to find the formula in a docstring."""
    return " ".join(text.replace("`", "").split())


def register(
    name: str,
    *,
    needs_gradients: bool,
    kind: str,
    reference: str,
    title: str,
    formula: str,
    description: str,
    cost: str | None = None,
    extra_forwards: int | str = 0,
) -> Callable[[Callable[[CamContext], Tensor]], Callable[[CamContext], Tensor]]:
    """Decorator adding ``fn`` to :data:`METHODS` under ``name`` with its metadata.

    ``formula`` must appear in ``fn``'s docstring (whitespace-insensitive) so that the report
    and the API documentation cannot drift apart; ``cost`` defaults to the shared capture's.
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be gradient|activation|perturbation, got {kind!r}")
    for key, value in (("title", title), ("formula", formula), ("reference", reference)):
        if not value.strip():
            raise ValueError(f"`{key}` of CAM method {name!r} must not be empty")
    if cost is None:
        cost = COST_CAPTURE_GRAD if needs_gradients else COST_CAPTURE

    def deco(fn: Callable[[CamContext], Tensor]) -> Callable[[CamContext], Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"CAM method {name!r} is already registered")
        if _squash(formula) not in _squash(fn.__doc__ or ""):
            raise ValueError(
                f"the docstring of CAM method {name!r} must contain its formula {formula!r}"
            )
        _REGISTRY[name] = CamMethod(
            name=name,
            fn=fn,
            needs_gradients=needs_gradients,
            kind=kind,
            reference=reference,
            title=title,
            formula=formula,
            description=description,
            cost=cost,
            extra_forwards=extra_forwards,
        )
        return fn

    return deco


# --------------------------------------------------------------------------- helpers


def _weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """``sum_k w[n, k] * A[n, k]`` -> ``[N, h, w]`` (one batched contraction)."""
    return torch.einsum("nk,nkhw->nhw", weights, acts)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0`` wherever ``den == 0`` (the 0/0 guard)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def _first_component(x: Tensor, reference: Tensor) -> Tensor:
    """Projection of each sample's ``[hw, K]`` matrix on its first principal component.

    ``X_n`` (rows: positions, columns: channels) is centred per channel; with the SVD
    ``X_n = U S V^T`` the map is ``X_n v_1 = s_1 u_1``. Rather than a full batched SVD of the
    ``[hw, K]`` matrices (slow on CPU: ~1 s for 16 x 49 x 512), we take the top eigenpair of the
    smaller Gram matrix with :func:`torch.linalg.eigh`: ``X X^T = U S^2 U^T``
    (``hw <= K``: map ``= sqrt(lambda_1) u_1``) or ``X^T X = V S^2 V^T`` (map ``= X v_1``); the
    result is the same as the SVD's. The sign of a singular vector is arbitrary, so it is fixed
    to make the map correlate positively with ``reference`` (``[N, h, w]``).
    """
    n, k, h, w = x.shape
    if h * w < 2:
        return torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    mat = x.reshape(n, k, h * w).transpose(1, 2).float()  # [N, hw, K]
    centred = mat - mat.mean(dim=1, keepdim=True)
    if h * w <= k:
        evals, evecs = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # ascending
        proj = evecs[:, :, -1] * evals[:, -1:].clamp_min(0).sqrt()  # [N, hw]
    else:
        _, evecs = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        proj = torch.einsum("npk,nk->np", centred, evecs[:, :, -1])
    ref = reference.reshape(n, h * w).float()
    cov = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    sign = torch.where(cov < 0, -1.0, 1.0).to(proj.dtype)
    return F.relu(proj * sign[:, None]).reshape(n, h, w).to(x.dtype)


# --------------------------------------------------------------------------- methods


@register(
    "cam",
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
    return F.relu(_weighted_sum(weight, ctx.activations))


@register(
    "gradcam",
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
    return F.relu(_weighted_sum(alpha, ctx.activations))


@register(
    "gradcam++",
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
    return F.relu(_weighted_sum(weights, acts))


@register(
    "xgradcam",
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
    return F.relu(_weighted_sum(weights, acts))


@register(
    "layercam",
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
    return F.relu((F.relu(ctx.grads) * ctx.activations).sum(dim=1))


@register(
    "hirescam",
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
    return F.relu((ctx.grads * ctx.activations).sum(dim=1))


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
    return F.relu(_weighted_sum(weights, ctx.activations))


@register(
    "ablationcam",
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
    return F.relu(_weighted_sum(weights, ctx.activations))


GRADIENT_METHODS: tuple[str, ...] = tuple(
    name for name, method in _REGISTRY.items() if method.kind == "gradient"
)
"""Methods computed from the single forward + partial backward capture."""
