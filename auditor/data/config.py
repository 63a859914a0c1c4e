"""The ``[data]`` section of the audit config: parsing and validation.

Every error is a :class:`~auditor.errors.ConfigError` whose message names the config file and
the key, e.g. ``"config.toml: unknown key [data] maniefst (did you mean 'manifest'?)"``.
The keys are documented in ``docs/data-formats.md``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import ConfigError

__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DataConfig",
    "parse_data_section",
    "read_classes_file",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Formats accepted in a config file ("python" is only produced by ``dataset_from_torch``).
FORMATS: tuple[str, ...] = ("manifest", "jsonl", "imagefolder", "coco", "voc", "trimap")

_COMMON_KEYS = frozenset(
    {
        "format",
        "root",
        "groups",
        "groups_file",
        "bins",
        "classes",
        "classes_file",
        "input_size",
        "mean",
        "std",
        "channels",
        "resize",
        "max_image_pixels",
        "max_file_bytes",
        "mask_resize",
        "gpu_decode",
    }
)
#: Keys that only make sense with some formats (a key given with another format is an error).
_FORMAT_KEYS: dict[str, frozenset[str]] = {
    "manifest": frozenset({"manifest", "mask_encoding", "trimap_boundary"}),
    "jsonl": frozenset({"manifest", "mask_encoding", "trimap_boundary"}),
    "imagefolder": frozenset({"masks_dir", "mask_encoding", "trimap_boundary"}),
    "coco": frozenset({"annotations", "label_rule", "mask_instances"}),
    "voc": frozenset({"split", "voc_mask", "voc_void", "voc_seg_classes", "mask_instances"}),
    "trimap": frozenset(
        {"images_dir", "trimaps_dir", "list_file", "trimap_label", "trimap_boundary"}
    ),
}
_ALL_KEYS = _COMMON_KEYS.union(*_FORMAT_KEYS.values())

_CHOICES: dict[str, tuple[str, ...]] = {
    "resize": ("direct", "shorter_center_crop"),
    "mask_encoding": ("binary", "trimap"),
    "trimap_boundary": ("foreground", "background"),
    "label_rule": ("largest", "first"),
    "mask_instances": ("label", "all"),
    "voc_mask": ("auto", "class", "object", "boxes"),
    "voc_void": ("foreground", "background"),
    "trimap_label": ("breed", "species"),
}


@dataclass(frozen=True)
class DataConfig:
    """Validated, frozen ``[data]`` configuration (see ``docs/data-formats.md``).

    All paths are absolute. ``classes`` is ``None`` when the class list must be derived from
    the data (sorted unique labels, ImageFolder folder names, COCO category names...).
    """

    format: str
    root: Path
    manifest: Path | None = None
    annotations: Path | None = None
    masks_dir: Path | None = None
    classes: tuple[str, ...] | None = None
    classes_file: Path | None = None
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    resize: str = "direct"
    max_image_pixels: int = 40_000_000
    max_file_bytes: int = 256 * 1024 * 1024
    mask_resize: bool = False
    gpu_decode: str | bool = "auto"
    mask_encoding: str = "binary"
    trimap_boundary: str = "foreground"
    label_rule: str = "largest"
    mask_instances: str = "label"
    split: str | None = None
    voc_mask: str = "auto"
    voc_void: str = "foreground"
    voc_seg_classes: tuple[str, ...] | None = None
    images_dir: str = "images"
    trimaps_dir: str = "annotations/trimaps"
    list_file: Path | None = None
    trimap_label: str = "breed"
    groups: tuple[str, ...] = ()
    groups_file: Path | None = None
    bins: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: str = field(default="<python>", compare=False)


def _err(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: [data] {key}: {message}")


def _path(value: Any, key: str, base_dir: Path, source: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _err(source, key, f"must be a non-empty path string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return path.resolve()


def _existing_file(value: Any, key: str, base_dir: Path, source: str) -> Path:
    path = _path(value, key, base_dir, source)
    if not path.is_file():
        raise _err(source, key, f"file not found: {path}")
    return path


def _existing_dir(value: Any, key: str, base_dir: Path, source: str) -> Path:
    path = _path(value, key, base_dir, source)
    if not path.is_dir():
        raise _err(source, key, f"directory not found: {path}")
    return path


def _rel_dir(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value:
        raise _err(source, key, f"must be a non-empty relative path string, got {value!r}")
    return value


def _str_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _err(source, key, f"must be a non-empty list of strings, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item:
            raise _err(source, key, f"entries must be non-empty strings, got {item!r}")
    if len(set(value)) != len(value):
        dupes = sorted({v for v in value if value.count(v) > 1})
        raise _err(source, key, f"duplicate entries {dupes!r}")
    return tuple(value)


def _triple(value: Any, key: str, source: str, *, positive: bool, n: int = 3) -> tuple[float, ...]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        extra = f" (one per channel: [data] channels = {n})" if n != 3 else ""
        raise _err(source, key, f"must be a list of {n} numbers{extra}, got {value!r}")
    out = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in out) or (positive and not all(v > 0 for v in out)):
        cond = "finite and > 0" if positive else "finite"
        raise _err(source, key, f"values must be {cond}, got {value!r}")
    return out


def _positive_int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _err(source, key, f"must be a positive integer, got {value!r}")
    return value


#: Allowed side lengths of ``input_size`` (pixels). A 1-pixel image has no location to explain;
#: above 4096 one float32 image alone is > 200 MiB (a typo such as 100000 would exhaust memory).
INPUT_SIZE_RANGE = (2, 4096)


def _input_size(value: Any, source: str) -> tuple[int, int]:
    lo, hi = INPUT_SIZE_RANGE
    if isinstance(value, int) and not isinstance(value, bool):
        sides = [value]
    elif (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        sides = list(value)
    else:
        raise _err(source, "input_size", f"must be a positive int or [H, W], got {value!r}")
    if not all(v > 0 for v in sides):
        raise _err(source, "input_size", f"must be > 0, got {value!r}")
    if not all(lo <= v <= hi for v in sides):
        raise _err(source, "input_size", f"each side must be in [{lo}, {hi}] pixels, got {value!r}")
    return (sides[0], sides[-1])


def read_classes_file(path: Path) -> tuple[str, ...]:
    """Read one class name per line (UTF-8; blank lines ignored; names kept verbatim).

    Raises:
        ValueError: unreadable file, no names, or duplicate names.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read classes file {path}: {exc}") from exc
    names = [line.rstrip("\r") for line in text.split("\n")]
    names = [n for n in names if n.strip()]
    if not names:
        raise ValueError(f"classes file {path} contains no class names")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"classes file {path}: duplicate class names {dupes!r}")
    return tuple(names)


def parse_data_section(table: Mapping[str, Any], base_dir: Path, source: str) -> DataConfig:
    """Validate the parsed ``[data]`` TOML table into a :class:`DataConfig`.

    Args:
        table: the ``[data]`` table as parsed by ``tomllib``.
        base_dir: folder of the config file; relative paths are relative to it.
        source: config file name, used in every error message.

    ``manifest = "x.csv"`` alone implies ``format = "manifest"`` (``.jsonl``/``.ndjson``:
    ``"jsonl"``) and ``root`` = the manifest's folder.

    Raises:
        ConfigError: unknown key (with a suggestion), missing or invalid value, key not valid
            for the chosen format, missing file or folder.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: [data] must be a table, got {type(table).__name__}")
    base_dir = Path(base_dir).resolve()
    for key in table:
        if key not in _ALL_KEYS:
            close = difflib.get_close_matches(str(key), sorted(_ALL_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key [data] {key}{hint}")

    fmt = table.get("format")
    if fmt is None:
        manifest_value = table.get("manifest")
        if not isinstance(manifest_value, str):
            raise _err(source, "format", "missing: set `format` or `manifest`")
        suffix = Path(manifest_value).suffix.lower()
        if suffix == ".csv":
            fmt = "manifest"
        elif suffix in (".jsonl", ".ndjson"):
            fmt = "jsonl"
        else:
            raise _err(
                source,
                "manifest",
                f"cannot infer the format from extension {suffix!r} of {manifest_value!r}; "
                "use .csv or .jsonl, or set `format`",
            )
    if fmt not in FORMATS:
        close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _err(source, "format", f"must be one of {list(FORMATS)}, got {fmt!r}{hint}")
    for key in table:
        if key not in _COMMON_KEYS and key not in _FORMAT_KEYS[fmt]:
            owners = [f for f, keys in _FORMAT_KEYS.items() if key in keys]
            raise _err(source, key, f"only valid with format {owners!r}, not {fmt!r}")

    kwargs: dict[str, Any] = {"format": fmt, "source": source}
    for key, choices in _CHOICES.items():
        if key in table:
            if table[key] not in choices:
                raise _err(source, key, f"must be one of {list(choices)}, got {table[key]!r}")
            kwargs[key] = table[key]

    manifest: Path | None = None
    if fmt in ("manifest", "jsonl"):
        if "manifest" not in table:
            raise _err(source, "manifest", f"required with format {fmt!r}")
        manifest = _existing_file(table["manifest"], "manifest", base_dir, source)
        kwargs["manifest"] = manifest
    if fmt == "coco":
        if "annotations" not in table:
            raise _err(source, "annotations", "required with format 'coco' (the COCO json file)")
        kwargs["annotations"] = _existing_file(
            table["annotations"], "annotations", base_dir, source
        )

    if "root" in table:
        kwargs["root"] = _existing_dir(table["root"], "root", base_dir, source)
    elif manifest is not None:
        kwargs["root"] = manifest.parent
    else:
        raise _err(source, "root", f"required with format {fmt!r}")

    if "masks_dir" in table:
        kwargs["masks_dir"] = _existing_dir(table["masks_dir"], "masks_dir", base_dir, source)
    if "list_file" in table:
        kwargs["list_file"] = _existing_file(table["list_file"], "list_file", base_dir, source)
    for key in ("images_dir", "trimaps_dir"):
        if key in table:
            kwargs[key] = _rel_dir(table[key], key, source)
    if "split" in table:
        split = table["split"]
        if not isinstance(split, str) or not split or "/" in split or "\\" in split:
            raise _err(source, "split", f"must be a split name such as 'val', got {split!r}")
        kwargs["split"] = split

    if "classes" in table and "classes_file" in table:
        raise _err(source, "classes", "give either `classes` or `classes_file`, not both")
    if "classes" in table:
        kwargs["classes"] = _str_list(table["classes"], "classes", source)
    if "classes_file" in table:
        path = _existing_file(table["classes_file"], "classes_file", base_dir, source)
        try:
            kwargs["classes"] = read_classes_file(path)
        except ValueError as exc:
            raise _err(source, "classes_file", str(exc)) from exc
        kwargs["classes_file"] = path
    if "voc_seg_classes" in table:
        kwargs["voc_seg_classes"] = _str_list(table["voc_seg_classes"], "voc_seg_classes", source)

    if "input_size" in table:
        kwargs["input_size"] = _input_size(table["input_size"], source)
    channels = 3
    if "channels" in table:
        channels = table["channels"]
        if isinstance(channels, bool) or channels not in (1, 3):
            raise _err(source, "channels", f"must be 1 or 3, got {channels!r}")
        kwargs["channels"] = channels
        if channels == 1 and ("mean" not in table or "std" not in table):
            raise _err(
                source,
                "channels",
                "channels = 1 needs `mean` and `std` with one value each (the model's grey "
                "normalisation, e.g. mean = [0.5], std = [0.25])",
            )
    if "mean" in table:
        kwargs["mean"] = _triple(table["mean"], "mean", source, positive=False, n=channels)
    if "std" in table:
        kwargs["std"] = _triple(table["std"], "std", source, positive=True, n=channels)
    for key in ("max_image_pixels", "max_file_bytes"):
        if key in table:
            kwargs[key] = _positive_int(table[key], key, source)
    if "mask_resize" in table:
        if not isinstance(table["mask_resize"], bool):
            value = table["mask_resize"]
            raise _err(source, "mask_resize", f"must be true or false, got {value!r}")
        kwargs["mask_resize"] = table["mask_resize"]
    if "gpu_decode" in table:
        value = table["gpu_decode"]
        if not (isinstance(value, bool) or value == "auto"):
            raise _err(
                source,
                "gpu_decode",
                f'must be "auto", true or false, got {value!r} (JPEG decoding on the CUDA '
                "audit device, see docs/data-formats.md)",
            )
        kwargs["gpu_decode"] = value
    if "groups" in table or "groups_file" in table or "bins" in table:
        from auditor.data.groups import parse_group_keys

        kwargs.update(parse_group_keys(table, base_dir, source))
    return DataConfig(**kwargs)


def validate_choices(config: DataConfig) -> None:
    """Check a programmatically built :class:`DataConfig` (used by ``open_dataset``).

    Raises:
        ConfigError: an option outside its allowed values or a bad ``input_size``/``std``.
    """
    for key, choices in _CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            raise ConfigError(f"DataConfig.{key} must be one of {list(choices)}, got {value!r}")
    if not (isinstance(config.gpu_decode, bool) or config.gpu_decode == "auto"):
        raise ConfigError(
            f"DataConfig.gpu_decode must be 'auto', True or False, got {config.gpu_decode!r}"
        )
    h, w = config.input_size
    if h <= 0 or w <= 0:
        raise ConfigError(f"DataConfig.input_size must be positive, got {config.input_size!r}")
    n = config.channels
    if n not in (1, 3):
        raise ConfigError(f"DataConfig.channels must be 1 or 3, got {n!r}")
    if len(config.mean) != n or len(config.std) != n or any(s <= 0 for s in config.std):
        raise ConfigError(
            f"DataConfig.mean/std must have {n} value(s) (channels = {n}), std > 0; got "
            f"{config.mean!r}, {config.std!r}"
        )
