"""The CAM method registry: :class:`CamMethod`, :func:`register` and :data:`METHODS`.

Importable without torch (issue 21): ``load_config`` checks ``[audit] methods`` against
:func:`method_names` and finalisation reads the methods' metadata, neither loading torch. The
methods themselves (tensor code) live in :mod:`auditor.cam.methods`, which registers the
built-in ones here when it is imported; :data:`BUILTIN_METHODS` names them, in registration
order, without importing it (``tests/test_cam_registry.py`` checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from auditor.cam.methods import CamContext, OwnForward

__all__ = [
    "BUILTIN_METHODS",
    "COST_CAPTURE",
    "COST_CAPTURE_GRAD",
    "METHODS",
    "OWN_EXTRA_FORWARDS",
    "CamMethod",
    "method_names",
    "register",
]

#: The methods :mod:`auditor.cam.methods` registers, in registration order (no torch import).
BUILTIN_METHODS: tuple[str, ...] = (
    "cam",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "gradcam_elementwise",
    "randomcam",
    "fem",
    "kpcacam",
    "shapleycam",
    "finercam",
    "smoothgradcam++",
    "sscam",
    "iscam",
    "fullgrad",
    "legrad",
)


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method and the metadata the report prints about it.

    Attributes:
        name: registry key (``"gradcam"``).
        fn: ``CamContext -> Tensor[N, h, w]``.
        needs_gradients: whether the engine must run the partial backward.
        kind: ``"gradient"`` (single capture with gradients), ``"activation"`` (single capture,
            no gradient), ``"perturbation"`` (batched extra forwards), ``"backprop"`` (its own
            batched forward from the input and full backward to it: FullGrad) or
            ``"attention"`` (a ViT method with its own pass over the attention maps: LeGrad).
        reference: the paper (authors, year, title).
        title: display name (``"Grad-CAM"``).
        formula: the defining formula, the same text as in ``fn``'s docstring.
        description: one or two plain sentences: what the map shows and when to use it.
        cost: what one image costs, in forwards and backwards (``"shared capture: 1 forward +
            1 partial backward"``).
        extra_forwards: forwards per image beyond the shared capture, as a number where it is
            fixed (``0`` for capture-only methods), else a short expression (``"K"``: one per
            channel of the target layer).
        score: ``(logits [N, C] with graph, targets [N]) -> [N]``: the score whose gradient the
            method reads, when it is not the raw target logit (Finer-CAM); the engine runs one
            more partial backward from the same capture for it.
        needs_hvp: the engine computes ``ctx.hvp`` (one double backward, same capture).
        smoothable: the map is a channel combination, so ``eigen_smooth`` applies.
        resolution: ``"layer"`` (maps at the target layer's resolution), ``"input"`` (maps at
            the input's resolution, independent of the target layer: FullGrad) or ``"patch"``
            (a ViT's patch grid, independent of the target layer: LeGrad). Maps that are not at
            the layer's resolution are not fused over several target layers.
        own_pass: ``(model, images [B, C, H, W], targets [B, T]) -> [B*T, h', w']``: a method
            that cannot come from the target layer's capture (LeGrad reads every block's
            attention) runs this pass, once per batch, under the engine's autocast; ``fn``
            reads its result with ``ctx.own_map(name)``. It must leave the model as it came.
        own_forward: ``(model, images [B, C, H, W]) -> OwnForward``: the same pass split at
            the forward (optional; ``own_pass(m, x, t)`` must equal
            ``own_forward(m, x).maps(t)``). When every requested method has an own pass and
            one has ``own_forward``, the engine runs no capture forward of its own: this
            forward gives the batch's logits (predict-mode targets are its argmax, picked
            before the backward) and, through the engine's hooks, the target layer's
            activations the statuses read. The model must be left as it came when it
            returns or raises.
        check_model: ``model -> None``, raising a :class:`ValueError` that names the reason
            when the method cannot run on ``model`` (called when the engine is built, so an
            unsupported architecture fails before any batch, never with a made-up map).
        sanity_check: whether the model-randomisation sanity check (Adebayo et al. 2018;
            :func:`auditor.metrics.sanity.randomisation_sanity_check`) runs this method.
            ``False`` for methods whose per-image cost (one forward per channel) makes the
            check's two extra audits of the sample too expensive (Score-CAM, Ablation-CAM).
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
    score: Callable[[Tensor, Tensor], Tensor] | None = None
    needs_hvp: bool = False
    smoothable: bool = False
    resolution: str = "layer"
    own_pass: Callable[[Any, Tensor, Tensor], Tensor] | None = None
    check_model: Callable[[Any], None] | None = None
    own_forward: Callable[[Any, Tensor], OwnForward] | None = None
    sanity_check: bool = True

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

_KINDS = ("gradient", "activation", "perturbation", "backprop", "attention")
_RESOLUTIONS = ("layer", "input", "patch")
COST_CAPTURE_GRAD = "shared capture: 1 forward + 1 partial backward (no extra pass)"
COST_CAPTURE = "shared capture: 1 forward (no extra pass, no backward)"
OWN_EXTRA_FORWARDS = "0 alone, 1 beside capture methods"
"""``extra_forwards`` of a method whose own pass serves as the capture when it runs alone."""


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
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
    needs_hvp: bool = False,
    smoothable: bool = False,
    resolution: str = "layer",
    own_pass: Callable[[Any, Tensor, Tensor], Tensor] | None = None,
    check_model: Callable[[Any], None] | None = None,
    own_forward: Callable[[Any, Tensor], OwnForward] | None = None,
    sanity_check: bool = True,
) -> Callable[[Callable[[CamContext], Tensor]], Callable[[CamContext], Tensor]]:
    """Decorator adding ``fn`` to :data:`METHODS` under ``name`` with its metadata.

    ``formula`` must appear in ``fn``'s docstring (whitespace-insensitive) so that the report
    and the API documentation cannot drift apart; ``cost`` defaults to the shared capture's.
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {'|'.join(_KINDS)}, got {kind!r}")
    if resolution not in _RESOLUTIONS:
        raise ValueError(
            f"`resolution` must be one of {'|'.join(_RESOLUTIONS)}, got {resolution!r}"
        )
    for key, value in (("title", title), ("formula", formula), ("reference", reference)):
        if not value.strip():
            raise ValueError(f"`{key}` of CAM method {name!r} must not be empty")
    if own_forward is not None and own_pass is None:
        raise ValueError(f"`own_forward` of CAM method {name!r} needs its `own_pass`")
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
            score=score,
            needs_hvp=needs_hvp,
            smoothable=smoothable,
            resolution=resolution,
            own_pass=own_pass,
            sanity_check=sanity_check,
            check_model=check_model,
            own_forward=own_forward,
        )
        return fn

    return deco



def method_names() -> tuple[str, ...]:
    """Every method an ``[audit] methods`` list may name: the built-in ones (without importing
    their tensor code), then those added with :func:`register` elsewhere, in registration
    order."""
    return BUILTIN_METHODS + tuple(n for n in _REGISTRY if n not in BUILTIN_METHODS)
