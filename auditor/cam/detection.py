"""Maps for one detection's score from a detector's backbone/FPN layer (issue 26).

A detector (torchvision Faster R-CNN, RetinaNet, FCOS, SSD, or a factory model with the same
interface) is called as ``model([image [3, H, W] in [0, 1]])`` in eval mode and returns one
dict per image with ``boxes`` ``[N, 4]`` (x0, y0, x1, y1, input pixels), ``labels`` ``[N]``
(class ``k`` of the dataset's classes is label ``k + 1``; 0 is the background) and ``scores``
``[N]``.

**Target layer.** A forward hook keeps the chosen module's output. It must be a spatial grid:
a tensor ``[1, K, h, w]``, or (an FPN / SSD feature extractor) a dict, list or tuple of such
tensors ("levels"). Anything else is refused. The default is the module ``backbone`` (the
FPN's output for the torchvision detectors: levels of stride 4 to 64). The levels are made one
grid: each level is upsampled bilinearly to the finest level's size and the channels are
concatenated, ``A = concat_l up(A_l)``, and the same is done with the gradients. A
channel-weighted map (Grad-CAM: ``M = ReLU(sum_k alpha_k A_k)``) is then the sum over the
levels of each level's weighted channels (upsample-and-sum), so a box whose features a
Faster R-CNN pools from one level still gets its map; Eigen-CAM takes the first principal
component of all levels' channels together. pytorch-grad-cam's detection recipe
(``fasterrcnn_reshape_transform``) also concatenates resized levels, but resizes them to the
COARSEST level (``pool``, 1 x 1 at small inputs) and takes their absolute value; here the
finest level keeps the resolution a small box needs and the activations keep their sign
(Grad-CAM's definition).

**Score.** The explained quantity is the score of ONE detection (its ``scores[j]``: the
softmax or sigmoid output the detector reports). pytorch-grad-cam's
``FasterRCNNBoxScoreTarget`` sums, over the boxes to explain, ``IoU + score`` of the best
matching detection; here one map per detection and the score alone (the IoU term would
explain the box regression, not the detection). Gradients are ``dS/dA_l`` from
:func:`torch.autograd.grad` with the level tensors as the only inputs: no parameter's
``.grad`` is touched. Eigen-CAM needs no gradient and is the
same for every detection of an image (it is class-agnostic; Muhammad & Yeasin 2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from auditor.cam.methods import METHODS, CamContext
from auditor.errors import ConfigError, ModelRuntimeError

__all__ = [
    "DetectorCapture",
    "Detections",
    "LayerGrid",
    "check_detections",
    "detection_layer",
    "method_maps",
]


def _unavailable(*_args: object) -> Any:
    raise RuntimeError("not available for detection maps")


@dataclass
class Detections:
    """One image's detections (``scores`` keeps its graph when gradients were recorded)."""

    boxes: Tensor
    labels: Tensor
    scores: Tensor


def check_detections(out: Any, model_name: str) -> Detections:
    """The first image's output of a detector, checked; a wrong format names the model."""
    if not isinstance(out, list | tuple) or len(out) != 1 or not isinstance(out[0], Mapping):
        raise ModelRuntimeError(
            f"model {model_name!r}: a detector must return a list with one dict per image "
            f"(boxes, labels, scores), got {type(out).__name__}"
        )
    d = out[0]
    missing = [k for k in ("boxes", "labels", "scores") if not isinstance(d.get(k), Tensor)]
    if missing:
        raise ModelRuntimeError(
            f"model {model_name!r}: detector output lacks tensor(s) {missing} (needs boxes "
            f"[N, 4], labels [N], scores [N])"
        )
    boxes, labels, scores = d["boxes"], d["labels"], d["scores"]
    n = scores.shape[0] if scores.ndim == 1 else -1
    if boxes.shape != (n, 4) or labels.shape != (n,):
        raise ModelRuntimeError(
            f"model {model_name!r}: detector output shapes boxes {tuple(boxes.shape)}, labels "
            f"{tuple(labels.shape)}, scores {tuple(scores.shape)}; expected [N, 4], [N], [N]"
        )
    if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise ModelRuntimeError(f"model {model_name!r}: non-finite boxes or scores")
    return Detections(boxes, labels, scores)


def detection_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The target module: ``name`` or, by default, ``backbone``; refused when absent."""
    modules = dict(model.named_modules())
    if name is None:
        if "backbone" not in modules:
            raise ConfigError(
                "[model] target_layer: the detector has no `backbone` module; name the layer "
                "to explain (a module whose output is a [1, K, h, w] grid or a dict of them)"
            )
        name = "backbone"
    if name not in modules:
        close = [k for k in modules if k and name.split(".")[-1] in k][:3]
        raise ConfigError(
            f"[model] target_layer {name!r} is not a module of the detector"
            + (f"; e.g. {', '.join(close)}" if close else "")
        )
    return name, modules[name]


@dataclass(frozen=True)
class LayerGrid:
    """How the target layer's output becomes one grid (the run records :meth:`explain`)."""

    layer: str
    kind: str  # "tensor" | "dict" | "sequence"
    levels: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]  # (K, h, w) per level

    @property
    def size(self) -> tuple[int, int]:
        return max(((h, w) for _, h, w in self.shapes), key=lambda s: s[0] * s[1])

    def explain(self) -> str:
        parts = ", ".join(f"{k or 'out'}: {c}x{h}x{w}" for k, (c, h, w) in
                          zip(self.levels, self.shapes, strict=True))  # fmt: skip
        h, w = self.size
        if len(self.levels) == 1:
            return f"{self.layer}: one spatial grid ({parts}); maps at {h}x{w}."
        return (
            f"{self.layer}: a {self.kind} of {len(self.levels)} levels ({parts}); each level "
            f"upsampled bilinearly to the finest ({h}x{w}) and the channels concatenated "
            f"(upsample-and-sum for channel-weighted maps such as Grad-CAM; Eigen-CAM takes the "
            f"first principal component of all levels' channels)."
        )


def _levels(output: Any, layer: str) -> tuple[str, list[str], list[Tensor]]:
    if isinstance(output, Tensor):
        kind, keys, tensors = "tensor", [""], [output]
    elif isinstance(output, Mapping):
        kind, keys, tensors = "dict", [str(k) for k in output], list(output.values())
    elif isinstance(output, list | tuple):
        kind, keys, tensors = "sequence", [str(i) for i in range(len(output))], list(output)
    else:
        raise ConfigError(
            f"[model] target_layer {layer!r}: output is a {type(output).__name__}, not a "
            f"spatial grid [1, K, h, w] (or a dict/list of them); choose another layer"
        )
    for k, t in zip(keys, tensors, strict=True):
        if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[0] != 1 or min(t.shape[2:]) < 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConfigError(
                f"[model] target_layer {layer!r}: level {k or 'output'} is {shape}, not a "
                f"spatial grid [1, K, h, w]; choose a convolutional layer (e.g. backbone)"
            )
    if not tensors:
        raise ConfigError(f"[model] target_layer {layer!r}: output has no level")
    return kind, keys, tensors


class DetectorCapture:
    """Forward hook on the target layer; gives detections and the captured levels."""

    def __init__(self, model: nn.Module, layer: str | None, model_name: str) -> None:
        self.model, self.model_name = model, model_name
        self.layer, self.module = detection_layer(model, layer)
        self._out: Any = None
        self.grid: LayerGrid | None = None
        self.tensors: list[Tensor] = []

    def _hook(self, _m: nn.Module, _i: Any, output: Any) -> None:
        self._out = output

    def run(self, image: Tensor, *, grad: bool) -> Detections:
        """One forward of ``image`` ``[3, H, W]`` (in [0, 1]); keeps the layer's levels."""
        handle = self.module.register_forward_hook(self._hook)
        self._out = None
        try:
            with torch.set_grad_enabled(grad):
                out = self.model([image])
        finally:
            handle.remove()
        if self._out is None:
            raise ConfigError(
                f"[model] target_layer {self.layer!r}: the module did not run in the forward"
            )
        kind, keys, tensors = _levels(self._out, self.layer)
        self._out = None
        shapes = tuple((int(t.shape[1]), int(t.shape[2]), int(t.shape[3])) for t in tensors)
        self.grid = LayerGrid(self.layer, kind, tuple(keys), shapes)
        self.tensors = tensors
        return check_detections(out, self.model_name)

    def activations(self) -> Tensor:
        """``A = concat_l up(A_l)`` ``[1, K_total, h, w]`` (detached, float32)."""
        return self._grid([t.detach() for t in self.tensors])

    def gradients(self, score: Tensor) -> Tensor:
        """``concat_l up(dS/dA_l)`` of one score (levels the score does not reach: zeros)."""
        if not score.requires_grad:
            raise ModelRuntimeError(
                f"model {self.model_name!r}: the detection scores carry no gradient (detached "
                f"in the model?); gradient methods cannot explain them: use methods = "
                f'["eigencam"]'
            )
        grads = torch.autograd.grad(score, self.tensors, retain_graph=True, allow_unused=True)
        filled = [torch.zeros_like(t) if g is None else g for g, t in
                  zip(grads, self.tensors, strict=True)]  # fmt: skip
        return self._grid([g.detach() for g in filled])

    def _grid(self, tensors: Sequence[Tensor]) -> Tensor:
        if self.grid is None:
            raise RuntimeError("DetectorCapture.run() must be called before reading the grid")
        h, w = self.grid.size
        ups = [
            t.float() if tuple(t.shape[2:]) == (h, w)
            else F.interpolate(t.float(), size=(h, w), mode="bilinear", align_corners=False)
            for t in tensors
        ]  # fmt: skip
        return torch.cat(ups, dim=1)


def method_maps(
    methods: Sequence[str], acts: Tensor, grads: Tensor | None, layer: str
) -> dict[str, Tensor]:
    """``{method: map [h, w]}`` of the registered capture methods on one grid."""
    ctx = CamContext(
        activations=acts,
        gradients=grads,
        targets=torch.zeros(1, dtype=torch.long),
        logits=torch.zeros(1, 1),
        layer=layer,
        head_weight=_unavailable,
        masked_scores=_unavailable,
        ablated_scores=_unavailable,
    )
    out = {}
    for m in methods:
        cam = METHODS[m].fn(ctx)[0].float()
        out[m] = torch.where(torch.isfinite(cam), cam.clamp_min(0), torch.nan)
    return out
