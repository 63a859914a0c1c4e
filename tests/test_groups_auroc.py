"""Class × group AUROC (DeLong) and class-wise ECE (issue 24), against scikit-learn,
brute-force pair counts and hand-computed small tables; the stored probabilities."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from auditor.analysis.groups import analyse_groups
from auditor.analysis.groups.auroc import auroc_ci, class_scores
from auditor.analysis.groups.stats import ece, ece_ci
from auditor.group_results import GroupsResult

Z95 = 1.959963984540054


def _brute(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """AUROC and DeLong variance straight from the pair kernel psi (no ranks)."""
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return float(psi.mean()), v10.var(ddof=1) / x.size + v01.var(ddof=1) / y.size


def test_auroc_hand_computed_table_with_a_tie() -> None:
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs 1 + 1 + 0.5 (tie) + 1 = 3.5 of 4
    # V10 = (1, 0.75), V01 = (0.25, 0): s10² = s01² = 0.03125; Var = 0.03125/2 + 0.03125/2
    est, note = auroc_ci(np.array([0.9, 0.5]), np.array([0.5, 0.1]), 0.95)
    assert note == "" and est.value == pytest.approx(0.875)
    half = Z95 * math.sqrt(0.03125)
    assert est.low == pytest.approx(0.875 - half)
    assert est.high == 1.0  # 0.875 + 0.3465 clipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_against_sklearn_and_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(0.6, 0.2, 37), 1)  # rounded: many ties within and across
    y = np.round(rng.normal(0.4, 0.2, 53), 1)
    est, _ = auroc_ci(x, y, 0.9)
    truth = roc_auc_score(np.r_[np.ones(x.size), np.zeros(y.size)], np.r_[x, y])
    auc, var = _brute(x, y)
    assert est.value == pytest.approx(truth) == pytest.approx(auc)
    z = 1.6448536269514722
    assert est.low == pytest.approx(max(0.0, auc - z * math.sqrt(var)))
    assert est.high == pytest.approx(min(1.0, auc + z * math.sqrt(var)))


def test_auroc_not_estimable_never_a_number() -> None:
    est, note = auroc_ci(np.array([0.3, 0.9]), np.array([]), 0.95)
    assert est.value is None and est.low is None and note.startswith("not estimable")
    est, note = auroc_ci(np.array([]), np.array([0.1]), 0.95)
    assert est.value is None and "no positive" in note
    with pytest.raises(ValueError, match="finite"):
        auroc_ci(np.array([np.nan]), np.array([0.1]), 0.95)


def test_classwise_ece_hand_computed() -> None:
    # p_c = 0.85, 0.95 (label c: yes, no), 0.15 (no), 0.05 (no):
    # bin (0.8, 0.9]: |1 - 0.85| = 0.15; (0.9, 1]: |0 - 0.95| = 0.95; (0.1, 0.2]: 0.15;
    # (0, 0.1]: 0.05 -> ECE = (0.15 + 0.95 + 0.15 + 0.05) / 4
    p = np.array([0.85, 0.95, 0.15, 0.05])
    y = np.array([1.0, 0.0, 0.0, 0.0])
    assert ece(p, y) == pytest.approx(1.30 / 4)


def _scores_frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    n, k = 240, 3
    label = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[label]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    site = np.where(np.arange(n) < 120, "A", "B")
    # site C: only class 0 (one class only: AUROC not estimable, never a number)
    label[200:] = 0
    site[200:] = "C"
    pred = probs.argmax(1)
    frame = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": label, "pred": pred,
        "correct": pred == label, "pred_confidence": probs.max(1), "group_site": site,
        "label_confidence": probs[np.arange(n), label],
    })  # fmt: skip
    return frame, probs


def _full(frame: pd.DataFrame, probs: np.ndarray) -> object:
    order = np.argsort(-probs, axis=1)
    return class_scores(
        probs.shape[1],
        frame["label"].to_numpy(),
        frame["label_confidence"].to_numpy(),
        pa.array(order.tolist(), pa.list_(pa.int32())),
        pa.array(np.take_along_axis(probs, order, 1).tolist(), pa.list_(pa.float32())),
    )


def test_class_cells_auroc_and_ece_against_sklearn() -> None:
    frame, probs = _scores_frame()
    res = analyse_groups(frame, ["site"], ["a", "b", "c"], n_boot=200, scores=_full(frame, probs))
    cells = {(c.cls, c.level): c for c in res.attribute("site").classes}
    site = frame["group_site"].to_numpy()
    for lev in ("A", "B"):
        rows = site == lev
        for c, name in enumerate("abc"):
            cell = cells[(name, lev)]
            y = frame["label"].to_numpy()[rows] == c
            p = probs[rows, c].astype(np.float32).astype(np.float64)
            assert cell.auroc.value == pytest.approx(roc_auc_score(y, p))
            assert cell.auroc_note == ""
            assert cell.auroc.low < cell.auroc.value <= cell.auroc.high
            assert cell.ece.value == pytest.approx(ece(p, y.astype(float)))
            # the plug-in ECE is biased upwards (Kumar et al. 2019): the percentile interval
            # of its replicates may lie above the estimate, never outside [0, 1]
            assert 0.0 <= cell.ece.low <= cell.ece.high <= 1.0
            assert cell.n_negative == int((~y).sum())
    c_cell = cells[("a", "C")]
    assert c_cell.auroc.value is None and c_cell.auroc_note.startswith("not estimable")
    assert c_cell.sensitivity.value is not None
    back = GroupsResult.from_json(res.to_json())
    assert back.to_json() == res.to_json()
    assert back.attribute("site").classes == res.attribute("site").classes


def test_top_k_scores_give_a_lower_bound_and_say_so() -> None:
    frame, probs = _scores_frame()
    frame = frame[frame.group_site != "C"].reset_index(drop=True)
    probs = probs[: len(frame)]
    order = np.argsort(-probs, axis=1)[:, :1]  # only the top-1 stored (+ the label's)
    sc = class_scores(
        3,
        frame["label"].to_numpy(),
        frame["label_confidence"].to_numpy(),
        pa.array(order.tolist(), pa.list_(pa.int32())),
        pa.array(np.take_along_axis(probs, order, 1).tolist(), pa.list_(pa.float32())),
    )
    assert sc is not None and np.isfinite(sc.bound).all()
    res = analyse_groups(frame, ["site"], ["a", "b", "c"], n_boot=200, scores=sc)
    for cell in res.attribute("site").classes:
        rows = frame["group_site"].to_numpy() == cell.level
        c = "abc".index(cell.cls)
        truth = roc_auc_score(frame["label"].to_numpy()[rows] == c, probs[rows, c])
        if cell.auroc_note:
            assert cell.auroc_note.startswith("lower bound")
            assert cell.ece.value is None  # calibration needs every probability
        assert cell.auroc.value <= truth + 1e-6


def test_no_probabilities_no_auroc() -> None:
    frame, _ = _scores_frame()
    res = analyse_groups(frame, ["site"], ["a", "b", "c"], n_boot=200)
    assert all(c.auroc.value is None for c in res.attribute("site").classes)
    assert class_scores(3, np.zeros(2), np.zeros(2), None, None) is None
    empty = pa.array([None, None], pa.list_(pa.int32()))
    assert class_scores(3, np.zeros(2), np.zeros(2), empty, empty) is None


def test_probability_columns_full_and_top_k() -> None:
    torch = pytest.importorskip("torch")
    from auditor.audit.probabilities import TOP_K, probability_columns

    logits = torch.tensor([[2.0, 0.0, 1.0], [float("nan"), 0.0, 0.0]])
    probs = torch.softmax(logits, 1)
    finite = torch.isfinite(logits).all(1)
    out = probability_columns(probs, torch.tensor([2, 1]), finite)
    assert out["top_classes"] == [[0, 2, 1], None] and out["top_probs"][1] is None
    assert out["top_probs"][0] == pytest.approx(sorted(probs[0].tolist(), reverse=True))
    assert out["label_confidence"][0] == pytest.approx(float(probs[0, 2]))
    assert math.isnan(out["label_confidence"][1])
    many = torch.softmax(torch.randn(2, 50), 1)
    out = probability_columns(many, torch.tensor([0, 49]), torch.ones(2, dtype=torch.bool))
    assert len(out["top_classes"][0]) == TOP_K
    assert out["top_classes"][0][0] == int(many[0].argmax())
    with pytest.raises(ValueError, match="probs"):
        probability_columns(many[0], torch.tensor([0]), torch.ones(1, dtype=torch.bool))
    _ = ece_ci  # same bootstrap as the group ECE


def test_large_groups_use_the_documented_approximations(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.analysis.groups import stats

    rng = np.random.default_rng(5)
    n = 30_000
    conf = rng.uniform(0.3, 1.0, n)
    correct = (rng.random(n) < conf * 0.9).astype(float)
    approx = stats.ece_ci(conf, correct, level=0.95, n_boot=400, seed=1)
    monkeypatch.setattr(stats, "BOOT_MAX_N", 10**9)  # force the resampling bootstrap
    exact = stats.ece_ci(conf, correct, level=0.95, n_boot=400, seed=1)
    assert approx.value == exact.value
    width = exact.high - exact.low
    assert abs(approx.low - exact.low) < 0.2 * width
    assert abs(approx.high - exact.high) < 0.2 * width
    monkeypatch.undo()
    x = rng.normal(0.4, 0.1, n)
    m = stats.mean_ci(x, level=0.95, n_boot=200, seed=0)
    half = Z95 * x.std(ddof=1) / math.sqrt(n)
    assert (m.low, m.high) == pytest.approx((x.mean() - half, x.mean() + half))


def test_few_negatives_not_shown_privacy() -> None:
    # level "A": 30 samples of class 0 and 3 of class 1: class 0's negatives are 3 people
    n = 33
    label = np.r_[np.zeros(30, int), np.ones(3, int)]
    probs = np.where(label[:, None] == np.arange(2), 0.8, 0.2)
    frame = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": label, "pred": label, "correct": True,
        "pred_confidence": 0.8, "group_site": "A", "label_confidence": 0.8,
    })  # fmt: skip
    res = analyse_groups(frame, ["site"], ["a", "b"], min_group_size=10, n_boot=50,
                         scores=_full(frame, probs))  # fmt: skip
    cells = {c.cls: c for c in res.attribute("site").classes}
    assert cells["b"].suppressed  # 3 positives
    a = cells["a"]
    assert a.sensitivity.value == 1.0 and a.specificity.value is None
    assert a.auroc.value is None and a.auroc_note.startswith("not shown: fewer than 10")
