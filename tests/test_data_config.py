"""[data] section parsing: defaults, inference, and errors naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.data import DataConfig, parse_data_section
from auditor.errors import ConfigError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.csv").write_text("image,label\n")
    (tmp_path / "data" / "m.jsonl").write_text("")
    (tmp_path / "classes.txt").write_text("cat\n\n<b>dog</b>\n")
    return tmp_path


def test_manifest_alone_infers_format_and_root(base: Path) -> None:
    cfg = parse_data_section({"manifest": "data/m.csv"}, base, "config.toml")
    assert cfg == DataConfig(format="manifest", root=base / "data", manifest=base / "data/m.csv")
    assert cfg.input_size == (224, 224) and cfg.resize == "direct"
    cfg = parse_data_section({"manifest": "data/m.jsonl", "root": "."}, base, "c.toml")
    assert cfg.format == "jsonl" and cfg.root == base


def test_values(base: Path) -> None:
    cfg = parse_data_section(
        {
            "manifest": "data/m.csv",
            "input_size": [32, 48],
            "mean": [0, 0.5, 1],
            "std": [1, 2, 3],
            "classes_file": "classes.txt",
            "mask_resize": True,
            "max_image_pixels": 100,
        },
        base,
        "c.toml",
    )
    assert cfg.input_size == (32, 48) and cfg.mean == (0.0, 0.5, 1.0) and cfg.std == (1, 2, 3)
    assert cfg.classes == ("cat", "<b>dog</b>") and cfg.mask_resize and cfg.max_image_pixels == 100


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"maniefst": "data/m.csv"},
            "config.toml: unknown key [data] maniefst (did you mean 'manifest'?)",
        ),
        ({"manifest": "data/m.txt"}, "[data] manifest: cannot infer the format"),
        ({"manifest": "data/nope.csv"}, "[data] manifest: file not found"),
        ({"format": "cocoa", "root": "."}, "did you mean 'coco'"),
        ({"format": "coco", "root": "."}, "[data] annotations: required"),
        ({"format": "voc"}, "[data] root: required"),
        ({"manifest": "data/m.csv", "input_size": 0}, "[data] input_size: must be > 0, got 0"),
        ({"manifest": "data/m.csv", "input_size": [1, 2, 3]}, "[data] input_size"),
        ({"manifest": "data/m.csv", "input_size": True}, "[data] input_size"),
        ({"manifest": "data/m.csv", "std": [1, 0, 1]}, "[data] std: values must be finite and > 0"),
        ({"manifest": "data/m.csv", "mean": [1, 2]}, "[data] mean: must be a list of 3 numbers"),
        ({"manifest": "data/m.csv", "classes": ["a", "a"]}, "[data] classes: duplicate"),
        ({"manifest": "data/m.csv", "classes": []}, "[data] classes"),
        ({"manifest": "data/m.csv", "classes": ["a"], "classes_file": "classes.txt"}, "not both"),
        ({"manifest": "data/m.csv", "resize": "crop"}, "[data] resize: must be one of"),
        (
            {"manifest": "data/m.csv", "label_rule": "first"},
            "[data] label_rule: only valid with format ['coco']",
        ),
        (
            {"manifest": "data/m.csv", "mask_resize": "yes"},
            "[data] mask_resize: must be true or false",
        ),
        ({"format": "imagefolder", "root": "nope"}, "[data] root: directory not found"),
        ({"format": "voc", "root": ".", "split": "../x"}, "[data] split"),
        ({"manifest": "data/m.csv", "max_image_pixels": -1}, "[data] max_image_pixels"),
    ],
)
def test_errors_name_the_key(base: Path, table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_data_section(table, base, "config.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("config.toml: ")
