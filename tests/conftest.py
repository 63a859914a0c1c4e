"""Shared fixtures: a small demo run directory built once per session (no PDF)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

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


def _shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Any) -> Path:
    """Build ``name`` once per test session, shared by all pytest-xdist workers.

    Under xdist every worker has its own session, so a session fixture would be built once per
    worker; the workers' base folders share a parent, where the first worker builds the item
    under a file lock and the others wait for it and reuse it. Consumers must treat it as
    read-only (copy it before changing anything)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if _XDIST_WORKER:
        root = root.parent
    path = root / f"shared-{name}"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not (root / f"shared-{name}.done").exists():
            if path.exists():
                shutil.rmtree(path)  # a half-built copy from a worker that crashed
            build(path)
            (root / f"shared-{name}.done").touch()
    return path


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's dataset, weights and config (shortcut variant)."""
    from auditor.demo import write_demo_inputs

    inputs = _shared_once(tmp_path_factory, "demo-inputs", write_demo_inputs)
    config = inputs / "config-shortcut.toml"
    assert config.is_file(), config
    return config


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, demo_inputs: Path) -> Path:
    """A complete demo audit with HTML + PDF report, shared (read-only) by the end-to-end
    tests of both workers."""
    import auditor

    def build(out: Path) -> None:
        auditor.run_audit(auditor.load_config(demo_inputs), out, pdf=True, progress=False)

    return _shared_once(tmp_path_factory, "demo-run", build)
