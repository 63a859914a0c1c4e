"""Slice discovery (issue 24): an error slice and an attention slice planted in an attribute
× attribute cell are found without being named; a null frame gives none; small cells are
never tested; the Bonferroni count and the intervals are the documented ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from auditor.analysis.groups import analyse_groups
from auditor.analysis.groups.slices import discover_slices
from auditor.analysis.groups.stats import accuracy_diff, mean_diff_ci
from auditor.group_results import GroupsResult


def _frame(seed: int, *, plant: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 1600
    site = rng.choice(["A", "B"], n)
    age = rng.choice(["young", "old"], n)
    sex = rng.choice(["F", "M"], n)
    cell = (site == "B") & (age == "old")
    attn = (site == "A") & (sex == "F")
    p_ok = np.where(cell, 0.5, 0.9) if plant else np.full(n, 0.88)
    correct = rng.random(n) < p_ok
    bf = rng.normal(0.3, 0.1, n) + (0.35 * attn if plant else 0.0)
    label = rng.integers(0, 2, n)
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "label": label,
        "pred": np.where(correct, label, 1 - label), "correct": correct,
        "pred_confidence": rng.uniform(0.5, 1, n), "background_focus": bf,
        "group_site": site, "group_age": age, "group_sex": sex,
    })  # fmt: skip


def _slices(frame: pd.DataFrame) -> tuple:
    attrs = ["site", "age", "sex"]
    res = analyse_groups(frame, attrs, ["a", "b"], n_boot=200)
    return discover_slices(frame, attrs, ["a", "b"], res), res


def test_planted_error_and_attention_slices_found() -> None:
    frame = _frame(0, plant=True)
    slices, res = _slices(frame)
    labels = {s.label(): s for s in slices}
    err = labels["site = B × age = old"]
    assert err.accuracy_gap and slices[0] is err  # the largest error gap comes first
    att = labels["site = A × sex = F"]
    assert att.attention_gap and not att.accuracy_gap
    # the documented intervals at the Bonferroni level over cells × 2 quantities:
    # 3 attribute pairs × 4 cells + 3 attributes × 2 levels × 2 classes = 24 cells
    adj = 1 - 0.05 / (24 * 2)
    mask = (frame.group_site == "B").to_numpy() & (frame.group_age == "old").to_numpy()
    c = frame["correct"].to_numpy()
    assert err.accuracy_vs_rest == accuracy_diff(c[mask], c[~mask], adj)
    assert err.accuracy.value == pytest.approx(c[mask].mean())
    m2 = (frame.group_site == "A").to_numpy() & (frame.group_sex == "F").to_numpy()
    bf = frame["background_focus"].to_numpy()
    want = mean_diff_ci(bf[m2], bf[~m2], adj)  # from moments here: equal up to rounding
    got = att.background_focus_vs_rest
    assert (got.value, got.low, got.high) == pytest.approx((want.value, want.low, want.high))
    assert att.background_focus.value == pytest.approx(bf[m2].mean())
    assert att.background_focus_vs_rest.low > res.background_focus_margin
    back = GroupsResult.from_json({**res.to_json(), "slices": [s.to_json() for s in slices]})
    assert back.slices == slices


@pytest.mark.parametrize("seed", [1, 2])
def test_null_frame_no_slice(seed: int) -> None:
    slices, _ = _slices(_frame(seed, plant=False))
    assert slices == ()


def test_small_cells_never_tested() -> None:
    frame = _frame(3, plant=True).iloc[:60].copy()  # cells of ~15 < MIN_SLICE_SIZE 20
    frame.loc[:, "correct"] = False  # everything wrong: still nothing can be named
    frame.loc[frame.index[:30], "correct"] = True
    slices, _ = _slices(frame)
    assert all(s.n >= 20 for s in slices)
