"""FullGrad's own pass: input gradients and bias gradients of every conv/BatchNorm layer.

FullGrad (Srinivas & Fleuret 2019, "Full-Gradient Representation for Neural Network
Visualization", NeurIPS) is not a function of the target layer's capture: it reads the gradient
of the class score with respect to the input and to the output of *every* biased
``nn.Conv2d`` / ``nn.BatchNorm2d``. For a piecewise-linear network the decomposition is exact::

    y_c(x) = sum(grad_x y_c * x) + sum_l sum_{k,ij} (dy_c / dz_l)_{kij} b_{l,k}   (+ head biases)

where ``z_l`` is layer ``l``'s output and ``b_l`` its bias; for an eval-mode BatchNorm the bias
is the affine map's effective one, ``b = beta - mu * gamma / sqrt(var + eps)``. The saliency
map sums the post-processed terms::

    S = sum_ch psi(grad_x y_c * x) + sum_l sum_k up(psi(dy_c/dz_{l,k} * b_{l,k}))

with ``psi(t) = norm(|t|)``, ``norm`` the per-(image, channel) min-max ``(t - min) / (max - min +
1e-7)`` and ``up`` bilinear upsampling (``align_corners=False``) to the input size. This is
pytorch-grad-cam's ``FullGrad`` (the peer the crosscheck compares against); the authors' code
(idiap/fullgrad-saliency) min-max normalises a whole layer at once and upsamples with
``align_corners=True`` (see ``tests/test_cam_crosscheck.py``).

Cost per batch: ONE forward that builds the graph from the input and ONE backward to the input
per target (no parameter gradient is computed: ``torch.autograd.grad`` with the input as the only
input). Bilinear upsampling is linear, so each layer's channels are normalised and summed at the
layer's resolution and layers of one resolution are added before a single upsampling per
resolution (pytorch-grad-cam resizes every channel of every layer separately).

Hooks exist only during this pass, on the model's biased conv/BatchNorm layers; they are removed
in a ``finally``. The pass runs only when ``fullgrad`` is among the requested methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .outputs import logits_of

__all__ = [
    "FULLGRAD_EPS",
    "FullGradForward",
    "bias_layers",
    "check_fullgrad_model",
    "fullgrad_forward",
    "fullgrad_saliency",
    "fullgrad_terms",
]

FULLGRAD_EPS = 1e-7
"""Denominator guard of the per-channel min-max (pytorch-grad-cam's ``scale_cam_image``)."""


def _effective_bias(module: nn.Module) -> Tensor:
    """The bias the layer adds per output channel: ``b`` (conv), ``beta - mu gamma / sqrt(var +
    eps)`` (eval-mode BatchNorm, its affine form ``y = gamma/sqrt(var+eps) x + b``)."""
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:  # check_fullgrad_model
            raise ValueError(f"BatchNorm2d {module} has no running statistics")
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return (module.bias - module.running_mean * scale).detach().float()
    bias = module.bias
    if not isinstance(bias, Tensor):
        raise ValueError(f"layer {module} has no bias")
    return bias.detach().float()


def bias_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers whose bias terms FullGrad sums: every ``nn.Conv2d`` with a bias and every
    affine ``nn.BatchNorm2d`` (in module order; pytorch-grad-cam's selection)."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            out.append((name, module))
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            out.append((name, module))
    return out


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def _is_patch_embedding(module: nn.Module) -> bool:
    """A conv that cuts the image into non-overlapping patches (stride == kernel size > 1)."""
    if not isinstance(module, nn.Conv2d):
        return False
    kernel, stride = tuple(module.kernel_size), tuple(module.stride)
    return kernel == stride and max(kernel) > 1


#: Normalisation layers whose affine bias acts on the feature maps but that FullGrad's
#: conv/BatchNorm decomposition (Srinivas & Fleuret 2019, eq. 3-4) does not sum: refused.
_SPATIAL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


def check_fullgrad_model(
    model: nn.Module, token_layer: bool = False
) -> list[tuple[str, nn.Module]]:
    """The model's FullGrad bias layers, or a ``ValueError`` saying why FullGrad cannot apply.

        Refused: a model with no biased conv/BatchNorm layer (the map would be the input gradient
        alone, not FullGrad); a transformer (attention modules, or a token-shaped target layer):
        its biases sit in linear and normalisation layers over tokens, which FullGrad's
        conv/BatchNorm decomposition does not cover, so a map from its patch-embedding convolution
        alone would look plausible without being the method; a model whose only biased conv/BN
        layers are patch embeddings (stride == kernel size) and that has LayerNorms (ViT, MLP-Mixer
    without attention-named modules); a model with affine LayerNorm/GroupNorm/InstanceNorm
        layers (ConvNeXt, ResNetV2/BiT): their biases are part of the full gradient but not of
        the conv/BatchNorm sum; a BatchNorm2d without
        running statistics (its eval-mode bias depends on the batch). ``token_layer``: the caller
        knows the target layer outputs tokens.
    """
    name = type(model).__name__
    attention = [n for n, m in model.named_modules() if _is_attention(m)]
    if attention or token_layer:
        why = (
            f"it has attention modules ({', '.join(attention[:3])}"
            f"{', ...' if len(attention) > 3 else ''})"
            if attention
            else "its target layer outputs tokens"
        )
        raise ValueError(
            f"method 'fullgrad' is defined for convolutional networks, but {name} is a "
            f"transformer ({why}): its bias terms live in linear/normalisation layers over tokens "
            "that FullGrad's conv/BatchNorm bias-gradients do not cover; use 'gradcam' or "
            "'layercam' with a reshape, or another method"
        )
    layers = bias_layers(model)
    layernorm = any(isinstance(m, nn.LayerNorm) for m in model.modules())
    if layers and layernorm and all(_is_patch_embedding(m) for _, m in layers):
        names = ", ".join(n for n, _ in layers[:3])
        raise ValueError(
            f"method 'fullgrad' is defined for convolutional networks, but the only biased "
            f"conv/BatchNorm layers of {name} are patch embeddings ({names}): a token model "
            "whose biases live in linear/normalisation layers FullGrad does not cover; use "
            "another method"
        )
    uncovered = [
        n
        for n, m in model.named_modules()
        if isinstance(m, _SPATIAL_NORMS) and getattr(m, "bias", None) is not None
    ]
    if uncovered:
        raise ValueError(
            f"method 'fullgrad' sums the bias-gradient maps of conv/BatchNorm layers only, but "
            f"{name} also has affine LayerNorm/GroupNorm/InstanceNorm layers "
            f"({', '.join(uncovered[:3])}{', ...' if len(uncovered) > 3 else ''}) whose biases "
            "act on the feature maps (ConvNeXt, ResNetV2/BiT): their share of the "
            "full-gradient decomposition would be missing and the map would look plausible "
            "without being FullGrad; use 'gradcam', 'gradcam++' or 'layercam'"
        )
    if not layers:
        raise ValueError(
            f"method 'fullgrad' needs biased nn.Conv2d or affine nn.BatchNorm2d layers (it sums "
            f"their bias-gradient maps), but {name} has none; use another method"
        )
    stale = [
        n
        for n, m in layers
        if isinstance(m, nn.BatchNorm2d) and (m.running_mean is None or m.running_var is None)
    ]
    if stale:
        raise ValueError(
            f"method 'fullgrad' needs BatchNorm2d layers with running statistics (their eval-mode "
            f"bias beta - mu gamma / sqrt(var + eps)), but {stale[:3]} of {name} use batch "
            "statistics (track_running_stats=False); use another method"
        )
    return layers


def _norm_channel_sum(terms: Tensor, scale: Tensor | None = None) -> Tensor:
    """``sum_k norm(|s_k t_k|)`` of ``[N, K, h, w]`` -> ``[N, h, w]``, ``norm(u) = (u - min) /
    (max - min + eps)`` per (image, channel), ``s`` a per-channel factor ``[K]`` (default 1).

    Computed as ``sum_k c_k |t_k| - sum_k c_k min_k |t_k|`` with ``c_k = |s_k| / (|s_k| (max_k -
    min_k) + eps)`` (``min``/``max`` of ``|s_k t_k|`` are ``|s_k|`` times those of ``|t_k|``): one
    abs, one min/max pass and one contraction, no scaled or normalised copy of the tensor.
    """
    t = terms.abs()
    lo, hi = torch.aminmax(t.flatten(2), dim=2)  # [N, K]
    s = torch.ones_like(lo) if scale is None else scale.abs()[None, :].expand_as(lo)
    coeff = s / (s * (hi - lo) + FULLGRAD_EPS)
    return torch.einsum("nkhw,nk->nhw", t, coeff) - (lo * coeff).sum(1)[:, None, None]


class FullGradForward:
    """The forward half of FullGrad's pass: the logits with their graph from the input.

    Built by :func:`fullgrad_forward` (the module hooks are already removed when it exists; the
    graph keeps one tensor hook per bias-layer output, which only accumulates during
    :meth:`terms`). The engine reads :attr:`logits` as the batch's logits when every requested
    method has its own pass, so a predict-mode target (argmax) is known before the backward.

    Attributes:
        logits: ``[B, C]`` detached logits of this forward (the model's own output).
    """

    def __init__(
        self,
        graph_logits: Tensor,
        x: Tensor,
        sums: list[dict[tuple[int, int], Tensor]],
        current: list[int],
    ) -> None:
        self._graph_logits = graph_logits
        self.logits = graph_logits.detach()
        self._x = x
        self._sums = sums
        self._current = current

    def terms(self, targets_bt: Tensor) -> tuple[Tensor, Tensor]:
        """``(input_term, bias_term)``, each ``[B*T, H, W]`` float32 (one backward per target
        column to the input; call once: the graph is freed after the last column)."""
        x, logits = self._x, self._graph_logits
        batch, n_targets = targets_bt.shape
        size = (int(x.shape[-2]), int(x.shape[-1]))
        sums = self._sums
        sums.clear()
        inputs_t: list[Tensor] = []
        with torch.inference_mode(False), torch.enable_grad():
            for t in range(n_targets):
                self._current[0] = t
                sums.append({})
                score = logits.gather(1, targets_bt[:, t : t + 1]).float().sum()
                (grad_x,) = torch.autograd.grad(score, x, retain_graph=t < n_targets - 1)
                inputs_t.append(_norm_channel_sum((grad_x * x.detach()).float()))
        bias_t = []
        for t in range(n_targets):
            total = torch.zeros(batch, *size, device=x.device)
            for (h, w), part in sums[t].items():
                if (h, w) != size:
                    part = F.interpolate(
                        part[:, None], size=size, mode="bilinear", align_corners=False
                    )
                    part = part[:, 0]
                total = total + part
            bias_t.append(total)
        input_term = torch.stack(inputs_t, dim=1).flatten(0, 1)
        bias_term = torch.stack(bias_t, dim=1).flatten(0, 1)
        return input_term, bias_term

    def maps(self, targets: Tensor) -> Tensor:
        """FullGrad's ``S = input_term + bias_term`` ``[B*T, H, W]`` for ``targets`` ``[B]`` or
        ``[B, T]``."""
        input_term, bias_term = self.terms(targets[:, None] if targets.dim() == 1 else targets)
        return input_term + bias_term


def fullgrad_forward(
    model: nn.Module,
    images: Tensor,
    layers: list[tuple[str, nn.Module]] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> FullGradForward:
    """FullGrad's forward: the graph from the input, a tensor hook on every bias layer's output.

    Args:
        model: the classifier in eval mode (module hooks are added for this call only and
            removed when it returns or raises).
        images: ``[B, C, H, W]`` on the model's device.
        layers: :func:`check_fullgrad_model`'s bias layers (``None``: computed here).
        autocast: context factory for the forward (the engine's autocast).
    """
    if layers is None:
        layers = check_fullgrad_model(model)
    biases = {id(m): _effective_bias(m).to(images.device) for _, m in layers}
    # per target: {(h, w): sum over layers of that resolution of sum_k psi(...)} [B, h, w]
    sums: list[dict[tuple[int, int], Tensor]] = []
    current = [0]

    def forward_hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor) or output.dim() != 4 or not output.requires_grad:
            return
        bias = biases[id(module)]
        if output.shape[1] != bias.shape[0]:
            return

        def grad_hook(grad: Tensor) -> None:
            # registered before any in-place op after the layer: dy/dz of the layer's own output
            term = _norm_channel_sum(grad.float(), bias)
            acc = sums[current[0]]
            key = (int(term.shape[-2]), int(term.shape[-1]))
            acc[key] = acc[key] + term if key in acc else term

        output.register_hook(grad_hook)

    handles = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            handles = [m.register_forward_hook(forward_hook) for _, m in layers]
            with autocast():
                logits = logits_of(model(x))
    finally:
        for handle in handles:  # the backward needs only the tensor hooks
            handle.remove()
    return FullGradForward(logits, x, sums, current)


def fullgrad_terms(
    model: nn.Module,
    images: Tensor,
    targets_bt: Tensor,
    layers: list[tuple[str, nn.Module]],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[Tensor, Tensor]:
    """FullGrad's two sums for every (image, target) row, at the input resolution.

    ``fullgrad_forward(model, images, layers, autocast).terms(targets_bt)``.

    Args:
        model: the classifier in eval mode (hooks are added for this call only).
        images: ``[B, C, H, W]`` on the model's device.
        targets_bt: ``[B, T]`` long, the classes explained.
        layers: :func:`check_fullgrad_model`'s bias layers.
        autocast: context factory for the forward (the engine's autocast).

    Returns:
        ``(input_term, bias_term)``, each ``[B*T, H, W]`` float32 (rows in (sample, target)
        order): ``sum_ch psi(grad_x y_c * x)`` and ``sum_l sum_k up(psi(dy_c/dz_{l,k} b_{l,k}))``.
    """
    return fullgrad_forward(model, images, layers, autocast).terms(targets_bt)


def fullgrad_saliency(model: nn.Module, images: Tensor, targets_bt: Tensor) -> Tensor:
    """FullGrad's ``S = input_term + bias_term`` ``[B*T, H, W]`` (``CamMethod.own_pass``).

    Runs :func:`check_fullgrad_model` (cheap: a walk over the modules) and
    :func:`fullgrad_terms` under the caller's autocast and grad settings.
    """
    input_term, bias_term = fullgrad_terms(model, images, targets_bt, check_fullgrad_model(model))
    return input_term + bias_term
