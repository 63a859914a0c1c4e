"""The "bring your own data" example audits: every format runs end to end through the CLI, and
formats that encode the same masks give the same per-sample energy in the mask."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO / "example_audits" / "formats"
N_PER_CLASS = 3  # 12 images, the demo's first ones


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_examples", REPO / "scripts" / "make_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_examples", module)
    spec.loader.exec_module(module)
    return module


mk = _load_script()
NAMES = list(mk.EXAMPLES)
SAME_MASKS = ("csv-masks", "imagefolder", "coco", "voc")  # exact masks, different encodings
SUPERSETS = ("csv-boxes", "jsonl")  # boxes that contain the object: a superset of the mask


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("examples")
    configs = mk.make_examples(out, n_per_class=N_PER_CLASS)
    for config in configs.values():  # one gallery panel per class: format-specific display
        text = config.read_text(encoding="utf-8")  # path still covered, less drawing
        config.write_text(
            text.replace("[audit]\n", "[audit]\ngallery_per_class = 1\n", 1), encoding="utf-8"
        )
    return configs


_RUNS: dict[str, tuple[int, Path]] = {}


def _run(generated: dict[str, Path], name: str, tmp_root: Path) -> tuple[int, Path]:
    """Run one example through the CLI once per module (the runs are shared by the tests)."""
    if name not in _RUNS:
        from auditor.cli import main

        out = tmp_root / f"run-{name}"
        rc = main(
            [
                "run",
                str(generated[name]),
                "--out",
                str(out),
                "--limit",
                "12",
                "--no-pdf",
                "--no-progress",
            ]
        )
        _RUNS[name] = (rc, out)
    return _RUNS[name]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _RUNS.clear()
    return tmp_path_factory.mktemp("runs")


def _energy(run_dir: Path, key: str = "name") -> dict[str, tuple[float, float]]:
    """``{sample key: (energy_in_mask, mask_area)}`` of the primary method."""
    table = pq.read_table(run_dir / "samples.parquet").to_pylist()
    out = {}
    for row in table:
        if row["method"] != "gradcam":
            continue
        k = Path(row["id"]).stem if key == "name" else str(row["index"])
        out[k] = (row["energy_in_mask"], row["mask_area"])
    return out


# --------------------------------------------------------------------------------------------
# the committed examples


def test_every_example_folder_has_a_writer_and_a_config() -> None:
    folders = sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir())
    assert folders == sorted(NAMES)
    for name in NAMES:
        text = (EXAMPLES_DIR / name / "config.toml").read_text(encoding="utf-8")
        assert f"example_audits/formats/{name}/config.toml" in text  # the run command is shown
    ignore = (EXAMPLES_DIR / ".gitignore").read_text(encoding="utf-8").split()
    assert "*/data/" in ignore
    assert (EXAMPLES_DIR / "README.md").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_through_the_cli(
    name: str, generated: dict[str, Path], run_root: Path
) -> None:
    rc, out = _run(generated, name, run_root)
    assert rc in (0, 1), f"{name}: exit code {rc}"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["dataset"]["n_evaluated"] > 0
    assert summary["dataset"]["n_skipped"] == 0, summary["dataset"]["skipped"]
    assert summary["dataset"]["annotated"] is True
    assert (out / "report.html").is_file()
    if name != "torchvision-resnet18":
        assert summary["dataset"]["n_evaluated"] == 12
        # the demo model and its planted shortcut: triangle is flagged in every format
        assert summary["classes"]["triangle"]["flagged"] is True
        assert rc == 1  # max_background_focus = 0.7 fails on triangle
    else:
        assert summary["model"]["source"] == "torchvision:resnet18"
        assert summary["model"]["num_classes"] == 4
        assert summary["model"]["target_layer"] == "layer4"


def test_same_masks_give_the_same_energy_in_mask(
    generated: dict[str, Path], run_root: Path
) -> None:
    """csv-masks, imagefolder, coco (RLE + polygons) and voc (SegmentationObject) encode the
    same pixels and masks: per-sample energy_in_mask must agree to 1e-6."""
    ref = _energy(_run(generated, "csv-masks", run_root)[1])
    assert len(ref) == 12
    assert all(np.isfinite(e) and 0 < a < 1 for e, a in ref.values())
    for name in SAME_MASKS[1:]:
        other = _energy(_run(generated, name, run_root)[1])
        assert set(other) == set(ref), name
        for key, (e_ref, a_ref) in ref.items():
            e, a = other[key]
            assert a == pytest.approx(a_ref, abs=1e-9), (name, key)
            assert e == pytest.approx(e_ref, abs=1e-6), (name, key)


def test_box_annotations_contain_the_object(generated: dict[str, Path], run_root: Path) -> None:
    """Boxes differ from masks by design: they contain the object, so the mask area and the
    energy inside can only grow, and they do grow for non-rectangular shapes."""
    ref = _energy(_run(generated, "csv-masks", run_root)[1])
    for name in SUPERSETS:
        other = _energy(_run(generated, name, run_root)[1])
        assert set(other) == set(ref)
        grew = 0
        for key, (e_ref, a_ref) in ref.items():
            e, a = other[key]
            assert a >= a_ref - 1e-9 and e >= e_ref - 1e-6, (name, key)
            grew += a > a_ref + 1e-9
        assert grew >= 6, f"{name}: boxes equal to the masks on {12 - grew}/12 samples"
    # the trimap boundary band counts as object (trimap_boundary = "foreground")
    tri = _energy(_run(generated, "trimap", run_root)[1], key="index")
    ref_by_index = _energy(_run(generated, "csv-masks", run_root)[1], key="index")
    assert set(tri) == set(ref_by_index)
    for key, (e_ref, a_ref) in ref_by_index.items():
        assert tri[key][1] > a_ref and tri[key][0] >= e_ref - 1e-6


def test_per_class_csv_from_a_real_run(
    generated: dict[str, Path], run_root: Path, tmp_path: Path
) -> None:
    import csv

    from auditor.export import write_per_class_csv

    _, out = _run(generated, "csv-masks", run_root)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    path = write_per_class_csv(summary, tmp_path / "classes.csv")
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    header = rows[0]
    assert [r[0] for r in rows[1:]] == list(summary["classes"])
    for r in rows[1:]:
        rec = dict(zip(header, r))
        cls = summary["classes"][rec["class"]]
        assert int(rec["n"]) == cls["n"]
        stat = cls["metrics"]["gradcam"]["background_focus"]
        assert float(rec["background_focus_mean"]) == stat["mean"]
        assert float(rec["background_focus_ci_low"]) <= float(rec["background_focus_mean"])
        assert float(rec["only_bg_accuracy"]) == cls["interventions"]["only_bg_accuracy"]


# --------------------------------------------------------------------------------------------
# the generator's helpers, on hand-made masks


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


def test_bounding_box_and_bands() -> None:
    m = _mask(["......", ".#....", ".##...", ".###..", "......"])
    assert mk.bounding_box(m) == (1, 1, 4, 4)
    assert mk.band_boxes(m, 3) == [(1, 1, 2, 2), (1, 2, 3, 3), (1, 3, 4, 4)]
    assert mk.band_boxes(m, 1) == [(1, 1, 4, 4)]
    with pytest.raises(ValueError, match="`mask` is empty"):
        mk.bounding_box(np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"`mask` must have shape \[H, W\], got \(2, 2, 2\)"):
        mk.bounding_box(np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="`bands` must be >= 1, got 0"):
        mk.band_boxes(m, 0)


def test_outline_polygon_by_hand() -> None:
    square = _mask(["....", ".##.", ".##.", "...."])
    assert mk.outline_polygon(square) == [1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]
    ell = _mask(["#..", "##."])  # L shape: 6 corners, clockwise (y down)
    assert mk.outline_polygon(ell) == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 0.0, 2.0]
    assert mk.outline_polygon(_mask(["#.#"])) is None  # two regions
    assert mk.outline_polygon(_mask(["###", "#.#", "###"])) is None  # a hole
    assert mk.outline_polygon(_mask(["#.", ".#"])) is None  # touching by a corner only
    assert mk.outline_polygon(np.zeros((2, 2), bool)) is None


def test_outline_polygon_decodes_to_the_mask_with_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    from auditor import demo

    _, masks, _ = demo.generate_arrays(2, seed=7)
    for m in masks:
        poly = mk.outline_polygon(m)
        assert poly is not None
        h, w = m.shape
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))
        assert np.array_equal(decoded.astype(bool), m)


def test_generation_is_deterministic_and_validated(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {
            p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    first = mk.make_examples(tmp_path / "a", names=["coco", "voc", "trimap"], n_per_class=1)
    mk.make_examples(tmp_path / "b", names=["coco", "voc", "trimap"], n_per_class=1)
    assert list(first) == ["coco", "voc", "trimap"]
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    doc = json.loads((tmp_path / "a" / "coco" / "data" / "annotations.json").read_text())
    kinds = [type(ann["segmentation"]).__name__ for ann in doc["annotations"]]
    assert kinds == ["dict", "list", "dict", "list"]  # RLE for even images, polygons for odd
    with pytest.raises(ValueError, match="`names` must be among .* got 'parquet'"):
        mk.make_examples(tmp_path / "c", names=["parquet"])
    with pytest.raises(ValueError, match="`n_per_class` must be >= 1, got 0"):
        mk.make_examples(tmp_path / "c", n_per_class=0)
