"""Every format yields the same samples for the same data; format-specific rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.data import open_dataset, parse_data_section
from auditor.data.transforms import resize_mask
from auditor.errors import DataError, SampleSkipped
from tests.fixtures_data import (
    ITEMS,
    MAKERS,
    image_array,
    make_all,
    make_coco,
    make_voc,
    voc_xml,
    write_palette_png,
    write_png,
)


def _open(table: dict, base: Path, **extra):
    return open_dataset(parse_data_section({**table, **extra}, base, "config.toml"))


def _by_stem(ds) -> dict:
    out = {}
    for i in range(len(ds)):
        s = ds.load(i)
        out[Path(s.id).stem] = s
    return out


@pytest.mark.parametrize("resize", ["direct", "shorter_center_crop"])
def test_every_format_gives_the_same_samples(tmp_path: Path, resize: str) -> None:
    tables = make_all(tmp_path)
    extra = {"input_size": [16, 20], "resize": resize}
    reference = _by_stem(_open(tables["csv_masks"], tmp_path, **extra))
    assert sorted(reference) == sorted(i.stem for i in ITEMS)
    for item in ITEMS:
        ref = reference[item.stem]
        expected = resize_mask(item.mask(), (16, 20), resize)
        assert torch.equal(ref.mask, torch.from_numpy(expected))
        assert ref.label == ("cat", "dog").index(item.label)
        assert ref.image.shape == (3, 16, 20) and ref.image.dtype == torch.float32
    for name in MAKERS:
        ds = _open(tables[name], tmp_path, **extra)
        assert ds.classes == ("cat", "dog"), name
        samples = _by_stem(ds)
        assert sorted(samples) == sorted(reference), name
        for stem, s in samples.items():
            ref = reference[stem]
            assert torch.equal(s.image, ref.image), (name, stem)
            assert torch.equal(s.mask, ref.mask), (name, stem)
            assert s.label == ref.label, (name, stem)
            assert s.image_sha256 == ref.image_sha256, (name, stem)
            assert s.mask_sha256 is not None and len(s.mask_sha256) == 64
            assert s.notes == (), (name, stem, s.notes)


def test_native_size_masks_match_the_rectangles(tmp_path: Path) -> None:
    # dog_2 is 32x32 with two boxes; at input_size 32 the mask must be the exact union.
    tables = make_all(tmp_path)
    for name in ("csv_boxes", "coco", "voc", "trimap"):
        samples = _by_stem(_open(tables[name], tmp_path, input_size=32))
        item = next(i for i in ITEMS if i.stem == "dog_2")
        assert np.array_equal(samples["dog_2"].mask.numpy(), item.mask()), name
        display, mask = _open(tables[name], tmp_path, input_size=32).load_display(1)
        assert display.dtype == np.uint8 and display.shape == (32, 32, 3)


def test_load_display_matches_load(tmp_path: Path) -> None:
    ds = _open(make_csv_masks_table(tmp_path), tmp_path, input_size=[12, 10])
    for i in range(len(ds)):
        s = ds.load(i)
        display, mask = ds.load_display(i)
        mean = torch.tensor(ds.config.mean).view(3, 1, 1)
        std = torch.tensor(ds.config.std).view(3, 1, 1)
        back = (s.image * std + mean) * 255
        assert torch.allclose(back, torch.from_numpy(display).permute(2, 0, 1).float(), atol=1e-3)
        assert np.array_equal(mask, s.mask.numpy())


def make_csv_masks_table(tmp_path: Path) -> dict:
    return MAKERS["csv_masks"](tmp_path)


def test_annotation_sha256_changes_with_annotations(tmp_path: Path) -> None:
    table = MAKERS["csv_boxes"](tmp_path)
    before = _open(table, tmp_path).annotation_sha256()
    path = Path(table["manifest"])
    path.write_text(path.read_text().replace("5,4,25,20", "5,4,25,21"))
    after = _open(table, tmp_path).annotation_sha256()
    assert len(before) == 64 and before != after


# --- COCO -----------------------------------------------------------------------------------


def _coco_doc(tmp_path: Path) -> tuple[dict, dict]:
    table = make_coco(tmp_path)
    return table, json.loads(Path(table["annotations"]).read_text())


def _write_doc(table: dict, doc: dict) -> None:
    Path(table["annotations"]).write_text(json.dumps(doc))


def test_coco_label_rule_and_mask_instances(tmp_path: Path) -> None:
    table, doc = _coco_doc(tmp_path)
    # image 1 (cat_1, 40x30, cat box 5..25 x 4..20) gets a small dog box listed FIRST.
    dog = {"id": 99, "image_id": 1, "category_id": 2, "bbox": [30, 0, 4, 3], "area": 12.0}
    doc["annotations"].insert(0, dog)
    _write_doc(table, doc)
    largest = _open(table, tmp_path, input_size=[30, 40]).load(0)
    assert largest.label == 0  # cat: area 320 > 12
    assert int(largest.mask.sum()) == 20 * 16
    first = _open(table, tmp_path, input_size=[30, 40], label_rule="first").load(0)
    assert first.label == 1
    assert int(first.mask.sum()) == 12 and bool(first.mask[0, 30]) and not first.mask[4, 5]
    both = _open(table, tmp_path, input_size=[30, 40], mask_instances="all").load(0)
    assert both.label == 0 and int(both.mask.sum()) == 320 + 12


def test_coco_image_without_annotation_is_skipped(tmp_path: Path) -> None:
    table, doc = _coco_doc(tmp_path)
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 3]
    _write_doc(table, doc)
    ds = _open(table, tmp_path)
    with pytest.raises(SampleSkipped, match="no annotation"):
        ds.load(2)
    assert ds.load(3).label == 1


def test_coco_size_mismatch_and_bad_segmentation(tmp_path: Path) -> None:
    table, doc = _coco_doc(tmp_path)
    doc["images"][0]["width"] = 41
    doc["annotations"][1]["segmentation"] = [[1, 2, "x"]]  # image 2, first instance
    _write_doc(table, doc)
    ds = _open(table, tmp_path, input_size=32)
    with pytest.raises(SampleSkipped, match="41x30"):
        ds.load(0)
    s = ds.load(1)  # the other instance still makes a mask, with a note
    assert any("malformed polygon" in n for n in s.notes)
    assert int(s.mask.sum()) == 18 * 12


def test_coco_unreadable_file_is_data_error(tmp_path: Path) -> None:
    table = make_coco(tmp_path)
    Path(table["annotations"]).write_text('{"images": [1,\n')
    with pytest.raises(DataError, match="annotations.json: line 2"):
        _open(table, tmp_path)


# --- VOC ------------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>cat_1.png</filename><object><name>&lol4;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<annotation><filename>cat_1.png</filename><object><name>&xxe;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>
"""


@pytest.mark.parametrize("payload", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
def test_voc_entity_attacks_are_rejected(tmp_path: Path, payload: str) -> None:
    table = make_voc(tmp_path)
    (tmp_path / "voc" / "Annotations" / "cat_1.xml").write_text(payload)
    ds = _open(table, tmp_path)
    assert ds.records[0].label is None  # nothing was expanded into a label
    with pytest.raises(SampleSkipped, match="unsafe XML rejected") as info:
        ds.load(0)
    assert "lol" not in info.value.reason and "root:" not in info.value.reason
    assert ds.load(1).label in (0, 1)


def test_voc_all_annotations_hostile_is_data_error(tmp_path: Path) -> None:
    table = make_voc(tmp_path)
    for xml in (tmp_path / "voc" / "Annotations").glob("*.xml"):
        xml.write_text(BILLION_LAUGHS)
    with pytest.raises(DataError, match="no usable VOC annotation"):
        _open(table, tmp_path)


def _voc_one(tmp_path: Path) -> tuple[dict, Path]:
    """A 10x8 VOC image: cat box x 2..6, y 1..5 (exclusive) and a larger dog box."""
    root = tmp_path / "v"
    write_png(root / "JPEGImages" / "a.png", np.zeros((8, 10, 3), dtype=np.uint8))
    xml = voc_xml("a.png", 10, 8, [("cat", (2, 1, 6, 5)), ("dog", (0, 5, 10, 8))])
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(xml)
    return {"format": "voc", "root": str(root), "classes": ["cat", "dog"]}, root


def test_voc_label_by_largest_object_and_boxes_are_one_based(tmp_path: Path) -> None:
    table, _ = _voc_one(tmp_path)
    s = _open(table, tmp_path, input_size=[8, 10]).load(0)
    assert s.label == 1  # dog box 10x3 = 30 > cat 4x4 = 16
    expected = np.zeros((8, 10), dtype=bool)
    expected[5:8, :] = True
    assert np.array_equal(s.mask.numpy(), expected)
    s_all = _open(table, tmp_path, input_size=[8, 10], mask_instances="all").load(0)
    expected[1:5, 2:6] = True
    assert np.array_equal(s_all.mask.numpy(), expected)


def test_voc_void_handling(tmp_path: Path) -> None:
    table, root = _voc_one(tmp_path)
    idx = np.zeros((8, 10), dtype=np.uint8)
    idx[5:8, 2:8] = 12  # dog
    idx[4, 1:9] = 255  # void band touching the dog
    idx[0, 0:2] = 255  # void far from the dog
    write_palette_png(root / "SegmentationClass" / "a.png", idx)
    fg = _open(table, tmp_path, input_size=[8, 10]).load(0)
    expected = idx == 12
    expected[4, 1:9] = True
    assert np.array_equal(fg.mask.numpy(), expected)
    assert any("void" in n for n in fg.notes)
    bg = _open(table, tmp_path, input_size=[8, 10], voc_void="background").load(0)
    assert np.array_equal(bg.mask.numpy(), idx == 12)


def test_voc_segmentation_object(tmp_path: Path) -> None:
    table, root = _voc_one(tmp_path)
    idx = np.zeros((8, 10), dtype=np.uint8)
    idx[1:5, 2:6] = 1  # object 1 = cat
    idx[6:8, 0:4] = 2  # object 2 = dog
    write_palette_png(root / "SegmentationObject" / "a.png", idx)
    s = _open(table, tmp_path, input_size=[8, 10], voc_mask="object").load(0)
    assert s.label == 1 and np.array_equal(s.mask.numpy(), idx == 2)


def test_voc_split_file(tmp_path: Path) -> None:
    table = make_voc(tmp_path)
    split = tmp_path / "voc" / "ImageSets" / "Main" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("dog_4\ncat_1\n")
    ds = _open(table, tmp_path, split="val")
    assert [ds.sample_id(i) for i in range(len(ds))] == [
        "JPEGImages/dog_4.png",
        "JPEGImages/cat_1.png",
    ]
    with pytest.raises(DataError, match="split"):
        _open(table, tmp_path, split="test")


# --- trimap, ImageFolder ---------------------------------------------------------------------


def test_trimap_boundary_option(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_png(root / "images" / "Abyssinian_1.png", np.zeros((4, 5, 3), dtype=np.uint8))
    tri = np.array(
        [[2, 2, 2, 2, 2], [2, 3, 3, 3, 2], [2, 3, 1, 3, 2], [2, 3, 3, 3, 0]], dtype=np.uint8
    )
    write_png(root / "annotations" / "trimaps" / "Abyssinian_1.png", tri)
    table = {"format": "trimap", "root": str(root), "input_size": [4, 5]}
    fg = _open(table, tmp_path).load(0)
    assert np.array_equal(fg.mask.numpy(), (tri == 1) | (tri == 3))
    assert any("outside 1/2/3" in n for n in fg.notes)
    bg = _open(table, tmp_path, trimap_boundary="background").load(0)
    assert np.array_equal(bg.mask.numpy(), tri == 1)
    species = _open(table, tmp_path, trimap_label="species")
    assert species.classes == ("cat",)
    assert _open(table, tmp_path).classes == ("Abyssinian",)


def test_imagefolder_missing_mask_is_unannotated(tmp_path: Path) -> None:
    table = MAKERS["imagefolder"](tmp_path)
    (Path(table["masks_dir"]) / "dog" / "dog_4.png").unlink()
    ds = _open(table, tmp_path)
    s = _by_stem(ds)["dog_4"]
    assert s.mask is None and s.mask_sha256 is None
    assert any("no mask file" in n for n in s.notes)


def test_imagefolder_without_masks_dir(tmp_path: Path) -> None:
    root = tmp_path / "if"
    item = ITEMS[0]
    write_png(root / "b" / "x.png", image_array(item))
    write_png(root / "a" / "y.png", image_array(item))
    ds = _open({"format": "imagefolder", "root": str(root)}, tmp_path)
    assert ds.classes == ("a", "b")
    s = ds.load(1)
    assert s.id == "b/x.png" and s.label == 1 and s.mask is None
