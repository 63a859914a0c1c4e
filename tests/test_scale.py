"""Audits split across processes: 1 process == torchrun 2 ranks (gloo) == 2 shard jobs + finalize.

Real processes (``python -m auditor`` shard jobs, torchrun's launcher through
``python -m auditor.torchrun``; the single run in this process with one thread, like them) on
the demo's tiny model and 27 images in batches of 6 (5 batches, the last one short, so shard 0
owns three and shard 1 two); every run's samples.parquet must be the same bytes and its
summary.json the same except the run's timestamps, timings and command line. The config's gate
fails, so the same launch also shows torchrun's exit code for a failed gate (1, no traceback;
tests/test_hostile_round3.py has the bad-input ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

pytestmark = pytest.mark.slow

LIMIT, BATCH = "27", 6


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    # torchrun starts each rank with OMP_NUM_THREADS=1; give every run the same threads
    return {
        **os.environ,
        "CI": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": root + (os.pathsep + path if path else ""),
    }


@contextmanager
def _one_thread() -> Iterator[None]:
    """An in-process run with one intra-op thread, like the subprocesses."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _comparable(summary: dict[str, Any]) -> dict[str, Any]:
    out = dict(summary)
    run = dict(out.pop("run"))
    for key in ("started", "finished", "duration_s", "timings", "command"):
        run.pop(key, None)
    out["run"] = run
    return out


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, demo_config: Callable[..., Path]
) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("scale")
    # a gate that fails: every complete run exits 1 (shard jobs do not evaluate gates)
    cfg = demo_config(tmp, preset="small", batch_size=BATCH, gates="max_background_focus = 0.01")
    base = ["run", str(cfg), "--limit", LIMIT, "--no-pdf", "--no-progress"]
    out = {"single": tmp / "single", "torchrun": tmp / "torchrun", "shards": tmp / "shards"}
    from auditor.cli import main

    # two shard jobs at the same time into one directory, like a job array
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "auditor", *base, "--out", str(out["shards"]), "--shard", s],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for s in ("1/2", "0/2")
    ]
    with _one_thread():
        assert main([*base, "--out", str(out["single"])]) == 1
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err
    assert not (out["shards"] / "summary.json").exists()  # shard jobs do not finalise
    assert main(["finalize", str(out["shards"]), "--no-pdf"]) == 1

    tr = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditor.torchrun",  # torchrun's own parser and launch, with our exit codes
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "auditor",
            *base,
            "--out",
            str(out["torchrun"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert tr.returncode == 1, tr.stderr[-3000:]  # the failed gate, as documented
    assert "Traceback" not in tr.stderr and "ChildFailedError" not in tr.stderr, tr.stderr
    out["_cfg"] = cfg
    return out


def test_one_process_torchrun_and_shards_give_identical_results(runs: dict[str, Path]) -> None:
    ref = runs["single"]
    n_parts = len(list((ref / "shards").glob("part-*.parquet")))
    assert n_parts == 5
    table = pq.read_table(ref / "samples.parquet")
    assert table.num_rows == 27 * 2  # 27 samples x 2 methods, none twice, none dropped
    assert sorted(set(table.column("index").to_pylist())) == list(range(27))
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["gates"]["passed"] is False  # the exit codes of 1 above were the gate's
    for mode in ("torchrun", "shards"):
        other = runs[mode]
        assert (other / "samples.parquet").read_bytes() == (ref / "samples.parquet").read_bytes()
        s = json.loads((other / "summary.json").read_text())
        if mode == "shards":  # `auditor finalize` holds no model: no transplant (issue 22)
            for c, entry in s["classes"].items():
                t = entry.pop("transplant")
                assert t["status"] == "not_run" and "without the model" in t["reason"], c
            ref_summary = json.loads(json.dumps(summary))
            for entry in ref_summary["classes"].values():
                entry.pop("transplant", None)
            assert _comparable(s) == _comparable(ref_summary), mode
        else:
            assert _comparable(s) == _comparable(summary), mode
        assert (other / "report.html").is_file() and (other / "junit.xml").is_file()
    # torchrun: rank r wrote batches b with b mod 2 == r
    rec = json.loads((runs["torchrun"] / "shards" / "shard-1-of-2.json").read_text())
    assert rec["batches"] == [1, 3] and rec["status"] == "complete" and rec["mode"] == "torchrun"


def test_finalize_names_missing_shards_and_refuses_foreign_ones(
    runs: dict[str, Path],
    tmp_path: Path,
    demo_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from auditor.cli import main

    cfg = runs["_cfg"]
    out = tmp_path / "partial"
    base = ["run", str(cfg), "--limit", LIMIT, "--no-pdf", "--no-progress", "--out", str(out)]
    assert main([*base, "--shard", "1/2"]) == 0
    capsys.readouterr()

    def refused(args: list[str], *needles: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        for needle in needles:
            assert needle in err, err

    refused(["finalize", str(out), "--no-pdf"], "missing shard(s) 0/2")
    # a shard from another config is refused, naming the fingerprint that differs
    other = demo_config(
        tmp_path,
        preset="small",
        name="other.toml",
        batch_size=BATCH,
        gates="max_background_focus = 0.5",
    )
    refused(
        ["run", str(other), "--limit", LIMIT, "--no-pdf", "--out", str(out), "--shard", "0/2"],
        "config_sha256",
    )
    # another split into the same directory; the same shard twice; a shard out of range
    refused([*base, "--shard", "0/3"], "2-way split")
    refused([*base, "--shard", "1/2"], "already holds shard 1/2")
    refused([*base, "--shard", "2/2"], "0 <= I < N")
