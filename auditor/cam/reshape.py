"""Reshapes of a target layer's output to the grid ``[B, K, h, w]`` the CAM engine needs, and
their parsing from a config (``[model] reshape``).

Transformers emit tokens ``[B, N, D]`` (ViT, DeiT, Mixer) or channels-last grids
``[B, h, w, D]`` (Swin); a reshape is a pure re-indexing (slice/permute/view), so the engine
applies the same callable to the activations and to their gradients. This module does not
import torch (it only calls tensor methods), so ``load_config`` checks ``[model] reshape``
without torch (issue 21); :mod:`auditor.cam.layers` re-exports every name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ChannelsLastReshape",
    "Reshape",
    "TokenReshape",
    "describe_reshape",
    "parse_reshape",
    "swin_reshape",
    "vit_reshape",
]


class Reshape:
    """Base of the reshapes the engine applies to a layer's output (and to its gradient).

    A reshape is a pure re-indexing (slice/permute/view), so applying it to the gradient gives
    the gradient of the grid. :meth:`describe` says what it does, for ``summary.json``.
    """

    kind: str = "none"

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description: ``{"kind": ..., ...}``."""
        return {"kind": self.kind}


@dataclass(frozen=True)
class TokenReshape(Reshape):
    """Tokens ``[B, P + h*w, D]`` → grid ``[B, D, h, w]``: drop ``prefix_tokens`` (class,
    distillation, register tokens), lay the rest out row-major on ``grid`` (default: square).

    Attributes:
        prefix_tokens: tokens before the patch tokens (ViT: 1, distilled DeiT: 2, ViT with 4
            register tokens: 5, Mixer and Swin: 0).
        grid: ``(h, w)`` of the patch tokens; ``None`` = square.
        source: where ``prefix_tokens``/``grid`` came from (for the report).
    """

    prefix_tokens: int = 1
    grid: tuple[int, int] | None = None
    source: str = "given"
    kind: str = "tokens"

    def __post_init__(self) -> None:
        p = self.prefix_tokens
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"`num_prefix_tokens` must be an int >= 0, got {p!r}")
        if self.grid is not None:
            g = self.grid
            if (
                not isinstance(g, tuple)
                or len(g) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in g)
            ):
                raise ValueError(f"`grid` must be (h, w) with positive ints, got {g!r}")

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(
                f"vit_reshape expects tokens [B, N, D], got shape {tuple(tokens.shape)}"
            )
        patches = tokens[:, self.prefix_tokens :, :]
        n = patches.shape[1]
        if self.grid is None:
            side = math.isqrt(n)
            if side * side != n or n == 0:
                raise ValueError(
                    f"vit_reshape: {n} patch tokens (after dropping {self.prefix_tokens} prefix "
                    "tokens) do not form a square grid; pass `grid=(h, w)` or fix "
                    "`num_prefix_tokens`"
                )
            h, w = side, side
        else:
            h, w = self.grid
            if h * w != n:
                raise ValueError(
                    f"vit_reshape: `grid` {self.grid} does not hold {n} patch tokens "
                    f"(layer output {tuple(tokens.shape)}, {self.prefix_tokens} prefix tokens)"
                )
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "tokens",
            "prefix_tokens": self.prefix_tokens,
            "grid": list(self.grid) if self.grid is not None else None,
            "source": self.source,
        }


@dataclass(frozen=True)
class ChannelsLastReshape(Reshape):
    """Channels-last grids ``[B, h, w, D]`` (Swin, timm NHWC models) → ``[B, D, h, w]``."""

    source: str = "given"
    kind: str = "channels_last"

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"swin_reshape expects [B, h, w, D], got shape {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2)

    def describe(self) -> dict[str, Any]:
        return {"kind": "channels_last", "source": self.source}


def vit_reshape(num_prefix_tokens: int = 1, grid: tuple[int, int] | None = None) -> TokenReshape:
    """Return a callable turning ViT tokens ``[B, P + h*w, D]`` into a grid ``[B, D, h, w]``.

    The first ``num_prefix_tokens`` tokens (class token, distillation/register tokens) are dropped;
    the rest are laid out row-major on a ``grid`` (default: square, ``h = w = sqrt(n)``). This is a
    pure re-indexing, as the engine requires (it applies the same callable to the gradients).
    For torchvision ``vit_b_16`` use ``layer="encoder.layers.encoder_layer_11.ln_1"``: the output
    of the *last* block reaches the logits only through the class token, so its patch tokens have
    zero gradient. ``num_prefix_tokens=0`` (Mixer, Swin tokens) is a token reshape too.
    """
    shape = (int(grid[0]), int(grid[1])) if grid is not None and len(grid) == 2 else grid
    return TokenReshape(prefix_tokens=num_prefix_tokens, grid=shape)


def swin_reshape() -> ChannelsLastReshape:
    """Return a callable turning channels-last Swin grids ``[B, h, w, D]`` into ``[B, D, h, w]``."""
    return ChannelsLastReshape()


def parse_reshape(
    value: Any, where: str = "`reshape`"
) -> Reshape | Callable[[Tensor], Tensor] | str | None:
    """Turn a config/API value into a reshape: ``"auto"`` (returned as is: infer from the layer),
    ``None``/``"none"`` (the layer outputs ``[B, K, h, w]``), ``"vit"`` (tokens, 1 prefix token,
    square grid), ``"swin"``/``"channels_last"``, a table
    ``{kind = "tokens", prefix_tokens = 1, grid = [14, 14]}`` / ``{kind = "channels_last"}``,
    or a callable (used as is).

    Raises:
        ValueError/TypeError naming ``where`` and the value.
    """
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        if value == "auto":
            return "auto"
        if value == "vit":
            return TokenReshape(1, None, "reshape = 'vit'")
        if value in ("swin", "channels_last"):
            return ChannelsLastReshape(f"reshape = {value!r}")
        raise ValueError(
            f"{where} must be 'auto', 'none', 'vit', 'swin', 'channels_last' or a table "
            f"{{kind = 'tokens', prefix_tokens = N, grid = [h, w]}}, got {value!r}"
        )
    if isinstance(value, Reshape) or (callable(value) and not isinstance(value, Mapping)):
        return value
    if isinstance(value, Mapping):
        allowed = {"kind", "prefix_tokens", "grid"}
        extra = sorted(set(value) - allowed)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")
        kind = value.get("kind")
        if kind == "tokens":
            prefix = value.get("prefix_tokens", 1)
            if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
                raise ValueError(f"{where}.prefix_tokens must be an int >= 0, got {prefix!r}")
            grid = value.get("grid")
            if grid is not None:
                if (
                    not isinstance(grid, list | tuple)
                    or len(grid) != 2
                    or not all(
                        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid
                    )
                ):
                    raise ValueError(
                        f"{where}.grid must be [h, w] with positive ints, got {grid!r}"
                    )
                grid = (int(grid[0]), int(grid[1]))
            return TokenReshape(prefix, grid, "config")
        if kind == "channels_last":
            if set(value) - {"kind"}:
                raise ValueError(
                    f"{where}: kind 'channels_last' takes no other key, got {dict(value)!r}"
                )
            return ChannelsLastReshape("config")
        if kind == "none":
            return None
        raise ValueError(f"{where}.kind must be 'tokens', 'channels_last' or 'none', got {kind!r}")
    raise TypeError(f"{where} must be a string, a table or a callable, got {type(value).__name__}")


def describe_reshape(reshape: Any) -> dict[str, Any]:
    """``summary.json``'s description of a reshape (``{"kind": "none"}`` for none)."""
    if reshape is None:
        return {"kind": "none"}
    if isinstance(reshape, Reshape):
        return reshape.describe()
    return {"kind": "custom", "callable": getattr(reshape, "__qualname__", type(reshape).__name__)}
