"""Target-layer resolution, auto-detection and token-to-grid reshaping.

The CAM engine explains a classifier through the activations ``A`` of one (or several) target
layers. This module answers three questions:

* :func:`resolve_layer`: which submodule does a dotted name such as ``"layer4"`` or
  ``"features.19"`` designate? A wrong name raises a :class:`ValueError` listing close names.
* :func:`find_target_layer`: when the user gives no name, which layer should be used? We take the
  *last module, in forward execution order, whose output is a 4-D spatial tensor*
  ``[B, K, h, w]`` with ``h * w > 1`` (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations
  from Deep Networks via Gradient-based Localization", use the last convolutional layer).
  Pooling, dropout and identity modules are skipped (they only resample the previous layer), and
  so is a container whose output is the very tensor returned by such a skipped module.
* :func:`vit_reshape` / :func:`swin_reshape`: transformers emit tokens, not grids. These helpers
  return the ``reshape`` callable the engine needs to turn a token output into ``[B, K, h, w]``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "find_target_layer",
    "resolve_layer",
    "spatial_layer_candidates",
    "swin_reshape",
    "vit_reshape",
]

_SKIPPED_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout1d,
    nn.AlphaDropout,
    nn.Identity,
)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule of ``model`` called ``name`` (a dotted name from ``named_modules``).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no such submodule; the message lists the closest names and the last few
            modules of the model so the user can pick one.
    """
    if not isinstance(name, str):
        raise TypeError(f"`layer` must be a str (a dotted module name), got {type(name).__name__}")
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    tail = names[-8:]
    hint = f"close names: {close}" if close else "no close name"
    raise ValueError(
        f"`layer` {name!r} is not a submodule of {type(model).__name__}; {hint}; "
        f"last modules of the model: {tail}"
    )


def _default_example(model: nn.Module) -> Tensor:
    """A zero image ``[1, C, 224, 224]`` on the model's device (C from the first conv)."""
    channels = 3
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            channels = module.in_channels
            break
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, channels, 224, 224, device=device, dtype=dtype)


def spatial_layer_candidates(
    model: nn.Module, example: Tensor | None = None
) -> list[tuple[str, tuple[int, ...]]]:
    """Modules with a 4-D spatial output ``[B, K, h, w]`` (``h * w > 1``), in execution order.

    A dry forward is run in eval mode under :func:`torch.no_grad` on ``example`` (default: a zero
    batch ``[1, C, 224, 224]``); the training flags of every submodule are restored afterwards and
    every hook is removed, also on error. Each entry is ``(name, output shape)`` in the order the
    modules *finished* their forward; pooling/dropout/identity modules (and containers returning
    their output unchanged) are excluded.
    """
    if example is None:
        example = _default_example(model)
    if not isinstance(example, Tensor):
        raise TypeError(f"`example` must be a Tensor, got {type(example).__name__}")
    records: list[tuple[str, Tensor | None, bool]] = []

    def make_hook(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            skipped = isinstance(module, _SKIPPED_TYPES)
            records.append((name, output if isinstance(output, Tensor) else None, skipped))

        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [
        module.register_forward_hook(make_hook(name, module))
        for name, module in model.named_modules()
        if name
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag

    accepted: set[int] = set()  # tensors produced by a kept module
    pooled: set[int] = set()  # new tensors produced by pooling/dropout/identity modules
    result: list[tuple[str, tuple[int, ...]]] = []
    for name, out, skipped in records:
        if out is None:
            continue
        if skipped:
            if id(out) not in accepted:  # an identity dropout returns its input: nothing new
                pooled.add(id(out))
            continue
        if id(out) in pooled:  # a container returning a pooled tensor unchanged
            continue
        accepted.add(id(out))
        if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            result.append((name, tuple(out.shape)))
    return result


def find_target_layer(model: nn.Module, example: Tensor | None = None) -> str:
    """Auto-detect the target layer: the last spatial module in forward execution order.

    The rule (Grad-CAM's "last convolutional layer", Selvaraju et al. 2017): the last module to
    finish its forward whose output is 4-D ``[B, K, h, w]`` with ``h * w > 1``, pooling/dropout/
    identity modules excluded. torchvision ``resnet18`` -> ``"layer4"``, ``vgg11`` ->
    ``"features.19"`` (the last ReLU before the final max-pool).

    Args:
        model: the classifier.
        example: an input batch for the dry forward; default a zero batch ``[1, C, 224, 224]``.

    Raises:
        ValueError: the model has no spatial layer (e.g. a transformer: pass ``layer=`` and a
            ``reshape`` such as :func:`vit_reshape`).
    """
    candidates = spatial_layer_candidates(model, example)
    if not candidates:
        raise ValueError(
            f"no module of {type(model).__name__} outputs a 4-D spatial tensor [B, K, h, w] with "
            "h*w > 1; pass `layer=` explicitly (and `reshape=` for token outputs, e.g. "
            "auditor.cam.vit_reshape())"
        )
    return candidates[-1][0]


def vit_reshape(
    num_prefix_tokens: int = 1, grid: tuple[int, int] | None = None
) -> Callable[[Tensor], Tensor]:
    """Return a callable turning ViT tokens ``[B, P + h*w, D]`` into a grid ``[B, D, h, w]``.

    The first ``num_prefix_tokens`` tokens (class token, distillation/register tokens) are dropped;
    the rest are laid out row-major on a ``grid`` (default: square, ``h = w = sqrt(n)``). This is a
    pure re-indexing, as the engine requires (it applies the same callable to the gradients).
    For torchvision ``vit_b_16`` use ``layer="encoder.layers.encoder_layer_11.ln_1"``: the output
    of the *last* block reaches the logits only through the class token, so its patch tokens have
    zero gradient.
    """
    if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be an int >= 0, got {num_prefix_tokens!r}")

    def reshape(tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(
                f"vit_reshape expects tokens [B, N, D], got shape {tuple(tokens.shape)}"
            )
        patches = tokens[:, num_prefix_tokens:, :]
        n = patches.shape[1]
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"vit_reshape: {n} patch tokens (after dropping {num_prefix_tokens} prefix "
                    "tokens) do not form a square grid; pass `grid=(h, w)` or fix "
                    "`num_prefix_tokens`"
                )
            h, w = side, side
        else:
            h, w = grid
            if h * w != n:
                raise ValueError(f"vit_reshape: `grid` {grid} does not hold {n} patch tokens")
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    return reshape


def swin_reshape() -> Callable[[Tensor], Tensor]:
    """Return a callable turning channels-last Swin grids ``[B, h, w, D]`` into ``[B, D, h, w]``."""

    def reshape(x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"swin_reshape expects [B, h, w, D], got shape {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2)

    return reshape
