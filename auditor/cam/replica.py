"""An inference-only copy of the model for the perturbation forwards (Score-CAM).

Score-CAM (Wang et al. 2020) costs ``K`` full forwards per image (one per channel of the target
layer: 512 for a ResNet-18's ``layer4``, 2048 for a ResNet-50's), so its speed is the speed of
the model's forward. Those forwards need neither hooks, gradients nor the user's module objects,
so the engine runs them on a *replica*: a deep copy of the model in eval mode, transformed with
standard inference rewrites that change results only by floating-point rounding:

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

The replica is *validated* against the user's model on a seeded noise probe (same shape, same
autocast; never the user's data, so the choice does not depend on which batch came first): the
logits must agree within ``rtol * (1 + max |logit|)``. Forms are tried from fastest to plainest
(folded + channels_last, folded + contiguous for models that ``.view()`` a conv output, then
unfolded); when none agrees or the model cannot be deep-copied, the engine keeps using the model
itself and says why (:attr:`auditor.cam.CamEngine.replica_status`). The user's model is never
modified: the copy owns its parameters; the engine's own hooks are removed from it, the user's
hooks are kept (a model with hooks on a module that fx would inline, i.e. one with children or
the root, is not fx-traced, so those hooks keep running).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

__all__ = ["Replica", "build_replica", "fold_batchnorm"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def fold_batchnorm(gm: fx.GraphModule, protect: frozenset[str] = frozenset()) -> int:
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
        if str(node.target) in protect or str(conv_node.target) in protect:
            continue  # a target layer's output must stay what it is
        if bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        if _has_hooks(conv) or _has_hooks(bn) or parametrize.is_parametrized(conv):
            continue  # a hook or parametrization would recompute or see the unfolded values
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


_FUSION_LOCK = threading.Lock()


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    """Switch TorchScript's oneDNN Graph fusion on for the block, then restore the flag.

    The flag is process-global: a lock keeps two threads from toggling it under each other
    (which could run one of them unfused, with other rounding).
    """
    with _FUSION_LOCK:
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


def _probe_reference(
    model: nn.Module,
    shape: Sequence[int],
    logits_of: Callable[[Any], Tensor],
    device: torch.device | str,
    dtype: torch.dtype,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[Tensor, Tensor]:
    """The seeded ``N(0, 1)`` validation probe and the model's own logits on it."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(tuple(shape), generator=generator).to(device, dtype)
    with torch.inference_mode(), autocast():
        return probe, logits_of(model(probe)).float()


def _disagreement(
    forward: Callable[[Tensor], Any],
    probe: Tensor,
    reference: Tensor,
    logits_of: Callable[[Any], Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    rtol: float,
) -> str:
    """Why a candidate's logits on ``probe`` fail to match ``reference`` (``""``: they match)."""
    try:
        with torch.inference_mode(), autocast():
            out = logits_of(forward(probe)).float()
    except Exception as exc:  # noqa: BLE001 - e.g. .view() on a channels_last tensor
        return f"{type(exc).__name__}: {exc}"
    return _mismatch(out, reference, rtol)


def _has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, attr, None) for attr in _HOOK_DICTS)


def _make_candidate(
    model: nn.Module, hook_ids: set[int], fold: bool, channels_last: bool
) -> tuple[nn.Module, bool, int, str]:
    """A fresh copy, fx-traced and BatchNorm-folded when ``fold``, in the asked layout."""
    module = _copy_without_hooks(model, hook_ids)
    traced, folded, note = False, 0, ""
    if fold:
        # fx inlines every module that has children (and the root) into one graph: hooks on
        # them would silently stop running, so such models are used as copied
        hooked = [name or "<root>" for name, m in module.named_modules() if _has_hooks(m)]
        hooked = [n for n in hooked if n == "<root>" or list(module.get_submodule(n).children())]
        if hooked:
            note = f"not fx-traced (hooks on {', '.join(hooked[:3])}), BatchNorm not folded"
        else:
            try:
                gm = fx.symbolic_trace(module)
                folded = fold_batchnorm(gm)
                module, traced = gm, True
            except Exception as exc:  # noqa: BLE001 - untraceable models are used as copied
                note = f"not fx-traceable ({type(exc).__name__}), BatchNorm not folded"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt), traced, folded, note


def build_replica(
    model: nn.Module,
    probe_shape: Sequence[int],
    logits_of: Callable[[Any], Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    hook_ids: set[int] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    rtol: float = 1e-3,
    script: bool = True,
) -> tuple[Replica | None, str]:
    """Copy, fold and re-layout ``model``; validate it on a seeded probe of ``probe_shape``.

    The probe is ``N(0, 1)`` noise from a fixed seed, never the user's data, so whether the copy
    is used (and in which form) depends only on the model and the shape: a resumed run makes the
    same choice as an uninterrupted one. Forms are tried in order (BatchNorm folded +
    channels_last, folded + contiguous, unfolded + channels_last, unfolded + contiguous); the
    first whose logits agree with the model's within ``rtol * (1 + max |logit|)`` is used.

    Args:
        model: the user's model (only read).
        probe_shape: input shape ``[B, C, H, W]`` of the validation probe.
        logits_of: turns a model output into the logits tensor.
        device, dtype: of the probe (the model's inputs).
        hook_ids: ids of hooks (the engine's) to drop from the copy.
        autocast: context factory for the forwards (the engine's autocast).
        rtol: tolerance relative to ``1 + max |logit|``.
        script: enable the oneDNN Graph TorchScript tier for :meth:`Replica.fixed` (CPU only).

    Returns:
        ``(replica, reason)``: ``replica`` is ``None`` when no form agrees or the model cannot be
        copied; ``reason`` says why (or notes what was skipped).
    """
    probe, reference = _probe_reference(model, probe_shape, logits_of, device, dtype, autocast)
    failures: list[str] = []
    nothing_folded = False
    for fold, channels_last in ((True, True), (True, False), (False, True), (False, False)):
        if not fold and nothing_folded:
            continue  # the unfolded forms would repeat the ones already tried
        try:
            module, traced, folded, note = _make_candidate(
                model, hook_ids or set(), fold, channels_last
            )
        except Exception as exc:  # noqa: BLE001 - an uncopyable model keeps the slow path
            return None, f"the model cannot be deep-copied: {type(exc).__name__}: {exc}"
        if note and note not in failures:
            failures.append(note)
        nothing_folded = nothing_folded or (fold and not folded)
        candidate = Replica(module, channels_last, folded, traced, logits_of, rtol=rtol)
        form = ("folded " if folded else "") + ("channels_last" if channels_last else "contiguous")
        why = _disagreement(candidate, probe, reference, logits_of, autocast, rtol)
        if why:
            failures.append(f"{form}: {why}")
            continue
        candidate.script = script and probe.device.type == "cpu"
        return candidate, "; ".join(failures)
    return None, "replica rejected: " + "; ".join(failures)


def build_capture_copy(
    model: nn.Module,
    layers: Sequence[str],
    probe_shape: Sequence[int],
    logits_of: Callable[[Any], Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    hook_ids: set[int] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    rtol: float = 1e-3,
) -> tuple[nn.Module | None, bool, str]:
    """A BatchNorm-folded, channels_last copy for the engine's capture forward.

    Like :func:`build_replica`, but the target ``layers`` stay modules (fx leaves, never folded
    into or away), so the engine can hook them and back-propagate from the logits to their
    output; BatchNorms are folded everywhere else. Validated on the same kind of seeded probe
    (logits within ``rtol * (1 + max |logit|)``). Returns ``(copy, channels_last, reason)``;
    ``copy`` is ``None`` (use the model) when the model has hooks on modules fx would inline,
    cannot be traced or copied, nothing could be folded, or no form agrees.
    """
    from .tail import _LeafTracer

    probe, reference = _probe_reference(model, probe_shape, logits_of, device, dtype, autocast)
    failures: list[str] = []
    for channels_last in (True, False):
        try:
            module = _copy_without_hooks(model, hook_ids or set())
        except Exception as exc:  # noqa: BLE001 - an uncopyable model keeps the slow path
            return None, False, f"the model cannot be deep-copied: {type(exc).__name__}"
        hooked = [name or "<root>" for name, m in module.named_modules() if _has_hooks(m)]
        if any(n == "<root>" or list(module.get_submodule(n).children()) for n in hooked):
            return None, False, "hooks on modules that fx would inline"
        try:
            graph = _LeafTracer(tuple(layers)).trace(module)
            gm = fx.GraphModule(module, graph)
            folded = fold_batchnorm(gm, protect=frozenset(layers))
            for name in layers:
                gm.get_submodule(name)
        except Exception as exc:  # noqa: BLE001 - untraceable: the model itself is used
            return None, False, f"not fx-traceable ({type(exc).__name__})"
        if not folded:
            return None, False, "nothing to fold"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        gm = gm.to(memory_format=fmt)
        for param in gm.parameters():
            param.requires_grad_(False)

        def forward(x: Tensor, gm: nn.Module = gm, fmt: torch.memory_format = fmt) -> Any:
            return gm(x.contiguous(memory_format=fmt))

        why = _disagreement(forward, probe, reference, logits_of, autocast, rtol)
        if why:
            failures.append(f"{fmt}: {why}")
            continue
        return gm, channels_last, f"{folded} BatchNorm folded"
    return None, False, "rejected: " + "; ".join(failures)
