"""Detection audits end to end (issue 26): `auditor run` on COCO boxes.

* a tiny CenterNet-style detector TRAINED HERE (:mod:`auditor.demo.detection`) on scenes where
  ``boat`` and ``kite`` look the same and differ only by their context: the audit must find
  that ``boat`` is detected from its context and stay silent on ``kite``;
* random-weight torchvision detectors of each family run end to end at 64 px;
* bad input exits 2 naming the culprit; resume; load_run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auditor.cli import main
from auditor.demo.detection import train_detector, write_coco

CONFIG = """
[model]
{source}
task = "detection"
{model}
[data]
format = "coco"
root = "data"
annotations = "data/instances.json"
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[audit]
{audit}
{gates}
"""


def _write(root: Path, *, source: str, model: str = "", audit: str = "bootstrap = 500",
           gates: str = "",
           n_per_class: int = 20) -> Path:  # fmt: skip
    if not (root / "data" / "instances.json").is_file():
        write_coco(root / "data", n_per_class=n_per_class)
    cfg = root / "audit.toml"
    cfg.write_text(CONFIG.format(source=source, model=model, audit=audit, gates=gates))
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det")
    torch.save(train_detector(steps=300).state_dict(), root / "w.pt")
    return root


@pytest.mark.slow
def test_context_class_found_clean_class_silent(trained: Path) -> None:
    cfg = _write(
        trained,
        source='factory = "auditor.demo.detection:build_tiny_detector"\nweights = "w.pt"',
        gates="[gates]\nmax_context_recall_drop = 0.3\nmin_detection_recall = 0.5",
    )
    rc = main(["run", str(cfg), "--out", str(trained / "run"), "--quiet"])
    assert rc == 1  # the context gate fails for boat
    s = json.loads((trained / "run" / "summary.json").read_text())
    boat, kite = (s["classes"][c]["detection"] for c in ("boat", "kite"))
    assert boat["n_boxes"] == kite["n_boxes"] == 20
    assert boat["recall"] >= 0.6 and kite["recall"] >= 0.8
    assert boat["object_only_recall"] <= 0.2  # the planted reliance
    assert boat["context_recall_drop_ci"][0] > 0.1
    assert kite["object_only_recall"] >= 0.8
    serious = [f for f in s["findings"] if f["severity"] in ("high", "medium")]
    assert [(f["class"], f["kind"]) for f in serious] == [("boat", "detection_context_dependence")]
    assert "recall falls from" in serious[0]["message"]
    assert s["classes"]["boat"]["flagged"] and not s["classes"]["kite"]["flagged"]
    failed = [(g["rule"], g["class"]) for g in s["gates"]["results"] if not g["passed"]]
    assert failed == [("max_context_recall_drop", "boat")]
    assert s["detection"]["target_layer"] == "backbone"
    assert "one spatial grid" in s["detection"]["target_layer_explained"]
    # report and tables
    html = (trained / "run" / "report.html").read_text()
    assert "Detection" in html and "context" in html
    assert (trained / "run" / "report.pdf").is_file()
    import auditor

    run = auditor.load_run(trained / "run")
    rows = run.samples
    assert set(rows["kind"]) <= {"gt", "fp"} and set(rows["method"]) == {"gradcam", "eigencam"}
    gt = rows[(rows.kind == "gt") & (rows.method == "gradcam")]
    assert len(gt) == 40
    assert gt["object_only_detected"].notna().all()
    # recall in the summary is the share of found boxes in the rows
    assert boat["n_found"] == int(gt[gt.label_name == "boat"]["detected"].sum())


#: the R-CNN / RetinaNet / FCOS transforms resize to 800 px by default; the test images are 64 px
_SMALL = ", min_size = 64, max_size = 64"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("fasterrcnn_resnet50_fpn", "rpn_pre_nms_top_n_test = 50, rpn_post_nms_top_n_test = 20, "
                                    "box_detections_per_img = 3" + _SMALL),
        ("fasterrcnn_mobilenet_v3_large_fpn", "rpn_pre_nms_top_n_test = 50, "
                                              "rpn_post_nms_top_n_test = 20, "
                                              "box_detections_per_img = 3" + _SMALL),
        ("retinanet_resnet50_fpn", "score_thresh = 0.0, topk_candidates = 20, "
                                   "detections_per_img = 3" + _SMALL),
        ("fcos_resnet50_fpn", "score_thresh = 0.0, topk_candidates = 20, detections_per_img = 3"
                              + _SMALL),
        # the SSD family through SSDlite (SSD300's VGG16 is fixed at 300 px: a minute of CPU
        # here for the same code path)
        ("ssdlite320_mobilenet_v3_large", "detections_per_img = 3, topk_candidates = 20"),
    ],
)  # fmt: skip
def test_torchvision_families_random_weights(tmp_path: Path, arch: str, kwargs: str) -> None:
    cfg = _write(
        tmp_path,
        source=f'torchvision = "{arch}"\nrandom_weights = true',
        model=f"score_threshold = 0.0\nkwargs = {{{kwargs}}}",
        audit="bootstrap = 100",
        n_per_class=1,
    )
    rc = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-pdf", "--quiet"])
    assert rc == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    det = s["detection"]
    assert det["n_images"] == 2 and det["n_boxes"] == 2
    assert "levels" in det["target_layer_explained"]  # FPN / SSD feature dicts
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "run" / "samples.parquet").to_pandas()
    statuses = {"ok", "missed", "zero_map", "zero_gradient", "nonfinite", "empty_mask", "full_mask"}
    assert set(t.status) <= statuses
    explained = t[t.status != "missed"]
    assert len(explained) > 0  # at least one detection was explained (score threshold 0)
    ok = t[t.status == "ok"]
    assert ok["energy_in_mask"].between(0, 1).all()  # random FCOS boxes may all be empty
    assert t[t.status != "ok"]["energy_in_mask"].isna().all()  # undefined: NaN, never 0


def test_bad_inputs_exit_2_naming_the_culprit(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    tiny = 'factory = "auditor.demo.detection:build_tiny_detector"'
    cases = [
        (dict(source='torchvision = "fasterrcnn_resnet99"\nrandom_weights = true'),
         "fasterrcnn_resnet99"),
        (dict(source=tiny, model='target_layer = "nothere"'), "target_layer 'nothere'"),
        (dict(source=tiny, model="kwargs = {num_classes = 9}"), "labels"),
        (dict(source=tiny, audit='intervention_fill = "blur"'), "intervention_fill"),
    ]  # fmt: skip
    for i, (kw, culprit) in enumerate(cases):
        root = tmp_path / f"c{i}"
        root.mkdir()
        cfg = _write(root, n_per_class=1, **kw)
        if "num_classes = 9" in kw.get("model", ""):
            # a detector with 8 classes whose labels exceed the dataset's 2: force a detection
            cfg.write_text(cfg.read_text().replace("task =", "score_threshold = 0.0\ntask ="))
        rc = main(["run", str(cfg), "--out", str(root / "run"), "--no-pdf", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, (culprit, err)
        assert culprit in err, (culprit, err)
    # a COCO category that is not in [data] classes
    root = tmp_path / "cats"
    root.mkdir()
    cfg = _write(root, source=tiny, n_per_class=1)
    cfg.write_text(
        cfg.read_text().replace("input_size = 64", 'input_size = 64\nclasses = ["boat"]')
    )
    rc = main(["run", str(cfg), "--out", str(root / "run"), "--no-pdf", "--quiet"])
    assert rc == 2 and "'kite'" in capsys.readouterr().err


def test_resume_gives_the_same_summary(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path, source='factory = "auditor.demo.detection:build_tiny_detector"\n'
        "random_weights = true", model="score_threshold = 0.0", n_per_class=2,
        audit="bootstrap = 100\nbatch_size = 2",
    )  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf", "--quiet"]) == 0
    first = json.loads((out / "summary.json").read_text())
    (out / "summary.json").unlink()
    (out / "shards" / "part-00001.parquet").unlink()  # the second batch is lost
    assert main(["run", str(cfg), "--out", str(out), "--no-pdf", "--quiet", "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["classes"] == first["classes"] and again["detection"] == first["detection"]


def test_model_that_raises_is_named(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "raising_det.py").write_text(
        "import torch\n"
        "class Boom(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.backbone = torch.nn.Conv2d(3, 4, 3)\n"
        "    def forward(self, images):\n"
        "        self.backbone(torch.stack(images))\n"
        "        raise ValueError('head exploded')\n"
        "def build():\n"
        "    return Boom()\n"
    )
    cfg = _write(tmp_path, source='factory = "raising_det:build"', n_per_class=1,
                 audit="bootstrap = 100\nmax_failed_batches = 1")  # fmt: skip
    rc = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-pdf", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'build' raised on 2 images" in err and "head exploded" in err
