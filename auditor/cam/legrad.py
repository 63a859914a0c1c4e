"""LeGrad's own pass: one forward with explicit attention maps, one backward per target.

LeGrad (Bousselham, Boggust, Chaybouti, Strobelt, Kuehne 2024, "LeGrad: An Explainability Method
for Vision Transformers via Feature Formation Sensitivity", arXiv:2404.03214, ICCV 2025) reads
the gradient of a class score with respect to the attention maps of a ViT, block by block:

* ``z^l`` ``[N_tok, D]``: the tokens after block ``l``; ``s^l = head(norm(mean_i z^l_i))[c]``:
  the model's final norm and classifier applied to the mean of *all* tokens of block ``l``
  (prefix tokens included), the score of class ``c`` "formed" at that block. This is the
  readout of the authors' code (``ln_post(feat.mean(0)) @ proj``) and torch-cam's
  ``LeGrad`` default for torchvision (``heads(ln(tokens.mean(1)))``); at the last block it is
  the model's logit only for a model that mean-pools every token.
* ``A^l`` ``[heads, N_tok, N_tok]``: block ``l``'s post-softmax attention probabilities.
* ``E^l = mean_{h, i} ReLU(ds^l / dA^l)[h, i, :]``: the positive gradient averaged over heads
  ``h`` and query tokens ``i`` (rows), one value per key token; only ``A^l`` of the *same*
  block is differentiated (``s^l`` w.r.t. ``A^l``, not the final logit w.r.t. every ``A``).
* ``M = (1/L) sum_l E^l[prefix:]``, reshaped to the patch grid ``[h, w]``. Not normalised here
  (the engine's contract); the paper min-max normalises for display. The attention values
  themselves are not multiplied in.

Cost per batch: one forward (with grad mode only from each block's attention to its readout:
every block's input is detached, so the blocks' graphs are independent and ``sum_l s^l`` needs
ONE backward for all blocks) plus one backward per explained class. Attention maps must exist as
tensors: timm's fused ``scaled_dot_product_attention`` is switched off (``fused_attn = False``)
on each ``Attention`` for the pass and the probabilities are taken at ``attn_drop``'s output;
torchvision's ``nn.MultiheadAttention`` runs, for the pass, its self-attention written
out (``in_proj``, ``softmax(q k^T / sqrt(d))`` as the leaf, ``out_proj(A V)``: the value the
module returns in eval mode) as an instance ``forward``. Every flag and hook is
restored, also on error.

Supported: timm ``VisionTransformer`` whose blocks use ``timm.layers.Attention`` and that pools
without attention pooling (``global_pool`` ``token``/``avg``/...; DeiT, registers, non-square
grids), torchvision ``VisionTransformer``. Anything else (CNNs, Swin, Hugging Face ViT, timm
EVA/BEiT attention, distilled heads, attention pooling) is refused with the reason, never
mapped by a guess.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..audit.modelstate import preserved_training_flags
from .outputs import logits_of

__all__ = ["LegradForward", "legrad_check", "legrad_forward", "legrad_maps"]

SUPPORTED = (
    "timm VisionTransformer (timm.layers.Attention blocks, no attention pooling) and "
    "torchvision VisionTransformer"
)


@dataclass(frozen=True)
class _Plan:
    """How to run LeGrad on one model (found by :func:`_plan`)."""

    family: str  # "timm" | "torchvision"
    blocks: tuple[nn.Module, ...]
    readout: Callable[[Tensor], Tensor]  # tokens [B, N, D] -> logits [B, C]
    prefix: int
    grid: Callable[[int, int], tuple[int, int]]  # image (H, W) -> patch grid (h, w)


def _refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"`legrad` cannot run on {type(model).__name__}: {why}; it supports {SUPPORTED}"
    )


def _timm_plan(model: nn.Module) -> _Plan | None:
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is optional
        return None
    if not isinstance(model, VisionTransformer):
        return None
    if getattr(model, "attn_pool", None) is not None:
        raise _refuse(model, "attention pooling (global_pool='map'/'prr') is not supported")
    cls = type(model)
    for name in ("forward_head", "forward_features", "pool", "forward"):
        if getattr(cls, name) is not getattr(VisionTransformer, name):
            raise _refuse(model, f"{cls.__name__} overrides VisionTransformer.{name}")
    blocks = tuple(model.blocks)
    if not blocks:
        raise _refuse(model, "the model has no transformer blocks")
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if type(attn) is not Attention or not isinstance(attn.attn_drop, nn.Dropout):
            raise _refuse(
                model,
                f"blocks.{i}.attn is {type(attn).__name__}, not timm.layers.Attention",
            )

    def readout(tokens: Tensor) -> Tensor:
        pooled = model.norm(tokens.mean(dim=1))
        return model.head(model.head_drop(model.fc_norm(pooled)))

    def grid(height: int, width: int) -> tuple[int, int]:
        embed = model.patch_embed
        if getattr(model, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
            h, w = embed.dynamic_feat_size((height, width))
        else:
            h, w = embed.grid_size
        return int(h), int(w)

    return _Plan("timm", blocks, readout, int(model.num_prefix_tokens), grid)


def _torchvision_plan(model: nn.Module) -> _Plan | None:
    try:
        from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    if not isinstance(model, VisionTransformer):
        return None
    cls = type(model)
    for name in ("forward", "_process_input"):
        if getattr(cls, name) is not getattr(VisionTransformer, name):
            raise _refuse(model, f"{cls.__name__} overrides VisionTransformer.{name}")
    blocks = tuple(model.encoder.layers)
    if not blocks:
        raise _refuse(model, "the model has no encoder layers")
    for i, blk in enumerate(blocks):
        mha = getattr(blk, "self_attention", None)
        if type(blk) is not EncoderBlock or not isinstance(mha, nn.MultiheadAttention):
            raise _refuse(model, f"encoder.layers[{i}] is not a torchvision EncoderBlock")
        if (
            not mha.batch_first
            or not mha._qkv_same_embed_dim
            or mha.in_proj_weight is None
            or mha.bias_k is not None
            or mha.add_zero_attn
        ):
            raise _refuse(model, f"encoder.layers[{i}].self_attention has an unusual layout")

    def readout(tokens: Tensor) -> Tensor:
        return model.heads(model.encoder.ln(tokens.mean(dim=1)))

    def grid(height: int, width: int) -> tuple[int, int]:
        return height // model.patch_size, width // model.patch_size

    return _Plan("torchvision", blocks, readout, 1, grid)


def _plan(model: nn.Module) -> _Plan:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    for finder in (_timm_plan, _torchvision_plan):
        plan = finder(model)
        if plan is not None:
            return plan
    inner = next(
        (
            name
            for name, sub in model.named_modules()
            if name and type(sub).__name__ == "VisionTransformer"
        ),
        None,
    )
    if inner is not None:
        why = (
            f"the ViT is the submodule {inner!r} inside a wrapper; LeGrad reads the ViT's own "
            "norm and head, so pass the ViT itself as the model"
        )
    else:
        why = "no supported ViT attention blocks (a CNN, Swin, Hugging Face or custom model)"
    raise _refuse(model, why)


def legrad_check(model: nn.Module) -> None:
    """Raise a :class:`ValueError` naming the reason when ``model`` is not supported."""
    _plan(model)


@contextlib.contextmanager
def _attributes(items: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set ``obj.name = value`` for each item; restore the originals (or their absence) on exit."""
    missing = object()
    saved = [(obj, name, obj.__dict__.get(name, missing)) for obj, name, _ in items]
    try:
        for obj, name, value in items:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is missing:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, old)


class _Capture:
    """Per-forward state: each block's attention leaf and its readout scores."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.leaves: dict[int, Tensor] = {}
        self.scores: dict[int, Tensor] = {}
        self.tokens: dict[int, int] = {}

    # -- every block: independent graph from its attention to its readout
    def block_pre(self, index: int) -> Callable[..., Any]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            torch.set_grad_enabled(False)  # norm1 / qkv need no graph
            if args and isinstance(args[0], Tensor):
                return (args[0].detach(), *args[1:])
            return None

        return hook

    def block_post(self, index: int) -> Callable[..., Any]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if index not in self.leaves:
                raise RuntimeError(f"legrad: block {index} ran without its attention")
            if not isinstance(output, Tensor) or output.dim() != 3:
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output)
                raise ValueError(f"legrad: block {index} must output [B, N, D], got {shape}")
            scores = self.plan.readout(output)
            if scores.dim() != 2 or scores.shape[0] != output.shape[0]:
                raise ValueError(
                    f"legrad: the head applied to block {index} gives {tuple(scores.shape)}, "
                    "expected logits [B, C]"
                )
            self.scores[index] = scores
            self.tokens[index] = int(output.shape[1])

        return hook

    def _leaf(self, index: int, probs: Tensor) -> Tensor:
        leaf = probs.detach().requires_grad_(True)
        self.leaves[index] = leaf
        torch.set_grad_enabled(True)  # from the attention on, up to this block's readout
        return leaf

    # -- timm: the probabilities are attn_drop's output (fused attention switched off)
    def timm_probs(self, index: int) -> Callable[..., Any]:
        def hook(_module: nn.Module, _args: Any, output: Tensor) -> Tensor:
            return self._leaf(index, output)

        return hook

    # -- torchvision: nn.MultiheadAttention's self-attention written out for the pass, with the
    #    probabilities as the leaf (its own forward would compute A V and out_proj a second time)
    def mha_forward(self, index: int, module: nn.MultiheadAttention) -> Callable[..., Any]:
        def forward(
            query: Tensor,
            key: Tensor,
            value: Tensor,
            key_padding_mask: Tensor | None = None,
            need_weights: bool = True,
            attn_mask: Tensor | None = None,
            average_attn_weights: bool = True,
            is_causal: bool = False,
        ) -> tuple[Tensor, Tensor | None]:
            if key is not query or value is not query or query.dim() != 3:
                raise ValueError(
                    f"legrad: encoder layer {index} must be batch-first self-attention [B, N, D]"
                )
            if key_padding_mask is not None or attn_mask is not None or is_causal:
                raise ValueError(f"legrad: encoder layer {index}: attention masks not supported")
            b, n, e = query.shape
            heads = module.num_heads
            qkv = F.linear(query, module.in_proj_weight, module.in_proj_bias)  # no graph needed
            q, k, v = qkv.reshape(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
            scores = (q * (e // heads) ** -0.5) @ k.transpose(-2, -1)
            leaf = self._leaf(index, scores.softmax(dim=-1))  # eval mode: no attention dropout
            mixed = (leaf.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, e)
            out = module.out_proj(mixed)
            if not need_weights:
                return out, None
            return out, leaf.mean(dim=1) if average_attn_weights else leaf

        return forward


def _hooks(plan: _Plan, cap: _Capture) -> tuple[list[RemovableHandle], list[tuple[Any, str, Any]]]:
    handles: list[RemovableHandle] = []
    flags: list[tuple[Any, str, Any]] = []
    try:
        for i, blk in enumerate(plan.blocks):
            handles.append(blk.register_forward_pre_hook(cap.block_pre(i)))
            handles.append(blk.register_forward_hook(cap.block_post(i)))
            if plan.family == "timm":
                attn: Any = blk.attn
                flags.append((attn, "fused_attn", False))
                handles.append(attn.attn_drop.register_forward_hook(cap.timm_probs(i)))
            else:
                mha: Any = blk.self_attention
                flags.append((mha, "forward", cap.mha_forward(i, mha)))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles, flags


class LegradForward:
    """The forward half of LeGrad's pass: the model's logits and the graph the backward reads.

    Built by :func:`legrad_forward` (the model's hooks and flags are already restored when it
    exists); :meth:`maps` runs the backward(s) for the classes explained. The engine reads
    :attr:`logits` as the batch's logits when every requested method has its own pass, so a
    predict-mode target (argmax) is known before the backward.

    Attributes:
        logits: ``[B, C]`` the model's own output of this forward (detached; the attention is
            computed explicitly, so it equals an ordinary forward up to float rounding).
    """

    def __init__(self, plan: _Plan, cap: _Capture, logits: Tensor, size: tuple[int, int]) -> None:
        self._plan = plan
        self._cap = cap
        self.logits = logits
        self._size = size

    def maps(self, targets: Tensor) -> Tensor:
        """``[B*T, h, w]`` float32 >= 0 for ``targets`` ``[B]`` or ``[B, T]`` (one backward per
        target column; call once: the graph is freed after the last column)."""
        plan, cap = self._plan, self._cap
        batch = int(self.logits.shape[0])
        targets_bt = targets[:, None] if targets.dim() == 1 else targets
        if targets_bt.dim() != 2 or targets_bt.shape[0] != batch:
            raise ValueError(
                f"`targets` must have shape [B] or [B, T] with B={batch}, "
                f"got {tuple(targets.shape)}"
            )
        n_blocks = len(plan.blocks)
        height, width = plan.grid(*self._size)
        leaves = [cap.leaves[i] for i in range(n_blocks)]
        per_target: list[Tensor] = []
        n_targets = targets_bt.shape[1]
        with torch.enable_grad():
            for t in range(n_targets):
                index = targets_bt[:, t : t + 1].to(device=cap.scores[0].device, dtype=torch.long)
                score = torch.stack(
                    [cap.scores[i].gather(1, index).sum() for i in range(n_blocks)]
                )
                score = score.sum()  # sum_l s^l: the blocks' graphs are independent
                grads = torch.autograd.grad(
                    score, leaves, retain_graph=t < n_targets - 1, allow_unused=True
                )
                relevances: list[Tensor] = []
                for i, (g, leaf) in enumerate(zip(grads, leaves)):
                    tokens = cap.tokens[i]
                    if leaf.shape[-1] != tokens or leaf.shape[-2] != tokens:
                        raise ValueError(
                            f"legrad: block {i} attention {tuple(leaf.shape)} does not match "
                            f"its {tokens} tokens"
                        )
                    g = torch.zeros_like(leaf) if g is None else g
                    relevances.append(g.float().clamp_min(0).mean(dim=(1, 2))[:, plan.prefix :])
                mean = torch.stack(relevances).mean(dim=0)  # (1/L) sum_l E^l
                patches = mean.shape[-1]
                if patches != height * width:
                    raise ValueError(
                        f"legrad: {patches} patch tokens after {plan.prefix} prefix tokens do "
                        f"not fill the {height}x{width} patch grid of a "
                        f"{self._size[0]}x{self._size[1]} image"
                    )
                per_target.append(mean.reshape(-1, height, width))
        return torch.stack(per_target, dim=1).flatten(0, 1).detach()


def legrad_forward(model: nn.Module, images: Tensor) -> LegradForward:
    """LeGrad's forward: every block's attention as a leaf, its readout scores, the logits.

    Args:
        model: a supported ViT (see the module docstring); left as it came (flags, hooks) when
            this returns or raises.
        images: ``[B, C, H, W]`` on the model's device.

    Returns:
        a :class:`LegradForward`: ``.logits`` ``[B, C]`` and ``.maps(targets)``.

    Raises:
        ValueError: the model is not supported (the message says why) or the shapes disagree.
    """
    plan = _plan(model)
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must have shape [B, C, H, W], got {shape}")
    if images.is_inference():
        images = images.clone()
    cap = _Capture(plan)
    flags: list[tuple[Any, str, Any]] = []
    handles: list[RemovableHandle] = []
    if hasattr(model, "grad_checkpointing"):
        flags.append((model, "grad_checkpointing", False))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(preserved_training_flags(model, eval=True))
            stack.enter_context(torch.inference_mode(False))
            handles, attn_flags = _hooks(plan, cap)
            stack.enter_context(_attributes(flags + attn_flags))
            with torch.no_grad():  # grad mode is switched on inside each block only
                output = model(images)
    finally:
        for handle in handles:
            handle.remove()
    n_blocks = len(plan.blocks)
    if len(cap.leaves) != n_blocks or len(cap.scores) != n_blocks:
        raise ValueError(
            f"legrad: {len(cap.leaves)} of {n_blocks} blocks produced an attention map; every "
            "block must run once per forward"
        )
    logits = logits_of(output).detach()
    size = (int(images.shape[-2]), int(images.shape[-1]))
    return LegradForward(plan, cap, logits, size)


def legrad_maps(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """LeGrad maps ``M = (1/L) sum_l mean_{h,i} ReLU(ds^l/dA^l)[h, i, prefix:]`` on the patch grid.

    ``legrad_forward(model, images).maps(targets)``.

    Args:
        model: a supported ViT (see the module docstring); left as it came (flags, hooks).
        images: ``[B, C, H, W]`` on the model's device.
        targets: ``[B]`` or ``[B, T]`` long class indices.

    Returns:
        ``[B*T, h, w]`` float32 >= 0 (row-major over (image, target)), not normalised.

    Raises:
        ValueError: the model is not supported (the message says why) or the shapes disagree.
    """
    _plan(model)
    if isinstance(images, Tensor) and images.dim() == 4:
        targets_bt = targets[:, None] if targets.dim() == 1 else targets
        if targets_bt.dim() != 2 or targets_bt.shape[0] != images.shape[0]:
            raise ValueError(
                f"`targets` must have shape [B] or [B, T] with B={images.shape[0]}, "
                f"got {tuple(targets.shape)}"
            )
    return legrad_forward(model, images).maps(targets)
