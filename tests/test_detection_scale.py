"""Detection audits split across processes (issue 26): one process == 2 shard jobs + finalize
== torchrun with 2 ranks (gloo).

The tiny detector with random weights (score threshold 0: every image has matched boxes and
false detections) on 6 COCO scenes in batches of 2 (3 batches: shard 0 owns two, shard 1
one). samples.parquet must hold the same rows and summary.json must be the same except the
run's timestamps, timings and command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from auditor.cli import main
from auditor.demo.detection import write_coco

CONFIG = """
[model]
factory = "auditor.demo.detection:build_tiny_detector"
random_weights = true
task = "detection"
score_threshold = 0.0
[data]
format = "coco"
root = "data"
annotations = "data/instances.json"
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[audit]
batch_size = 2
bootstrap = 100
[gates]
min_detection_recall = 0.0
"""


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    out = dict(summary)
    run = dict(out.pop("run"))
    for key in ("started", "finished", "duration_s", "timings", "command"):
        run.pop(key, None)
    out["run"] = run
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detscale")
    write_coco(root / "data", n_per_class=3)
    (root / "audit.toml").write_text(CONFIG)
    single = root / "single"
    args = ["run", str(root / "audit.toml"), "--no-pdf", "--quiet"]
    assert main([*args, "--out", str(single)]) == 0
    return {"root": root, "cfg": root / "audit.toml", "single": single}


def _same_run(a: Path, b: Path) -> None:
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert sa["detection"]["n_boxes"] == 6 and sa["detection"]["n_false_positives"] > 0
    assert _comparable(sa) == _comparable(sb)
    ta, tb = pq.read_table(a / "samples.parquet"), pq.read_table(b / "samples.parquet")
    assert ta.num_rows == tb.num_rows > 0 and ta.schema == tb.schema
    assert ta.to_pandas().equals(tb.to_pandas())  # NaN where NaN (undefined maps)


def test_two_shard_jobs_and_finalize_equal_one_process(world: dict[str, Path]) -> None:
    out = world["root"] / "shards"
    args = ["run", str(world["cfg"]), "--no-pdf", "--quiet", "--out", str(out)]
    assert main([*args, "--shard", "1/2"]) == 0
    # finalising before every shard is there is refused, naming the missing one
    assert main(["finalize", str(out), "--no-pdf"]) == 2
    assert main([*args, "--shard", "0/2"]) == 0
    assert not (out / "summary.json").exists()  # shard jobs do not finalise
    records = sorted(p.name for p in (out / "shards").glob("shard-*-of-2.json"))
    assert records == ["shard-0-of-2.json", "shard-1-of-2.json"]
    rec = json.loads((out / "shards" / "shard-0-of-2.json").read_text())
    assert rec["status"] == "complete" and rec["batches"] == [0, 2]
    assert "target_layer_explained" in rec["model"]
    assert main(["finalize", str(out), "--no-pdf"]) == 0
    _same_run(world["single"], out)


def test_single_process_detection_run_can_be_refinalised(world: dict[str, Path]) -> None:
    import shutil

    copy = world["root"] / "again"
    shutil.copytree(world["single"], copy)
    (copy / "summary.json").unlink()
    assert main(["finalize", str(copy), "--no-pdf"]) == 0
    _same_run(world["single"], copy)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(world: dict[str, Path]) -> None:
    out = world["root"] / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    tr = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "auditor", "run", str(world["cfg"]), "--no-pdf", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert tr.returncode == 0, tr.stderr[-3000:]
    _same_run(world["single"], out)
