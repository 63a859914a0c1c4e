"""Multi-label statistics, config and data (issue 26): numbers against scikit-learn and hand
tables, "not estimable" never a number, and bad input refused naming the culprit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from auditor.analysis.multilabel import auroc_delong, average_precision, label_statistics
from auditor.config import parse_config
from auditor.data.config import parse_data_section
from auditor.data.multilabel import open_multilabel_dataset, split_label_names
from auditor.errors import ConfigError, DataError


def test_auroc_and_ap_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y = rng.random(n) < 0.4
        y[0], y[1] = True, False
        s = np.round(rng.random(n) + 0.5 * y, 1)  # rounding makes ties
        auc = auroc_delong(s, y)
        assert auc is not None
        assert auc[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12), trial
        assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_delong_interval_hand_table() -> None:
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2: psi has 8 ones of 9 -> A = 8/9;
    # V10 = (1, 1, 2/3), V01 = (2/3, 1, 1): s^2 = 1/27 each, Var = 1/81 + 1/81 = 2/81
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    y = np.array([True, True, True, False, False, False])
    auc, lo, hi = auroc_delong(s, y, confidence=0.95)  # type: ignore[misc]
    half = 1.959963984540054 * math.sqrt(2 / 81)
    assert auc == pytest.approx(8 / 9)
    assert lo == pytest.approx(8 / 9 - half)
    assert hi == pytest.approx(1.0)  # 8/9 + half > 1: clipped


def test_average_precision_hand_table() -> None:
    # ranked: 0.9 (+), 0.8 (-), 0.7 (+), 0.1 (-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    s = np.array([0.9, 0.8, 0.7, 0.1])
    y = np.array([True, False, True, False])
    assert average_precision(s, y) == pytest.approx(5 / 6)
    assert average_precision(s, np.zeros(4, bool)) is None
    assert auroc_delong(s, np.zeros(4, bool)) is None
    assert auroc_delong(s, np.ones(4, bool)) is None


def _rows(labels: list[int], pos: list[bool], p: list[float]) -> pa.Table:
    n = len(labels)
    return pa.table(
        {
            "method": ["gradcam"] * n,
            "label": pa.array(labels, pa.int64()),
            "confidence": p,
            "positive": pos,
            "explained": ["positive" if v else "" for v in pos],
            "image_index": pa.array([i // 2 for i in range(n)], pa.int64()),
            "only_fg_confidence": [np.nan] * n,
            "only_bg_confidence": [np.nan] * n,
            "background_focus": [np.nan] * n,
        }
    )


def test_label_statistics_table_and_not_estimable() -> None:
    # 4 images x 2 labels; label a: truth (1, 1, 0, 0), scores (.9, .4, .6, .1) at t = .5:
    # TP 1, FN 1, TN 1, FP 1. Label b: no image carries it.
    labels = [0, 1] * 4
    pos = [True, False, True, False, False, False, False, False]
    p = [0.9, 0.2, 0.4, 0.3, 0.6, 0.1, 0.1, 0.05]
    out = label_statistics(_rows(labels, pos, p), ["a", "b"], primary="gradcam", threshold=0.5)
    a, b = out["labels"]["a"], out["labels"]["b"]
    assert out["n_images"] == 4
    assert a["n_positive"] == 2 and a["n_predicted"] == 2
    assert a["sensitivity"]["value"] == pytest.approx(0.5)
    assert a["specificity"]["value"] == pytest.approx(0.5)
    assert a["prevalence"]["value"] == pytest.approx(0.5)
    assert a["auroc"]["value"] == pytest.approx(roc_auc_score([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]))
    assert a["average_precision"]["value"] == pytest.approx(
        average_precision_score([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1])
    )
    # Wilson 1/2 at 95 %: (0.0945, 0.9055)
    assert a["sensitivity"]["ci_low"] == pytest.approx(0.0945, abs=1e-4)
    assert a["sensitivity"]["ci_high"] == pytest.approx(0.9055, abs=1e-4)
    for key in ("sensitivity", "auroc", "average_precision"):
        assert b[key]["value"] is None and b[key]["not_estimable"], key
    assert b["specificity"]["value"] == pytest.approx(1.0)


def test_split_label_names() -> None:
    assert split_label_names(" a; b;;a ;c") == ("a", "b", "c")
    assert split_label_names("") == ()


BASE = """
[model]
factory = "x:y"
{model}
[data]
manifest = "m.csv"
[audit]
{audit}
"""


def _cfg(tmp_path: Path, model: str = "", audit: str = "") -> object:
    import tomllib

    (tmp_path / "m.csv").write_text("image,labels\na.png,x\n")
    raw = tomllib.loads(BASE.format(model=model, audit=audit))
    return parse_config(raw, base_dir=tmp_path, source="c.toml")


def test_config_output_strict(tmp_path: Path) -> None:
    assert _cfg(tmp_path).model.output == "softmax"  # type: ignore[attr-defined]
    assert _cfg(tmp_path, 'output = "sigmoid"').model.output == "sigmoid"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"\[model\] output .*'sigmoid'.*got 'sigmoïd'"):
        _cfg(tmp_path, 'output = "sigmoïd"')
    with pytest.raises(ConfigError, match=r"\[model\] output must be str"):
        _cfg(tmp_path, "output = 1")
    with pytest.raises(ConfigError, match=r"explain_negatives = 2 needs \[model\] output"):
        _cfg(tmp_path, audit="explain_negatives = 2")
    with pytest.raises(ConfigError, match=r"threshold = 0.3 needs"):
        _cfg(tmp_path, audit="threshold = 0.3")
    with pytest.raises(ConfigError, match=r"target = 'predicted' is not supported"):
        _cfg(tmp_path, 'output = "sigmoid"', 'target = "predicted"')
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 1\), got 1.5"):
        _cfg(tmp_path, 'output = "sigmoid"', "threshold = 1.5")
    with pytest.raises(ConfigError, match=r"explain_negatives must be >= 0"):
        _cfg(tmp_path, 'output = "sigmoid"', "explain_negatives = -1")


def _data(tmp_path: Path, text: str, name: str = "m.csv", **extra: object) -> object:
    (tmp_path / name).write_text(text)
    table = {"manifest": name, **extra}
    return parse_data_section(table, tmp_path, "c.toml")


def test_unknown_label_names_file_line_and_value(tmp_path: Path) -> None:
    cfg = _data(tmp_path, "image,labels\na.png,x;y\nb.png,x;zebra\n", classes=["x", "y"])
    with pytest.raises(DataError, match=r"m\.csv: manifest line 3: unknown label 'zebra'"):
        open_multilabel_dataset(cfg)  # type: ignore[arg-type]
    cfg = _data(tmp_path, '{"image": "a.png", "labels": ["x", "cat"]}\n', "m.jsonl", classes=["x"])
    with pytest.raises(DataError, match=r"m\.jsonl: manifest line 1: unknown label 'cat'"):
        open_multilabel_dataset(cfg)  # type: ignore[arg-type]


def test_bad_multilabel_manifests(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs the columns `image` and `labels`"):
        open_multilabel_dataset(_data(tmp_path, "image,label\na.png,x\n"))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"line 2: `masks` has 1 entries for 2 labels"):
        open_multilabel_dataset(
            _data(tmp_path, "image,labels,masks\na.png,x;y,m.png\n")  # type: ignore[arg-type]
        )
    with pytest.raises(DataError, match=r"`masks` names 'y', which is not one of"):
        open_multilabel_dataset(
            _data(
                tmp_path, '{"image": "a.png", "labels": "x", "masks": {"y": "m.png"}}\n', "m.jsonl"
            )  # type: ignore[arg-type]
        )


def test_labels_column_with_softmax_is_refused(tmp_path: Path) -> None:
    from auditor.data import open_dataset

    cfg = _data(tmp_path, "image,labels\na.png,x;y\n")
    with pytest.raises(DataError, match=r'`labels` column .* needs \[model\] output = "sigmoid"'):
        open_dataset(cfg)  # type: ignore[arg-type]


def test_coco_label_sets_and_unknown_category(tmp_path: Path) -> None:
    import json

    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 2, "name": "dog"},
            {"id": 3, "name": "owl"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 4, 4]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 4, 4]},
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(doc))
    cfg = parse_data_section(
        {"format": "coco", "annotations": "c.json", "root": ".", "input_size": 8}, tmp_path, "c"
    )
    ds = open_multilabel_dataset(cfg)
    assert ds.classes == ("cat", "dog", "owl")
    sample = ds.load(0)
    assert sample.label_set == (0, 1)
    assert sample.label_has_mask == (True, True, False)
    assert sample.label_masks is not None
    assert sample.label_masks[1, :4, :4].all() and not sample.label_masks[1, 4:, 4:].any()
    assert sample.label_masks[0, 4:, 4:].all() and not sample.label_masks[0, :4, :4].any()
    doc["annotations"].append({"id": 3, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]})
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"c\.json: annotation 3 of image 1 has unknown category_id 9"
    ):
        open_multilabel_dataset(cfg)
