"""``[data] gpu_decode``: the device decode path's maths, run on the CPU (torchvision's
libjpeg-turbo decoder with ``device="cpu"``), against the PIL path; CUDA-only checks skip."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data import iter_batches, open_dataset, parse_data_section
from auditor.data.gpu_decode import (
    decode_resize,
    gpu_decodable,
    normalise_tensor,
    probe,
    resize_tensor,
    resolve_gpu_decode,
)
from auditor.data.transforms import normalise, resize_image, source_box
from auditor.errors import ConfigError

CPU = torch.device("cpu")


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, w)[None, :, None] + np.linspace(0, 60, h)[:, None, None]
    return np.clip(rng.integers(0, 80, (h, w, 3)) + ramp, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(37, 53), (300, 200), (224, 224), (97, 400), (20, 16)])
@pytest.mark.parametrize("size", [(224, 224), (64, 48), (31, 77)])
@pytest.mark.parametrize("mode", ["direct", "shorter_center_crop"])
def test_resize_tensor_is_pils_bilinear(shape, size, mode) -> None:
    """Same source_box, same filter: within two levels of PIL (its fixed-point rounding in
    each of the two passes), mostly equal."""
    arr = _textured(*shape)
    want = resize_image(Image.fromarray(arr), size, mode).astype(int)
    got = resize_tensor(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), size, mode)
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, *size)
    assert diff.max() <= 2 and diff.mean() < 0.3


def test_source_box_stays_inside_the_image() -> None:
    """97 px filling 224 px gives a crop of 97.00000000000001 px: clamped (PIL refuses)."""
    box = source_box(400, 97, (224, 224), "shorter_center_crop")
    assert box[1] >= 0.0 and box[3] <= 97.0 and box[0] >= 0.0 and box[2] <= 400.0
    out = resize_image(Image.fromarray(_textured(97, 400)), (224, 224), "shorter_center_crop")
    assert out.shape == (224, 224, 3)


def test_decode_resize_on_cpu_matches_pil_path() -> None:
    data = _jpeg(_textured(120, 90, seed=3))
    res = probe(data, (64, 64), "shorter_center_crop", CPU, 10**8)
    assert res.ok and res.mean_abs_diff < 0.5 and res.max_abs_diff <= 2, res
    out = decode_resize(data, (64, 64), "shorter_center_crop", CPU)
    assert out.shape == (3, 64, 64) and out.device.type == "cpu"


def test_normalise_tensor_equals_normalise() -> None:
    arr = _textured(16, 12)
    chw = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.25,))):
        assert torch.equal(normalise_tensor(chw, mean, std), normalise(arr, mean, std))


def test_gpu_decodable_only_plain_jpegs() -> None:
    arr = _textured(20, 30)
    assert gpu_decodable(_jpeg(arr), 10**8)
    assert not gpu_decodable(_jpeg(arr), 100)  # over max_image_pixels: the CPU path says so
    png = io.BytesIO()
    Image.fromarray(arr).save(png, "PNG")
    assert not gpu_decodable(png.getvalue(), 10**8)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert not gpu_decodable(_jpeg(arr, exif=exif.tobytes()), 10**8)
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, "JPEG")
    assert not gpu_decodable(cmyk.getvalue(), 10**8)
    assert not gpu_decodable(b"\xff\xd8\xff truncated", 10**8)


def test_resolve_without_cuda() -> None:
    kw = {"size": (8, 8), "mode": "direct", "max_pixels": 10**8}
    d = resolve_gpu_decode("auto", CPU, None, **kw)
    assert not d.enabled and "audit device is cpu" in d.reason
    assert d.to_json() == {"enabled": False, "setting": "auto", "reason": d.reason}
    off = resolve_gpu_decode(False, torch.device("cuda"), None, **kw)
    assert not off.enabled and "gpu_decode = false" in off.reason
    with pytest.raises(ValueError, match="needs a CUDA audit device"):
        resolve_gpu_decode(True, CPU, None, **kw)
    with pytest.raises(ValueError, match="gpu_decode"):
        resolve_gpu_decode("yes", CPU, None, **kw)
    no_jpeg = resolve_gpu_decode("auto", torch.device("cuda"), b"\x89PNG....", **kw)
    assert not no_jpeg.enabled and "not plain JPEG" in no_jpeg.reason


@pytest.mark.parametrize("value", ["auto", True, False])
def test_config_key(tmp_path: Path, value: object) -> None:
    root = _manifest(tmp_path)
    cfg = parse_data_section({"manifest": str(root / "m.csv"), "gpu_decode": value}, root, "c")
    assert cfg.gpu_decode == value


@pytest.mark.parametrize("value", ["yes", 1, "cuda", None])
def test_config_key_refused(tmp_path: Path, value: object) -> None:
    root = _manifest(tmp_path)
    with pytest.raises(ConfigError, match=r"\[data\] gpu_decode: must be"):
        parse_data_section({"manifest": str(root / "m.csv"), "gpu_decode": value}, root, "c")


def _manifest(tmp_path: Path, n: int = 4) -> Path:
    """JPEG images (a bright disc on texture, odd sizes) with PNG masks of the disc."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        h, w = (90 + 17 * i, 130 - 11 * i)
        yy, xx = np.mgrid[0:h, 0:w]
        disc = (yy - h * 0.45) ** 2 + (xx - w * 0.6) ** 2 <= (min(h, w) * 0.25) ** 2
        arr = _textured(h, w, seed=i) // 3
        arr[disc] = (240, 230, 220)
        (root / "img" / f"{i}.jpg").write_bytes(_jpeg(arr))
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "mask" / f"{i}.png")
        rows.append([f"img/{i}.jpg", "a" if i % 2 else "b", f"mask/{i}.png"])
    with open(root / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "label", "mask"], *rows])
    return root


@pytest.mark.parametrize("mode", ["direct", "shorter_center_crop"])
def test_dataset_device_path_aligned_with_cpu_path(tmp_path: Path, mode: str) -> None:
    """The dataset's decode_device path (here on the CPU): same masks, images within a level
    or two, and the bright disc of the image lies on the mask (alignment)."""
    root = _manifest(tmp_path)
    table = {"manifest": str(root / "m.csv"), "input_size": [48, 40], "resize": mode}
    ds = open_dataset(parse_data_section(table, root, "c.toml"))
    dev_ds = open_dataset(parse_data_section(table, root, "c.toml"))
    dev_ds.decode_device = CPU
    for i in range(len(ds)):
        a, b = ds.load(i), dev_ds.load(i)
        assert a.mask is not None and b.mask is not None
        assert torch.equal(a.mask, b.mask) and a.image_sha256 == b.image_sha256
        assert a.notes == b.notes and a.label == b.label
        # normalised units: one uint8 level is 1 / (255 * 0.225) = 0.017
        assert (a.image - b.image).abs().max() < 0.1
        img, mask = dev_ds.load_display(i)
        assert img.dtype == np.uint8 and img.shape == (48, 40, 3) and mask is not None
        bright = img.min(axis=2) > 180
        iou = (bright & mask).sum() / (bright | mask).sum()
        assert iou > 0.85, iou
    one = next(iter(iter_batches(dev_ds, list(range(len(dev_ds))), 4, pin_memory=False)))
    ref = next(iter(iter_batches(ds, list(range(len(ds))), 4, pin_memory=False)))
    assert torch.equal(one.masks, ref.masks) and (one.images - ref.images).abs().max() < 0.1


def test_dataset_device_path_leaves_exif_to_cpu(tmp_path: Path) -> None:
    """An EXIF-rotated JPEG goes through the CPU path (its notes say so) even with a device."""
    root = _manifest(tmp_path, n=1)
    arr = _textured(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 3  # 180°
    (root / "img" / "0.jpg").write_bytes(_jpeg(arr, exif=exif.tobytes()))
    (root / "m.csv").write_text("image,label\nimg/0.jpg,a\n")
    ds = open_dataset(parse_data_section({"manifest": str(root / "m.csv")}, root, "c.toml"))
    ds.decode_device = CPU
    sample = ds.load(0)
    assert any("EXIF orientation 3" in n for n in sample.notes)


def test_runner_decision_on_cpu(tmp_path: Path) -> None:
    from auditor.audit.runner import _gpu_decode_decision

    root = _manifest(tmp_path, n=1)
    for value, enabled in (("auto", False), (False, False)):
        ds = open_dataset(
            parse_data_section({"manifest": str(root / "m.csv"), "gpu_decode": value}, root, "c")
        )
        d = _gpu_decode_decision(ds, CPU, [0])
        assert d is not None and d.enabled is enabled and ds.decode_device is None
    ds = open_dataset(
        parse_data_section({"manifest": str(root / "m.csv"), "gpu_decode": True}, root, "c")
    )
    with pytest.raises(ConfigError, match="gpu_decode.*CUDA"):
        _gpu_decode_decision(ds, CPU, [0])
    assert _gpu_decode_decision(object(), CPU, [0]) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_cpu(tmp_path: Path) -> None:
    dev = torch.device("cuda")
    data = _jpeg(_textured(200, 300, seed=5))
    res = probe(data, (224, 224), "shorter_center_crop", dev, 10**8)
    assert res.ok, res
    d = resolve_gpu_decode(
        "auto", dev, data, size=(224, 224), mode="shorter_center_crop", max_pixels=10**8
    )
    assert d.enabled and "GPU decode" in d.reason
    root = _manifest(tmp_path)
    table = {"manifest": str(root / "m.csv"), "input_size": [48, 40]}
    ds = open_dataset(parse_data_section(table, root, "c.toml"))
    gpu = open_dataset(parse_data_section(table, root, "c.toml"))
    gpu.decode_device = dev
    for i in range(len(ds)):
        a, b = ds.load(i), gpu.load(i)
        assert b.image.device.type == "cuda"
        assert torch.equal(a.mask, b.mask)
        assert (a.image - b.image.cpu()).abs().mean() < 0.05
    batch = next(iter(iter_batches(gpu, list(range(len(gpu))), 4, pin_memory=True)))
    assert batch.images.device.type == "cuda"
