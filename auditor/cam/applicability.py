"""Every method x model applicability check, run once when an audit's engine is built.

An audit must refuse a method that cannot explain a model *before* the first batch, with a
one-line reason naming the method, the layer or the model and what applies instead (CLI exit 2),
never fail at the first batch (exit 4) or write maps that mean nothing (exit 0). On a seeded
probe batch of 2 images at the dataset's input size, :func:`check_applicability`:

1. runs one plain forward and checks the output: logits ``[B, C]`` with ``B`` = the probe's
   batch (a forward returning ``[1, C]`` for a batch of 2 is refused) and ``C`` = the number of
   classes of the dataset;
2. refuses a **dead head**: logits that are one number for every class and every probe image
   (e.g. torchvision ``vit_b_16`` with ``random_weights``: its head is zero-initialised), where
   every gradient map is empty and a "PASSED" would be vacuous;
3. checks the target layer(s): the reshape turns the output into a grid ``[B, K, h, w]`` that is
   a spatial grid (``h * w > 1``, ``h <= H``, ``w <= W``: a channels-last ``[B, 1, 1, D]`` read
   as channels-first would be a ``1 x D`` "grid" of channels);
4. estimates the **cost**: forwards per image = 1 (the capture) + each method's
   ``CamMethod.extra_forwards`` with ``K`` = channels of the target layer(s) (Score-CAM ``K``,
   SS-CAM ``35 K``, IS-CAM ``10 K``, Ablation-CAM ``K`` tail forwards); above
   ``[audit] max_forwards_per_image`` the run is refused;
5. runs every method that needs no extra forwards on the probe (one capture, the backward(s),
   the own passes), so that a head CAM cannot read (``cam`` on a non GAP+linear head) or a
   derivative the model does not have is refused here, naming the method.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from auditor.audit.modelstate import preserved_training_flags
from auditor.errors import AuditorInputError

from .methods import METHODS
from .outputs import logits_of

__all__ = ["Applicability", "check_applicability", "forwards_per_image"]

DEAD_HEAD_RTOL = 1e-6
"""Logits whose spread over classes and probe images is at most this times ``max |y|`` (0 when
every logit is 0) are one number: a dead head. Relative, so that a random-weight head with tiny
but distinct logits (torchvision MobileNetV3's 1e-10) is not mistaken for one."""


@dataclass(frozen=True)
class Applicability:
    """What the probe found (for the log and ``summary.json``'s model section).

    Attributes:
        channels: ``K`` per target layer (the grid's channels).
        grid: ``(h, w)`` per target layer.
        forwards: forwards per image per method (the capture counted once, under ``capture``).
        total_forwards: the sum: forwards per image of the whole run.
    """

    channels: tuple[int, ...]
    grid: tuple[tuple[int, int], ...]
    forwards: dict[str, int]
    total_forwards: int

    def describe(self) -> str:
        """One line: ``"~N forwards per image (capture 1, scorecam 512 = K, ...)"``."""
        parts = ", ".join(f"{m} {n}" for m, n in self.forwards.items())
        return f"~{self.total_forwards} forwards per image ({parts}; K = {sum(self.channels)})"


def forwards_per_image(methods: Sequence[str], channels: int) -> dict[str, int]:
    """Forwards per image each method adds to the capture, from ``CamMethod.extra_forwards``.

    ``extra_forwards`` is an int, or an expression in ``K`` (``"K"``, ``"35 K"``,
    ``"K (tail only)"``: Ablation-CAM's tail forwards are counted as forwards), or text
    whose largest number is the bound (``"0 alone, 1 beside capture methods"`` -> 1).
    ``{"capture": 1, method: n, ...}``.
    """
    out = {"capture": 1}
    for name in methods:
        extra = METHODS[name].extra_forwards
        if isinstance(extra, int):
            out[name] = int(extra)
            continue
        match = re.match(r"\s*(\d+)?\s*K\b", extra)
        if match:
            out[name] = int(match.group(1) or 1) * channels
        else:
            numbers = [int(v) for v in re.findall(r"\d+", extra)]
            out[name] = max(numbers, default=0)
    return out


def _layer_grids(
    model: nn.Module, names: Sequence[str], reshape: Any, example: Tensor
) -> tuple[Tensor, list[tuple[int, ...]]]:
    """One plain forward of ``example``: its logits and each target layer's grid shape."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, Tensor):
                seen[name] = out.detach()

        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    try:
        with preserved_training_flags(model, eval=True), torch.no_grad():
            logits = logits_of(model(example)).detach().float()
    finally:
        for handle in handles:
            handle.remove()
    shapes = []
    for name in names:
        if name not in seen:
            raise AuditorInputError(
                f"target layer {name!r} did not output a tensor during the forward of "
                f"{type(model).__name__}; pick a layer on the path to the logits"
            )
        grid = reshape(seen[name]) if reshape is not None else seen[name]
        shapes.append(tuple(int(v) for v in grid.shape))
    return logits, shapes


def _check_logits(logits: Tensor, batch: int, num_classes: int, model: str) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise AuditorInputError(
            f"the model {model} returns logits of shape {list(logits.shape)} for a probe batch "
            f"of {batch} images; it must return one row per image, [B, C] = "
            f"[{batch}, {num_classes}]"
        )
    if logits.shape[1] != num_classes:
        raise AuditorInputError(
            f"the model {model} returns {logits.shape[1]} logits per image but the dataset has "
            f"{num_classes} classes: set [data] classes or [model] num_classes to match"
        )
    finite = torch.isfinite(logits)
    if bool(finite.all()) and logits.numel() > 1:
        spread = float(logits.max() - logits.min())
        if spread <= DEAD_HEAD_RTOL * float(logits.abs().max()):
            raise AuditorInputError(
                f"the model {model} gives every class the same logit ({float(logits[0, 0]):.4g}) "
                f"on every probe image: its head is dead (zero or constant weights, e.g. a "
                "zero-initialised head with [model] random_weights) and every map would be "
                "empty; load trained weights ([model] weights) or fix the head"
            )


def _check_grids(
    names: Sequence[str], shapes: Sequence[tuple[int, ...]], size: tuple[int, int]
) -> None:
    for name, shape in zip(names, shapes):
        if len(shape) != 4:
            raise AuditorInputError(
                f"target layer {name!r} gives shape {list(shape)} after the reshape; the CAM "
                "engine needs [B, K, h, w]: set [model] reshape (e.g. 'vit', 'channels_last')"
            )
        h, w = shape[2], shape[3]
        if h * w <= 1:
            raise AuditorInputError(
                f"target layer {name!r} has a {h}x{w} grid at the input size "
                f"{size[0]}x{size[1]} (output {list(shape)}): every map would be one number; "
                "choose an earlier layer ([model] target_layer) or a larger [data] input_size"
            )
        if h > size[0] or w > size[1]:
            raise AuditorInputError(
                f"target layer {name!r} reads as a {h}x{w} grid, larger than the "
                f"{size[0]}x{size[1]} input (output {list(shape)}): a channels-last output? "
                "set [model] reshape = 'channels_last' or choose another layer"
            )


def _probe_methods(
    model: nn.Module, engine: Any, example: Tensor, methods: Sequence[str]
) -> None:
    """Run ``methods`` on the probe; a method that cannot run raises AuditorInputError."""
    from .engine import CamEngine

    def run(names: Sequence[str]) -> None:
        probe = CamEngine(
            model,
            engine.layer_names,
            tuple(names),
            reshape=engine.reshape,
            inference_copy=False,
            autocast=engine.autocast,
            seed=engine.seed,
        )
        with probe:
            probe.run(example, "predicted")

    try:
        run(methods)
        return
    except (ValueError, TypeError, RuntimeError):
        pass
    ran: list[str] = []
    for name in methods:
        try:
            run((name,))
        except (ValueError, TypeError) as exc:
            raise _refusal(name, engine, exc, ran) from exc
        except RuntimeError as exc:
            if "not implemented" not in str(exc) and "derivative" not in str(exc):
                raise
            raise _refusal(name, engine, exc, ran) from exc
        ran.append(name)
    run(methods)  # no single method fails: the combination's error, as it is


def _refusal(name: str, engine: Any, exc: BaseException, ran: Sequence[str]) -> AuditorInputError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    others = f" (methods that ran on the probe: {', '.join(ran)})" if ran else ""
    return AuditorInputError(
        f"[audit] methods: {name!r} does not apply to {type(engine.model).__name__} at layer "
        f"{', '.join(engine.layer_names)}: {first}{others}"
    )


def check_applicability(
    engine: Any, example: Tensor, num_classes: int, max_forwards: int | None = None
) -> Applicability:
    """Probe ``engine`` (a :class:`auditor.cam.CamEngine`) on ``example`` ``[B >= 2, C, H, W]``.

    See the module docstring for the checks, in order. Raises
    :class:`auditor.errors.AuditorInputError` naming the model, the layer or the method and what
    applies instead; the model leaves as it came (flags restored, no hook left).
    """
    model: nn.Module = engine.model
    label = type(model).__name__
    batch = int(example.shape[0])
    size = (int(example.shape[-2]), int(example.shape[-1]))
    logits, shapes = _layer_grids(model, engine.layer_names, engine.reshape, example)
    _check_logits(logits, batch, num_classes, label)
    _check_grids(engine.layer_names, shapes, size)
    channels = tuple(int(s[1]) for s in shapes)
    forwards = forwards_per_image(engine.methods, sum(channels))
    total = sum(forwards.values())
    found = Applicability(channels, tuple((s[2], s[3]) for s in shapes), forwards, total)
    if max_forwards is not None and total > max_forwards:
        costly = sorted((n for m, n in forwards.items() if m != "capture"), reverse=True)
        top = [m for m, n in forwards.items() if m != "capture" and n == costly[0]]
        raise AuditorInputError(
            f"[audit] max_forwards_per_image = {max_forwards}: methods {list(engine.methods)} "
            f"need {found.describe()} on layer {', '.join(engine.layer_names)}; "
            f"{', '.join(top)} costs the most: drop it, pick a layer with fewer channels, or "
            "raise [audit] max_forwards_per_image"
        )
    cheap = [m for m in engine.methods if METHODS[m].kind != "perturbation"]
    if cheap:
        _probe_methods(model, engine, example, cheap)
    return found
