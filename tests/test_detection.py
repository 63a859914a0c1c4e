"""Detection audits (issue 26): IoU, matching, box masks, maps and config checks by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from auditor.cam.detection import DetectorCapture, LayerGrid, method_maps
from auditor.errors import ConfigError, ModelRuntimeError
from auditor.metrics.detection import box_iou, box_masks, match_detections


# ---------------------------------------------------------------------------------- IoU
def test_box_iou_hand_values() -> None:
    a = [[0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 1, 1]]
    b = [[1, 1, 3, 3], [5, 5, 6, 6]]
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(1 / 7)  # intersection 1, union 4 + 4 - 1
    assert iou[1, 0] == pytest.approx(4 / 16)  # contained: 4 / 16
    assert iou[2, 0] == 0.0  # touching at a corner: intersection 0
    assert iou[0, 1] == 0.0
    assert box_iou([[1, 1, 3, 4]], [[1, 1, 3, 4]])[0, 0] == pytest.approx(1.0)
    assert box_iou([[1, 1, 1, 4]], [[0, 0, 5, 5]])[0, 0] == 0.0  # degenerate box
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 2)


def test_box_iou_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"`a` must have shape \[N, 4\]"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="`b` must be finite"):
        box_iou([[0, 0, 1, 1]], [[0, 0, float("nan"), 1]])


# ----------------------------------------------------------------------------- matching
def test_match_greedy_by_score_class_aware() -> None:
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    dets = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [20, 0, 30, 10]]
    labels = [1, 1, 2, 1]
    scores = [0.6, 0.9, 0.8, 0.3]
    m = match_detections(gt, [1, 1], dets, labels, scores, iou_threshold=0.5,
                         score_threshold=0.5)  # fmt: skip
    # d1 (0.9) takes box 0 first (IoU 90 / 110), d0 (0.6) finds it taken: a false positive;
    # d2 has the wrong class; d3 is below the score threshold: box 1 is missed
    assert m.gt_match.tolist() == [1, -1]
    assert m.gt_iou[0] == pytest.approx(90 / 110)
    assert math.isnan(m.gt_iou[1])
    assert m.det_match.tolist() == [-1, 0, -1, -1]
    assert m.kept.tolist() == [True, True, True, False]
    assert m.false_positives.tolist() == [0, 2]


def test_match_iou_threshold_is_inclusive_and_best_iou_wins() -> None:
    gt = [[0, 0, 4, 2], [0, 0, 2, 2]]  # detection (0, 0, 2, 2): IoU 0.5 and 1.0
    m = match_detections(gt, [1, 1], [[0, 0, 2, 2]], [1], [0.7], iou_threshold=0.5)
    assert m.gt_match.tolist() == [-1, 0]
    m = match_detections([[0, 0, 4, 2]], [1], [[0, 0, 2, 2]], [1], [0.7], iou_threshold=0.5)
    assert m.gt_match.tolist() == [0]  # IoU exactly 0.5 matches
    m = match_detections([[0, 0, 4, 2]], [1], [[0, 0, 2, 2]], [1], [0.7], iou_threshold=0.51)
    assert m.gt_match.tolist() == [-1]


def test_match_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`iou_threshold` must be in"):
        match_detections([], [], [], [], [], iou_threshold=0)
    with pytest.raises(ValueError, match="`det_labels` and `det_scores` must have 1"):
        match_detections([], [], [[0, 0, 1, 1]], [1, 2], [0.5])


def test_box_masks_pixel_centres() -> None:
    m = box_masks([[1, 2, 3, 5], [0.6, 0, 1.4, 1]], 6, 6)
    assert m.shape == (2, 6, 6)
    assert m[0].sum() == 6  # columns 1..2, rows 2..4
    assert m[0, 2:5, 1:3].all()
    assert m[1].sum() == 0  # no pixel centre (0.5 or 1.5) lies in [0.6, 1.4)


# ------------------------------------------------------------------------- maps by hand
class _Fixed(nn.Module):
    """Backbone: 2 channels = the image's R and G planes (1 x 1 conv); detection j's score is
    ``sigmoid(w_j . A[:, i_j, c_j])``: two detections at two cells."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.zero_()
            self.backbone.weight[0, 0] = 1.0
            self.backbone.weight[1, 1] = 1.0
        self.w = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
        self.cells = [(0, 0), (1, 1)]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        a = self.backbone(torch.stack(images))[0]
        logits = torch.stack([self.w[j] @ a[:, i, c] for j, (i, c) in enumerate(self.cells)])
        return [{"boxes": torch.tensor([[0.0, 0, 1, 1], [1.0, 1, 2, 2]]),
                 "labels": torch.tensor([1, 1]), "scores": torch.sigmoid(logits)}]  # fmt: skip


def _image() -> torch.Tensor:
    img = torch.zeros(3, 2, 2)
    img[0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # R = p
    img[1] = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # G = q
    return img


def test_gradcam_of_each_detection_by_hand() -> None:
    model = _Fixed().eval()
    cap = DetectorCapture(model, None, "fixed")
    dets = cap.run(_image(), grad=True)
    p = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    acts = cap.activations()
    for j, ((i, c), w) in enumerate(zip(model.cells, model.w, strict=True)):
        a_ic = torch.stack([p[i, c], q[i, c]])
        s = torch.sigmoid(w @ a_ic)
        # dS/dA_k = s (1 - s) w_k at the detection's cell, 0 elsewhere; alpha_k = mean over 4
        alpha = s * (1 - s) * w / 4
        expected = torch.relu(alpha[0] * p + alpha[1] * q)
        assert float(dets.scores[j].detach()) == pytest.approx(float(s))
        got = method_maps(["gradcam"], acts, cap.gradients(dets.scores[j]), "backbone")
        torch.testing.assert_close(got["gradcam"], expected, rtol=1e-5, atol=1e-7)
    assert all(p_.grad is None for p_ in model.parameters())  # no gradient leaked
    assert not model.backbone._forward_hooks  # the hook is gone


def test_eigencam_rank_one_by_hand() -> None:
    """A_1 = 2 A_0 = 2p: centred X = (p - mean p) [1, 2]; v_1 = [1, 2] / sqrt 5; the map is
    ReLU(sqrt 5 (p - mean p)) (sign: positive correlation with the channel mean)."""
    p = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    acts = torch.stack([p, 2 * p])[None]
    got = method_maps(["eigencam"], acts, None, "x")["eigencam"]
    expected = torch.relu(math.sqrt(5) * (p - 1.5))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class _Fpn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 2, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # independent levels
        c0, c1, c2 = self.convs
        return {"0": c0(x), "1": c1(x[:, :, ::2, ::2]), "pool": c2(x[:, :, :1, :1])}


class _FpnDetector(nn.Module):
    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        self.backbone = _Fpn() if not flat else nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten())

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = self.backbone(torch.stack(images))
        s = torch.sigmoid((out["1"] if isinstance(out, dict) else out).sum())[None]
        return [{"boxes": torch.tensor([[0.0, 0, 2, 2]]), "labels": torch.tensor([1]),
                 "scores": s}]  # fmt: skip


def test_fpn_levels_upsampled_to_finest_and_explained() -> None:
    torch.manual_seed(0)
    cap = DetectorCapture(_FpnDetector().eval(), None, "fpn")
    dets = cap.run(torch.rand(3, 4, 4), grad=True)
    assert cap.grid == LayerGrid("backbone", "dict", ("0", "1", "pool"),
                                 ((2, 4, 4), (2, 2, 2), (2, 1, 1)))  # fmt: skip
    assert cap.grid.size == (4, 4)
    assert "upsampled bilinearly to the finest (4x4)" in cap.grid.explain()
    acts, grads = cap.activations(), cap.gradients(dets.scores[0])
    assert acts.shape == grads.shape == (1, 6, 4, 4)
    # the score reads level "1" only: the other levels' gradients are zero
    assert grads[0, :2].abs().sum() == 0 and grads[0, 4:].abs().sum() == 0
    assert grads[0, 2:4].abs().sum() > 0


def test_non_grid_layer_is_refused() -> None:
    cap = DetectorCapture(_FpnDetector(flat=True).eval(), None, "flat")
    with pytest.raises(ConfigError, match=r"target_layer 'backbone'.*not a spatial grid"):
        cap.run(torch.rand(3, 4, 4), grad=False)
    with pytest.raises(ConfigError, match="not a module of the detector"):
        DetectorCapture(_FpnDetector().eval(), "head", "x")


def test_detached_scores_refused_for_gradient_methods() -> None:
    cap = DetectorCapture(_Fixed().eval(), None, "fixed")
    dets = cap.run(_image(), grad=False)
    with pytest.raises(ModelRuntimeError, match="carry no gradient"):
        cap.gradients(dets.scores[0])


def test_wrong_detector_output_named() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Conv2d(3, 1, 1)

        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return self.backbone(torch.stack(images))

    with pytest.raises(ModelRuntimeError, match="model 'bad': a detector must return a list"):
        DetectorCapture(Bad(), None, "bad").run(torch.rand(3, 2, 2), grad=False)


# --------------------------------------------------------------------------------- config
_BASE = """
[model]
factory = "auditor.demo.detection:build_tiny_detector"
random_weights = true
task = "detection"
{model}
[data]
format = "{fmt}"
root = "."
{data}
input_size = 64
{rest}
"""


def _cfg(tmp_path, *, model="", fmt="coco", data=None, rest=""):  # type: ignore[no-untyped-def]
    from auditor.config import load_config
    from auditor.demo.detection import write_coco

    write_coco(tmp_path, n_per_class=1)
    if data is None:
        data = 'annotations = "instances.json"' if fmt == "coco" else 'manifest = "m.csv"'
    (tmp_path / "m.csv").write_text("image,label\nimages/0000.png,boat\n")
    text = _BASE.format(model=model, fmt=fmt, data=data, rest=rest)
    if "random_weights" in model:
        text = text.replace("random_weights = true\n", "", 1)
    (tmp_path / "c.toml").write_text(text)
    return load_config(tmp_path / "c.toml")


def test_config_defaults_and_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(tmp_path)
    assert cfg.model.task == "detection" and cfg.model.score_threshold == 0.5
    assert cfg.audit.methods == ("gradcam", "eigencam")
    cfg = _cfg(tmp_path, model="score_threshold = 0.3", rest='[audit]\nmethods = ["eigencam"]')
    assert cfg.model.score_threshold == 0.3 and cfg.audit.methods == ("eigencam",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "score_threshold = 1.5"}, r"\[model\] score_threshold must be in \[0, 1\)"),
        ({"fmt": "manifest"}, r"\[data\] format = 'manifest': a detection audit reads COCO"),
        ({"rest": '[audit]\nmethods = ["scorecam"]'}, r"methods \['scorecam'\] cannot explain"),
        ({"rest": "[gates]\nmin_accuracy = 0.5"}, r"\[gates\] min_accuracy does not apply"),
        ({"rest": "[gates]\nmax_only_fg_drop = 0.5"}, r"max_only_fg_drop does not apply"),
    ],
)
def test_config_refusals(tmp_path, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, **kwargs)


def test_task_typo_and_detection_keys_in_classification(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from auditor.config import parse_config

    raw = {"model": {"factory": "a:b", "task": "detectoin"},
           "data": {"format": "coco", "root": str(tmp_path), "annotations": "x.json"}}  # fmt: skip
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\[model\] task must be .*'detectoin'"):
        parse_config(raw, base_dir=tmp_path)
    raw["model"] = {"factory": "a:b", "score_threshold": 0.5}
    with pytest.raises(ConfigError, match=r"score_threshold = 0.5 applies to detectors only"):
        parse_config(raw, base_dir=tmp_path)
    raw["model"] = {"factory": "a:b"}
    raw["gates"] = {"min_detection_recall": 0.5}
    with pytest.raises(ConfigError, match=r"min_detection_recall is a detection gate"):
        parse_config(raw, base_dir=tmp_path)


def test_detection_gates_are_registered() -> None:
    from auditor.analysis.gate_registry import gate_spec

    spec = gate_spec("max_context_recall_drop")
    assert spec is not None and spec.quantity == "context_recall_drop" and spec.level == "class"
    assert gate_spec("min_detection_recall").bound == "min"  # type: ignore[union-attr]


# ------------------------------------------------------------------ statistics, findings
def _rows(found: list[int], obj: list[int], ctx: list[int], n_fp: int, label: int = 0):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    rows = [
        {"method": "gradcam", "kind": "gt", "label": label, "detected": bool(f),
         "object_only_detected": bool(o), "context_only_hit": bool(c),
         "status": "ok" if f else "missed", "index": i,
         "energy_in_mask": 0.5 if f else float("nan"), "background_focus": 0.5,
         "energy_lift": 2.0, "pointing_game": 1.0}
        for i, (f, o, c) in enumerate(zip(found, obj, ctx, strict=True))
    ] + [
        {"method": "gradcam", "kind": "fp", "label": label, "detected": None,
         "object_only_detected": None, "context_only_hit": None, "status": "ok", "index": 0,
         "energy_in_mask": 0.1, "background_focus": 0.9, "energy_lift": 0.5,
         "pointing_game": 0.0}
        for _ in range(n_fp)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows)


def _settings():  # type: ignore[no-untyped-def]
    from auditor.config import AuditSettings

    return AuditSettings(methods=("gradcam",), bootstrap=200, seed=0)


def test_class_stats_by_hand() -> None:
    from auditor.analysis.detection import class_detection_stats

    # 10 boxes, 8 found, 2 false positives; object only: 3 of them; context only: 1
    found = [1] * 8 + [0] * 2
    obj = [1, 1, 1] + [0] * 7
    ctx = [1] + [0] * 9
    d = class_detection_stats(_rows(found, obj, ctx, 2), 0, _settings())
    assert (d["n_boxes"], d["n_found"], d["n_false_positives"]) == (10, 8, 2)
    assert d["recall"] == 0.8
    assert d["recall_ci"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # Wilson 8/10
    assert d["precision"] == 0.8  # 8 / (8 + 2), same interval
    assert d["precision_ci"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert d["object_only_recall"] == 0.3
    assert d["context_recall_drop"] == pytest.approx(0.5)  # mean of found - found_obj
    lo, hi = d["context_recall_drop_ci"]
    assert 0 < lo < 0.5 < hi <= 1
    assert d["context_only_hit_rate"] == 0.1


def test_findings_fire_on_context_dependence_and_stay_silent_otherwise() -> None:
    import pyarrow as pa

    from auditor.analysis.detection import analyse_detection

    dep = _rows([1] * 20, [0] * 18 + [1] * 2, [0] * 20, 0, label=0)  # drop 0.9
    clean = _rows([1] * 20, [1] * 19 + [0], [0] * 20, 0, label=1)  # drop 0.05
    rows = pa.concat_tables([dep, clean])
    classes, overall, findings, block = analyse_detection(rows, ("boat", "kite"), _settings())
    assert [(f.cls, f.kind, f.severity) for f in findings] == [
        ("boat", "detection_context_dependence", "high")
    ]
    assert findings[0].id == "F1"
    assert "recall falls from 1.00 to 0.10 without context" in findings[0].message
    assert classes["boat"].flagged and not classes["kite"].flagged
    assert classes["kite"].extra["detection"]["context_recall_drop"] == pytest.approx(0.05)
    assert block["recall"] == 1.0 and block["n_boxes"] == 40
    assert overall.n == 40
    assert classes["boat"].stat("gradcam", "energy_in_mask").mean == pytest.approx(0.5)


def test_context_alone_rule_severity_depends_on_dependence() -> None:
    from auditor.analysis.detection import analyse_detection

    rows = _rows([1] * 20, [1] * 20, [1] * 12 + [0] * 8, 0)  # hit 0.6, no recall drop
    _, _, findings, _ = analyse_detection(rows, ("boat",), _settings())
    assert [(f.kind, f.severity) for f in findings] == [("detection_from_context_alone", "low")]
