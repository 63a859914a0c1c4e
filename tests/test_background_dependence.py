"""The relative ``background_focus`` rule needs a test of dependence to agree before it is a
medium finding (issue 22: the clean twin's false alarm was a difference in attention that
no intervention or absolute test supported)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from auditor.analysis import analyse
from auditor.config import AuditSettings

SETTINGS = AuditSettings(bootstrap=300)
AREA = 0.1  # object area: lift = (1 - bf) / area


def table(
    bf: dict[int, float], *, fg_correct: dict[int, float], bg_correct: dict[int, float],
    interventions: bool = True, n: int = 30, area: float = AREA, jitter: float = 0.02,
) -> pa.Table:
    """Classes 0..k-1, every prediction right, background focus ``bf[c]`` +- ``jitter``
    (uniform, seeded), energy lift (1 - bf) / ``area``,
    only-foreground correct on the first ``fg_correct[c]`` share of a class's samples,
    only-background correct (called the class) on the first ``bg_correct[c]`` share."""
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {
        k: [] for k in ("index", "id", "method", "label", "pred", "correct", "background_focus",
                        "energy_in_mask", "energy_lift", "border_focus", "status")
    }  # fmt: skip
    iv: dict[str, list] = {"only_fg_correct": [], "only_bg_correct": [], "mixed_rand_correct": []}
    i = 0
    for label, mean in bf.items():
        for j in range(n):
            b = float(np.clip(mean + rng.uniform(-jitter, jitter), 0, 1))
            for k, v in (("index", i), ("id", f"s{i}"), ("method", "gradcam"), ("label", label),
                         ("pred", label), ("correct", True), ("background_focus", b),
                         ("energy_in_mask", 1 - b), ("energy_lift", (1 - b) / area),
                         ("border_focus", 0.2), ("status", "ok")):  # fmt: skip
                cols[k].append(v)
            iv["only_fg_correct"].append(1.0 if j < round(fg_correct.get(label, 1.0) * n) else 0.0)
            iv["only_bg_correct"].append(1.0 if j < round(bg_correct.get(label, 0.0) * n) else 0.0)
            iv["mixed_rand_correct"].append(1.0)
            i += 1
    return pa.table({**cols, **iv} if interventions else cols)


CLASSES = ["a", "b", "c"]
# c: 55 % of the map off the object against 35 % (+0.20 > margin 0.05), lift 4.5 against 6.5
# (< 0.75 x): the relative rule is flagged; lift stays far above 1 (map better than uniform)
BF = {0: 0.35, 1: 0.35, 2: 0.55}


def _bf_findings(t: pa.Table):
    out = analyse(t, classes=CLASSES, methods=["gradcam"], settings=SETTINGS)
    return [f for f in out.findings if f.kind == "background_focus"], out


def test_difference_in_attention_alone_is_low() -> None:
    # no interventions at all: nothing tests dependence -> low, not medium
    (f,), out = _bf_findings(
        table(BF, fg_correct={}, bg_correct={}, interventions=False)
    )
    assert (f.cls, f.severity) == ("c", "low")
    assert f.evidence["dependence"] is None
    assert "not a shortcut" in f.message
    assert not out.classes["c"].flagged  # a low finding does not flag the class


def test_uninformative_interventions_keep_it_low() -> None:
    # only-fg drop 0.07 (interval reaches past the 0.10 margin: neither reliance nor refuted);
    # the background alone is never called c: no dependence test agrees -> low
    fg = {0: 1.0, 1: 1.0, 2: 28 / 30}
    (f,), _ = _bf_findings(table(BF, fg_correct=fg, bg_correct={0: 0.0, 1: 0.0, 2: 0.0}))
    assert (f.cls, f.severity, f.evidence["dependence"]) == ("c", "low", None)


def test_background_alone_with_the_map_on_the_object_stays_low() -> None:
    # the clean twin's case: c's background alone is called c on 24 of 30 images (Wilson
    # lower bound 0.63 > chance 1/3 + 0.10) but its maps lie on the object (lift 4.5, lower
    # bound > 1): the absolute rule's own "silhouette" verdict (low) -> no dependence -> low
    fg = {0: 1.0, 1: 1.0, 2: 28 / 30}
    (f,), out = _bf_findings(table(BF, fg_correct=fg, bg_correct={0: 0.0, 1: 0.0, 2: 0.8}))
    assert (f.cls, f.severity, f.evidence["dependence"]) == ("c", "low", None)
    (a,) = [f for f in out.findings if f.kind == "absolute_background"]
    assert (a.cls, a.severity) == ("c", "low")


def test_background_alone_with_the_map_near_uniform_makes_it_medium() -> None:
    # objects of 40 % area: c's map 60 % off the object, lift 1.0 with an interval across 1
    # (not at or below 1: the lift test alone does not fire, so not high); the background
    # alone is called c on 24 of 30 images: the absolute rule rates it medium -> medium
    fg = {0: 1.0, 1: 1.0, 2: 28 / 30}
    t = table({0: 0.35, 1: 0.35, 2: 0.6}, fg_correct=fg, bg_correct={2: 0.8}, area=0.4,
              jitter=0.1)  # fmt: skip
    (f,), out = _bf_findings(t)
    lift = out.classes["c"].stat("gradcam", "energy_lift")
    assert lift.ci_low < 1 < lift.ci_high
    assert (f.cls, f.severity, f.evidence["dependence"]) == ("c", "medium", "only_bg")
    assert out.classes["c"].flagged


def test_map_no_better_than_uniform_stays_high() -> None:
    # 95 % off a 10 % object: lift 0.5 <= 1 -> high as before (the lift is its own evidence)
    (f,), _ = _bf_findings(
        table({0: 0.35, 1: 0.35, 2: 0.95}, fg_correct={}, bg_correct={}, interventions=False)
    )
    assert (f.cls, f.severity) == ("c", "high")
