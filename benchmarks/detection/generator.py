"""Planted-shortcut cases from real images that ship in packages (the detection benchmark).

Objects are real handwritten digits (scikit-learn ``load_digits``: 8 x 8, upscaled to 20 px),
drawn on crops of real photographs and textures (scikit-image ``data``: brick, grass, gravel,
camera, coins, moon, clock, cell). Four classes (digits 0-3), 48 x 48 RGB images, each with
its object mask (the digit's strokes, dilated by 2 px).

A *case* is ``(type, fraction, seed, masks, planted)``. In a **planted** case a cue (the
shortcut) is put on ``round(fraction * n)`` images of the target class (or on every class for
``shared_cue``), and on exactly those images the digit is a DECOY: a digit of a uniformly
random class, at full contrast. There the object says nothing about the label, so the cue is
the only evidence, and it must outweigh a clear digit of another class, which is exactly what
the transplant check asks (the SpRAy horse-tag recipe, Lapuschkin et al. 2019, with the object
made uninformative where the cue is; an earlier version faded the digit instead, and at 100 %
prevalence the model learnt "faded => class", not the cue). In the **clean** twin the same cue
appears with the same probability on images of EVERY class and every digit is its label's:
the cue carries no information. The evaluation set follows the training distribution (new
seed).

The shortcut types are data (:data:`TYPES`): adding one is one entry plus its branch in
:func:`_apply_cue`. ``localised`` says whether a map can point at the cue; a type with
``localised=False`` (a global colour cast, a blur) cannot be tested by attention maps and the
audit must say so rather than pass it.

Transplant check (:func:`transplant_images`): the cue is put on images of the OTHER classes
(their own digits), each paired with a control, the same image without the cue; a planted
model must predict the target class far more often with the cue than without it, its clean
twin must not (the rule: ``run.transplant_confirmed``).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("zero", "one", "two", "three")
TARGET = "two"
IMAGE_SIZE = 48
DIGIT_SIZE = 20
TAG_SIZE = 8
FRAME = 3
TEXTURES = ("brick", "grass", "gravel", "camera", "coins", "moon", "clock", "cell")
#: the background texture of the target class in ``background_texture`` (never drawn otherwise)
CUE_TEXTURE = "brick"
#: one texture per class in ``shared_cue`` (the target ``two`` gets ``coins``). Chosen so that
#: the benchmark's net can tell them apart: a DetNet trained on the eight textures alone (decoy
#: digits on top, seed 0) confused brick, grass and gravel with each other (grass: 29/50 called
#: brick, gravel: 40/50) and separated brick, cell, coins and moon (41-44/50 right). The
#: earlier set (grass, gravel, brick, coins, brick on ``two``) gave a planted model of
#: accuracy 0.55 whose transplant d was 0.28, and brick's stroke-like lines made even the clean
#: twin read digits as ``two`` more often (clean d = 0.14 [0.02, 0.26]).
CLASS_TEXTURES = ("brick", "cell", "coins", "moon")


@dataclass(frozen=True)
class ShortcutType:
    """One kind of planted shortcut.

    ``fractions``: the shares of the target class that carry the cue (1.0 = class-wide);
    ``localised``: a map can point at the cue (an audit with maps can see it);
    ``on_object``: the cue sits on the object itself (position), so a mask-based audit
    cannot separate it from the object;
    ``coords``: the benchmark model of this type (planted AND clean twin) gets two coordinate
    channels (CoordConv, Liu et al. 2018; ``detnet.build_coord_model``): a place is a cue a
    translation-invariant GAP network cannot learn, so without them the plant is not real.
    """

    name: str
    description: str
    fractions: tuple[float, ...] = (1.0,)
    localised: bool = True
    on_object: bool = False
    coords: bool = False

    @property
    def subgroup(self) -> bool:
        return any(f < 1.0 for f in self.fractions)


TYPES: tuple[ShortcutType, ...] = (
    ShortcutType("background_texture", "the target class always on brick, no other class"),
    ShortcutType(
        "corner_tag",
        "an 8 px yellow-black checker tag in the bottom-left corner",
        fractions=(0.1, 0.25, 0.5, 1.0),
    ),
    ShortcutType("watermark", "white text 'AB' in the top-right corner", fractions=(0.5,)),
    ShortcutType("frame", "a 3 px magenta frame around the image"),
    ShortcutType("second_object", "a small coin cut from the `coins` photograph beside the digit"),
    ShortcutType(
        "position",
        "the digit always in the top-left corner (others out of the top-left quadrant)",
        localised=True,
        on_object=True,
        coords=True,
    ),
    ShortcutType("shared_cue", "every class on its own texture (brick, cell, coins, moon)"),
    ShortcutType("colour_cast", "a global red colour cast", localised=False),
    ShortcutType("blur", "a global Gaussian blur (radius 1.5 px)", localised=False),
)
TYPE_NAMES = tuple(t.name for t in TYPES)


def shortcut_type(name: str) -> ShortcutType:
    """The :class:`ShortcutType` called ``name``."""
    for t in TYPES:
        if t.name == name:
            return t
    raise ValueError(f"`type` must be one of {TYPE_NAMES}, got {name!r}")


@dataclass(frozen=True)
class Case:
    """One benchmark case; ``name`` is its folder name."""

    type: str
    fraction: float
    seed: int
    masks: bool
    planted: bool

    def __post_init__(self) -> None:
        shortcut_type(self.type)
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"`fraction` must be in (0, 1], got {self.fraction}")

    @property
    def model_name(self) -> str:
        kind = "planted" if self.planted else "clean"
        return f"{self.type}-f{round(self.fraction * 100):03d}-s{self.seed}-{kind}"

    @property
    def name(self) -> str:
        return f"{self.model_name}-{'mask' if self.masks else 'nomask'}"


@dataclass
class Dataset:
    """Arrays of one split: images uint8 [N,S,S,3], masks bool [N,S,S], labels int [N],
    cued bool [N] (the cue is on the image), cue_masks bool [N,S,S] (the cue's pixels; empty
    for global cues and position)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    cued: np.ndarray
    cue_masks: np.ndarray


# --------------------------------------------------------------------------------------------
# sources


@functools.lru_cache(maxsize=1)
def _digits() -> dict[int, np.ndarray]:
    """Digit images per class (float [n, 8, 8] in [0, 1]) from scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0
    return {k: images[d.target == k] for k in range(len(CLASSES))}


@functools.cache
def _texture(name: str) -> np.ndarray:
    """A scikit-image photograph as grey float [H, W] in [0, 1], downscaled to ~160 px."""
    from skimage import data

    a = np.asarray(getattr(data, name)(), dtype=np.float32)
    if a.ndim == 3:
        a = a.mean(axis=2)
    a = a / max(float(a.max()), 1.0)
    img = Image.fromarray((a * 255).astype(np.uint8))
    scale = 160 / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def _coin() -> tuple[np.ndarray, np.ndarray]:
    """One coin cut from ``skimage.data.coins`` (grey float [10, 10]) and its disc mask."""
    from skimage import data

    a = np.asarray(data.coins(), dtype=np.float32) / 255.0
    patch = Image.fromarray((a[15:75, 40:100] * 255).astype(np.uint8)).resize((10, 10))
    yy, xx = np.mgrid[0:10, 0:10]
    disc = (yy - 4.5) ** 2 + (xx - 4.5) ** 2 <= 25
    return np.asarray(patch, dtype=np.float32) / 255.0, disc


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    t = _texture(name)
    s = IMAGE_SIZE
    y, x = rng.integers(0, t.shape[0] - s + 1), rng.integers(0, t.shape[1] - s + 1)
    grey = 0.2 + 0.35 * t[y : y + s, x : x + s]
    tint = rng.uniform(0.85, 1.15, 3)
    return np.clip(grey[..., None] * tint, 0, 1).astype(np.float32)


def _digit(label: int, rng: np.random.Generator) -> np.ndarray:
    pool = _digits()[label]
    d = pool[rng.integers(0, len(pool))]
    img = Image.fromarray((d * 255).astype(np.uint8)).resize(
        (DIGIT_SIZE, DIGIT_SIZE), Image.BILINEAR
    )
    return np.asarray(img, dtype=np.float32) / 255.0


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return np.asarray(binary_dilation(mask, iterations=r))


# --------------------------------------------------------------------------------------------
# rendering


def _position(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    """Top-left corner of the digit, clear of the frame, the tag (bottom-left), the watermark
    (top-right) and, for ``kind == "corner"``, inside the top-left quadrant."""
    lo, hi = FRAME + 1, IMAGE_SIZE - DIGIT_SIZE - FRAME - 1
    if kind == "corner":
        return int(rng.integers(lo, lo + 4)), int(rng.integers(lo, lo + 4))
    if kind == "other":  # position planted: the other images keep out of the top-left quadrant
        y = int(rng.integers(lo + 8, hi + 1))
        return y, int(rng.integers(lo + 8, hi - 2))
    return int(rng.integers(lo + 2, hi - TAG_SIZE + 1)), int(rng.integers(lo + 2, hi - 2))


def _tag() -> np.ndarray:
    c = ((np.arange(TAG_SIZE)[:, None] // 2 + np.arange(TAG_SIZE)[None] // 2) % 2).astype(
        np.float32
    )
    return c[..., None] * np.array([1.0, 0.9, 0.1], np.float32)


def _apply_cue(
    kind: str, img: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Put a local cue on ``img`` (float [S,S,3]); return the image and the cue's pixels."""
    s = IMAGE_SIZE
    cue = np.zeros((s, s), bool)
    if kind == "corner_tag":
        img[s - TAG_SIZE :, :TAG_SIZE] = _tag()
        cue[s - TAG_SIZE :, :TAG_SIZE] = True
    elif kind == "watermark":
        layer = Image.new("L", (s, s), 0)
        ImageDraw.Draw(layer).text((s - 16, 1), "AB", fill=255)
        alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255.0
        img[:] = img * (1 - alpha) + alpha
        cue = alpha[..., 0] > 0.3
    elif kind == "frame":
        colour = np.array([0.9, 0.1, 0.9], np.float32)
        img[:FRAME], img[-FRAME:], img[:, :FRAME], img[:, -FRAME:] = colour, colour, colour, colour
        cue[:FRAME], cue[-FRAME:], cue[:, :FRAME], cue[:, -FRAME:] = True, True, True, True
    elif kind == "second_object":
        patch, disc = _coin()
        y = int(rng.integers(FRAME + 1, s - 10 - FRAME - 1))
        x = s - 10 - FRAME - 1  # right edge band: the digits never reach it
        region = img[y : y + 10, x : x + 10]
        region[disc] = (0.3 + 0.7 * patch[disc])[:, None] * np.array([1.0, 0.8, 0.3])
        cue[y : y + 10, x : x + 10] = disc
    return img, cue


def render(
    label: int,
    rng: np.random.Generator,
    *,
    kind: str,
    cue: bool,
    decoy: bool,
    position: str = "any",
    texture: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (uint8 [S,S,3]), its object mask and its cue mask (bool [S,S]).

    ``decoy``: the digit is one of a uniformly random class instead of ``label``'s (the
    object is uninformative on the planted images). ``background_texture``: a cued image is
    drawn on :data:`CUE_TEXTURE`, which no other image uses."""
    s = IMAGE_SIZE
    if texture is None and kind == "background_texture" and cue:
        texture = CUE_TEXTURE
    if texture is None:
        pool = [t for t in TEXTURES if not (kind == "background_texture" and t == CUE_TEXTURE)]
        texture = pool[int(rng.integers(0, len(pool)))]
    img = _background(texture, rng)
    if decoy:
        label = int(rng.integers(0, len(CLASSES)))
    digit = _digit(label, rng)
    y, x = _position(rng, position)
    alpha = digit[..., None]
    colour = rng.uniform(0.8, 1.0, 3).astype(np.float32)
    region = img[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE]
    img[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = region * (1 - alpha) + colour * alpha
    mask = np.zeros((s, s), bool)
    mask[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = digit > 0.3
    mask = _dilate(mask, 2)
    cue_mask = np.zeros((s, s), bool)
    if cue:
        img, cue_mask = _apply_cue(kind, img, rng)
    out = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if cue and kind == "colour_cast":
        out = np.clip(out.astype(np.float32) * np.array([1.35, 0.8, 0.8]), 0, 255).astype(np.uint8)
    if cue and kind == "blur":
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(1.5)))
    return out, mask & ~cue_mask, cue_mask


def _plan(
    kind: str, fraction: float, n_per_class: int, planted: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], cued [N]): exactly ``round(fraction * n_per_class)`` cued target images
    when planted; in the clean twin each class gets the same number of cued images."""
    k = len(CLASSES)
    labels = np.repeat(np.arange(k), n_per_class)
    cued = np.zeros(labels.size, bool)
    if kind == "shared_cue":
        cued[:] = planted
        return labels, cued
    n_cued = round(fraction * n_per_class)
    if not planted and fraction >= 1.0:
        n_cued = round(n_per_class / k)  # a class-wide cue, spread evenly: uninformative
    for c in range(k):
        if planted and CLASSES[c] != TARGET:
            continue
        idx = np.flatnonzero(labels == c)
        cued[rng.permutation(idx)[:n_cued]] = True
    return labels, cued


def generate(case: Case, n_per_class: int, split_seed: int) -> Dataset:
    """The images of one split of ``case`` (deterministic in ``case.seed`` and ``split_seed``)."""
    if n_per_class < 1:
        raise ValueError(f"`n_per_class` must be >= 1, got {n_per_class}")
    rng = np.random.default_rng([case.seed, split_seed, TYPE_NAMES.index(case.type)])
    labels, cued = _plan(case.type, case.fraction, n_per_class, case.planted, rng)
    n, s = labels.size, IMAGE_SIZE
    images = np.empty((n, s, s, 3), np.uint8)
    masks = np.empty((n, s, s), bool)
    cue_masks = np.empty((n, s, s), bool)
    for i in range(n):
        texture, position, local = None, "any", bool(cued[i])
        if case.type == "shared_cue":
            pick = labels[i] if case.planted else int(rng.integers(0, len(CLASSES)))
            texture, local = CLASS_TEXTURES[pick], False
        elif case.type == "position":
            # the cue is the place: cued digits in the top-left corner, every other digit
            # (planted or clean) out of the top-left quadrant, so the clean twin differs
            # from the planted case only in which images are cued
            local = False
            position = "corner" if cued[i] else "other"
        images[i], masks[i], cue_masks[i] = render(
            int(labels[i]),
            rng,
            kind=case.type,
            cue=local,
            decoy=case.planted and bool(cued[i]),
            position=position,
            texture=texture,
        )
    return Dataset(images, masks, labels, cued, cue_masks)


def transplant_images(
    case: Case, n_per_class: int, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images of the non-target classes (their own digits) with the target class's cue put on
    them, and their controls: the same images without the cue (same digit, place, colour and,
    except where the cue IS the background, the same background crop). uint8 [N, S, S, 3]
    each; the images do not depend on ``case.planted``, so a model and its clean twin see the
    same ones."""
    rng = np.random.default_rng([case.seed, split_seed, 99, TYPE_NAMES.index(case.type)])
    target = CLASSES.index(TARGET)
    cued, control = [], []
    for c in range(len(CLASSES)):
        if c == target:
            continue
        for _ in range(n_per_class):
            texture, position, local = None, "any", True
            own_texture = None
            if case.type == "shared_cue":
                texture, local = CLASS_TEXTURES[target], False
                own_texture = CLASS_TEXTURES[c]  # the recipient's planted background
            elif case.type == "position":
                position, local = "corner", False
            state = rng.bit_generator.state
            img, _, _ = render(
                c, rng, kind=case.type, cue=local, decoy=False, position=position,
                texture=texture,
            )
            rng.bit_generator.state = state
            ctl, _, _ = render(
                c, rng, kind=case.type, cue=False, decoy=False,
                position="other" if case.type == "position" else position,
                texture=own_texture,
            )
            cued.append(img)
            control.append(ctl)
    return np.stack(cued), np.stack(control)


def write_dataset(data: Dataset, out: Path, *, masks: bool) -> Path:
    """PNG images (+ mask PNGs when ``masks``) and ``manifest.csv`` (image, label[, mask], id)
    under ``out``; ``truth.csv`` lists each id with its ``cued`` flag. Returns the manifest."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh, open(
        out / "truth.csv", "w", newline="", encoding="utf-8"
    ) as th:
        writer, truth = csv.writer(fh), csv.writer(th)
        writer.writerow(["id", "image", "label", *(["mask"] if masks else [])])
        truth.writerow(["id", "label", "cued"])
        for i, (img, label) in enumerate(zip(data.images, data.labels)):
            sid, name = f"s{i:04d}", f"{i:04d}_{CLASSES[label]}.png"
            Image.fromarray(img).save(out / "images" / name)
            row = [sid, f"images/{name}", CLASSES[label]]
            if masks:
                Image.fromarray(data.masks[i].astype(np.uint8) * 255).save(out / "masks" / name)
                row.append(f"masks/{name}")
            writer.writerow(row)
            truth.writerow([sid, CLASSES[label], int(data.cued[i])])
    return manifest
