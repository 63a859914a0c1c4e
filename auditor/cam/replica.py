"""An inference-only copy of the model for the perturbation forwards (Score-CAM).

Score-CAM (Wang et al. 2020) costs ``K`` full forwards per image (one per channel of the target
layer: 512 for a ResNet-18's ``layer4``, 2048 for a ResNet-50's), so its speed is the speed of
the model's forward. Those forwards need neither hooks, gradients nor the user's module objects,
so the engine runs them on a *replica*: a deep copy of the model in eval mode, transformed with
two exact, standard inference rewrites:

1. **BatchNorm folding.** An eval-mode ``y = BN(conv(x))`` is the affine map
   ``y = gamma * (W*x + b - mu) / sqrt(var + eps) + beta``, i.e. a convolution with weights
   ``W' = W * s`` and bias ``b' = (b - mu) * s + beta`` where ``s = gamma / sqrt(var + eps)``
   per output channel (Ioffe & Szegedy 2015 give the inference form; folding it into the
   preceding convolution is the usual deployment rewrite, e.g. Jacob et al. 2018, Sec. 3.2).
   Done on a :mod:`torch.fx` trace of the copy, only where the convolution's single user is the
   BatchNorm and both modules are called once.
2. **channels_last memory format** for the copy's 4-D weights and for its inputs, the layout the
   CPU (oneDNN) and CUDA (cuDNN) convolution kernels prefer.
3. On CPU (no autocast), for Score-CAM's fixed-size chunks, a **TorchScript trace of the copy,
   frozen and run with oneDNN Graph fusion** (conv + bias + add + ReLU fused into one oneDNN
   partition). On a 2-core x86 machine this ran ResNet-18 forwards ~1.7x and ResNet-50 ~2.2x
   faster than the eager model (the eager copy alone: ~1.45x / ~1.55x).

Both change results only by floating-point rounding. The replica is *validated* on the first real
batch against the user's model (same inputs, same autocast): if the logits differ by more than
``rtol * (1 + max |logit|)``, if the copy cannot be made, or if the model rejects channels_last
tensors (e.g. a ``.view()`` that needs contiguous memory), the engine keeps using the model itself
and records why (:attr:`auditor.cam.CamEngine.replica_reason`). The user's model is never
modified: the copy owns its own parameters, and the engine's hooks are removed from it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

__all__ = ["Replica", "build_replica", "fold_batchnorm"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that follows a ``Conv2d`` into it; return the count.

    ``W' = W * s``, ``b' = (b - mu) * s + beta`` with ``s = gamma / sqrt(var + eps)`` (computed in
    float64, stored in the weight's dtype). Modifies ``gm`` (a copy) in place. A pair is folded
    only when the convolution's output has no other user, both modules appear once in the graph,
    and the BatchNorm uses running statistics.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = modules.get(str(node.target))
        conv_node = node.args[0]
        if not isinstance(bn, nn.BatchNorm2d) or not isinstance(conv_node, fx.Node):
            continue
        if conv_node.op != "call_module" or len(conv_node.users) != 1:
            continue
        conv = modules.get(str(conv_node.target))
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            continue
        if calls[str(node.target)] != 1 or calls[str(conv_node.target)] != 1:
            continue
        if bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        with torch.no_grad():
            dtype = conv.weight.dtype
            var = bn.running_var.double()
            scale = torch.rsqrt(var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
            conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
            conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return folded


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    """Switch TorchScript's oneDNN Graph fusion on for the block, then restore the flag."""
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


@dataclass
class Replica:
    """The validated inference copy: call it on a batch to get the model's raw output.

    ``replica(x)`` runs the eager copy. ``replica.fixed(x)`` is for the hot loop of fixed-shape
    chunks: with ``script=True`` (CPU, no autocast) the first call of each shape traces the copy
    for it, freezes it and runs it with oneDNN Graph fusion, once the trace agrees with the eager
    copy on a seeded synthetic input of that shape (else the shape stays eager). Every decision
    depends only on the model and the shape, never on which data came first, so a resumed run
    computes bit-identical numbers.
    """

    module: nn.Module
    channels_last: bool
    folded: int
    traced: bool
    logits_of: Callable[[Any], Tensor]
    script: bool = False
    rtol: float = 1e-3
    scripts: dict[tuple[int, ...], torch.jit.ScriptModule | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _layout(self, images: Tensor) -> Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def __call__(self, images: Tensor) -> Any:
        return self.module(self._layout(images))

    def fixed(self, images: Tensor) -> Any:
        """The model's output for a chunk whose shape repeats (TorchScript tier when valid)."""
        images = self._layout(images)
        if not self.script:
            return self.module(images)
        shape = tuple(images.shape)
        if shape not in self.scripts:
            self.scripts[shape] = self._trace(images)
        traced = self.scripts[shape]
        if traced is None:
            return self.module(images)
        with _onednn_fusion():
            return traced(images)

    def _trace(self, images: Tensor) -> torch.jit.ScriptModule | None:
        """Trace + freeze for ``images``' shape; ``None`` if that fails or disagrees."""
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
        probe = self._layout(probe)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation/tracer warnings
                traced = torch.jit.freeze(torch.jit.trace(self.module, probe, check_trace=False))
                with _onednn_fusion():
                    # the profiling executor runs unfused first and fuses from the second call:
                    # warm up past that so that real inputs always take the fused graph
                    for _ in range(3):
                        out = traced(probe)
        except Exception as exc:  # noqa: BLE001 - untraceable: this shape stays eager
            self.notes.append(f"TorchScript trace failed ({type(exc).__name__}), eager copy used")
            return None
        eager = self.module(probe)
        why = _mismatch(self.logits_of(out).float(), self.logits_of(eager).float(), self.rtol)
        if why:
            self.notes.append(f"TorchScript trace rejected ({why}), eager copy used")
            return None
        return traced

    @property
    def description(self) -> str:
        parts = ["fx-traced copy" if self.traced else "copy (not fx-traceable)"]
        parts.append(f"{self.folded} BatchNorm folded")
        parts.append("channels_last" if self.channels_last else "contiguous")
        if self.script:
            shapes = [str(shape[0]) for shape, t in self.scripts.items() if t is not None]
            parts.append(
                "oneDNN Graph TorchScript for fixed-size chunks"
                + (f" (traced: batches of {', '.join(shapes)})" if shapes else "")
            )
        return ", ".join(parts + self.notes)


def _copy_without_hooks(model: nn.Module, hook_ids: set[int]) -> nn.Module:
    replica = copy.deepcopy(model)
    for module in replica.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if isinstance(hooks, dict):
                for hook_id in hook_ids:
                    hooks.pop(hook_id, None)
    replica.eval()
    for param in replica.parameters():
        param.requires_grad_(False)
    return replica


def _mismatch(out: Tensor, ref: Tensor, rtol: float) -> str:
    """Why ``out`` does not match ``ref`` (``""`` when it does)."""
    if out.shape != ref.shape:
        return f"output shape {tuple(out.shape)} != model's {tuple(ref.shape)}"
    out, ref = out.double(), ref.double()
    if not torch.equal(torch.isfinite(out), torch.isfinite(ref)):
        return "non-finite values where the model's output is finite (or the reverse)"
    finite = torch.isfinite(ref)
    if not bool(finite.any()):
        return ""
    scale = float(ref[finite].abs().max())
    diff = float((out[finite] - ref[finite]).abs().max())
    if diff > rtol * (1.0 + scale):
        return f"max |difference| {diff:.3g} > {rtol:g} * (1 + {scale:.3g})"
    return ""


def build_replica(
    model: nn.Module,
    example: Tensor,
    logits_of: Callable[[Any], Tensor],
    *,
    hook_ids: set[int] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    rtol: float = 1e-3,
    script: bool = True,
) -> tuple[Replica | None, str, Tensor]:
    """Copy, fold and re-layout ``model``; validate it on ``example``.

    Args:
        model: the user's model (only read).
        example: a real input batch; the replica's output on it must match the model's.
        logits_of: turns a model output into the logits tensor.
        hook_ids: ids of hooks (the engine's) to drop from the copy.
        autocast: context factory for the forwards (the engine's autocast).
        rtol: tolerance relative to ``1 + max |logit|``.
        script: also try the oneDNN Graph TorchScript tier (CPU only, no autocast).

    Returns:
        ``(replica, reason, logits)``: ``replica`` is ``None`` when it is unavailable, with
        ``reason`` saying why. ``logits`` are the logits on ``example`` computed for the
        validation: the eager copy's when the copy is used (what ``replica(example)`` returns),
        else the model's own, so that the caller need not run them again.
    """
    with torch.inference_mode(), autocast():
        reference = logits_of(model(example)).float()
    try:
        replica = _copy_without_hooks(model, hook_ids or set())
    except Exception as exc:  # noqa: BLE001 - an uncopyable model just keeps the slow path
        return None, f"the model cannot be deep-copied: {type(exc).__name__}: {exc}", reference

    module: nn.Module = replica
    traced, folded, notes = False, 0, []
    try:
        gm = fx.symbolic_trace(replica)
        folded = fold_batchnorm(gm)
        module, traced = gm, True
    except Exception as exc:  # noqa: BLE001 - untraceable models are used as copied
        notes.append(f"not fx-traceable ({type(exc).__name__}), BatchNorm not folded")

    failures: list[str] = []
    for channels_last in (True, False):
        try:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            module = module.to(memory_format=fmt)
            candidate = Replica(module, channels_last, folded, traced, logits_of, rtol=rtol)
            with torch.inference_mode(), autocast():
                out = logits_of(candidate(example)).float()
        except Exception as exc:  # noqa: BLE001 - e.g. .view() on a channels_last tensor
            failures.append(f"{fmt}: {type(exc).__name__}: {exc}")
            continue
        why = _mismatch(out, reference, rtol)
        if why:
            failures.append(f"{fmt}: {why}")
            continue
        candidate.script = script and example.device.type == "cpu"
        return candidate, "; ".join(notes + failures), out
    return None, "replica rejected: " + "; ".join(notes + failures), reference
