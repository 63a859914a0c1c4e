"""Detection benchmark: generate planted-shortcut cases, train, transplant-check, audit, score.

For every model ``(type, fraction, seed, planted|clean)`` of the grid: generate the training,
evaluation and transplant images (:mod:`generator`), train the tiny CNN (:mod:`detnet`),
measure the TRANSPLANT flip rate (the cue put on the other classes' images: share predicted as
the target class), then write the evaluation set as a real dataset directory twice (with and
without masks) and audit each with the real CLI (``auditor run CONFIG --no-pdf``).

Scoring rules (fixed before any number was read; the same for every case):

* **hit** (planted case): ``summary.json`` has a finding of severity medium or high whose
  ``class`` is a planted class (the target class; every class for ``shared_cue``).
  recall = hits / planted classes, Wilson 95 % interval over the cases (seeds).
* **members** (subgroup cases, fraction < 1): the union of ``evidence.members`` of the hits;
  purity = |members & cued| / |members|, member recall = |members & cued| / |cued|.
* **declared untestable** (types a map cannot localise): a finding of any severity on the
  target class (or on no class) whose kind contains ``not_testable``, ``untestable`` or
  ``global``; counted apart from recall.
* **false alarm** (clean case): a class with at least one medium/high finding; rate = such
  classes / classes, Wilson 95 % interval.
* **plant confirmed** (the benchmark's own transplant check, :func:`transplant_check`): the
  cue pasted on 30 images of each other class against the same images without it (control);
  difference d = flip rate - control rate with its Newcombe 95 % interval (Newcombe 1998,
  hybrid score; Wilson 1927). A model USES the cue when the interval lies above 0 and
  d >= ``MARGIN`` (0.25, the audit's own transplant margin); the plant is confirmed when the
  planted model uses it and its clean twin (same seed) demonstrably does not (the clean
  interval's upper bound < ``MARGIN``). Unconfirmed plants are left out of recall.
* **audit transplant** (when the run's ``summary.json`` carries
  ``classes[c]["transplant"]``): the planted class's status ``confirmed`` is counted; on a
  clean twin a ``confirmed`` class is counted as a false confirmation. Absent: "n/a".

    python benchmarks/detection/run.py [--quick] [--seeds 0,1] [--types a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.detection import detnet  # noqa: E402
from benchmarks.detection.generator import (  # noqa: E402
    CLASSES,
    TARGET,
    TYPES,
    Case,
    generate,
    shortcut_type,
    transplant_images,
    write_dataset,
)

N_TRAIN, N_EVAL, N_TRANSPLANT = 120, 50, 30
#: the transplant check's margin on flip - control (the same as the audit's transplant)
MARGIN = 0.25
ALARM = ("medium", "high")
UNTESTABLE = ("not_testable", "untestable", "global")

CONFIG = """\
[model]
factory = "detnet:{factory}"
weights = "{weights}"
name = "{name}"

[data]
manifest = "{manifest}"
classes = {classes}
input_size = 48
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam"]
batch_size = 100
seed = 0
faithfulness_samples = 16
faithfulness_steps = 10
sanity_samples = 16
"""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n (Wilson 1927); (nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def transplant_check(
    flips: np.ndarray, controls: np.ndarray, z_confidence: float = 0.95
) -> dict:
    """The transplant numbers of one model: ``flips`` / ``controls`` are bool arrays (target
    predicted with / without the cue on the same recipients). d = flip - control with its
    Newcombe 95 % interval; ``uses_cue``: interval above 0 and d >= ``MARGIN``."""
    from auditor.stats import two_proportion_diff_ci

    k1, n1, k2, n2 = int(flips.sum()), int(flips.size), int(controls.sum()), int(controls.size)
    d = two_proportion_diff_ci(k1, n1, k2, n2, confidence=z_confidence)
    return {
        "flip": k1 / n1 if n1 else math.nan,
        "control": k2 / n2 if n2 else math.nan,
        "diff": d.estimate,
        "diff_ci": [d.low, d.high],
        "uses_cue": bool(d.low > 0 and d.estimate >= MARGIN),
    }


def grid(seeds: list[int], types: list[str], quick: bool) -> list[tuple[str, float, int, bool]]:
    """(type, fraction, seed, planted) of every model; quick: fractions 0.5 and 1.0 only."""
    out = []
    for t in TYPES:
        if t.name not in types:
            continue
        fr = [f for f in t.fractions if not quick or f in (0.5, 1.0)] or [t.fractions[-1]]
        for f in fr:
            for s in seeds:
                for planted in (True, False):
                    out.append((t.name, f, s, planted))
    return out


def factory_name(type_name: str) -> str:
    """The ``detnet`` factory of a type's models: the CoordConv net where the type asks for
    coordinates (``ShortcutType.coords``), else the plain one."""
    return "build_coord_model" if shortcut_type(type_name).coords else "build_model"


def audit(case: Case, model_dir: Path, data_seed: int) -> dict:
    """Write the evaluation set and config of ``case``, run ``auditor run``, return the summary."""
    data = generate(case, N_EVAL, data_seed)
    case_dir = model_dir / ("mask" if case.masks else "nomask")
    if case_dir.exists():
        shutil.rmtree(case_dir)
    manifest = write_dataset(data, case_dir / "data", masks=case.masks)
    config = model_dir / f"config-{case_dir.name}.toml"
    config.write_text(
        CONFIG.format(
            weights="weights.pt",
            factory=factory_name(case.type),
            name=case.name,
            manifest=manifest.relative_to(model_dir).as_posix(),
            classes=json.dumps(list(CLASSES)),
        ),
        encoding="utf-8",
    )
    run = case_dir / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "run", str(config), "--out", str(run), "--no-pdf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    summary_path = run / "summary.json"
    if proc.returncode not in (0, 1) or not summary_path.is_file():
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["_exit"] = proc.returncode
    summary["_truth"] = {f"s{i:04d}": bool(c) for i, c in enumerate(data.cued)}
    return summary


def score(case: Case, summary: dict) -> dict:
    """The case's row by the rules of the module docstring."""
    if "error" in summary:
        return {"error": summary["error"]}
    findings = summary.get("findings", [])
    planted = list(CLASSES) if case.type == "shared_cue" else [TARGET]
    alarms = [f for f in findings if f.get("severity") in ALARM]
    row: dict = {
        "accuracy": summary.get("overall", {}).get("accuracy"),
        "exit": summary.get("_exit"),
        "interpretable": (summary.get("interpretability") or {}).get("interpretable"),
        "findings": [[f.get("class"), f.get("kind"), f.get("severity")] for f in findings],
    }
    row["audit_transplant"] = audit_transplant(summary)
    if case.planted:
        hits = [c for c in planted if any(f.get("class") == c for f in alarms)]
        row["hits"], row["n_planted"] = len(hits), len(planted)
        # medium/high on a class that carries no plant (reported, not part of recall)
        row["off_target"] = len({f.get("class") for f in alarms} & (set(CLASSES) - set(planted)))
        declared = (summary.get("interpretability") or {}).get("not_testable") or []
        row["declared_untestable"] = any(
            f.get("class") in (TARGET, None) and any(u in str(f.get("kind")) for u in UNTESTABLE)
            for f in findings
        ) or any(any(u in str(d.get("kind")) for u in UNTESTABLE) for d in declared)
        if case.fraction < 1.0:
            members = {
                str(m)
                for f in alarms
                if f.get("class") == TARGET
                for m in (f.get("evidence") or {}).get("members") or []
            }
            truth = summary["_truth"]
            cued = {k for k, v in truth.items() if v}
            tp = len(members & cued)
            row["members"] = len(members)
            row["purity"] = tp / len(members) if members else None
            row["member_recall"] = tp / len(cued) if cued else None
    else:
        alarmed = {f.get("class") for f in alarms if f.get("class") in CLASSES}
        row["alarm_classes"], row["n_classes"] = len(alarmed), len(CLASSES)
    return row


def audit_transplant(summary: dict) -> dict[str, str] | None:
    """``{class: status}`` of the audit's own transplant (``classes[c]["transplant"]``,
    branch s9-power) or None when the run has none (tolerated: older audits)."""
    classes = summary.get("classes")
    items = classes.items() if isinstance(classes, dict) else (
        (c.get("name"), c) for c in classes or [] if isinstance(c, dict))
    out = {
        str(name): str(c["transplant"].get("status"))
        for name, c in items
        if isinstance(c, dict) and isinstance(c.get("transplant"), dict)
    }
    return out or None


def run_model(t: str, f: float, seed: int, planted: bool, out: Path, epochs: int) -> list[dict]:
    """Train one model, check the transplant, audit it with and without masks."""
    import torch

    base = Case(t, f, seed, True, planted)
    model_dir = out / base.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "detnet.py", model_dir / "detnet.py")
    t0 = time.perf_counter()
    train = generate(base, N_TRAIN, 0)
    net = detnet.train(train.images, train.labels, seed=seed, epochs=epochs,
                       coords=shortcut_type(t).coords)
    torch.save(net.state_dict(), model_dir / "weights.pt")
    cued, control = transplant_images(base, N_TRANSPLANT, 2)
    target = CLASSES.index(TARGET)
    check = transplant_check(detnet.predict(net, cued) == target,
                             detnet.predict(net, control) == target)
    rows = []
    for masks in (True, False):
        case = Case(t, f, seed, masks, planted)
        row = {**asdict(case), "name": case.name, **check}
        row.update(score(case, audit(case, model_dir, 1)))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "findings"}), flush=True)
    rows[0]["seconds"] = time.perf_counter() - t0
    return rows


def _fmt_rate(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def _mean(values: list) -> str:
    v = [x for x in values if x is not None]
    return f"{np.mean(v):.2f} (n={len(v)})" if v else "n/a"


def confirmed(row: dict, clean: dict[int, dict]) -> bool:
    """The transplant check of a planted row (module docstring): the planted model uses the
    cue (d's interval above 0, d >= MARGIN) and its clean twin of the same seed does not (its
    d's upper bound < MARGIN); a plant the model does not use is no test of the audit."""
    twin = clean.get(row["seed"])
    if twin is None or "diff_ci" not in row or "diff_ci" not in twin:
        return False
    return bool(row["uses_cue"] and twin["diff_ci"][1] < MARGIN)


def _audit_transplant_counts(planted: list[dict], clean: list[dict]) -> str:
    """The cell "k/n confirmed on the planted class / m false on clean classes", or "n/a"
    when no run carried the audit's transplant."""
    pl = [r["audit_transplant"] for r in planted if r.get("audit_transplant")]
    cl = [r["audit_transplant"] for r in clean if r.get("audit_transplant")]
    if not pl and not cl:
        return "n/a"
    k = sum(t.get(TARGET) == "confirmed" for t in pl)
    false = sum(v == "confirmed" for t in cl for v in t.values())
    n_cl = sum(len(t) for t in cl)
    return f"{k}/{len(pl)} / {false}/{n_cl}"


def summarise(rows: list[dict]) -> tuple[str, list[dict]]:
    """The Markdown table (one row per type x fraction x masks) and its records."""
    keys = sorted({(r["type"], r["fraction"], r["masks"]) for r in rows}, key=str)
    header = [
        "type", "fraction", "masks", "plant not confirmed", "recall (medium/high on the class)",
        "declared untestable", "purity", "member recall", "false alarms per clean class",
        "transplant d planted / clean", "audit transplant: planted confirmed / clean false",
        "off-target alarm classes (planted models)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for t, f, m in keys:
        sel = [r for r in rows if (r["type"], r["fraction"], r["masks"]) == (t, f, m)]
        cl = [r for r in sel if not r["planted"] and "error" not in r]
        # a plant counts only when its transplant check confirms it (:func:`confirmed`);
        # the others are "plant not confirmed"
        clean_by_seed = {r["seed"]: r for r in cl}
        all_pl = [r for r in sel if r["planted"] and "error" not in r]
        pl = [r for r in all_pl if confirmed(r, clean_by_seed)]
        unconfirmed = len(all_pl) - len(pl)
        k, n = sum(r["hits"] for r in pl), sum(r["n_planted"] for r in pl)
        fa, fn = sum(r["alarm_classes"] for r in cl), sum(r["n_classes"] for r in cl)
        rec = {
            "type": t, "fraction": f, "masks": m, "hits": k, "n": n, "false_alarms": fa,
            "clean_classes": fn, "localised": shortcut_type(t).localised,
            "declared_untestable": sum(bool(r.get("declared_untestable")) for r in pl),
            "purity": [r.get("purity") for r in pl], "member_recall":
            [r.get("member_recall") for r in pl],
            "flip_planted": [r["flip"] for r in all_pl], "flip_clean": [r["flip"] for r in cl],
            "diff_planted": [r.get("diff") for r in all_pl],
            "diff_clean": [r.get("diff") for r in cl],
            "not_confirmed": unconfirmed,
            "audit_transplant": _audit_transplant_counts(pl, cl),
            "off_target": sum(r.get("off_target", 0) for r in pl),
            "off_target_n": sum(len(CLASSES) - r["n_planted"] for r in pl),
            "errors": [r["error"] for r in sel if "error" in r],
        }
        records.append(rec)
        sub = f < 1.0
        flips = f"{_mean(rec['diff_planted'])} / {_mean(rec['diff_clean'])}"
        lines.append(
            "| " + " | ".join([
                t, f"{f:g}", "yes" if m else "no", f"{unconfirmed}/{len(all_pl)}", _fmt_rate(k, n),
                f"{rec['declared_untestable']}/{len(pl)}",
                _mean(rec["purity"]) if sub else "", _mean(rec["member_recall"]) if sub else "",
                _fmt_rate(fa, fn), flips, rec["audit_transplant"],
                f"{rec['off_target']}/{rec['off_target_n']}",
            ]) + " |"
        )
    return "\n".join(lines), records


def ship_weights(epochs: int) -> None:
    """Train the test subset's models (corner_tag, fraction 0.5, seed 0, planted and clean)
    exactly as :func:`run_model` does and save them under ``weights/`` (tests use them)."""
    import torch

    (HERE / "weights").mkdir(exist_ok=True)
    for planted in (True, False):
        case = Case("corner_tag", 0.5, 0, True, planted)
        train = generate(case, N_TRAIN, 0)
        net = detnet.train(train.images, train.labels, seed=case.seed, epochs=epochs)
        torch.save(net.state_dict(), HERE / "weights" / f"{case.model_name}.pt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fractions 0.5 and 1")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2)")
    parser.add_argument("--types", default=",".join(t.name for t in TYPES))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "detection")
    parser.add_argument("--no-write", action="store_true", help="accepted for run_all.py")
    parser.add_argument("--from-rows", action="store_true", help="table of OUT/rows.json")
    parser.add_argument("--ship-weights", action="store_true", help="retrain weights/ only")
    args = parser.parse_args(argv)
    if args.ship_weights:
        ship_weights(args.epochs)
        return 0
    if args.from_rows:  # re-score an interrupted run from its rows.json
        table, _ = summarise(json.loads((args.out / "rows.json").read_text(encoding="utf-8")))
        print(table)
        return 0
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for t in types:
        shortcut_type(t)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for t, f, s, planted in grid(seeds, types, args.quick):
        rows.extend(run_model(t, f, s, planted, args.out, args.epochs))
        (args.out / "rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    table, records = summarise(rows)
    (args.out / "results.json").write_text(
        json.dumps({"seeds": seeds, "types": types, "quick": args.quick, "records": records},
                   indent=1), encoding="utf-8")
    (args.out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
