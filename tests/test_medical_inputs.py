"""Grey and medical inputs (issue 11): [data] channels = 1, 16-bit data by its true range,
DICOM (rescale slope/intercept, window, MONOCHROME1) checked against hand-computed values, and
a 1-channel audit of DICOM images end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data.images import decode_image, scale_high_bit_depth
from auditor.data.transforms import normalise
from auditor.errors import ConfigError

pydicom = pytest.importorskip("pydicom")


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
) -> Path:
    """A minimal uncompressed 16-bit (12 bits stored) DICOM file written with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)


def test_dicom_rescale_and_window_hand_values(tmp_path: Path) -> None:
    # u = 2 v - 1024 = [-1024, 976, 2976, 7166]; window c = 2000, w = 4001:
    # y = (u - 1999.5) / 4000 + 0.5 clipped = [0, 0.2441, 0.7441, 1] -> x 255 = [0, 62, 190, 255]
    path = write_dicom(tmp_path / "a.dcm", STORED, slope=2, intercept=-1024, window=(2000, 4001))
    decoded = decode_image(path.read_bytes(), 10_000)
    grey = np.asarray(decoded.image)[..., 0]
    u = 2.0 * STORED - 1024
    expected = np.rint(np.clip((u - 1999.5) / 4000 + 0.5, 0, 1) * 255).astype(np.uint8)
    assert expected.tolist() == [[0, 62], [190, 255]]  # hand check of the formula
    np.testing.assert_array_equal(grey, expected)
    assert any("window" in n for n in decoded.notes)


def test_dicom_monochrome1_inverted_and_no_window_min_max(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm", STORED, photometric="MONOCHROME1")
    decoded = decode_image(path.read_bytes(), 10_000)
    grey = np.asarray(decoded.image)[..., 0]
    plain = np.rint(STORED / 4095 * 255).astype(np.uint8)  # min..max = 0..4095
    np.testing.assert_array_equal(grey, 255 - plain)
    assert any("MONOCHROME1" in n for n in decoded.notes)


def test_dicom_garbage_is_a_skip_reason(tmp_path: Path) -> None:
    from auditor.data.images import BadSample

    data = b"\0" * 128 + b"DICM" + b"\x02\x00garbage"
    with pytest.raises(BadSample, match="DICOM"):
        decode_image(data, 10_000)


def test_12_bit_png_scaled_by_true_range(tmp_path: Path) -> None:
    arr = np.array([[0, 2048], [4095, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    decoded = decode_image((tmp_path / "x.png").read_bytes(), 10_000)
    grey = np.asarray(decoded.image)[..., 0]
    np.testing.assert_array_equal(grey, np.rint(arr / 4095 * 255).astype(np.uint8))
    assert "12-bit" in decoded.notes[-1]
    full, note = scale_high_bit_depth(np.array([[0, 65535]], dtype=np.uint16))
    assert full.tolist() == [[0, 255]] and "16-bit" in note


def test_normalise_one_channel_is_luma() -> None:
    img = np.zeros((1, 2, 3), dtype=np.uint8)
    img[0, 0] = (100, 100, 100)
    img[0, 1] = (255, 0, 0)
    x = normalise(img, [0.5], [0.25])
    assert x.shape == (1, 1, 2)
    torch.testing.assert_close(
        x[0, 0], torch.tensor([(100 / 255 - 0.5) / 0.25, (0.299 - 0.5) / 0.25])
    )


def test_channels_config_validation(tmp_path: Path) -> None:
    from auditor.data.config import parse_data_section

    (tmp_path / "m.csv").write_text("image,label\n")
    base = {"manifest": "m.csv"}
    cfg = parse_data_section({**base, "channels": 1, "mean": [0.5], "std": [0.2]}, tmp_path, "c")
    assert cfg.channels == 1 and cfg.mean == (0.5,)
    with pytest.raises(ConfigError, match="channels = 1 needs `mean` and `std`"):
        parse_data_section({**base, "channels": 1}, tmp_path, "c")
    with pytest.raises(ConfigError, match="1 numbers"):
        parse_data_section({**base, "channels": 1, "mean": [0.5] * 3, "std": [1]}, tmp_path, "c")
    with pytest.raises(ConfigError, match="must be 1 or 3"):
        parse_data_section({**base, "channels": 2}, tmp_path, "c")


def test_run_one_channel_dicom_audit(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from auditor.cli import main

    rng = np.random.default_rng(0)
    rows = ["image,label,mask"]
    for i in range(6):
        img = rng.integers(0, 1500, size=(48, 48)).astype(np.uint16)
        mask = np.zeros((48, 48), dtype=np.uint8)
        x0 = 4 + 4 * i
        img[8:30, x0 : x0 + 16] += 2000
        mask[8:30, x0 : x0 + 16] = 255
        photometric = "MONOCHROME1" if i % 2 else "MONOCHROME2"
        write_dicom(tmp_path / f"x{i}.dcm", img, photometric=photometric, window=(2000, 4000))
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        rows.append(f"x{i}.dcm,{'lesion' if i % 2 else 'normal'},m{i}.png")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "audit.toml").write_text(
        """[model]
timm = "test_resnet"
random_weights = true

[data]
manifest = "manifest.csv"
channels = 1
mean = [0.5]
std = [0.25]
input_size = 64

[audit]
methods = ["gradcam"]
batch_size = 6
bootstrap = 50
faithfulness_samples = 2
faithfulness_steps = 4
sanity_samples = 2
clusters = false
gallery_per_class = 1

[gates]
require_interpretable = false  # random weights on six images: not interpretable on purpose
"""
    )
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "audit.toml"), "--out", str(out), "--no-pdf"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["n_evaluated"] == 6
    assert summary["model"]["target_layer"] == "layer4"
    # the default cascade re-draws the head and the target layer's block (was ["fc"]: head only)
    assert summary["sanity_status"]["randomised"] == ["fc", "layer4"]
    assert summary["sanity"]["gradcam"]["randomise"] == "cascade"
