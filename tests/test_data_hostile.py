"""Bad and hostile input: each becomes a skipped sample with a reason, the rest loads."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data import open_dataset, parse_data_section, safe_join
from auditor.errors import DataError, SampleSkipped, UnsafePathError
from tests.fixtures_data import ITEMS, image_array, make_csv_masks, write_png


def _csv(root: Path, rows: list[str], header: str = "image,label,mask") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _open(manifest: Path, **extra):
    return open_dataset(
        parse_data_section({"manifest": str(manifest), **extra}, manifest.parent, "c.toml")
    )


def _reasons(ds) -> dict[str, str]:
    out = {}
    for i in range(len(ds)):
        try:
            ds.load(i)
            out[ds.sample_id(i)] = "ok"
        except SampleSkipped as exc:
            out[exc.sample_id] = exc.reason
    return out


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny (invalid) IDAT: never decodable."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


def test_safe_join_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert safe_join(root, "a/x.png") == (root / "a" / "x.png").resolve()
    assert safe_join(root, "a/../x.png") == (root / "x.png").resolve()
    for bad in ["../x.png", "a/../../x.png", "/etc/passwd", "C:/x.png", "..\\x.png", "", "a\0b"]:
        with pytest.raises(UnsafePathError, match="path escapes dataset root"):
            safe_join(root, bad)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.png")
    os.symlink(tmp_path, root / "linkdir")
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "link.png")
    with pytest.raises(UnsafePathError):
        safe_join(root, "linkdir/secret.png")
    os.symlink(root / "a", root / "inside")
    assert safe_join(root, "inside/y.png") == (root / "a" / "y.png").resolve()


def test_bad_files_are_skipped_and_the_rest_loads(tmp_path: Path) -> None:
    root = tmp_path / "d"
    item = ITEMS[0]
    write_png(root / "good.png", image_array(item))
    write_png(root / "m.png", item.mask().astype(np.uint8))
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("hello, I am not an image")
    buf = io.BytesIO()
    Image.fromarray(image_array(item)).save(buf, format="PNG")
    (root / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(image_array(item)).save(buf, format="JPEG")
    (root / "trunc.jpg").write_bytes(buf.getvalue()[:200])
    corrupt = bytearray(buf.getvalue())
    corrupt[30:400] = b"\xff" * 370
    (root / "corrupt.jpg").write_bytes(bytes(corrupt))
    (root / "bomb.png").write_bytes(_png_header_only(8_000, 8_000))  # 64M px > 40M
    outside = tmp_path / "outside.png"
    write_png(outside, image_array(item))
    os.symlink(outside, root / "sym.png")
    rows = [
        "good.png,cat,m.png",
        "zero.png,cat,m.png",
        "text.png,cat,m.png",
        "trunc.png,cat,m.png",
        "trunc.jpg,cat,m.png",
        "corrupt.jpg,cat,m.png",
        "bomb.png,cat,m.png",
        "missing.png,cat,m.png",
        "../outside.png,cat,m.png",
        f"{outside},cat,m.png",
        "sym.png,cat,m.png",
        "good.png,cat,../outside.png",
        "good.png,cat,nomask.png",
    ]
    # several rows for the same image id must not merge different masks: use ids
    header = "id,image,label,mask"
    rows = [f"r{i},{r}" for i, r in enumerate(rows)]
    ds = _open(_csv(root, rows, header))
    reasons = _reasons(ds)
    assert reasons["r0"] == "ok"
    assert "empty (0 bytes)" in reasons["r1"]
    assert "not a recognised image" in reasons["r2"]
    assert "corrupt or truncated" in reasons["r3"]
    assert "corrupt or truncated" in reasons["r4"]
    assert reasons["r5"] != "ok"
    assert "decompression bomb guard" in reasons["r6"] and "not decoded" in reasons["r6"]
    assert "image file not found" in reasons["r7"]
    for key in ("r8", "r9", "r10", "r11"):
        assert "path escapes dataset root" in reasons[key], (key, reasons[key])
    assert "mask file not found" in reasons["r12"]


def test_max_image_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", np.zeros((40, 50, 3), dtype=np.uint8))
    ds = _open(_csv(root, ["a.png,cat,"]), max_image_pixels=1999)
    with pytest.raises(SampleSkipped, match="50x40 = 2000 pixels > max_image_pixels=1999"):
        ds.load(0)
    assert _open(_csv(root, ["a.png,cat,"]), max_image_pixels=2000).load(0).mask is None


def test_pil_decompression_bomb_error_is_caught(tmp_path: Path) -> None:
    # Larger than 2 x PIL's MAX_IMAGE_PIXELS: PIL itself raises DecompressionBombError.
    root = tmp_path / "d"
    root.mkdir()
    (root / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    ds = _open(_csv(root, ["bomb.png,cat,"]), max_image_pixels=10**12)
    with pytest.raises(SampleSkipped, match="decompression bomb guard"):
        ds.load(0)


def test_mask_values_size_mismatch_and_resize_option(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", np.zeros((4, 6, 3), dtype=np.uint8))
    odd = np.array([[0, 128, 255, 0, 0, 0]] * 4, dtype=np.uint8)
    write_png(root / "odd.png", odd)
    write_png(root / "small.png", np.array([[0, 1, 1], [0, 0, 0]], dtype=np.uint8))
    write_png(root / "empty.png", np.zeros((4, 6), dtype=np.uint8))
    manifest = _csv(root, ["a.png,cat,odd.png", "a.png,cat,small.png", "a.png,cat,empty.png"],
                    "image,label,mask")  # fmt: skip
    manifest.write_text(
        "id,image,label,mask\nx,a.png,cat,odd.png\ny,a.png,cat,small.png\nz,a.png,cat,empty.png\n"
    )
    ds = _open(manifest, input_size=[4, 6])
    s = ds.load(0)
    assert np.array_equal(s.mask.numpy(), odd != 0)
    assert any("0, 128, 255" in n and "nonzero = object" in n for n in s.notes)
    with pytest.raises(SampleSkipped, match="mask size 3x2 != image size 6x4"):
        ds.load(1)
    empty = ds.load(2)
    assert not empty.mask.any() and any("empty" in n for n in empty.notes)
    resized = _open(manifest, input_size=[4, 6], mask_resize=True).load(1)
    expected = np.zeros((4, 6), dtype=bool)
    expected[0:2, 2:6] = True
    assert np.array_equal(resized.mask.numpy(), expected)
    assert any("mask resized" in n for n in resized.notes)


def test_boxes_clipped_rejected_and_all_rejected(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", np.zeros((4, 6, 3), dtype=np.uint8))
    manifest = root / "manifest.csv"
    manifest.write_text(
        "id,image,label,x0,y0,x1,y1\n"
        "p,a.png,cat,-2,1,2,9\n"  # clipped to [0,1,2,4]
        "p,a.png,cat,5,0,3,2\n"  # inverted
        "p,a.png,cat,nan,0,1,1\n"  # NaN
        "q,a.png,cat,4,4,1,1\n"
        "q,a.png,cat,10,0,12,2\n"  # outside
        "r,a.png,cat,,,,\n"  # no box: unannotated
    )
    ds = _open(manifest, input_size=[4, 6])
    p = ds.load(0)
    expected = np.zeros((4, 6), dtype=bool)
    expected[1:4, 0:2] = True
    assert np.array_equal(p.mask.numpy(), expected)
    joined = " | ".join(p.notes)
    assert "clipped" in joined and "inverted" in joined and "NaN" in joined
    with pytest.raises(SampleSkipped, match="no valid box"):
        ds.load(1)
    assert ds.load(2).mask is None


def test_exif_rotated_image_with_mask_in_displayed_orientation(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    # Stored 6 wide x 4 high, EXIF orientation 6 (rotate 90 CW to display): displayed 4x6.
    stored = np.zeros((4, 6, 3), dtype=np.uint8)
    stored[0, :, 0] = 255  # top row red in storage -> right column when displayed
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(root / "rot.png", exif=exif.tobytes())  # PNG eXIf chunk: lossless
    displayed_mask = np.zeros((6, 4), dtype=np.uint8)
    displayed_mask[:, 3] = 1  # the red column, displayed orientation
    write_png(root / "m.png", displayed_mask)
    write_png(root / "m_stored.png", np.zeros((4, 6), dtype=np.uint8))
    manifest = root / "manifest.csv"
    manifest.write_text("id,image,label,mask\na,rot.png,cat,m.png\nb,rot.png,cat,m_stored.png\n")
    ds = _open(manifest, input_size=[6, 4], mean=[0, 0, 0], std=[1, 1, 1])
    s = ds.load(0)
    assert s.image.shape == (3, 6, 4)
    red = s.image[0]
    assert torch.equal(red[:, 3], torch.ones(6)) and not red[:, :3].any()
    assert np.array_equal(s.mask.numpy(), displayed_mask.astype(bool))
    assert any("EXIF" in n for n in s.notes)
    with pytest.raises(SampleSkipped, match="BEFORE its EXIF rotation"):
        ds.load(1)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    rgb = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray(np.full((4, 4), 200 * 257, dtype=np.uint16))
        ext = "png"
    else:
        im = rgb.convert(mode)
        ext = "jpg" if mode == "CMYK" else "png"
    im.save(root / f"a.{ext}")
    ds = _open(_csv(root, [f"a.{ext},cat,"]), input_size=4, mean=[0, 0, 0], std=[1, 1, 1])
    s = ds.load(0)
    assert s.image.shape == (3, 4, 4)
    tol = 5 / 255 if mode == "P" else 1 / 255  # P: web-palette quantisation (200 -> 204)
    assert torch.allclose(s.image, torch.full((3, 4, 4), 200 / 255), atol=tol), mode


def test_labels_not_in_classes_and_weird_class_names_pass_through(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    weird = ['<script>alert("x")</script>', '=HYPERLINK("http://x")', "a" * 500, 'it\'s "q"']
    import csv

    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "label"])
        for i, name in enumerate([*weird, "unknown"]):
            w.writerow([f"s{i}", "a.png", name])
    ds = _open(root / "manifest.csv", classes=weird)
    assert ds.classes == tuple(weird)
    assert [ds.load(i).label for i in range(4)] == [0, 1, 2, 3]
    with pytest.raises(SampleSkipped, match="label 'unknown' not in classes"):
        ds.load(4)
    default = _open(root / "manifest.csv")
    assert set(default.classes) == {*weird, "unknown"}


def test_unusable_manifests_are_data_errors(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    m = root / "manifest.csv"
    cases = {
        b"": "line 1: empty file",
        b"image,label\n": "no data rows",
        b"img,lbl\nx.png,cat\n": "line 1: missing required column",
        b"image,label\n,cat\n,dog\n": "line 2: no usable row",
        b"image,label\nx.png,cat\n\xff\xfe,dog\n": "line 3: not valid UTF-8",
        b"image,label,x0\nx.png,cat,1\n": "box columns",
    }
    for content, message in cases.items():
        m.write_bytes(content)
        with pytest.raises(DataError, match=message) as info:
            _open(m)
        assert str(m) in str(info.value)


def test_jsonl_bad_lines_are_skipped(tmp_path: Path) -> None:
    table = make_csv_masks(tmp_path)
    root = Path(table["manifest"]).parent
    m = root / "m.jsonl"
    m.write_text(
        '{"image": "images/cat_1.png", "label": "cat", "mask": "masks/cat_1.png"}\n'
        "not json\n"
        '{"image": "../x.png", "label": "cat"}\n'
        '{"image": "images/cat_3.png", "label": "cat", "boxes": [[0, 0, 1]]}\n'
        '{"id": "nan", "image": "images/cat_1.png", "label": "cat", "boxes": [[0, 0, NaN, 1]]}\n'
    )
    ds = _open(m)
    reasons = _reasons(ds)
    assert reasons["images/cat_1.png"] == "ok"
    assert "line 2: invalid JSON" in reasons["line 2"]
    assert "path escapes dataset root" in reasons["../x.png"]
    assert "line 4" in reasons["images/cat_3.png"]
    m.write_text("nope\n[1]\n")
    with pytest.raises(DataError, match="m.jsonl: line 1"):
        _open(m)


def test_coco_and_voc_paths_escaping_the_root(tmp_path: Path) -> None:
    import json

    from tests.fixtures_data import make_coco, make_voc, voc_xml

    table = make_coco(tmp_path)
    doc = json.loads(Path(table["annotations"]).read_text())
    doc["images"][0]["file_name"] = "../../outside.png"
    doc["images"][1]["file_name"] = "/etc/passwd"
    Path(table["annotations"]).write_text(json.dumps(doc))
    ds = open_dataset(parse_data_section(table, tmp_path, "c.toml"))
    for i in (0, 1):
        with pytest.raises(SampleSkipped) as info:
            ds.load(i)
        assert info.value.reason.startswith("path escapes dataset root")
    assert ds.load(2).label == 0

    table = make_voc(tmp_path)
    xml = voc_xml("../../../outside.png", 40, 30, [("cat", (5, 4, 25, 20))])
    (tmp_path / "voc" / "Annotations" / "cat_1.xml").write_text(xml)
    ds = open_dataset(parse_data_section(table, tmp_path, "c.toml"))
    with pytest.raises(SampleSkipped) as info:
        ds.load(0)
    assert info.value.reason.startswith("path escapes dataset root")


def test_truncated_image_is_refused_even_after_weasyprint_is_imported(tmp_path: Path) -> None:
    """WeasyPrint sets PIL's global LOAD_TRUNCATED_IMAGES on import (the PDF step of a run, or
    another test in the same process); the loader must still refuse a truncated PNG."""
    import weasyprint  # noqa: F401  (the side effect under test)
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # whatever imported it before us
    root = tmp_path / "d"
    item = ITEMS[0]
    write_png(root / "m.png", item.mask().astype(np.uint8))
    buf = io.BytesIO()
    Image.fromarray(image_array(item)).save(buf, format="PNG")
    (root / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds = _open(_csv(root, ["r0,trunc.png,cat,m.png"], "id,image,label,mask"))
    assert "corrupt or truncated" in _reasons(ds)["r0"]
