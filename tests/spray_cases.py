"""Deterministic SpRAy inputs shared by tests/test_clusters_scale.py and its snapshot.

``tests/data/spray_snapshot.json`` holds :func:`snapshot` of :data:`CASES` computed with the
code before issue 14's SpRAy speed-ups (main at 5cf03e3); the test recomputes them and checks
that nothing changed. Only API that existed then is used here.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: (n maps, seed, planted subgroup): dense-eigh sizes (<= 600), ARPACK sizes, the
#: scikit-learn k-NN path (> 2000 maps).
CASES: tuple[tuple[int, int, bool], ...] = (
    (60, 0, True),
    (300, 0, True),
    (599, 1, True),
    (700, 0, True),
    (1000, 0, False),
    (1000, 2, True),
    (1500, 0, True),
    (2500, 0, True),
)


def case(n: int, seed: int, planted: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """7x7 maps with a central blob (like bench_finalize's) and, when ``planted``, ~15 % of
    maps whose mass sits in the top-left corner with a higher background focus."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, 7, 7)).astype(np.float32)
    maps[:, 2:5, 2:5] += 1.0
    bf = rng.beta(2, 3, n)
    if planted:
        sub = rng.random(n) < 0.15
        maps[sub] = (rng.random((int(sub.sum()), 7, 7)) * 0.2).astype(np.float32)
        maps[sub, 0, 0] += 3.0
        bf[sub] = np.clip(bf[sub] + 0.4, 0, 1)
    stats = {
        "background_focus": bf,
        "border_focus": rng.beta(1, 5, n),
        "entropy": rng.beta(5, 2, n),
        "correct": (rng.random(n) < 0.85).astype(float),
        "only_bg_hit": (rng.random(n) < 0.05).astype(float),
        "only_fg_drop": np.zeros(n),
    }
    return maps, stats


def snapshot(n: int, seed: int, planted: bool) -> dict[str, Any]:
    """``class_to_json`` of ``analyse_class`` on :func:`case` (ids "0".."n-1") + the labels."""
    from auditor.analysis.spray.subgroups import analyse_class, class_to_json

    maps, stats = case(n, seed, planted)
    res = analyse_class(maps, stats, n_classes=100, border_chance_share=0.36, n_boot=300, seed=seed)
    out = class_to_json(res, [str(i) for i in range(n)])
    # through JSON: the same types as the stored snapshot (floats round-trip exactly)
    return {"result": json.loads(json.dumps(out)), "labels": res.labels.tolist()}
