"""The CAM engine: the only module with hooks, forwards, backwards and upsampling.

One batch costs ONE forward and ONE partial backward for every gradient method together:

1. The forward runs under :func:`torch.no_grad`, so the network *before* the target layer builds
   no graph. A forward hook on the target layer detaches its output, marks it
   ``requires_grad_(True)`` and switches grad mode on for the rest of the forward (the
   ``no_grad`` context restores the previous grad mode when the forward ends, also on error).
2. The score is the raw (pre-softmax) logit of the target class, summed over the batch. Samples
   are independent in eval mode, so ``torch.autograd.grad(score_sum, activation)`` gives every
   sample's ``G = dy_c / dA`` at once and touches no parameter gradient.
3. Every requested method turns ``(A, G, helpers)`` into a map at the layer's resolution
   (:mod:`auditor.cam.methods`). Score-CAM and Ablation-CAM run batched extra forwards
   (``score_batch_size`` perturbed inputs per forward) under :func:`torch.inference_mode`.

Methods with their own pass (``CamMethod.own_pass``: LeGrad, FullGrad) run it once per batch
beside the capture; when every requested method has one, the pass's forward
(``CamMethod.own_forward``) *is* the capture (:meth:`CamEngine._own_capture`): its logits are
the batch's, the target layer's output is recorded from it for the statuses, and the batch costs
one forward + the pass's backward(s).

Several target layers are fused: maps are computed per layer, bilinearly upsampled to the
largest layer resolution and summed. Degenerate samples get a defined map and a status
(``"ok"``, ``"zero_gradient"``, ``"constant_activation"``, ``"nonfinite"``, ``"zero_map"``,
``"method_failed"``).

The user's model leaves as it came: hooks removed, ``training`` flags restored (through the
one helper, :func:`auditor.audit.modelstate.preserved_training_flags`), grad mode restored,
parameters' ``requires_grad`` untouched, also on error.

Beside this module: :mod:`auditor.cam.perturbation` builds and scores the perturbed inputs of
Score-CAM, SS-CAM, IS-CAM and Ablation-CAM (deduplication, chunking), and
:mod:`auditor.cam.copies` holds the model copies those forwards and the capture run on (the
capture copy, the validated replica, the fx tails) with their caches. The engine delegates to
both; hooks, capture and backward stay here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from auditor.audit.modelstate import preserved_training_flags
from auditor.audit.status import CAM_STATUSES

from . import perturbation
from .copies import ModelCopies, autocast_context
from .layers import LayerChoice, resolve_layer, resolve_target
from .methods import METHODS, CamContext
from .outputs import logits_of as _logits_of
from .outputs import upsample_cams
from .perturbation import AUTO_SCORE_BATCH
from .replica import Replica

__all__ = ["AUTO_SCORE_BATCH", "CamBatch", "CamEngine", "STATUSES", "compute_cams", "upsample_cams"]

STATUSES: tuple[str, ...] = CAM_STATUSES
"""Per-sample statuses, by increasing precedence (the highest applicable one is reported); the
engine's part of the one vocabulary, :mod:`auditor.audit.status`.

``method_failed``: the method could not compute this sample's map (e.g. an eigendecomposition
that did not converge even in float64 and with the SVD fallback); the map is zero and the rest
of the batch is unaffected."""
_OK, _ZERO_MAP, _CONSTANT, _ZERO_GRAD, _NONFINITE, _FAILED = map(
    STATUSES.index,
    ("ok", "zero_map", "constant_activation", "zero_gradient", "nonfinite", "method_failed"),
)


@dataclass(frozen=True)
class CamBatch:
    """The result of :meth:`CamEngine.run` for one batch.

    Attributes:
        logits: ``[B, C]`` detached logits of the same forward (use them for predictions).
        targets: ``[B]`` (or ``[B, T]``) long, the class(es) explained.
        cams: ``{method: [B, h, w]}`` (``[B, T, h, w]`` for multi-target) float32 >= 0 at the
            target layer's resolution (the largest one when layers are fused), not normalised;
            methods with ``CamMethod.resolution == "input"`` (``fullgrad``) at the input's.
        status: ``{method: [status per sample]}``; for multi-target, per (sample, target) in
            row-major order. See :data:`STATUSES`.
    """

    logits: Tensor
    targets: Tensor
    cams: dict[str, Tensor]
    status: dict[str, list[str]]

    def upsampled(self, size: tuple[int, int]) -> dict[str, Tensor]:
        """``{method: [B, H, W]}`` bilinearly upsampled to ``size`` (see :func:`upsample_cams`)."""
        return {name: upsample_cams(cam, size) for name, cam in self.cams.items()}


def _minmax(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation to ``[0, 1]`` over the last two dims (constant maps: 0)."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    return ((flat - lo) / torch.where(span > 0, span, 1.0)).reshape(maps.shape)


def _model_device(model: nn.Module) -> torch.device | None:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return None


class CamEngine:
    """Compute CAMs for batches of images with one forward and one partial backward.

    Use as a context manager: ``__enter__`` puts the model in eval mode and installs the forward
    hooks on the target layer(s); ``__exit__`` removes them and restores every submodule's
    ``training`` flag (also on error).

    Args:
        model: the classifier (returns logits ``[B, C]``).
        layer: target layer name(s); ``None`` = auto-detected
            (:func:`auditor.cam.layers.detect_target_layer`). Several names: maps are computed
            per layer, upsampled to the largest layer resolution and summed.
        methods: names from :data:`auditor.cam.METHODS`.
        score_batch_size: perturbed inputs per extra forward (Score-CAM, Ablation-CAM);
            ``None`` = :data:`AUTO_SCORE_BATCH` for the images' device (16 on CPU, where small
            batches stay in cache, 128 on accelerators).
        inference_copy: run Score-CAM's masked forwards on a validated inference copy of the
            model (BatchNorm folded, channels_last; :mod:`auditor.cam.replica`). The engine
            falls back to the model itself when the copy cannot be made or disagrees with it.
        channels_last: give the capture forward a channels_last copy of the images (the
            layout oneDNN's CPU convolutions run fastest in; ResNet-18 forwards ~1.3x faster
            here). ``None`` = on CPU only. A model that raises on it (``.view()`` of a conv
            output) gets the images as given from then on (:attr:`layout_note` says so); the
            memory format never changes what an op computes, only its rounding order.
        capture_copy: run the capture forward on a validated BatchNorm-folded channels_last
            copy (:func:`auditor.cam.replica.build_capture_copy`). Building it costs a few
            forwards, so it pays off for an engine that runs many batches (the runner turns it
            on); off by default for one-shot engines such as :func:`compute_cams`.
        autocast: optional dtype (``torch.bfloat16``/``torch.float16``) for the forwards; maps
            are computed in float32.
        reshape: callable turning the target layer's output into ``[B, K, h, w]`` (token outputs:
            :func:`auditor.cam.vit_reshape`, :func:`auditor.cam.swin_reshape`). It must be a pure
            re-indexing (permute/slice/view): the engine applies it to the gradients too.
            ``"auto"`` (or any value :func:`auditor.cam.layers.parse_reshape` takes): inferred
            from the layer's output on a dry forward. With ``layer=None`` the detected layer's
            reshape is used unless one is given (:func:`auditor.cam.layers.resolve_target`).
        example: probe batch for auto-detection (default: a seeded batch at the model's
            declared input size, else 224x224); :func:`compute_cams` passes the images.
        eigen_smooth: for methods that combine channels (``CamMethod.smoothable``), take the
            first principal component of the weighted activations instead of their channel sum
            (pytorch-grad-cam's ``eigen_smooth``); a ValueError for other methods.
        aug_smooth: test-time augmentation (pytorch-grad-cam's ``aug_smooth``): the maps of the
            batch, of its horizontal flip and of both multiplied by 0.9 and 1.1 (6 captures,
            batched), each min-max normalised per image, flipped back and averaged. Logits,
            targets and statuses are the unaugmented batch's. Costs 6x every method.
        seed: seed of every random draw (``randomcam``'s weights, the noise of
            ``smoothgradcam++`` and ``sscam``): a batch of the same composition always gets the
            same draws, whatever ran before.

    Example (``model`` a network with a ``layer4``, ``images`` ``[B, 3, H, W]``, ``labels``
    ``[B]``; run by ``tests/test_docs_run.py`` with a torchvision resnet18):
        >>> with CamEngine(model, "layer4", ("gradcam", "layercam")) as engine:
        ...     batch = engine.run(images, labels)
        ...     maps = batch.upsampled(images.shape[-2:])
        >>> sorted(maps), tuple(maps["gradcam"].shape) == (len(images), *images.shape[-2:])
        (['gradcam', 'layercam'], True)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | Sequence[str] | None = None,
        methods: Sequence[str] = ("gradcam",),
        *,
        score_batch_size: int | None = None,
        autocast: torch.dtype | None = None,
        reshape: Callable[[Tensor], Tensor] | str | None = None,
        inference_copy: bool = True,
        channels_last: bool | None = None,
        capture_copy: bool = False,
        example: Tensor | None = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(methods, str):
            methods = (methods,)
        methods = tuple(methods)
        if not methods:
            raise ValueError("`methods` must name at least one method, got an empty sequence")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"`methods` has unknown name(s) {unknown}; known: {sorted(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"`methods` has duplicates: {list(methods)}")
        if score_batch_size is not None and (
            not isinstance(score_batch_size, int)
            or isinstance(score_batch_size, bool)
            or score_batch_size < 1
        ):
            raise ValueError(
                f"`score_batch_size` must be an int >= 1 or None (auto), got {score_batch_size!r}"
            )
        if not isinstance(inference_copy, bool):
            raise TypeError(f"`inference_copy` must be a bool, got {inference_copy!r}")
        if not isinstance(capture_copy, bool):
            raise TypeError(f"`capture_copy` must be a bool, got {capture_copy!r}")
        if channels_last is not None and not isinstance(channels_last, bool):
            raise TypeError(f"`channels_last` must be a bool or None, got {channels_last!r}")
        if autocast is not None and autocast not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"`autocast` must be torch.bfloat16, torch.float16 or None, got {autocast}"
            )
        if reshape is not None and not callable(reshape) and not isinstance(reshape, str):
            raise TypeError(f"`reshape` must be callable, got {type(reshape).__name__}")
        if not isinstance(aug_smooth, bool):
            raise TypeError(f"`aug_smooth` must be a bool, got {aug_smooth!r}")
        if not isinstance(eigen_smooth, bool):
            raise TypeError(f"`eigen_smooth` must be a bool, got {eigen_smooth!r}")
        if eigen_smooth:
            rigid = [m for m in methods if not METHODS[m].smoothable]
            if rigid:
                raise ValueError(
                    f"`eigen_smooth` applies to methods that combine channels; {rigid} do not "
                    f"(smoothable: {sorted(m for m, v in METHODS.items() if v.smoothable)})"
                )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"`seed` must be an int, got {seed!r}")
        for m in methods:  # methods with their own pass refuse unsupported models up front
            check = METHODS[m].check_model
            if check is not None:
                check(model)
        seed = seed % (1 << 63)  # any int; torch generators take [0, 2**64)

        self.layer_choices: tuple[LayerChoice, ...] = ()
        """Which layer(s), which reshape and why (auto-detection or ``reshape="auto"``)."""
        if layer is None or isinstance(reshape, str):
            names, reshape, self.layer_choices = resolve_target(model, layer, reshape, example)
        elif isinstance(layer, str):
            names = (layer,)
        else:
            names = tuple(layer)
            if not names:
                raise ValueError("`layer` must name at least one layer, got an empty sequence")
        self._modules = [resolve_layer(model, name) for name in names]
        if len(set(names)) != len(names):
            raise ValueError(f"`layer` has duplicates: {list(names)}")

        self.model = model
        self.layer_names: tuple[str, ...] = names
        self.methods: tuple[str, ...] = methods
        self.score_batch_size = score_batch_size
        self.autocast = autocast
        if isinstance(reshape, str):  # resolve_target returns a callable or None
            raise ValueError(f"`reshape` {reshape!r} could not be resolved")
        self.reshape: Callable[[Tensor], Tensor] | None = reshape
        self._needs_grad = any(METHODS[m].needs_gradients for m in methods)
        self._needs_hvp = any(METHODS[m].needs_hvp for m in methods)
        self._score_methods = tuple(m for m in methods if METHODS[m].score is not None)
        self.eigen_smooth = eigen_smooth
        self.aug_smooth = aug_smooth
        self.seed = seed
        self._handles: list[RemovableHandle] = []
        self._entered: contextlib.ExitStack | None = None
        self._capturing = False
        self._captured: dict[str, Tensor] = {}
        self._replace: tuple[str, Tensor] | None = None
        self.use_tail = True
        """Set to False to force Ablation-CAM's full-forward fallback (testing/debugging)."""
        self._observing = False
        self.own_pass_capture = True
        """When every requested method has its own pass (``CamMethod.own_pass``: ``legrad``,
        ``fullgrad``) and one of them has ``CamMethod.own_forward``, that pass's forward is the
        batch's capture (:meth:`_own_capture`): one forward per batch instead of two. Set to
        False to force the separate capture forward (testing/debugging)."""
        self._own_lead: str | None = None
        if all(METHODS[m].own_pass is not None for m in methods):
            self._own_lead = next((m for m in methods if METHODS[m].own_forward), None)
        self.channels_last = channels_last
        self._copies = ModelCopies(
            model,
            names,
            inference_copy=inference_copy,
            capture_copy=capture_copy,
            autocast=autocast,
            make_hook=self._make_hook,
            hook_ids=lambda: {handle.id for handle in self._handles},
        )
        self.layout_note = ""
        """Why the capture forward fell back to contiguous input (``""`` when it did not)."""
        self.masked_forwards = 0
        """Score-CAM masked inputs actually forwarded (after sharing duplicates) so far."""

    # ------------------------------------------------------------------ context management

    def __enter__(self) -> CamEngine:
        if self._entered is not None:
            raise RuntimeError("CamEngine is already entered; it is not re-entrant")
        # unwinds last-in first-out: hooks removed first, then every training flag restored
        self._entered = stack = contextlib.ExitStack()
        try:
            stack.enter_context(preserved_training_flags(self.model, eval=True))
            stack.callback(self._handles.clear)
            for name, module in zip(self.layer_names, self._modules):
                handle = module.register_forward_hook(self._make_hook(name))
                stack.callback(handle.remove)
                self._handles.append(handle)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        entered, self._entered = self._entered, None
        self._capturing = False
        self._replace = None
        self._captured = {}
        if entered is not None:
            entered.close()

    # ------------------------------------------------------------------ copies (copies.py)

    @property
    def inference_copy(self) -> bool:
        """Whether extra forwards (and, with :attr:`capture_copy`, the capture) use copies."""
        return self._copies.inference_copy

    @property
    def capture_copy(self) -> bool:
        """Whether the capture forward may run on a validated BatchNorm-folded copy."""
        return self._copies.capture_copy

    @property
    def _replica(self) -> Replica | None:
        return self._copies.replica

    @property
    def tail_reasons(self) -> dict[str, str]:
        """Why the fx tail is unavailable for a layer (Ablation-CAM then uses full forwards)."""
        return self._copies.tail_reasons

    # ------------------------------------------------------------------ hooks

    def _make_hook(self, name: str) -> Callable[[nn.Module, Any, Any], Tensor | None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
            if self._replace is not None and self._replace[0] == name:
                return self._replace[1]
            if self._observing:  # an own pass's forward: record a copy, leave its graph alone
                if not isinstance(output, Tensor):
                    raise TypeError(
                        f"target layer {name!r} must output a Tensor, got {type(output).__name__}"
                    )
                self._captured[name] = output.detach().clone()
                return None
            if not self._capturing:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"target layer {name!r} must output a Tensor, got {type(output).__name__}"
                )
            if self._needs_grad:
                if output.requires_grad:  # a later layer, already downstream of a capture
                    captured = output
                else:  # the first captured layer: start the graph here
                    captured = output.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)
            else:
                captured = output.detach()
            self._captured[name] = captured
            # a copy goes on, so that in-place ops after the layer leave the capture intact
            return captured.clone()

        return hook

    # ------------------------------------------------------------------ forwards

    @property
    def capture_status(self) -> str:
        """How the capture forward runs: ``"used: copy, ..."`` or ``"not used: <why>"``."""
        return self._copies.capture_status

    def _layouts(self, images: Tensor) -> Iterator[Tensor]:
        """The capture forward's input: channels_last first on CPU, then as given."""
        use = self.channels_last
        if use is None:
            use = images.device.type == "cpu"
        if use and not images.is_contiguous(memory_format=torch.channels_last):
            yield images.contiguous(memory_format=torch.channels_last)
        yield images

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        return autocast_context(self.autocast, device)

    def _attention_kernel(self) -> contextlib.AbstractContextManager[Any]:
        """The math SDPA kernel for the capture forward when a method needs the double
        backward (ShapleyCAM's Hessian-vector product): the fused flash/memory-efficient
        attention kernels have no second derivative (``aten::_scaled_dot_product_flash_
        attention_for_cpu_backward``); the math kernel is the same attention, composed of
        differentiable ops. Other captures keep the fastest kernel."""
        if not self._needs_hvp:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def _forward_logits(self, images: Tensor) -> Tensor:
        """An extra forward without capture (hooks only replace when asked), inference mode."""
        with torch.inference_mode(), self._autocast(images.device):
            return _logits_of(self.model(images)).float()

    def _chunk_size(self, device: torch.device) -> int:
        return perturbation.chunk_size(self.score_batch_size, device)

    # ------------------------------------------------------------------ public

    def run(self, images: Tensor, targets: Tensor | Sequence[int] | str | None = None) -> CamBatch:
        """Compute every requested map for ``images`` ``[B, C, H, W]``.

        Args:
            images: input batch (moved to the model's device).
            targets: ``None`` or ``"predicted"`` (argmax of this forward's logits), a LongTensor
                ``[B]`` / sequence of ints (one class per sample), or ``[B, T]`` (T classes per
                sample: one forward, T partial backwards; maps ``[B, T, h, w]``).
        """
        batch = self._run_once(images, targets)
        if not self.aug_smooth:
            return batch
        # test-time augmentation: flip x {0.9, 1, 1.1}, the identity already computed
        augmented = [(flip, f) for flip in (False, True) for f in (0.9, 1.0, 1.1)]
        augmented.remove((False, 1.0))
        images = images.to(batch.logits.device)
        stacked = torch.cat(
            [(images.flip(-1) if flip else images) * factor for flip, factor in augmented]
        )
        reps = (len(augmented),) + (1,) * (batch.targets.dim() - 1)
        aug = self._run_once(stacked, batch.targets.repeat(*reps))
        n = images.shape[0]
        cams: dict[str, Tensor] = {}
        for method, cam in batch.cams.items():
            total = _minmax(cam)
            for i, (flip, _factor) in enumerate(augmented):
                part = _minmax(aug.cams[method][i * n : (i + 1) * n])
                total = total + (part.flip(-1) if flip else part)
            cams[method] = total / (len(augmented) + 1)
        return dataclasses.replace(batch, cams=cams)

    def _run_once(
        self, images: Tensor, targets: Tensor | Sequence[int] | str | None = None
    ) -> CamBatch:
        if self._entered is None:
            raise RuntimeError("CamEngine.run must be called inside `with engine:`")
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"`images` must have shape [B, C, H, W], got {shape}")
        if images.shape[0] == 0:
            raise ValueError(f"`images` must hold at least one image, got {tuple(images.shape)}")
        device = _model_device(self.model) or images.device
        images = images.to(device)
        batch = images.shape[0]

        grad_mode = torch.is_grad_enabled()
        try:
            with torch.inference_mode(False):
                if self._own_lead is not None and self.own_pass_capture:
                    raw_logits, targets_bt, multi, own = self._own_capture(
                        self._own_lead, images, targets
                    )
                    logits = raw_logits.detach().float()
                    captured = [self._captured[n] for n in self.layer_names]
                    cams, codes = self._compute_maps(
                        images, logits, targets_bt, captured, [None] * len(captured), {}, own
                    )
                else:
                    raw_logits = self._capture_forward(images, grad_mode)
                    targets_bt, multi = self._resolve_targets(targets, raw_logits)
                    captured = [self._captured[n] for n in self.layer_names]
                    grads, extra = self._gradients(raw_logits, targets_bt, captured)
                    logits = raw_logits.detach().float()
                    cams, codes = self._compute_maps(
                        images, logits, targets_bt, captured, grads, extra
                    )
        finally:
            self._captured = {}
            self._observing = False
            torch.set_grad_enabled(grad_mode)

        n_targets = targets_bt.shape[1]
        code_list = torch.stack([codes[m] for m in self.methods]).tolist()  # one host sync
        status = {m: [STATUSES[c] for c in row] for m, row in zip(self.methods, code_list)}
        if multi:
            cams = {m: c.reshape(batch, n_targets, *c.shape[-2:]) for m, c in cams.items()}
            out_targets = targets_bt
        else:
            out_targets = targets_bt[:, 0]
        return CamBatch(logits=logits, targets=out_targets, cams=cams, status=status)

    # ------------------------------------------------------------------ steps

    def _capture_forward(self, images: Tensor, grad_mode: bool) -> Tensor:
        """The shared capture forward (hooks record the target layers into ``_captured``, the
        graph starts at the first of them): its raw logits ``[B, C]``."""
        device, batch = images.device, images.shape[0]
        module, copy_layout = self._copies.capture_module(images)
        attempts = (
            list(self._layouts(images))
            if module is self.model
            else [images.contiguous(memory_format=copy_layout)]
        )
        for attempt in attempts:
            self._captured = {}
            self._capturing = True
            try:
                with torch.no_grad(), self._autocast(device), self._attention_kernel():
                    raw_logits = _logits_of(module(attempt))
                break
            except RuntimeError as exc:
                if attempt is attempts[-1]:
                    raise
                # e.g. .view() on a conv output: contiguous input from now on
                self.channels_last = False
                self.layout_note = f"channels_last input rejected by the model ({exc})"
            finally:
                self._capturing = False
                torch.set_grad_enabled(grad_mode)
        self._check_capture(raw_logits, batch)
        return raw_logits

    def _check_capture(self, raw_logits: Tensor, batch: int) -> None:
        """Every target layer ran in the forward, and it returned logits ``[B, C]``."""
        missing = [n for n in self.layer_names if n not in self._captured]
        if missing:
            raise ValueError(
                f"`layer` {missing} did not run during the forward of "
                f"{type(self.model).__name__}; pick a layer on the path to the logits"
            )
        if raw_logits.dim() != 2 or raw_logits.shape[0] != batch:
            raise ValueError(
                f"the model must return logits [B, C] with B={batch}, got "
                f"{tuple(raw_logits.shape)}"
            )

    def _own_capture(
        self, method: str, images: Tensor, targets: Tensor | Sequence[int] | str | None
    ) -> tuple[Tensor, Tensor, bool, dict[str, Tensor]]:
        """``method``'s own pass as the batch's capture: ``(raw logits, targets [B, T], multi,
        {method: map [B*T, h', w']})``.

        Its forward (``CamMethod.own_forward``, on the model, under the engine's autocast) gives
        the logits; the engine's hooks record the target layer(s)' outputs of that same forward
        (a detached copy each: the pass's graph is left alone) into ``self._captured``, which
        the statuses (``constant_activation``, ``nonfinite``) read as they read a capture.
        Targets are resolved from these logits (``"predicted"``: their argmax) before the
        backward, ``own_forward(...).maps(targets)``. Other own-pass methods (if any) run their
        own pass with those targets, as beside a capture.
        """
        own_forward = METHODS[method].own_forward
        if own_forward is None:
            raise RuntimeError(f"CAM method {method!r} has no own forward")
        batch = images.shape[0]
        grad_mode = torch.is_grad_enabled()
        self._captured = {}
        self._observing = True
        try:
            with self._autocast(images.device):
                forward = own_forward(self.model, images)
        finally:
            self._observing = False
            torch.set_grad_enabled(grad_mode)
        raw_logits = forward.logits
        self._check_capture(raw_logits, batch)
        targets_bt, multi = self._resolve_targets(targets, raw_logits)
        try:
            with self._autocast(images.device):
                own = {method: forward.maps(targets_bt).float()}
        finally:
            torch.set_grad_enabled(grad_mode)
        return raw_logits, targets_bt, multi, own

    def _resolve_targets(
        self, targets: Tensor | Sequence[int] | str | None, logits: Tensor
    ) -> tuple[Tensor, bool]:
        batch, n_classes = logits.shape
        if targets is None or (isinstance(targets, str) and targets == "predicted"):
            return logits.detach().argmax(dim=1, keepdim=True), False
        if isinstance(targets, str):
            raise ValueError(
                f"`targets` must be 'predicted', None or class indices, got {targets!r}"
            )
        if not isinstance(targets, Tensor):
            targets = torch.as_tensor(list(targets))
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"`targets` must hold integer class indices, got dtype {targets.dtype}")
        targets = targets.to(device=logits.device, dtype=torch.long)
        if targets.dim() == 1 and targets.shape[0] == batch:
            targets_bt, multi = targets[:, None], False
        elif targets.dim() == 2 and targets.shape[0] == batch and targets.shape[1] >= 1:
            targets_bt, multi = targets, True
        else:
            raise ValueError(
                f"`targets` must have shape [B] or [B, T] with B={batch}, "
                f"got {tuple(targets.shape)}"
            )
        if bool(((targets_bt < 0) | (targets_bt >= n_classes)).any()):
            raise ValueError(
                f"`targets` must be class indices in [0, {n_classes}), got "
                f"min {int(targets_bt.min())} max {int(targets_bt.max())}"
            )
        return targets_bt, multi

    def _gradients(
        self, logits: Tensor, targets_bt: Tensor, captured: list[Tensor], extras: bool = True
    ) -> tuple[list[Tensor | None], dict[str, list[Tensor]]]:
        """``dy_c/dA`` per layer as ``[B*T, ...]`` (row-major over (sample, target)), and extras.

        Extras, from the same graph: ``"hvp"`` (``H A`` per layer, one double backward, when a
        method needs it) and, per method with its own ``score`` (Finer-CAM), ``ds/dA``.
        """
        if not self._needs_grad:
            return [None] * len(captured), {}
        needs_hvp = self._needs_hvp and extras
        score_methods = self._score_methods if extras else ()
        keys = ["hvp"] if needs_hvp else []
        keys += list(score_methods)
        if not logits.requires_grad:
            zeros = [
                torch.zeros(targets_bt.numel(), *a.shape[1:], device=a.device) for a in captured
            ]
            return list(zeros), {key: list(zeros) for key in keys}
        per_target: dict[str, list[list[Tensor]]] = {key: [] for key in ["grad", *keys]}
        n_targets = targets_bt.shape[1]
        jobs = [(t, key) for t in range(n_targets) for key in ["grad", *score_methods]]

        def zero_fill(grads: Sequence[Tensor | None]) -> list[Tensor]:
            return [torch.zeros_like(a) if g is None else g for g, a in zip(grads, captured)]

        with torch.enable_grad():  # the caller's grad mode may be off
            for index, (t, key) in enumerate(jobs):
                retain = index < len(jobs) - 1
                if key == "grad":
                    score = logits.gather(1, targets_bt[:, t : t + 1]).sum()
                else:
                    score_fn = METHODS[key].score
                    if score_fn is None:  # filtered in __init__
                        raise RuntimeError(f"method {key!r} has no score function")
                    score = score_fn(logits, targets_bt[:, t]).sum()
                double = key == "grad" and needs_hvp
                grads = torch.autograd.grad(
                    score,
                    captured,
                    retain_graph=retain or double,
                    create_graph=double,
                    allow_unused=True,
                )
                if double:
                    hvps: list[Tensor | None] = []
                    for g, a in zip(grads, captured):
                        if g is None or not g.requires_grad:  # the tail is linear in A: H = 0
                            hvps.append(None)
                            continue
                        (hv,) = torch.autograd.grad(
                            g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True
                        )
                        hvps.append(None if hv is None else hv.detach())
                    per_target["hvp"].append(zero_fill(hvps))
                    grads = tuple(None if g is None else g.detach() for g in grads)
                per_target[key].append(zero_fill(grads))
        out: dict[str, list[Tensor]] = {}
        for key, lists in per_target.items():
            out[key] = [
                torch.stack([lists[t][index] for t in range(n_targets)], dim=1).flatten(0, 1)
                for index in range(len(captured))
            ]
        grads_out: list[Tensor | None] = list(out.pop("grad"))
        return grads_out, out

    def _to_grid(self, tensor: Tensor, name: str) -> Tensor:
        grid = self.reshape(tensor) if self.reshape is not None else tensor
        if grid.dim() != 4:
            raise ValueError(
                f"target layer {name!r} outputs shape {tuple(tensor.shape)}; the CAM engine needs "
                "[B, K, h, w]: pass `reshape=` (e.g. auditor.cam.vit_reshape() for ViT tokens "
                "[B, 1+h*w, D], auditor.cam.swin_reshape() for [B, h, w, D])"
            )
        return grid

    def _compute_maps(
        self,
        images: Tensor,
        logits: Tensor,
        targets_bt: Tensor,
        captured: list[Tensor],
        grads: list[Tensor | None],
        extra: dict[str, list[Tensor]] | None = None,
        own: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        batch, n_targets = targets_bt.shape
        rows = batch * n_targets
        sample_index = torch.arange(batch, device=logits.device).repeat_interleave(n_targets)
        targets_n = targets_bt.reshape(-1)
        logits_n = logits[sample_index]

        extra = extra or {}
        # noisy captures serve every layer at once; `own`: maps of an own capture, per method
        shared: dict[str, list[Tensor]] = {f"own:{m}": [t] for m, t in (own or {}).items()}
        per_layer: list[dict[str, Tensor]] = []
        flags: list[dict[str, Tensor]] = []
        failed_by_method = {
            m: torch.zeros(rows, dtype=torch.bool, device=logits.device) for m in self.methods
        }
        zero_grad_by_method: dict[str, list[Tensor]] = {m: [] for m in self._score_methods}
        for index, (name, module, raw, grad_raw) in enumerate(
            zip(self.layer_names, self._modules, captured, grads)
        ):
            raw = raw.detach()
            acts_b = self._to_grid(raw, name).float()
            finite_b = torch.isfinite(acts_b).flatten(1).all(1)
            acts_b = torch.where(finite_b[:, None, None, None], acts_b, 0.0)
            acts = acts_b[sample_index] if n_targets > 1 else acts_b
            finite = finite_b[sample_index]
            grad = None
            zero_grad = torch.zeros(rows, dtype=torch.bool, device=acts.device)
            if grad_raw is not None:
                grad = self._to_grid(grad_raw, name).float()
                grad_finite = torch.isfinite(grad).flatten(1).all(1)
                finite = finite & grad_finite
                grad = torch.where(finite[:, None, None, None], grad, 0.0)
                zero_grad = (grad == 0).flatten(1).all(1)

            def grid_of(raw_grad: Tensor, name: str = name, finite: Tensor = finite) -> Tensor:
                grid = self._to_grid(raw_grad, name).float()
                return torch.where(finite[:, None, None, None], grid, 0.0).nan_to_num(0.0)

            hvp = grid_of(extra["hvp"][index]) if "hvp" in extra else None
            own_grads = {m: grid_of(extra[m][index]) for m in self._score_methods}
            for m, g in own_grads.items():
                zero_grad_by_method[m].append((g == 0).flatten(1).all(1))
            flat = acts.flatten(2)
            constant = (flat.amax(2) == flat.amin(2)).all(1)
            flags.append({"finite": finite, "zero_grad": zero_grad, "constant": constant})

            cache: dict[str, Tensor] = {}

            def head_weight(name: str = name, acts_b: Tensor = acts_b) -> Tensor:
                return self._head_weight(name, acts_b, logits)

            def masked_scores(
                name: str = name, acts_b: Tensor = acts_b, cache: dict[str, Tensor] = cache
            ) -> Tensor:
                if "masked" not in cache:
                    scores = self._masked_scores(images, acts_b, targets_bt)  # [B, K, T]
                    cache["masked"] = scores.permute(0, 2, 1).reshape(rows, -1)
                return cache["masked"]

            def ablated_scores(
                name: str = name,
                module: nn.Module = module,
                raw: Tensor = raw,
                cache: dict[str, Tensor] = cache,
            ) -> Tensor:
                if "ablated" not in cache:
                    scores = self._ablated_scores(images, name, raw, targets_bt)  # [B, K, T]
                    cache["ablated"] = scores.permute(0, 2, 1).reshape(rows, -1)
                return cache["ablated"]

            def noisy_gradients(
                samples: int, std: float, index: int = index, cache: dict[str, Tensor] = cache
            ) -> Tensor:
                key = f"noisy:{samples}:{std}"
                if key not in shared:
                    shared[key] = self._noisy_gradients(images, targets_bt, samples, std)
                return shared[key][index]

            def smoothed_scores(
                samples: int, std: float, acts_b: Tensor = acts_b, cache: dict[str, Tensor] = cache
            ) -> Tensor:
                key = f"smoothed:{samples}:{std}"
                if key not in cache:
                    scores = self._sweep_scores(images, acts_b, targets_bt, samples, std, False)
                    cache[key] = scores.permute(0, 2, 1).reshape(rows, -1)
                return cache[key]

            def integrated_scores(
                samples: int, acts_b: Tensor = acts_b, cache: dict[str, Tensor] = cache
            ) -> Tensor:
                key = f"integrated:{samples}"
                if key not in cache:
                    scores = self._sweep_scores(images, acts_b, targets_bt, samples, 0.0, True)
                    cache[key] = scores.permute(0, 2, 1).reshape(rows, -1)
                return cache[key]

            def own_map(method: str) -> Tensor:
                key = f"own:{method}"
                if key not in shared:  # once per batch, whatever the number of layers
                    shared[key] = [self._own_pass(method, images, targets_bt)]
                return shared[key][0]

            ctx = CamContext(
                activations=acts,
                gradients=grad,
                targets=targets_n,
                logits=logits_n,
                layer=name,
                head_weight=head_weight,
                masked_scores=masked_scores,
                ablated_scores=ablated_scores,
                hvp=hvp,
                eigen_smooth=self.eigen_smooth,
                seed=self.seed,
                noisy_gradients=noisy_gradients,
                smoothed_scores=smoothed_scores,
                integrated_scores=integrated_scores,
                own_map=own_map,
            )
            maps: dict[str, Tensor] = {}
            for method in self.methods:
                spec = METHODS[method]
                if method in own_grads:
                    own_grad = own_grads[method]
                    cam = spec.fn(dataclasses.replace(ctx, gradients=own_grad)).float()
                    method_zero_grad = (own_grad == 0).flatten(1).all(1)
                else:
                    cam = spec.fn(ctx).float()
                    method_zero_grad = zero_grad
                failed = ~torch.isfinite(cam).flatten(1).all(1) & finite
                failed_by_method[method] |= failed
                cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
                bad = ~finite | failed
                if spec.needs_gradients:
                    bad = bad | method_zero_grad
                maps[method] = torch.where(bad[:, None, None], 0.0, cam)
            per_layer.append(maps)

        on_layer = [m for m in self.methods if METHODS[m].resolution == "layer"] or self.methods
        size = max((m[on_layer[0]].shape[-2:] for m in per_layer), key=lambda s: s[0] * s[1])
        size_t = (int(size[0]), int(size[1]))
        cams: dict[str, Tensor] = {}
        codes: dict[str, Tensor] = {}
        nonfinite = torch.stack([f["finite"] for f in flags]).logical_not().any(0)
        all_zero_grad = torch.stack([f["zero_grad"] for f in flags]).all(0)
        all_constant = torch.stack([f["constant"] for f in flags]).all(0)
        for method in self.methods:
            fused = per_layer[0][method]
            if len(per_layer) > 1 and METHODS[method].resolution == "layer":
                fused = sum(upsample_cams(m[method], size_t) for m in per_layer)  # type: ignore[assignment]
            zero_map = (fused == 0).flatten(1).all(1)
            code = torch.full((rows,), _OK, dtype=torch.long, device=fused.device)
            code = torch.where(zero_map, _ZERO_MAP, code)
            code = torch.where(all_constant, _CONSTANT, code)
            if method in zero_grad_by_method:
                own_zero = torch.stack(zero_grad_by_method[method]).all(0)
                code = torch.where(own_zero, _ZERO_GRAD, code)
            elif METHODS[method].needs_gradients:
                code = torch.where(all_zero_grad, _ZERO_GRAD, code)
            code = torch.where(nonfinite, _NONFINITE, code)
            code = torch.where(failed_by_method[method], _FAILED, code)
            cams[method] = fused
            codes[method] = code
        return cams, codes

    # ------------------------------------------------------------------ method helpers

    def _own_pass(self, method: str, images: Tensor, targets_bt: Tensor) -> Tensor:
        """``CamMethod.own_pass`` of ``method`` on the model: ``[B*T, h', w']`` float32."""
        own_pass = METHODS[method].own_pass
        if own_pass is None:
            raise RuntimeError(f"CAM method {method!r} has no own pass")
        grad_mode = torch.is_grad_enabled()
        try:
            with torch.inference_mode(False), self._autocast(images.device):
                return own_pass(self.model, images, targets_bt).float()
        finally:
            torch.set_grad_enabled(grad_mode)

    def _head_weight(self, name: str, acts: Tensor, logits: Tensor) -> Tensor:
        """Weight ``[C, K]`` of the classifier that maps GAP(A) to the logits (CAM's head).

        CAM (Zhou et al. 2016) is defined only for ``y = W GAP(A) + b``. Candidates are the
        ``nn.Linear`` with ``in_features == K``, last first; one counts only when it reproduces
        this batch's logits from the captured activations: ``|W GAP(A) + b - y| <= 1e-3 *
        max|y|`` (5e-2 under autocast). A hidden layer of an MLP head (mobilenet_v3's
        ``classifier.0``, 960 -> 1280) or a class-token readout fails the probe: a clear error,
        never "class c" read from hidden unit c.
        """
        channels = int(acts.shape[1])
        linears = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        matching = [(n, m) for n, m in linears if m.in_features == channels]
        if not matching:
            found = [m.in_features for _, m in linears]
            raise ValueError(
                f"method 'cam' needs a global-average-pool + linear head on layer {name!r}: "
                f"a final nn.Linear with in_features == {channels} channels, but "
                f"{type(self.model).__name__} has Linear in_features {found}; use 'gradcam' "
                "(equal to CAM up to a positive scale on GAP+linear heads) or another method"
            )
        gap = acts.float().mean(dim=(2, 3))  # [B, K]
        y = logits.float()
        rows = torch.isfinite(gap).all(1) & torch.isfinite(y).all(1)
        if not bool(rows.any()):  # nothing to verify on: those maps are zeroed as nonfinite
            return matching[-1][1].weight.detach().float()
        gap, y = gap[rows], y[rows]
        tol = (1e-3 if self.autocast is None else 5e-2) * float(y.abs().max().clamp_min(1e-6))
        tried = []
        for lname, linear in reversed(matching):
            weight = linear.weight.detach().float().to(gap.device)
            if weight.shape[0] != y.shape[1]:
                tried.append(f"{lname} ({weight.shape[0]} outputs, {y.shape[1]} logits)")
                continue
            pred = gap @ weight.T
            if linear.bias is not None:
                pred = pred + linear.bias.detach().float().to(gap.device)
            err = float((pred - y).abs().max())
            if err <= tol:
                return weight
            tried.append(f"{lname} (max error {err:.3g} > {tol:.3g})")
        raise ValueError(
            f"method 'cam' needs logits = W * GAP(A) + b for the target layer {name!r}, but no "
            f"nn.Linear with in_features == {channels} reproduces the logits from the "
            f"layer's pooled activations (tried {', '.join(tried)}); the head is not a single "
            "linear layer on GAP of this layer: use 'gradcam' or another method"
        )

    def _masked_scores(self, images: Tensor, acts: Tensor, targets_bt: Tensor) -> Tensor:
        """Score-CAM channel scores ``[B, K, T]`` (:func:`.perturbation.masked_scores`)."""
        scores, forwards = perturbation.masked_scores(
            images, acts, targets_bt, self._perturbed_logits, self._chunk_size(acts.device)
        )
        self.masked_forwards += forwards
        return scores

    @property
    def replica_status(self) -> str:
        """``"used: <what>"`` / ``"not used: <why>"`` once an extra forward ran, else ``""``."""
        return self._copies.replica_status

    def forward_logits(self, images: Tensor, autocast: bool = True) -> Tensor:
        """Float logits of one inference forward of ``images`` (no capture, no graph).

        Runs on the validated inference copy (see :mod:`auditor.cam.replica`) when
        ``inference_copy`` is on, else on the model. Usable inside or outside ``with engine:``;
        outside, the model should be in eval mode (the copy is validated against it as it is).
        ``autocast=False``: float32 even when the engine has an autocast dtype.
        """
        images = images.to(_model_device(self.model) or images.device)
        with torch.inference_mode():
            return self._perturbed_logits(images, autocast=autocast)

    def _perturbed_logits(
        self, images: Tensor, fixed: bool = False, autocast: bool = True
    ) -> Tensor:
        """An extra full forward, on the validated copy when available (:mod:`.copies`)."""
        return self._copies.perturbed_logits(images, fixed=fixed, autocast=autocast)

    def _noisy_gradients(
        self, images: Tensor, targets_bt: Tensor, samples: int, std: float
    ) -> list[Tensor]:
        """``dy_c/dA`` for ``samples`` noisy copies ``X + eps``, ``eps ~ N(0, std^2)``.

        Returns per layer ``[S, B*T, K, h, w]``. The noise comes from a CPU generator seeded with
        :attr:`seed` (one ``[B, C, H, W]`` draw per copy, in order); the copies run as captures
        of up to ``max(B, 64)`` images per forward (one partial backward each), on the model.
        """
        gen = torch.Generator().manual_seed(self.seed)
        noise = [torch.randn(images.shape, generator=gen) * std for _ in range(samples)]
        per_forward = max(1, max(images.shape[0], 64) // images.shape[0])
        per_layer: list[list[Tensor]] = [[] for _ in self.layer_names]
        saved, grad_mode = self._captured, torch.is_grad_enabled()
        batch = images.shape[0]
        try:
            for start in range(0, samples, per_forward):
                group = noise[start : start + per_forward]
                noisy = torch.cat([images + n.to(images.device, images.dtype) for n in group])
                self._captured, self._capturing = {}, True
                try:
                    with torch.no_grad(), self._autocast(images.device):
                        logits = _logits_of(self.model(noisy))
                finally:
                    self._capturing = False
                    torch.set_grad_enabled(grad_mode)
                captured = [self._captured[n] for n in self.layer_names]
                grads, _ = self._gradients(
                    logits, targets_bt.repeat(len(group), 1), captured, False
                )
                for index, (name, grad) in enumerate(zip(self.layer_names, grads)):
                    if grad is None:
                        raise RuntimeError("noisy captures need gradients")
                    grid = self._to_grid(grad.detach(), name).float()
                    rows = batch * targets_bt.shape[1]
                    per_layer[index].extend(grid.reshape(len(group), rows, *grid.shape[1:]))
        finally:
            self._captured = saved
            torch.set_grad_enabled(grad_mode)
        return [torch.stack(rows_).nan_to_num(0.0) for rows_ in per_layer]

    def _sweep_scores(
        self,
        images: Tensor,
        acts: Tensor,
        targets_bt: Tensor,
        samples: int,
        std: float,
        integrated: bool,
    ) -> Tensor:
        """SS-CAM / IS-CAM channel scores ``[B, K, T]`` (:func:`.perturbation.sweep_scores`)."""
        return perturbation.sweep_scores(
            images,
            acts,
            targets_bt,
            samples,
            std,
            integrated,
            forward=self._perturbed_logits,
            size=self._chunk_size(acts.device),
            seed=self.seed,
        )

    def _ablated_scores(self, images: Tensor, name: str, raw: Tensor, targets_bt: Tensor) -> Tensor:
        """Ablation-CAM: target logits with channel ``k`` zeroed at layer ``name`` -> ``[B, K, T]``.

        Uses the fx tail (:func:`auditor.cam.tail.build_tail`) when the network after the layer
        depends only on it; otherwise full forwards with a hook replacing the layer's output
        (:func:`auditor.cam.perturbation.ablated_scores`).
        """
        channels = int(self._to_grid(raw, name).shape[1])
        tail = self._copies.tail(name) if self.use_tail else None

        def forward_ablated(ablated: Tensor, b_idx: Tensor) -> Tensor:
            if tail is not None:
                with self._autocast(raw.device):
                    return _logits_of(tail(ablated)).float()
            self._replace = (name, ablated)
            try:
                return self._forward_logits(images[b_idx])
            finally:
                self._replace = None

        return perturbation.ablated_scores(
            raw, channels, targets_bt, forward_ablated, self._chunk_size(raw.device), self.reshape
        )

    def _ablate(self, raw: Tensor, k_idx: Tensor) -> Tensor:
        """Zero channel ``k_idx[i]`` of sample ``i`` (:func:`auditor.cam.perturbation.ablate`)."""
        return perturbation.ablate(raw, k_idx, self.reshape)


def compute_cams(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | str | None = None,
    methods: Sequence[str] = ("gradcam",),
    layer: str | Sequence[str] | None = None,
    **engine_kwargs: Any,
) -> dict[str, Tensor]:
    """Compute CAMs for a batch and upsample them to the images' size.

    A thin wrapper over :class:`CamEngine` (see it for ``engine_kwargs``:
    ``score_batch_size``, ``autocast``, ``reshape``).

    Args:
        model: the classifier, returning logits ``[B, C]``.
        images: ``[B, C, H, W]``.
        targets: LongTensor ``[B]`` (class per sample), ``"predicted"`` or ``None`` (= predicted),
            or ``[B, T]`` for several classes per image (maps ``[B, T, H, W]``, one forward).
        methods: names from :data:`auditor.cam.METHODS`.
        layer: target layer name(s); ``None`` = auto-detected on ``images``
            (:func:`auditor.cam.layers.detect_target_layer`: with the reshape token and
            channels-last layers need).

    Returns:
        ``{method: Tensor[B, H, W]}`` float32 >= 0 on the model's device, not normalised.
    """
    if (layer is None or isinstance(engine_kwargs.get("reshape"), str)) and isinstance(
        images, Tensor
    ):
        engine_kwargs.setdefault("example", images)
    with CamEngine(model, layer, methods, **engine_kwargs) as engine:
        batch = engine.run(images, targets)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    return batch.upsampled(size)
