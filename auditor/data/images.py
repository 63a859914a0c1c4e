"""Reading image and mask files defensively.

Every function here raises :class:`BadSample` with a human-readable reason for bad data
(missing, empty, truncated, corrupt, not an image, decompression bomb, unsupported mode); the
dataset turns it into :class:`auditor.errors.SampleSkipped` with the sample id. Nothing here
changes PIL's global settings.

Rules (documented in ``docs/data-formats.md``):

* Only a fixed set of decoders is enabled (:data:`IMAGE_FORMATS`), which narrows the attack
  surface of exotic formats.
* The pixel count is checked from the header BEFORE decoding (``max_image_pixels``); PIL's own
  ``DecompressionBombWarning``/``DecompressionBombError`` are turned into skips as well.
* Images get ``ImageOps.exif_transpose`` (the displayed orientation); masks are used exactly
  as stored, and are expected in the displayed orientation of their image.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_FORMATS",
    "BadSample",
    "DecodedImage",
    "binary_from_values",
    "decode_dicom",
    "decode_image",
    "decode_mask_values",
    "is_dicom",
    "read_bytes",
    "scale_high_bit_depth",
    "sha256_bytes",
    "trimap_to_mask",
]

#: PIL decoders allowed for images and masks.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    TypeError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    MemoryError,
)


class BadSample(Exception):  # noqa: N818 - internal signal carrying a skip reason
    """A sample that cannot be used; ``reason`` is shown in the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, what: str, max_bytes: int) -> bytes:
    """Read a whole file after checking it exists, is a regular file, non-empty, not too big.

    ``what`` (``"image"``, ``"mask"``, ...) prefixes the reasons.
    """
    name = path.name
    try:
        if not path.exists():
            raise BadSample(f"{what} file not found: {name}")
        if not path.is_file():
            raise BadSample(f"{what} path is not a regular file: {name}")
        size = path.stat().st_size
        if size == 0:
            raise BadSample(f"{what} file is empty (0 bytes): {name}")
        if size > max_bytes:
            raise BadSample(
                f"{what} file too large: {size} bytes > max_file_bytes={max_bytes}: {name}"
            )
        return path.read_bytes()
    except OSError as exc:
        raise BadSample(f"cannot read {what} file {name}: {exc.strerror or exc}") from exc


def _open_checked(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Open from bytes, check the header's pixel count, then decode fully."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        if pil_limit is None or max_pixels <= pil_limit:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        else:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = im.size
            if width <= 0 or height <= 0:
                raise BadSample(f"{what} has an empty size {width}x{height}")
            if width * height > max_pixels:
                raise BadSample(
                    f"decompression bomb guard: {what} is {width}x{height} = "
                    f"{width * height} pixels > max_image_pixels={max_pixels} (not decoded)"
                )
            # Importing WeasyPrint sets PIL's process-wide LOAD_TRUNCATED_IMAGES = True, which
            # would let a truncated file decode into grey padding: refuse it here regardless.
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            im.load()
        except BadSample:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadSample(f"decompression bomb guard: {what} rejected by PIL: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise BadSample(
                f"{what} is not a recognised image (allowed: {', '.join(IMAGE_FORMATS)})"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise BadSample(f"cannot decode {what} (corrupt or truncated): {exc}") from exc
    return im


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image in its displayed orientation, with provenance."""

    image: Image.Image
    sha256: str
    stored_size: tuple[int, int]  # (width, height) before EXIF transposition
    notes: tuple[str, ...]
    #: EXIF orientation tag (1 = as stored; 2-8 = flipped and/or rotated for display)
    orientation: int = 1


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 file: a 128-byte preamble then ``b"DICM"``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of ``[lo, hi]`` to ``[0, 255]``, clipped; a constant range gives 0."""
    x = values.astype(np.float64)
    span = hi - lo
    out = np.zeros_like(x) if span <= 0 else np.clip((x - lo) / span, 0.0, 1.0) * 255.0
    return np.rint(out).astype(np.uint8)


def scale_high_bit_depth(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """16-bit (or 32-bit integer) grey → uint8 by the data's true range.

    Images often hold 10/12/14-bit data in a 16-bit container (a 12-bit X-ray stored as
    16-bit PNG peaks at 4095: dividing by 257 would make it nearly black). The bit depth used
    is the smallest of 8, 10, 12, 14, 16 that holds the image's maximum, so a device's images
    keep one common scale: ``v8 = round(255 * v / (2**bits - 1))``. Negative or wider values
    (32-bit TIFF) are mapped by their min..max. Returns ``(uint8 array, note)``.
    """
    a = np.asarray(arr)
    vmin, vmax = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if vmin >= 0 and vmax <= 65535:
        bits = next(b for b in (8, 10, 12, 14, 16) if vmax <= 2**b - 1)
        return _to_uint8(a, 0.0, float(2**bits - 1)), f"{bits}-bit grey data scaled to 8 bits"
    return _to_uint8(a, float(vmin), float(vmax)), (
        f"grey data in [{vmin}, {vmax}] scaled to 8 bits by its range"
    )


def decode_dicom(data: bytes, max_pixels: int) -> tuple[Image.Image, tuple[str, ...]]:
    """A DICOM image (``.dcm``, via pydicom) → 8-bit grey (or RGB) for the audit.

    Display pipeline of DICOM PS3.3 / PS3.4: stored values → Modality LUT (Rescale Slope and
    Intercept: ``u = slope * v + intercept``) → VOI: the linear window of C.11.2.1.2
    (``y = ((u - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1], first Window Center/Width),
    else a VOI LUT Sequence (pydicom ``apply_voi_lut``, then its output range), else the
    image's min..max (noted) → ``MONOCHROME1`` inverted (its 0 is white) → 8 bits. Multi-frame
    files use the first frame (noted). Requires ``pip install cam-auditor[dicom]``.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:
        raise BadSample(
            f"DICOM image needs pydicom, which is not installed: pip install "
            f"'cam-auditor[dicom]' ({exc})"
        ) from exc
    notes: list[str] = []
    try:
        with warnings.catch_warnings():  # malformed files warn before they fail: the reason
            warnings.simplefilter("ignore")  # goes to the skip list instead
            ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > max_pixels:
            raise BadSample(f"DICOM image too large: {cols}x{rows} > max_image_pixels")
        arr = ds.pixel_array
    except BadSample:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadSample(f"unreadable DICOM image: {first}") from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
        notes.append(f"multi-frame DICOM ({frames} frames): first frame used")
    if samples == 3:
        if photometric != "RGB" or arr.dtype != np.uint8:
            raise BadSample(f"unsupported colour DICOM ({photometric}, {arr.dtype})")
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB"), tuple(notes)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadSample(f"unsupported DICOM photometric interpretation {photometric!r}")
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if w < 1:
            raise BadSample(f"DICOM Window Width must be >= 1, got {w}")
        y = np.clip((values - (c - 0.5)) / max(w - 1, 1e-12) + 0.5, 0.0, 1.0)
        out = np.rint(y * 255.0).astype(np.uint8)
        notes.append(f"DICOM window center {c:g} width {w:g} applied")
    elif "VOILUTSequence" in ds:
        lut = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
        desc = ds.VOILUTSequence[0].LUTDescriptor
        bits = int(desc[2]) if len(desc) > 2 else 16
        out = _to_uint8(lut, 0.0, float(2**bits - 1))
        notes.append("DICOM VOI LUT applied")
    else:
        out = _to_uint8(values, float(values.min()), float(values.max()))
        notes.append("DICOM without a window: scaled by the image's min..max")
    if photometric == "MONOCHROME1":
        out = 255 - out
        notes.append("MONOCHROME1 inverted (0 is white)")
    return Image.fromarray(out, mode="L").convert("RGB"), tuple(notes)


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode image bytes to RGB in the displayed (EXIF-transposed) orientation.

    Modes: ``RGB`` kept; ``L``/``1``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` converted with
    PIL; alpha channels (``RGBA``/``LA``/``PA``/``P`` with transparency) are dropped with a
    note; 16-bit (and 32-bit integer) grey is scaled to 8 bits by its true range
    (:func:`scale_high_bit_depth`) with a note; DICOM files go through :func:`decode_dicom`;
    other modes are skipped.
    """
    if is_dicom(data):
        image, dicom_notes = decode_dicom(data, max_pixels)
        return DecodedImage(image, sha256_bytes(data), image.size, dicom_notes)
    im = _open_checked(data, "image", max_pixels)
    notes: list[str] = []
    n_frames = int(getattr(im, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"multi-frame image ({n_frames} frames): first frame used")
    stored_size = im.size
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except _DECODE_ERRORS:
        orientation = 1
    if orientation not in range(1, 9):
        orientation = 1
    try:
        im = ImageOps.exif_transpose(im)
    except _DECODE_ERRORS as exc:
        notes.append(f"EXIF orientation unreadable ({exc}): image used as stored")
    if orientation != 1:
        notes.append(
            f"EXIF orientation {orientation} applied (image turned to its displayed orientation)"
        )
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        scaled, note = scale_high_bit_depth(np.asarray(im))
        im = Image.fromarray(scaled, mode="L")
        notes.append(note)
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        notes.append(f"alpha channel of {mode} image dropped")
    if mode not in ("RGB", "RGBA", "L", "LA", "1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        raise BadSample(f"unsupported image mode {mode!r}")
    if mode != "RGB":
        try:
            im = im.convert("RGBA").convert("RGB") if mode in ("P", "PA") else im.convert("RGB")
        except _DECODE_ERRORS as exc:
            raise BadSample(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc
    return DecodedImage(im, sha256_bytes(data), stored_size, tuple(notes), orientation)


def decode_mask_values(data: bytes, max_pixels: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode a mask file to a 2-D integer array of its stored values.

    Palette (``P``) images give their palette INDICES (VOC class / instance ids), not colours.
    Multi-channel masks (RGB/RGBA) give the per-pixel maximum over the colour channels with a
    note. Masks are never EXIF-transposed: they are expected in the displayed orientation.
    """
    im = _open_checked(data, "mask", max_pixels)
    notes: list[str] = []
    mode = im.mode
    try:
        if mode in ("P", "L"):
            values = np.asarray(im)  # uint8: no widening copy
        elif mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
            values = np.asarray(im).astype(np.int64)
        elif mode == "1":
            values = np.asarray(im).astype(np.uint8)
        elif mode in ("LA", "PA"):
            values = np.asarray(im.getchannel(0)).astype(np.int64)
            notes.append(f"{mode} mask: alpha ignored")
        elif mode in ("RGB", "RGBA", "CMYK"):
            values = np.asarray(im.convert("RGB")).astype(np.int64).max(axis=2)
            notes.append(f"{mode} mask: a pixel is object where any colour channel is nonzero")
        elif mode == "F":
            arr = np.asarray(im)
            if not np.isfinite(arr).all():
                raise BadSample("mask has NaN or infinite values")
            values = (arr != 0).astype(np.int64)
        else:
            raise BadSample(f"unsupported mask mode {mode!r}")
    except BadSample:
        raise
    except _DECODE_ERRORS as exc:
        raise BadSample(f"cannot decode mask: {exc}") from exc
    if values.ndim != 2:
        raise BadSample(f"mask must be 2-D, got shape {values.shape}")
    return values, tuple(notes)


def binary_from_values(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Binary mask rule: nonzero = object.

    Expected value sets are ``{0, 1}`` and ``{0, 255}``; anything else (e.g. ``0/128/255``
    from anti-aliased export, or VOC-style ``255`` void) still maps nonzero to object, with a
    note listing the values found.
    """
    if values.dtype == np.bool_:
        uniq = np.flatnonzero(np.bincount(values.ravel().view(np.uint8), minlength=2))
    elif values.dtype == np.uint8 or (
        values.dtype.kind in "iu" and values.size and 0 <= values.min() and values.max() < 65536
    ):
        # a histogram is ~10x faster than np.unique's sort/hash on 8/16-bit masks
        uniq = np.flatnonzero(np.bincount(values.ravel()))
    else:
        uniq = np.unique(values)
    notes: list[str] = []
    found = set(uniq.tolist())
    if not (found <= {0, 1} or found <= {0, 255}):
        shown = ", ".join(str(v) for v in uniq[:8].tolist()) + (", ..." if len(uniq) > 8 else "")
        notes.append(f"mask values {{{shown}}} (expected 0/1 or 0/255): nonzero = object")
    mask = values != 0
    if not mask.any():
        notes.append("mask is empty (no object pixel)")
    return mask, tuple(notes)


def trimap_to_mask(values: np.ndarray, boundary: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Oxford-IIIT Pet trimap (Parkhi et al., 2012, "Cats and Dogs"): 1 = foreground,
    2 = background, 3 = boundary / not classified.

    ``boundary = "foreground"`` gives ``mask = (v == 1) | (v == 3)``; ``"background"`` gives
    ``mask = (v == 1)``. Other values are background, with a note.
    """
    if boundary not in ("foreground", "background"):
        raise ValueError(f"`boundary` must be 'foreground' or 'background', got {boundary!r}")
    notes: list[str] = []
    uniq = set(np.unique(values).tolist())
    odd = sorted(uniq - {1, 2, 3})
    if odd:
        notes.append(f"trimap values {odd} outside 1/2/3 treated as background")
    mask = values == 1
    if boundary == "foreground":
        mask = mask | (values == 3)
    if not mask.any():
        notes.append("mask is empty (no object pixel)")
    return mask, tuple(notes)
