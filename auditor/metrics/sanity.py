"""Model-parameter randomisation sanity check for saliency methods.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim 2018, "Sanity Checks for Saliency Maps"
(NeurIPS): a saliency method that explains the *model* must produce different maps when the
model's learned parameters are replaced by random ones. Their *cascading randomisation*
(section 3.1, Fig. 2) re-initialises the layers one after the other from the logits down to
the input; a method passes when its maps change as soon as the randomisation reaches what the
map is computed from.

**What is randomised, and why the default is the cascade down to the target layer's block.**
A CAM-family map is a weighted sum of the target layer's activations,
:math:`L^c = \\mathrm{ReLU}(\\sum_k w_k^c A_k)`. Re-initialising only the modules *after* the
target layer (the ``"head"`` variant) changes the weights :math:`w_k^c` but not :math:`A_k`;
when the :math:`A_k` are concentrated on a few regions (the object, a strong cue) any weighting
puts the map there, so the similarity measures how concentrated :math:`A_k` is, not whether
the method depends on what the model learned (measured: a clean, well-trained demo CNN keeps a
Grad-CAM similarity of 0.54 and Grad-CAM++/LayerCAM 0.96 after head-only randomisation). The
default ``"cascade"`` is therefore the first step of the cascade that reaches the map's
substance: the head (every parameterised module that runs after the target layer,
:func:`downstream_of`) **and** the block that contains the target layer
(:func:`target_block`), so that :math:`A_k` itself is re-drawn. The block is the deepest module
on the path from the model to the target layer that is an element of a sequence of blocks (a
child of an ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict``) or a top-level child of the
model: for a CNN whose target is its ``features`` stack, that stack; for a torchvision ResNet
at ``layer4``, ``layer4`` (at ``layer4.1.conv2``: ``layer4.1``); for a timm ViT at
``blocks.11.norm1``, ``blocks.11``; for a Hugging Face ViT at the last layer's
``layernorm_before``, that encoder layer (``vit.encoder.layer.11`` or ``vit.layers.11``,
depending on the transformers version). A block without
parameters (a ReLU inside a ``Sequential``) is replaced by the nearest parameterised module
before it in the same container (the one that computes its input). The ``"head"`` variant
stays selectable (``[audit] sanity_randomise = "head"``).

A method whose map does not depend on the weights at all (an edge detector on the input, an
input gradient through a model whose last block is randomised, Eigen-CAM on unchanged
activations) keeps a high similarity under either variant and fails.

Maps are computed on the original and on the randomised copy, and their similarity is measured
per image with the Spearman rank correlation of the absolute maps (the paper's main measure):

.. math::

    \\rho(a, b) = \\frac{\\operatorname{cov}(R(|a|), R(|b|))}
                       {\\sigma(R(|a|))\\,\\sigma(R(|b|))}

with :math:`R` the average ranks over pixels (ties get their mean rank). The mean of
:math:`\\rho` over the images is the method's ``similarity``; a method whose maps barely change
(``similarity >= threshold``) fails the check and is reported as not trustworthy. A global
SSIM-like score (Wang, Bovik, Sheikh, Simoncelli 2004, "Image Quality Assessment: From Error
Visibility to Structural Similarity", computed once over the whole min-max normalised map, not
over sliding windows) is reported alongside.

Methods that ignore the class and the head (e.g. Eigen-CAM) are expected to fail head
randomisation: their maps do not depend on the head at all.

The user's model is never modified: every change happens on a :func:`copy.deepcopy`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from auditor.audit.modelstate import preserved_training_flags
from auditor.metrics.names import SANITY_THRESHOLD

__all__ = [
    "SanityResult",
    "downstream_of",
    "find_head",
    "randomisation_sanity_check",
    "randomised_copy",
    "spearman_per_image",
    "ssim_global_per_image",
    "target_block",
]

ComputeFn = Callable[..., Mapping[str, Tensor]]

_RANDOMISE = ("head", "cascade")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class SanityResult:
    """Outcome of the randomisation check for one CAM method.

    Attributes:
        method: CAM method name.
        similarity: mean Spearman rank correlation between the maps of the trained and of the
            randomised model over the images where it is defined (NaN when none is).
        ssim_like: mean global SSIM of the min-max normalised maps, or None if not computed.
        n: number of images that entered ``similarity``.
        trustworthy: ``similarity < threshold`` (False when similarity is NaN).
        threshold: the threshold used.
        randomised: names of the modules that were re-initialised.
        randomise: the variant, ``"head"`` or ``"cascade"`` (see :func:`randomised_copy`).
    """

    method: str
    similarity: float
    ssim_like: float | None
    n: int
    trustworthy: bool
    threshold: float
    randomised: tuple[str, ...] = ()
    randomise: str = "head"


# --------------------------------------------------------------------------------------------
# similarity measures (vectorised over the batch)


def _average_ranks(x: Tensor) -> Tensor:
    """Average (fractional) ranks along the last dim, 0-based: ties share their mean rank.

    Uses one sort and two batched ``searchsorted``: rank = (#less + #less-or-equal - 1) / 2.
    """
    x = x.contiguous()
    s = torch.sort(x, dim=-1).values
    left = torch.searchsorted(s, x, right=False)
    right = torch.searchsorted(s, x, right=True)
    return (left + right - 1).to(torch.float64) / 2


def spearman_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of ``|a|`` and ``|b|`` per image: ``[B, ...] -> [B]``.

    Pearson correlation of the average ranks. NaN for images where either map is constant
    (no rank variance) or holds a non-finite value.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"`a` and `b` must have the same shape [B, ...], got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    fa = a.detach().flatten(1).abs().double()
    fb = b.detach().flatten(1).abs().double()
    finite = torch.isfinite(fa).all(1) & torch.isfinite(fb).all(1)
    fa = torch.where(torch.isfinite(fa), fa, torch.zeros_like(fa))
    fb = torch.where(torch.isfinite(fb), fb, torch.zeros_like(fb))
    ra = _average_ranks(fa)
    rb = _average_ranks(fb)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    cov = (ra * rb).sum(1)
    denom = torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    rho = cov / torch.where(denom > 0, denom, torch.ones_like(denom))
    rho = torch.where(finite & (denom > 0), rho, torch.full_like(rho, math.nan))
    return rho.clamp(-1.0, 1.0).float()


def ssim_global_per_image(a: Tensor, b: Tensor, *, c1: float = 1e-4, c2: float = 9e-4) -> Tensor:
    """Global SSIM of per-image min-max normalised maps: ``[B, ...] -> [B]``.

    :math:`\\mathrm{SSIM} = \\frac{(2\\mu_a\\mu_b + C_1)(2\\sigma_{ab} + C_2)}
    {(\\mu_a^2 + \\mu_b^2 + C_1)(\\sigma_a^2 + \\sigma_b^2 + C_2)}` with
    :math:`C_1 = 0.01^2, C_2 = 0.03^2` (Wang et al. 2004), computed once over the whole map.
    NaN where a map is constant or non-finite.
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"`a` and `b` must have the same shape [B, ...], got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )

    def norm(x: Tensor) -> tuple[Tensor, Tensor]:
        f = x.detach().flatten(1).abs().double()
        ok = torch.isfinite(f).all(1)
        f = torch.where(torch.isfinite(f), f, torch.zeros_like(f))
        lo = f.min(1, keepdim=True).values
        span = f.max(1, keepdim=True).values - lo
        ok = ok & (span.squeeze(1) > 0)
        return (f - lo) / torch.where(span > 0, span, torch.ones_like(span)), ok

    na, ok_a = norm(a)
    nb, ok_b = norm(b)
    mu_a, mu_b = na.mean(1), nb.mean(1)
    var_a = ((na - mu_a[:, None]) ** 2).mean(1)
    var_b = ((nb - mu_b[:, None]) ** 2).mean(1)
    cov = ((na - mu_a[:, None]) * (nb - mu_b[:, None])).mean(1)
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return torch.where(ok_a & ok_b, ssim, torch.full_like(ssim, math.nan)).float()


# --------------------------------------------------------------------------------------------
# randomisation


def find_head(model: nn.Module) -> tuple[str, ...]:
    """Names of the final linear layer(s): every ``nn.Linear`` registered after the last
    convolution (an MLP head is re-initialised as a whole), or the last ``nn.Linear`` when
    the model has no convolution.

    Raises:
        ValueError: when the model has no ``nn.Linear``.
    """
    named = list(model.named_modules())
    last_conv = max((i for i, (_, m) in enumerate(named) if isinstance(m, _CONV_TYPES)), default=-1)
    linears = [(i, n) for i, (n, m) in enumerate(named) if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no nn.Linear head to randomise; pass "
            "`head=` with the names of the modules to re-initialise"
        )
    head = tuple(n for i, n in linears if i > last_conv)
    return head or (linears[-1][1],)


def downstream_of(model: nn.Module, layer: str, example: Tensor) -> tuple[str, ...]:
    """Names of the parameterised modules that produce the logits from ``layer``'s output.

    One dry forward (eval, no_grad) records, with forward pre-hooks, which modules *start*
    after ``layer`` has finished: those compute the logits from the layer's output (for a CNN
    with ``layer4``: the classifier; for a ViT explained at ``blocks[-1].norm1``: the rest of
    the last block, the final norm and the head). Modules with parameters are returned in the
    order they start, outermost only (a module whose ancestor is listed is left out).
    Randomising them is the model-randomisation test of what the map can depend on (Adebayo et
    al. 2018).

    Raises:
        ValueError: ``layer`` is not a submodule or did not run.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"`layer` {layer!r} is not a submodule of {type(model).__name__}")
    state = {"done": False}
    after: list[str] = []

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: object) -> None:
            if state["done"]:
                after.append(name)

        return hook

    def finished(_m: nn.Module, _i: object, _o: object) -> None:
        state["done"] = True

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in modules.items() if n]
    handles.append(modules[layer].register_forward_hook(finished))
    try:
        with preserved_training_flags(model, eval=True), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not state["done"]:
        raise ValueError(f"`layer` {layer!r} did not run during the forward")
    seen: list[str] = []
    for name in dict.fromkeys(after):  # start order: a container before its children
        if any(name.startswith(p + ".") for p in seen):
            continue
        if any(True for _ in modules[name].parameters()):
            seen.append(name)
    return tuple(seen)


def _reinit_(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded re-initialisation of every parameter of ``module`` (recursively), in place.

    Weights with >= 2 dims: normal with std sqrt(2 / fan_in) for convolutions (He et al.
    2015) and sqrt(1 / fan_in) for everything else; 1-D weights (normalisation layers): 1;
    biases: 0.
    """
    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if param.dim() >= 2:
                    fan_in = param[0].numel()
                    gain = 2.0 if isinstance(sub, _CONV_TYPES) else 1.0
                    std = math.sqrt(gain / max(fan_in, 1))
                    values = torch.randn(param.shape, generator=generator) * std
                elif name.endswith("bias"):
                    values = torch.zeros(param.shape)
                else:
                    values = torch.ones(param.shape)
                param.copy_(values.to(device=param.device, dtype=param.dtype))


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def target_block(model: nn.Module, layer: str) -> str:
    """Name of the block that contains ``layer``: the module re-drawn with the head by the
    default ``"cascade"`` randomisation so that the target layer's activations change too.

    The block is the deepest module on the path from ``model`` to ``layer`` (``layer``
    included) that is a top-level child of the network or an element of a container
    (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``): a CNN's ``features`` stack
    when that is the target, a ResNet's ``layer4``, a ViT's ``blocks.11`` for a target inside
    it. The network is ``model`` without its wrappers: while a module's only child with
    parameters is not a container and contains ``layer`` (a ``DataParallel``, a normalising
    wrapper), the network is that child. When the block has no parameters (a ReLU in a
    ``Sequential``), the nearest parameterised module registered before it in the same parent
    is taken: the one that computes its input. ``model`` itself is never a block.

    Raises:
        ValueError: ``layer`` is not a submodule, or no parameterised block contains or
            precedes it.
    """
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        raise ValueError(f"`layer` {layer!r} is not a submodule of {type(model).__name__}")
    parts = layer.split(".")
    path = [".".join(parts[: i + 1]) for i in range(len(parts))]  # outermost first

    def parent_of(name: str) -> tuple[str, nn.Module]:
        head, _, _ = name.rpartition(".")
        return head, modules[head]

    base = ""  # the network inside its wrappers
    for name in path[:-1]:
        parent = modules[base]
        with_params = [c for c in parent.children() if _has_params(c)]
        if len(with_params) != 1 or with_params[0] is not modules[name]:
            break
        if isinstance(modules[name], _CONTAINERS):
            break
        base = name

    def element(name: str) -> bool:
        head, _, _ = name.rpartition(".")
        return head == base or isinstance(modules[head], _CONTAINERS)

    elements = [n for n in path if n.startswith(base + ".") or not base]
    elements = [n for n in elements if element(n)]
    block = elements[-1]  # the network's child on the path is always an element
    if _has_params(modules[block]):
        return block
    parent_name, parent = parent_of(block)
    siblings = [
        (f"{parent_name}.{n}" if parent_name else n, child) for n, child in parent.named_children()
    ]
    names = [n for n, _ in siblings]
    before = [n for n, child in siblings[: names.index(block)] if _has_params(child)]
    if before:
        return before[-1]
    raise ValueError(
        f"no module with parameters contains or precedes the target layer {layer!r} in "
        f"{parent_name or type(model).__name__!r}: nothing to re-draw its activations with"
    )


def randomised_copy(
    model: nn.Module,
    *,
    seed: int = 0,
    randomise: str = "head",
    cascade_blocks: int = 1,
    head: Sequence[str] | None = None,
    layer: str | None = None,
) -> tuple[nn.Module, tuple[str, ...]]:
    """A deep copy of ``model`` with modules re-initialised with seed ``seed``.

    ``"head"``: the head (``head``, default :func:`find_head`). ``"cascade"`` with ``layer``:
    the head and the block that contains ``layer`` (:func:`target_block`), the cascading
    randomisation of Adebayo et al. 2018 down to the target layer's activations; modules
    inside that block are not listed twice. ``"cascade"`` without ``layer``: the head and the
    last ``cascade_blocks`` parameterised top-level blocks.

    Returns:
        ``(copy, names of the re-initialised modules)``. ``model`` itself is untouched.
    """
    if randomise not in _RANDOMISE:
        raise ValueError(f"`randomise` must be one of {_RANDOMISE}, got {randomise!r}")
    if isinstance(cascade_blocks, bool) or not isinstance(cascade_blocks, int):
        raise TypeError(f"`cascade_blocks` must be an int, got {type(cascade_blocks).__name__}")
    if cascade_blocks < 0:
        raise ValueError(f"`cascade_blocks` must be >= 0, got {cascade_blocks}")
    head_names = tuple(head) if head is not None else find_head(model)
    available = dict(model.named_modules())
    for name in head_names:
        if name not in available:
            raise ValueError(f"`head` names a module that the model does not have: {name!r}")
    targets = list(head_names)
    if randomise == "cascade" and layer is not None:
        block = target_block(model, layer)
        inside = [n for n in targets if n == block or n.startswith(block + ".")]
        targets = [n for n in targets if n not in inside]
        if not any(block.startswith(n + ".") for n in targets):  # not already in the head
            targets.append(block)
    elif randomise == "cascade" and cascade_blocks:

        def in_head(block: str) -> bool:
            return any(h == block or h.startswith(block + ".") for h in head_names)

        blocks = [n for n, child in model.named_children() if _has_params(child) and not in_head(n)]
        targets += [b for b in blocks[-cascade_blocks:] if b not in targets]

    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(int(seed))
    clone_modules = dict(clone.named_modules())
    for name in targets:
        _reinit_(clone_modules[name], generator)
    return clone, tuple(targets)


def _default_compute() -> ComputeFn:
    from auditor.cam import compute_cams  # local import: the CAM engine imports metrics

    return compute_cams


def _checked_args(model: Any, methods: Sequence[str] | str, threshold: Any) -> tuple[str, ...]:
    """The method names as a tuple, after checking ``model``, ``methods`` and ``threshold``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise ValueError("`methods` must name at least one CAM method, got ()")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"`threshold` must be a number, got {type(threshold).__name__}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must lie in [-1, 1], got {threshold}")
    return methods


def _layer_name(model: nn.Module, layer: str | nn.Module | None) -> str | None:
    """``layer`` by name: the engine addresses layers by name, and the deep copy has the same
    names as ``model``."""
    if not isinstance(layer, nn.Module):
        return layer
    names = {id(m): n for n, m in model.named_modules()}
    if id(layer) not in names:
        raise ValueError("`layer` is a module that is not part of `model`")
    return names[id(layer)]


def randomisation_sanity_check(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    methods: Sequence[str],
    layer: str | nn.Module | None,
    *,
    seed: int = 0,
    randomise: str = "head",
    cascade_blocks: int = 1,
    head: Sequence[str] | None = None,
    threshold: float = SANITY_THRESHOLD,
    compute: ComputeFn | None = None,
) -> dict[str, SanityResult]:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency
    Maps").

    Maps are computed with ``compute(model, images, targets, methods=..., layer=...)``
    (default :func:`auditor.cam.compute_cams`) on the model and on a randomised deep copy
    (see :func:`randomised_copy`); per image the Spearman rank correlation of the absolute
    maps is taken (:func:`spearman_per_image`) and averaged over the images where it is
    defined. ``trustworthy = similarity < threshold``.

    Args:
        model: the trained classifier (never modified).
        images: ``[B, C, H, W]`` inputs.
        targets: ``[B]`` classes to explain (the same for both models).
        methods: CAM method names.
        layer: target layer name (or a module of ``model``, replaced by its name).
        seed: seed of the re-initialisation.
        randomise: ``"head"`` or ``"cascade"`` (:func:`randomised_copy`; the module
            docstring says why the auditor's default is ``"cascade"``).
        head: explicit names of the head modules (default: :func:`find_head`).
        threshold: similarity at or above which a method is not trustworthy.
        compute: CAM function, for tests or another engine.

    Returns:
        ``{method: SanityResult}``.
    """
    methods = _checked_args(model, methods, threshold)
    compute_fn = compute if compute is not None else _default_compute()

    layer = _layer_name(model, layer)
    clone, randomised = randomised_copy(
        model,
        seed=seed,
        randomise=randomise,
        cascade_blocks=cascade_blocks,
        head=head,
        layer=layer if randomise == "cascade" else None,
    )

    maps_trained = compute_fn(model, images, targets, methods=methods, layer=layer)
    maps_random = compute_fn(clone, images, targets, methods=methods, layer=layer)

    results: dict[str, SanityResult] = {}
    for method in methods:
        if method not in maps_trained or method not in maps_random:
            raise ValueError(f"`compute` returned no maps for method {method!r}")
        a, b = maps_trained[method], maps_random[method].to(maps_trained[method].device)
        rho = spearman_per_image(a, b)
        ok = ~torch.isnan(rho)
        n = int(ok.sum())
        similarity = float(rho[ok].mean()) if n else math.nan
        ssim = ssim_global_per_image(a, b)
        ssim_ok = ~torch.isnan(ssim)
        ssim_like = float(ssim[ssim_ok].mean()) if bool(ssim_ok.any()) else None
        results[method] = SanityResult(
            method=method,
            similarity=similarity,
            ssim_like=ssim_like,
            n=n,
            trustworthy=bool(n) and similarity < float(threshold),
            threshold=float(threshold),
            randomised=randomised,
            randomise=randomise,
        )
    return results
