"""Oxford-IIIT Pet layout (Parkhi et al., 2012, "Cats and Dogs"): trimap masks.

``root/<images_dir>/<name>.<ext>`` and ``root/<trimaps_dir>/<name>.png`` (defaults
``images`` and ``annotations/trimaps``). Trimap values: 1 = foreground (pet), 2 = background,
3 = boundary ("not classified": the outline band, including fur edges).

``trimap_boundary = "foreground"`` (default) counts the boundary as object: it is the outline
of the animal itself, and a CAM upsampled from a 7x7 grid cannot be sharper than that band,
so counting it as background would penalise a model that looks exactly at the pet.
``"background"`` gives the strict (interior-only) mask.

Labels follow the dataset's file naming: ``breed`` = the name without its trailing
``_<number>`` (``Abyssinian_100`` -> ``Abyssinian``); ``species`` = ``cat`` when the breed
starts with an upper-case letter, ``dog`` otherwise (the dataset's convention). ``list_file``
(e.g. ``annotations/test.txt``) restricts and orders the samples (first token of each line;
``#`` lines ignored); without it every image of ``images_dir``, sorted.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from auditor.data.base import MaskFileAnnotation, Record, canonical_sha256
from auditor.data.config import DataConfig
from auditor.data.imagefolder import IMAGE_EXTENSIONS
from auditor.data.images import sha256_bytes
from auditor.errors import DataError

__all__ = ["read_trimap", "trimap_label"]


def trimap_label(name: str, rule: str) -> str:
    """Class of an Oxford-IIIT Pet file stem by ``rule`` (``"breed"`` or ``"species"``)."""
    breed = name.rsplit("_", 1)[0] if "_" in name else name
    if rule == "breed":
        return breed
    if rule == "species":
        return "cat" if breed[:1].isupper() else "dog"
    raise ValueError(f"`rule` must be 'breed' or 'species', got {rule!r}")


def read_trimap(config: DataConfig) -> tuple[list[Record], str]:
    """Index an Oxford-IIIT Pet style folder; returns ``(records, listing sha256)``."""
    root = config.root
    images_dir = root / config.images_dir
    if not images_dir.is_dir():
        raise DataError(f"[data] images_dir: directory not found: {images_dir}")
    list_sha = ""
    if config.list_file is not None:
        try:
            data = config.list_file.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{config.list_file}: cannot read list file: {exc}") from exc
        list_sha = sha256_bytes(data)
        names = [
            line.split()[0]
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        by_stem = {
            p.stem: p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
        }
        files = [(n, by_stem.get(n, f"{n}.jpg")) for n in names]
    else:
        files = sorted(
            (p.stem, p.name)
            for p in images_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
    if not files:
        raise DataError(f"{images_dir}: no images found")
    records = []
    for stem, filename in files:
        image = (PurePosixPath(config.images_dir) / filename).as_posix()
        mask = (PurePosixPath(config.trimaps_dir) / f"{stem}.png").as_posix()
        label = trimap_label(stem, config.trimap_label)
        records.append(Record(image, image, label, MaskFileAnnotation(mask, "trimap")))
    listing = [[r.image] for r in records]
    return records, canonical_sha256({"trimap": listing, "list_file": list_sha})
