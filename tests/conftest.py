"""Shared fixtures: a small demo run directory built once per session (no PDF)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs two workers on this 2-core machine) each worker and the
# subprocesses it starts get one intra-op thread, so the workers do not oversubscribe the cores.
_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if _XDIST_WORKER:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import torch  # noqa: E402  (after the thread settings above)

os.environ.setdefault("CI", "1")  # quiet progress bars
torch.set_num_threads(1 if _XDIST_WORKER else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's dataset, weights and config (shortcut variant)."""
    from auditor.demo import write_demo_inputs

    return write_demo_inputs(tmp_path_factory.mktemp("demo") / "inputs")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, demo_inputs: Path) -> Path:
    """A complete demo audit with HTML + PDF report, shared by the end-to-end tests."""
    import auditor

    out = tmp_path_factory.mktemp("demo-run") / "run"
    auditor.run_audit(auditor.load_config(demo_inputs), out, pdf=True, progress=False)
    return out
