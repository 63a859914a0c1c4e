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
* :func:`detect_target_layer`: the architecture-aware version: the layer, the reshape it needs
  (tokens ``[B, N, D]`` with prefix tokens and a grid, channels-last ``[B, h, w, D]``) and the
  reason, for the report. Outputs without a batch dimension are never chosen; the stem is never
  chosen when later spatial or token layers exist.
* :func:`vit_reshape` / :func:`swin_reshape` / :func:`parse_reshape` (defined in the torch-free
  :mod:`auditor.cam.reshape`, re-exported here): transformers emit tokens, not grids. These
  return the ``reshape`` callable the engine needs to turn a token output into ``[B, K, h, w]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from auditor.audit.modelstate import preserved_training_flags

# the reshapes live in the torch-free auditor.cam.reshape (load_config checks them without torch)
from auditor.cam.reshape import (
    ChannelsLastReshape,
    Reshape,
    TokenReshape,
    describe_reshape,
    parse_reshape,
    swin_reshape,
    vit_reshape,
)

__all__ = [
    "ChannelsLastReshape",
    "LayerChoice",
    "Reshape",
    "TokenReshape",
    "describe_reshape",
    "detect_target_layer",
    "find_target_layer",
    "infer_reshape",
    "native_input_size",
    "parse_reshape",
    "resolve_layer",
    "resolve_target",
    "spatial_layer_candidates",
    "swin_reshape",
    "token_grid",
    "vit_reshape",
]

_SKIPPED_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.AvgPool1d,
    nn.MaxPool1d,
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
    kept, _ = _trace(model, example)
    return [
        (name, tuple(out.shape))
        for name, _module, out in kept
        if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
    ]


def find_target_layer(model: nn.Module, example: Tensor | None = None) -> str:
    """Auto-detect the target layer's name: :func:`detect_target_layer` ``.name``.

    CNNs: the last module to finish its forward whose output is spatial (``h * w > 1``),
    pooling/dropout/identity excluded (Grad-CAM's "last convolutional layer", Selvaraju et al.
    2017): torchvision ``resnet18`` -> ``"layer4"``, ``vgg11`` -> ``"features.19"``. Token
    models (ViT, DeiT, Mixer, Swin tokens) and channels-last models: see
    :func:`detect_target_layer`, which also returns the reshape the layer needs.

    Raises:
        ValueError: the model has no candidate layer; pass ``layer=`` explicitly.
    """
    return detect_target_layer(model, example).name


# ---------------------------------------------------------------------------------------------
# architecture-aware detection

_NORM1_NAMES = ("norm1", "ln_1", "layernorm_before", "norm_1", "ln1")
"""Names of a transformer block's first (pre-attention / pre-token-mixing) norm: timm
``blocks[i].norm1``, torchvision ``encoder_layer_i.ln_1``, Hugging Face ``layernorm_before``."""

_MAX_PREFIX = 16


@dataclass(frozen=True)
class LayerChoice:
    """The target layer chosen for a model, how its output becomes a grid, and why.

    Attributes:
        name: dotted module name.
        shape: the layer's output shape on the probe batch (batch first).
        reshape: the reshape to ``[B, K, h, w]`` (``None``: already channels-first).
        reason: one sentence for the report: which rule chose the layer and the reshape.
        family: ``"cnn"``, ``"channels_last"``, ``"vit"`` (class-token readout) or ``"tokens"``
            (token model pooled over all tokens).
    """

    name: str
    shape: tuple[int, ...]
    reshape: Reshape | None
    reason: str
    family: str

    def describe(self) -> dict[str, Any]:
        """JSON-friendly: layer, output shape, reshape and reason."""
        return {
            "layer": self.name,
            "output_shape": list(self.shape),
            "reshape": describe_reshape(self.reshape),
            "family": self.family,
            "reason": self.reason,
        }


@dataclass
class _Rec:
    name: str
    module: nn.Module
    shape: tuple[int, ...]
    kind: str  # "nchw", "nhwc", "tokens"


def native_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size the model declares, if any: Hugging Face ``config.image_size``, timm
    ``patch_embed.img_size``/``default_cfg["input_size"]``, torchvision ViT ``image_size``."""
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "image_size", None) if cfg is not None else None
    if size is None:
        pe = getattr(model, "patch_embed", None)
        size = getattr(pe, "img_size", None) if pe is not None else None
    if size is None:
        size = getattr(model, "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return (int(size[0]), int(size[1]))
    return None


def _in_channels(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_channels", None) if cfg is not None else None
    if isinstance(n, int) and n > 0:
        return n
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _probe(model: nn.Module, example: Tensor | None) -> Tensor:
    if example is not None:
        if not isinstance(example, Tensor):
            raise TypeError(f"`example` must be a Tensor, got {type(example).__name__}")
        if example.dim() != 4:
            raise ValueError(f"`example` must have shape [B, C, H, W], got {tuple(example.shape)}")
        param = next(model.parameters(), None)
        return example.to(param.device) if param is not None else example
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    size = native_input_size(model) or (224, 224)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, _in_channels(model), *size, generator=g)
    return x.to(device=device, dtype=dtype)


def _trace(
    model: nn.Module,
    example: Tensor,
    keep: str | None = None,
    output: list[Any] | None = None,
    pools: list[int] | None = None,
) -> tuple[list[tuple[str, nn.Module, Tensor]], int]:
    """Dry forward (eval, no_grad); kept modules' tensor outputs in finish order, batch size.

    Pooling/dropout/identity modules and containers that return such a module's tensor
    unchanged are dropped (except ``keep``, a layer the user named); flags and hooks are
    restored, also on error. ``output``: a list that receives the model's output; ``pools``:
    one that receives, per pooling module, how many outputs were kept before it finished.
    """
    records: list[tuple[str, nn.Module, Tensor | None, bool]] = []

    def make_hook(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            skipped = isinstance(module, _SKIPPED_TYPES) and name != keep
            records.append((name, module, output if isinstance(output, Tensor) else None, skipped))

        return hook

    handles = [
        module.register_forward_hook(make_hook(name, module))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with preserved_training_flags(model, eval=True), torch.no_grad():
            result = model(example)
        if output is not None:
            output.append(result)
    finally:
        for handle in handles:
            handle.remove()
    accepted: set[int] = set()
    pooled: set[int] = set()
    kept: list[tuple[str, nn.Module, Tensor]] = []
    for name, module, out, skipped in records:
        if skipped and pools is not None and "Pool" in type(module).__name__:
            pools.append(len(kept))
        if out is None:
            continue
        if skipped:
            if id(out) not in accepted:
                pooled.add(id(out))
            continue
        if id(out) in pooled and name != keep:
            continue
        accepted.add(id(out))
        kept.append((name, module, out))
    return kept, int(example.shape[0])


def _is_channels_last(model: nn.Module, module: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether a 4-D output ``[B, a, b, c]`` is channels-last ``[B, h, w, D]``.

    Evidence, in order: a LayerNorm over the last dim whose size differs from dim 1 (timm's
    ``LayerNorm2d`` normalises dim 1 of an NCHW tensor and is not mistaken for it); an
    ``nn.Linear`` (it maps the last dim: torchvision ConvNeXt's ``block.3``/``block.5`` run on
    ``[B, h, w, D]``); the model declares ``output_fmt = "NHWC"`` (timm Swin).
    """
    _, a, _, c = shape
    if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (c,) and a != c:
        return True
    if isinstance(module, nn.Linear) and module.out_features == c and a != c:
        return True
    return getattr(model, "output_fmt", None) == "NHWC" and a != c


def _classify(
    model: nn.Module,
    name: str,
    module: nn.Module,
    out: Tensor,
    batch: int,
    least: int = 2,
    size: tuple[int, int] | None = None,
) -> _Rec | None:
    """The kind of a module's output, or None when it is no target candidate.

    A 4-D output is a spatial grid only when it has ``least`` cells or more and fits inside the
    input of ``size = (H, W)`` (``h <= H`` and ``w <= W``): a channels-last ``[B, 1, 1, 768]``
    read as channels-first would be a 1x768 "grid" of channels, never a map.
    """
    shape = tuple(int(v) for v in out.shape)
    if len(shape) < 3 or shape[0] != batch:
        return None  # no batch dimension (e.g. a relative-position-bias MLP): never a target
    if len(shape) == 4:
        nhwc = _is_channels_last(model, module, shape)
        h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        if h * w < least or (size is not None and (h > size[0] or w > size[1])):
            return None
        return _Rec(name, module, shape, "nhwc" if nhwc else "nchw")
    if len(shape) == 3 and shape[1] > 1:
        return _Rec(name, module, shape, "tokens")
    return None


def token_grid(n: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """A grid ``(h, w)`` with ``h * w == n`` matching an input of ``size = (H, W)`` for one
    integer stride ``s`` (``h`` in ``{floor(H/s), ceil(H/s)}``, same for ``w``), else None."""
    big_h, big_w = size
    for stride in range(1, max(big_h, big_w) + 1):
        hs = {big_h // stride, -(-big_h // stride)}
        ws = {big_w // stride, -(-big_w // stride)}
        for h in sorted(hs):
            for w in sorted(ws):
                if h > 0 and w > 0 and h * w == n:
                    return (h, w)
    return None


def _declared_prefix(model: nn.Module) -> tuple[int | None, str]:
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        return n, "the model's num_prefix_tokens"
    return None, ""


def _token_layout(
    model: nn.Module, n: int, size: tuple[int, int], stem: tuple[int, int] | None
) -> tuple[int, tuple[int, int], str] | None:
    """``(prefix_tokens, grid, source)`` for tokens ``[B, n, D]`` of an input of ``size``.

    Sources, in order: the model's ``num_prefix_tokens`` (timm) with the grid from the input
    size; the patch grid of the stem (the last grid output before the tokens: ViT's patch
    embedding) when ``0 <= n - h*w <= 16``; else the smallest prefix for which the rest forms a
    grid of the input's aspect at one integer stride.
    """
    declared, why = _declared_prefix(model)
    if declared is not None:
        pe = getattr(model, "patch_embed", None)
        gs = getattr(pe, "grid_size", None)
        if (
            isinstance(gs, list | tuple)
            and len(gs) == 2
            and int(gs[0]) * int(gs[1]) == n - declared
            and token_grid(n - declared, size) == (int(gs[0]), int(gs[1]))
        ):
            return declared, (int(gs[0]), int(gs[1])), f"{why} and patch_embed.grid_size"
        grid = token_grid(n - declared, size) if n > declared else None
        if grid is not None:
            return declared, grid, f"{why}, grid from the input size {size[0]}x{size[1]}"
        return None
    if stem is not None and 0 <= n - stem[0] * stem[1] <= _MAX_PREFIX:
        return n - stem[0] * stem[1], stem, "the patch-embedding grid"
    for prefix in range(0, min(_MAX_PREFIX, n - 1) + 1):
        grid = token_grid(n - prefix, size)
        if grid is not None and grid[0] * grid[1] > 1:
            return prefix, grid, f"inferred from the input size {size[0]}x{size[1]}"
    return None


def detect_target_layer(model: nn.Module, example: Tensor | None = None) -> LayerChoice:
    """Choose the target layer (and its reshape) from the model's own structure.

    One dry forward on ``example`` (default: a seeded batch of 2 at the model's declared input
    size, else 224x224) records every module's output. Outputs whose first dimension is not the
    batch are never candidates. Rules:

    * **CNNs** (the last candidate is a grid): the last module, in forward execution order, with
      a spatial output ``h*w > 1`` (Grad-CAM's "last convolutional layer", Selvaraju et al.
      2017); pooling/dropout/identity excluded. A channels-last output ``[B, h, w, D]`` (timm
      Swin's ``norm``, a LayerNorm over the last dim) gets :class:`ChannelsLastReshape`.
    * **Token models** (token outputs ``[B, N, D]`` after the last grid, so the grid was the
      stem): with prefix tokens (class/distillation/register: a class-token readout), the first
      norm of the last block (``blocks[-1].norm1`` / ``ln_1`` / ``layernorm_before``, the
      recipe pytorch-grad-cam documents; the last block's output reaches the logits only
      through the class token); without prefix tokens (Mixer, Swin tokens, pooled over all
      tokens), the last token output (the final norm: the last stage's output). Prefix count
      and grid come from the model where it says (timm ``num_prefix_tokens``,
      ``patch_embed.grid_size``), else from the patch-embedding grid, else from the input size.

    Raises:
        ValueError: no candidate, or a token model whose layout or block norm cannot be
            determined; the message says what to set.
    """
    x = _probe(model, example)
    result: list[Any] = []
    pools: list[int] = []
    kept, batch = _trace(model, x, output=result, pools=pools)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    recs = [
        r
        for r in (_classify(model, n, m, o, batch, 2, size) for n, m, o in kept)
        if r is not None
    ]
    class_maps = _class_map_layers(recs, kept, result[0] if result else None)
    recs = [r for r in recs if r.name not in class_maps]
    grids = [i for i, r in enumerate(recs) if r.kind in ("nchw", "nhwc")]
    last_grid = grids[-1] if grids else -1
    tokens_after = [i for i, r in enumerate(recs) if r.kind == "tokens" and i > last_grid]
    if tokens_after:
        return _choose_token_layer(model, recs, last_grid, tokens_after, size)
    if last_grid < 0:
        raise ValueError(
            f"no module of {type(model).__name__} outputs a spatial grid [B, K, h, w] / "
            "[B, h, w, K] or tokens [B, N, D] with a batch dimension; pass `layer=` "
            "explicitly (config: [model] target_layer, and reshape for token outputs)"
        )
    rec = recs[last_grid]
    note = _skipped_note(rec.name, kept, batch, class_maps, pools)
    if rec.kind == "nhwc":
        return LayerChoice(
            rec.name,
            rec.shape,
            ChannelsLastReshape("auto-detected"),
            f"last spatial layer in forward order; output {list(rec.shape)} is channels-last "
            f"[B, h, w, D] (D = {rec.shape[-1]}), permuted to [B, D, h, w]{note}",
            "channels_last",
        )
    return LayerChoice(
        rec.name,
        rec.shape,
        None,
        f"last spatial layer in forward order (Grad-CAM's last convolutional layer); output "
        f"{list(rec.shape)} is [B, K, h, w]{note}",
        "cnn",
    )


def _class_map_layers(
    recs: list[_Rec], kept: list[tuple[str, nn.Module, Tensor]], output: Any
) -> set[str]:
    """Names of the trailing grid layers that hold class scores, not features.

    A channels-first grid ``[B, C, h, w]`` with ``C`` = the number of logits whose spatial mean
    or max IS the logits (within 1e-4 relative) comes after the classifier: a 1x1 convolution
    to the classes followed by global pooling (SqueezeNet's ``classifier.1``/``classifier.2``,
    fully convolutional heads). Explaining such a layer reads class channels as features, so
    the trailing run of them is skipped, whatever the modules are called.
    """
    from .outputs import logits_of

    try:
        logits = logits_of(output).detach().float() if output is not None else None
    except (TypeError, ValueError):
        return set()
    if logits is None or logits.dim() != 2:
        return set()
    outs = {n: o for n, _, o in kept}
    found: set[str] = set()
    for rec in reversed([r for r in recs if r.kind in ("nchw", "nhwc")]):
        out = outs[rec.name]
        if rec.kind != "nchw" or out.shape[1] != logits.shape[1]:
            break
        flat = out.detach().float().flatten(2)
        tol = 1e-4 * float(logits.abs().max().clamp_min(1.0))
        pooled = (flat.mean(-1), flat.amax(-1))
        if not any(float((p - logits).abs().max()) <= tol for p in pooled):
            break
        found.add(rec.name)
    return found


def _skipped_note(
    chosen: str,
    kept: list[tuple[str, nn.Module, Tensor]],
    batch: int,
    class_maps: set[str],
    pools: list[int],
) -> str:
    """Why later 4-D outputs were not chosen (for the reason): class maps, and grids that are
    no spatial grid before the model's next pooling (a last stage that is 1x1 at this input
    size; channels-last outputs)."""
    names = [n for n, _, _ in kept]
    start = names.index(chosen) + 1
    stop = next((p for p in pools if p >= start), len(kept)) if not class_maps else len(kept)
    later = [(n, o) for n, _, o in kept[start:stop] if o.dim() == 4 and o.shape[0] == batch]
    if not later:
        return ""
    parts = []
    maps = [n for n, _ in later if n in class_maps]
    if maps:
        parts.append(
            f"skipped {', '.join(maps)}: their channels pooled are the logits (class maps after "
            "a classifier convolution, not features)"
        )
    grids = [(n, o) for n, o in later if n not in class_maps]
    if grids:
        n, o = grids[-1]
        parts.append(
            f"later outputs such as {n} {list(o.shape)} are no spatial grid at this input "
            "size (1x1, or channels-last channels that would read as a grid)"
        )
    return "; " + "; ".join(parts)


def _choose_token_layer(
    model: nn.Module,
    recs: list[_Rec],
    last_grid: int,
    tokens_after: list[int],
    size: tuple[int, int],
) -> LayerChoice:
    final = recs[tokens_after[-1]]
    n = final.shape[1]
    stem = None
    if last_grid >= 0:
        g = recs[last_grid]
        stem = (g.shape[2], g.shape[3]) if g.kind == "nchw" else (g.shape[1], g.shape[2])
    layout = _token_layout(model, n, size, stem)
    if layout is None:
        raise ValueError(
            f"{type(model).__name__} outputs tokens {list(final.shape)} at {final.name!r} whose "
            f"layout (prefix tokens, grid) cannot be determined for an input of "
            f'{size[0]}x{size[1]}; set [model] target_layer and reshape = {{ kind = "tokens", '
            "prefix_tokens = P, grid = [h, w] }"
        )
    prefix, grid, source = layout
    if prefix == 0:
        return LayerChoice(
            final.name,
            final.shape,
            TokenReshape(0, grid, source),
            f"token model pooled over all tokens (no prefix token; layout from {source}): the last "
            f"token output (the last stage's output), {n} tokens on a {grid[0]}x{grid[1]} grid",
            "tokens",
        )
    norms = [
        recs[i]
        for i in tokens_after
        if recs[i].name.rsplit(".", 1)[-1] in _NORM1_NAMES and recs[i].shape[1] == n
    ]
    if not norms:
        raise ValueError(
            f"{type(model).__name__} reads its logits from {prefix} prefix token(s) (from "
            f"{source}) but no block norm named {'/'.join(_NORM1_NAMES)} was found; set "
            f"[model] target_layer to the first norm of the last block and reshape = "
            f'{{ kind = "tokens", prefix_tokens = {prefix}, grid = [{grid[0]}, {grid[1]}] }}'
        )
    rec = norms[-1]
    return LayerChoice(
        rec.name,
        rec.shape,
        TokenReshape(prefix, grid, source),
        f"ViT-style model with {prefix} prefix token(s) ({source}): the first norm of the last "
        f"block (its output reaches the logits through attention to the prefix token; the last "
        f"block's output would give the patch tokens zero gradient); {n} tokens = {prefix} + "
        f"{grid[0]}x{grid[1]}",
        "vit",
    )


def infer_reshape(model: nn.Module, layer: str, example: Tensor | None = None) -> LayerChoice:
    """The reshape for a user-chosen ``layer`` from its output on a dry forward.

    ``[B, K, h, w]`` → none; channels-last ``[B, h, w, D]`` (see :func:`detect_target_layer`)
    → :class:`ChannelsLastReshape`; tokens ``[B, N, D]`` → :class:`TokenReshape` with the prefix
    and grid inferred as in :func:`detect_target_layer`.

    Raises:
        ValueError: unknown layer, a layer that did not run, an output without a batch
            dimension, or a token layout that cannot be determined.
    """
    resolve_layer(model, layer)
    x = _probe(model, example)
    kept, batch = _trace(model, x, keep=layer)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    recs = [
        r
        for r in (
            _classify(model, n, m, o, batch, 1 if n == layer else 2, size) for n, m, o in kept
        )
        if r is not None
    ]
    outs = {n: o for n, _, o in kept}
    mine = [i for i, r in enumerate(recs) if r.name == layer]
    if not mine:
        if layer in outs:
            raise ValueError(
                f"`layer` {layer!r} outputs shape {tuple(outs[layer].shape)}, which is not a "
                f"grid [B, K, h, w] / [B, h, w, K] or tokens [B, N, D] with batch first "
                f"(batch {batch}); pick another layer"
            )
        raise ValueError(
            f"`layer` {layer!r} did not output a tensor during the forward of "
            f"{type(model).__name__} (not on the path to the logits, a pooling/identity "
            "module, or it returns a tuple); pick another layer"
        )
    i = mine[-1]
    rec = recs[i]
    if rec.kind == "nchw":
        return LayerChoice(
            layer,
            rec.shape,
            None,
            f"set by the user; output {list(rec.shape)} is [B, K, h, w]",
            "cnn",
        )
    if rec.kind == "nhwc":
        return LayerChoice(
            layer,
            rec.shape,
            ChannelsLastReshape("auto-detected"),
            f"set by the user; output {list(rec.shape)} is channels-last, permuted",
            "channels_last",
        )
    grids = [j for j, r in enumerate(recs[:i]) if r.kind in ("nchw", "nhwc")]
    stem = None
    if grids:
        g = recs[grids[-1]]
        stem = (g.shape[2], g.shape[3]) if g.kind == "nchw" else (g.shape[1], g.shape[2])
    layout = _token_layout(model, rec.shape[1], size, stem)
    if layout is None:
        raise ValueError(
            f"`layer` {layer!r} outputs tokens {list(rec.shape)} whose layout cannot be "
            f"determined for an input of {size[0]}x{size[1]}; set reshape = {{ kind = "
            '"tokens", prefix_tokens = P, grid = [h, w] }'
        )
    prefix, grid, source = layout
    return LayerChoice(
        layer,
        rec.shape,
        TokenReshape(prefix, grid, source),
        f"set by the user; tokens {list(rec.shape)} = {prefix} prefix + {grid[0]}x{grid[1]} "
        f"({source})",
        "vit" if prefix else "tokens",
    )


def _probe_from(example: Tensor | None) -> Tensor | None:
    """A probe with a batch of at least 2 (batch-first checks need B >= 2)."""
    if example is None or example.dim() != 4 or example.shape[0] >= 2:
        return example
    return example[:1].expand(2, *example.shape[1:]).clone()


def resolve_target(
    model: nn.Module,
    layer: str | Sequence[str] | None,
    reshape: Any = None,
    example: Tensor | None = None,
) -> tuple[tuple[str, ...], Any, tuple[LayerChoice, ...]]:
    """Layer names, the reshape and the reasons for an engine.

    * ``layer=None``: :func:`detect_target_layer` (layer and reshape); an explicit ``reshape``
      (not ``None``/``"auto"``) replaces the detected one.
    * ``layer`` given and ``reshape="auto"``: :func:`infer_reshape` per layer; the layers must
      agree on the reshape.
    * ``layer`` given and an explicit ``reshape`` (or ``None``): used as given.

    ``reshape`` takes everything :func:`parse_reshape` does. ``example``: the probe batch
    (a batch of 1 is repeated to 2).
    """
    parsed = parse_reshape(reshape)
    probe = _probe_from(example)
    if layer is None:
        choice = detect_target_layer(model, probe)
        if parsed not in (None, "auto"):
            choice = LayerChoice(
                choice.name,
                choice.shape,
                parsed if isinstance(parsed, Reshape) else None,
                choice.reason + "; reshape given by the user",
                choice.family,
            )
            return (choice.name,), parsed, (choice,)
        return (choice.name,), choice.reshape, (choice,)
    names = (layer,) if isinstance(layer, str) else tuple(layer)
    if parsed != "auto":
        given = tuple(
            LayerChoice(
                n,
                (),
                parsed if isinstance(parsed, Reshape) else None,
                "set by the user" + ("; reshape given by the user" if parsed is not None else ""),
                "given",
            )
            for n in names
        )
        return names, parsed, given
    choices = tuple(infer_reshape(model, n, probe) for n in names)
    kinds = {repr(describe_reshape(c.reshape)) for c in choices}
    if len(kinds) > 1:
        raise ValueError(
            f"`layer` {list(names)} need different reshapes "
            f"({', '.join(sorted(kinds))}); fuse layers of one kind or set `reshape`"
        )
    return names, choices[0].reshape, choices
