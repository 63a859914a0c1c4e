"""The engine's model copies: which module runs each forward, built once and cached.

Three kinds of derived module serve the CAM engine, each built on first use, validated against
the user's model (:mod:`auditor.cam.replica`, :mod:`auditor.cam.tail`) and kept for the next
``with engine:`` block:

- the **capture copy** (``capture_copy=True``): a BatchNorm-folded channels_last copy whose
  target layers stay hookable, for the capture forward;
- the **replica**: the inference copy that runs the perturbation forwards (Score-CAM and
  friends, :mod:`auditor.cam.perturbation`) and :meth:`CamEngine.forward_logits`;
- the **fx tail** per layer: the network after the target layer, for Ablation-CAM.

A copy is keyed by :func:`state_key` (identity and in-place version of every parameter and
buffer) and rebuilt when the user's model changes; a model that changes on every call is not
copied at all. When a copy cannot be made or disagrees with the model, the model itself is used
and the status strings say why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .outputs import logits_of
from .replica import Replica, build_capture_copy, build_replica
from .tail import build_tail

__all__ = ["ModelCopies", "autocast_context", "state_key"]

Hook = Callable[[nn.Module, Any, Any], Tensor | None]


def autocast_context(
    dtype: torch.dtype | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def state_key(model: nn.Module) -> tuple[Any, ...]:
    """Identity + in-place version of every parameter and buffer: changes when the model does.

    Kept with the inference copy so that a copy made in one ``with engine:`` block is reused by
    the next (the runner enters the engine once per batch) unless the weights were replaced or
    modified in place (``Tensor._version`` counts in-place writes).
    """
    return tuple(
        (name, t.data_ptr(), _version(t), tuple(t.shape))
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    )


def _version(tensor: Tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors have no version counter: identity only
        return -1


class ModelCopies:
    """The capture copy, the replica and the fx tails of one engine's model, with their reasons.

    Args:
        model: the user's model (never modified).
        layer_names: the engine's target layers (kept hookable in the capture copy).
        inference_copy: whether copies may be used at all.
        capture_copy: whether the capture forward may run on a copy.
        autocast: the engine's autocast dtype (validation tolerance and the probes' context).
        make_hook: the engine's forward-hook factory, installed on the capture copy's layers.
        hook_ids: the ids of the engine's hooks on the model now (left out of every copy).
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: Sequence[str],
        *,
        inference_copy: bool,
        capture_copy: bool,
        autocast: torch.dtype | None,
        make_hook: Callable[[str], Hook],
        hook_ids: Callable[[], set[int]],
    ) -> None:
        self.model = model
        self.layer_names = tuple(layer_names)
        self.inference_copy = inference_copy
        self.capture_copy = capture_copy
        self.autocast = autocast
        self._make_hook = make_hook
        self._hook_ids = hook_ids
        self._capture: nn.Module | None = None
        self._capture_key: tuple[Any, ...] | None = None
        self._capture_reason = ""
        self._capture_layout = torch.contiguous_format
        self.replica: Replica | None = None
        self._replica_key: tuple[Any, ...] | None = None
        self._replica_reason = ""  # "" before the first extra forward
        self._replica_builds = 0
        self._tails: dict[str, Any] = {}
        self.tail_reasons: dict[str, str] = {}
        """Why the fx tail is unavailable for a layer (``""`` when it is available)."""

    @property
    def _rtol(self) -> float:
        return 1e-3 if self.autocast is None else 5e-2

    # ------------------------------------------------------------------ capture copy

    def capture_module(self, images: Tensor) -> tuple[nn.Module, torch.memory_format]:
        """The module the capture forward runs on, and the input layout it was validated for.

        With ``capture_copy`` and ``inference_copy``, a BatchNorm-folded channels_last copy
        whose target layers stay hookable modules (:func:`auditor.cam.replica.build_capture_copy`),
        validated on a seeded probe; else (or when it cannot be made) the model itself.
        """
        if not (self.capture_copy and self.inference_copy):
            return self.model, torch.contiguous_format
        key = state_key(self.model)
        if self._capture_key is not None and self._capture_key != key:
            self._capture, self._capture_reason, self._capture_key = None, "", None
        if self._capture is None and not self._capture_reason:
            copy, channels_last, reason = build_capture_copy(
                self.model,
                self.layer_names,
                tuple(images.shape),
                logits_of,
                device=images.device,
                hook_ids=self._hook_ids(),
                autocast=lambda: autocast_context(self.autocast, images.device),
                rtol=self._rtol,
            )
            if copy is not None:
                for name in self.layer_names:  # private copy: its hooks live as long as it
                    copy.get_submodule(name).register_forward_hook(self._make_hook(name))
                layout = "channels_last" if channels_last else "contiguous"
                self._capture_reason = f"used: copy, {reason}, {layout}"
                self._capture_layout = (
                    torch.channels_last if channels_last else torch.contiguous_format
                )
            else:
                self._capture_reason = f"not used: {reason}"
            self._capture, self._capture_key = copy, key
        if self._capture is not None:
            return self._capture, self._capture_layout
        return self.model, torch.contiguous_format

    @property
    def capture_status(self) -> str:
        """How the capture forward runs: ``"used: copy, ..."`` or ``"not used: <why>"``."""
        return self._capture_reason

    # ------------------------------------------------------------------ replica

    def _scripted(self, device: torch.device) -> bool:
        """Whether fixed-size chunks may take the copy's TorchScript tier (CPU, no autocast)."""
        return self.inference_copy and self.autocast is None and device.type == "cpu"

    def ensure_replica(self, probe_shape: Sequence[int], device: torch.device) -> Replica | None:
        """The inference copy, built (and validated on a seeded probe) on first use.

        Rebuilt when the model's parameters or buffers changed (:func:`state_key`); a model
        that changes on every call (e.g. a buffer rewritten by its forward) is not copied at all.
        """
        if not self.inference_copy:
            return None
        key = state_key(self.model)
        if self._replica_key is not None and self._replica_key != key:
            self.replica, self._replica_reason, self._replica_key = None, "", None
            self._replica_builds += 1
            if self._replica_builds >= 3:
                self._replica_reason = (
                    "not used: the model's parameters or buffers change between calls"
                )
        if self.replica is None and not self._replica_reason:
            replica, reason = build_replica(
                self.model,
                probe_shape,
                logits_of,
                device=device,
                hook_ids=self._hook_ids(),
                autocast=lambda: autocast_context(self.autocast, device),
                rtol=self._rtol,
                script=self._scripted(device),
            )
            self.replica, self._replica_key = replica, state_key(self.model)
            self._replica_reason = reason if replica is not None else f"not used: {reason}"
        return self.replica

    @property
    def replica_status(self) -> str:
        """``"used: <what>"`` / ``"not used: <why>"`` once an extra forward ran, else ``""``."""
        if self.replica is not None:
            note = f" ({self._replica_reason})" if self._replica_reason else ""
            return f"used: {self.replica.description}{note}"
        return self._replica_reason

    def perturbed_logits(
        self, images: Tensor, fixed: bool = False, autocast: bool = True
    ) -> Tensor:
        """Logits of an extra full forward without capture, on the replica when valid.

        ``fixed``: a chunk of the one repeated shape (Score-CAM), eligible for the copy's
        TorchScript tier. Which path computes an input depends only on the model and the shape
        (the copy is validated on a seeded probe, the trace per shape too), so results do not
        depend on what ran before (``--resume``). ``autocast=False`` runs in float32 even when
        the engine has an autocast dtype.
        """
        replica = self.ensure_replica(tuple(images.shape), images.device)
        context = (
            autocast_context(self.autocast, images.device) if autocast else contextlib.nullcontext()
        )
        if replica is not None:
            with torch.inference_mode(), context:
                out = replica.fixed(images) if fixed else replica(images)
            return logits_of(out).float()
        with torch.inference_mode(), context:
            return logits_of(self.model(images)).float()

    # ------------------------------------------------------------------ fx tail

    def tail(self, name: str) -> Any:
        """The fx tail after layer ``name`` (:func:`auditor.cam.tail.build_tail`) or ``None``."""
        if name not in self._tails:
            self._tails[name], self.tail_reasons[name] = build_tail(self.model, name)
        return self._tails[name]
