"""JPEG decoding on the audit device (``[data] gpu_decode``) with the CPU path's geometry.

When the audit runs on CUDA and the inputs are JPEG files, the image can be decoded by
nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) and resized there, so the CPU only reads
bytes. The **geometry is the CPU path's**: the same source rectangle
(:func:`auditor.data.transforms.source_box`) is resampled to the input size with the same
filter as PIL's ``Image.resize(..., BILINEAR, box=...)``: a separable triangle filter whose
support is widened by the downscaling factor (antialiasing), horizontal pass first, each pass
rounded to uint8, exactly PIL's ``precompute_coeffs`` (``Resample.c``) in floating point. The
mask never leaves the CPU path (it is rasterised and resized with :func:`resize_mask` over
the same rectangle), so image and mask stay aligned pixel for pixel; what may differ is the
decoder's IDCT and chroma upsampling (nvJPEG vs libjpeg), a level or two per pixel, which the
probe measures.

``gpu_decode = "auto"`` (default) turns it on only when the audit device is CUDA, the first
input is a JPEG and a probe decode of it agrees with the CPU decode within
:data:`PROBE_MEAN_TOL` / :data:`PROBE_MAX_TOL` levels; otherwise the CPU path is used and the
reason is logged and recorded (``summary["run"]["gpu_decode"]``). ``true`` asks for it (an
error without CUDA; used even when the probe differs more, with a warning); ``false`` never.
Images that the GPU path does not handle the same way (EXIF-rotated, CMYK, multi-frame,
DICOM, non-JPEG) go through the CPU path, sample by sample.

The same functions run with ``device="cpu"`` (torchvision's libjpeg-turbo decoder), which is
how the tests check the maths on a machine without a GPU.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from auditor.data.transforms import source_box

__all__ = [
    "GPU_DECODE_VALUES",
    "PROBE_MAX_TOL",
    "PROBE_MEAN_TOL",
    "DecodeDecision",
    "ProbeResult",
    "decode_jpeg_rgb",
    "decode_resize",
    "gpu_decodable",
    "is_jpeg",
    "normalise_tensor",
    "probe",
    "resample_weights",
    "resize_tensor",
    "resolve_gpu_decode",
]

#: Accepted values of ``[data] gpu_decode``.
GPU_DECODE_VALUES: tuple[object, ...] = ("auto", True, False)
#: Probe tolerance: mean absolute difference, in uint8 levels, GPU path vs CPU path.
PROBE_MEAN_TOL = 1.5
#: Probe tolerance: largest absolute difference of one pixel channel, in uint8 levels.
PROBE_MAX_TOL = 48


def is_jpeg(data: bytes) -> bool:
    """JPEG start-of-image marker followed by a marker byte (``FF D8 FF``)."""
    return data[:3] == b"\xff\xd8\xff"


def gpu_decodable(data: bytes, max_pixels: int) -> bool:
    """True when ``data`` is a JPEG the GPU path decodes like the CPU path: a baseline or
    progressive JPEG in RGB/YCbCr or grey, one frame, no EXIF rotation, within ``max_pixels``
    (the header is read, nothing is decoded). Anything else goes through the CPU path."""
    if not is_jpeg(data):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            width, height = im.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                return False  # the CPU path names the problem
            if im.mode not in ("RGB", "L") or int(getattr(im, "n_frames", 1)) > 1:
                return False
            orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - unreadable header: the CPU path reports it
        return False
    return orientation == 1


def decode_jpeg_rgb(data: bytes, device: torch.device | str) -> Tensor:
    """Decode JPEG bytes to uint8 ``[3, H, W]`` on ``device`` (nvJPEG on CUDA)."""
    import warnings

    with warnings.catch_warnings():
        # torchvision 0.29 announces that torchcodec will take over its image decoders; the
        # nvJPEG entry point used here is still the supported one in 0.29
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        out = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    assert isinstance(out, Tensor)
    return out


def resample_weights(
    in_size: int, out_size: int, lo: float, hi: float, device: torch.device | str = "cpu"
) -> Tensor:
    """``[out_size, in_size]`` float64 weights of PIL's bilinear resampling of ``[lo, hi)``.

    PIL ``precompute_coeffs`` (``libImaging/Resample.c``): ``scale = (hi - lo) / out_size``,
    ``fs = max(scale, 1)`` (antialiasing when shrinking), support ``fs`` (triangle filter
    ``f(x) = max(0, 1 - |x|)``); output pixel ``i`` has centre ``c = lo + (i + 0.5) scale``,
    inputs ``j`` in ``[trunc(c - fs + 0.5), trunc(c + fs + 0.5))`` clipped to the image, with
    weights ``f((j - c + 0.5) / fs)`` normalised to sum 1.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"`in_size`/`out_size` must be positive, got {in_size}, {out_size}")
    scale = (hi - lo) / out_size
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"`lo`/`hi` must give a positive range, got [{lo}, {hi})")
    fs = max(scale, 1.0)
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = lo + (i + 0.5) * scale
        j0 = max(int(centre - fs + 0.5), 0)
        j1 = min(int(centre - (-fs) + 0.5), in_size)
        if j1 <= j0:
            continue
        j = np.arange(j0, j1, dtype=np.float64)
        k = np.clip(1.0 - np.abs((j - centre + 0.5) / fs), 0.0, None)
        total = k.sum()
        if total > 0:
            w[i, j0:j1] = k / total
    return torch.from_numpy(w).to(device)


def _round_u8(x: Tensor) -> Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)


def resize_tensor(image: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize uint8 ``[3, H, W]`` (any device) to ``size`` like :func:`resize_image` does on
    CPU: the same :func:`source_box`, PIL's bilinear filter, horizontal pass then vertical,
    each rounded to uint8. Returns uint8 ``[3, out_h, out_w]`` on the same device."""
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"`image` must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    _, height, width = image.shape
    left, top, right, bottom = source_box(int(width), int(height), size, mode)
    out_h, out_w = size
    x = image.to(torch.float64)
    if (left, right, out_w) != (0.0, float(width), width):
        wx = resample_weights(int(width), out_w, left, right, image.device)
        x = _round_u8(torch.einsum("chw,ow->cho", x, wx))
    if (top, bottom, out_h) != (0.0, float(height), height):
        wy = resample_weights(int(height), out_h, top, bottom, image.device)
        x = _round_u8(torch.einsum("chw,oh->cow", x, wy))
    return x.to(torch.uint8)


def decode_resize(
    data: bytes, size: tuple[int, int], mode: str, device: torch.device | str
) -> Tensor:
    """JPEG bytes -> uint8 ``[3, out_h, out_w]`` on ``device`` (decode + :func:`resize_tensor`)."""
    return resize_tensor(decode_jpeg_rgb(data, device), size, mode)


def normalise_tensor(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """:func:`auditor.data.transforms.normalise` for a uint8 ``[3, H, W]`` tensor on any device:
    ``x = (v / 255 - mean_c) / std_c`` (one grey channel from the ITU-R 601 luma when
    ``len(mean) == 1``). Same float32 arithmetic as the CPU function."""
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(
            f"`mean`/`std` must have 3 (or 1) values each, got {list(mean)!r}, {list(std)!r}"
        )
    if len(mean) == 1:
        rgb = image.to(torch.float32)
        luma = (rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114) / 1000.0
        return (luma[None] / 255.0 - float(mean[0])) / float(std[0])
    t = image.to(torch.float32)
    s = torch.tensor(list(std), dtype=torch.float64)
    m = torch.tensor(list(mean), dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(3, 1, 1).to(image.device)
    shift = (m / s).to(torch.float32).view(3, 1, 1).to(image.device)
    return t.mul_(scale).sub_(shift)


@dataclass(frozen=True)
class ProbeResult:
    """GPU-path decode of one image against the CPU path (uint8 levels)."""

    ok: bool
    mean_abs_diff: float
    max_abs_diff: float
    reason: str


def probe(
    data: bytes, size: tuple[int, int], mode: str, device: torch.device | str, max_pixels: int
) -> ProbeResult:
    """Decode ``data`` through both paths and compare the resized images."""
    from auditor.data.images import decode_image
    from auditor.data.transforms import resize_image

    try:
        cpu = resize_image(decode_image(data, max_pixels).image, size, mode).astype(np.float64)
        dev = decode_resize(data, size, mode, device).permute(1, 2, 0).cpu().numpy()
    except Exception as exc:  # noqa: BLE001 - any failure means: use the CPU path
        return ProbeResult(False, math.nan, math.nan, f"probe decode failed: {exc}")
    diff = np.abs(cpu - dev.astype(np.float64))
    mean, top = float(diff.mean()), float(diff.max())
    ok = mean <= PROBE_MEAN_TOL and top <= PROBE_MAX_TOL
    verdict = "within" if ok else "outside"
    return ProbeResult(
        ok,
        mean,
        top,
        f"probe on {torch.device(device).type}: mean |Δ| {mean:.2f}, max |Δ| {top:.0f} levels vs "
        f"the CPU decode ({verdict} {PROBE_MEAN_TOL} / {PROBE_MAX_TOL})",
    )


@dataclass(frozen=True)
class DecodeDecision:
    """Whether the audit decodes JPEGs on its device, and why (logged and recorded)."""

    enabled: bool
    setting: object
    reason: str
    probe: ProbeResult | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "setting": self.setting,
            "reason": self.reason,
        }
        if self.probe is not None and math.isfinite(self.probe.mean_abs_diff):
            out["probe_mean_abs_diff"] = round(self.probe.mean_abs_diff, 4)
            out["probe_max_abs_diff"] = self.probe.max_abs_diff
        return out


def resolve_gpu_decode(
    setting: object,
    device: torch.device,
    first_image: bytes | None,
    *,
    size: tuple[int, int],
    mode: str,
    max_pixels: int,
) -> DecodeDecision:
    """Decide ``[data] gpu_decode`` for an audit on ``device`` whose first image is
    ``first_image`` (None when it cannot be read). ``setting`` is ``"auto"``, True or False
    (checked by the config). True without CUDA raises :class:`ValueError` (the caller turns it
    into a configuration error naming the key)."""
    if (
        setting not in GPU_DECODE_VALUES
        or isinstance(setting, int)
        and not isinstance(setting, bool)
    ):
        raise ValueError(f"`gpu_decode` must be 'auto', true or false, got {setting!r}")
    if setting is False:
        return DecodeDecision(False, setting, "off ([data] gpu_decode = false)")
    if device.type != "cuda":
        if setting is True:
            raise ValueError(
                f"[data] gpu_decode = true needs a CUDA audit device, got {device.type!r}"
            )
        return DecodeDecision(False, setting, f"CPU decode: the audit device is {device.type}")
    if first_image is None or not gpu_decodable(first_image, max_pixels):
        return DecodeDecision(
            False, setting, "CPU decode: the inputs are not plain JPEG files (first image)"
        )
    result = probe(first_image, size, mode, device, max_pixels)
    if result.ok:
        return DecodeDecision(True, setting, f"GPU decode (nvJPEG); {result.reason}", result)
    if setting is True:
        return DecodeDecision(
            True, setting, f"GPU decode forced by gpu_decode = true; {result.reason}", result
        )
    return DecodeDecision(False, setting, f"CPU decode: {result.reason}", result)
