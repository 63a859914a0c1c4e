"""Shared fixtures: a small demo run directory built once per session (no PDF)."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
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


#: ``[audit]`` bodies of the cheap configs on the demo's model and data (:func:`demo_config`):
#: "tiny", one method and nothing optional but the interventions; "small", two methods with
#: faithfulness and the sanity check on a few samples (``{batch_size}`` filled in).
_AUDIT_PRESETS = {
    "tiny": (
        "demo-tiny",
        'methods = ["gradcam"]\nbatch_size = {batch_size}\nfaithfulness_samples = 0\n'
        "sanity_samples = 0\nbootstrap = 200\n",
        4,
    ),
    "small": (
        "demo-small",
        'methods = ["gradcam", "layercam"]\nbatch_size = {batch_size}\n'
        "faithfulness_samples = 8\nfaithfulness_steps = 5\nsanity_samples = 8\nbootstrap = 200\n",
        10,
    ),
}


def write_demo_config(
    folder: Path,
    demo_inputs: Path,
    *,
    preset: str = "tiny",
    name: str | None = None,
    batch_size: int | None = None,
    gates: str = "",
    audit_extra: str = "",
) -> Path:
    """A cheap config on the demo's weights and data, written to ``folder/name``: the demo's
    ``[model]``/``[data]`` (:func:`auditor.demo.configs.demo_config_text`, one source).

    ``preset``: "tiny" or "small" (:data:`_AUDIT_PRESETS`); ``batch_size``: the preset's by
    default; ``gates``: a ``[gates]`` body (none when empty); ``audit_extra``: more ``[audit]``
    lines.
    """
    from auditor.demo.configs import demo_config_text

    model_name, audit, default_batch = _AUDIT_PRESETS[preset]
    src = demo_inputs.parent
    path = folder / (name or f"{preset}.toml")
    path.write_text(
        demo_config_text(
            weights=src / "demo-shortcut.pt",
            manifest=src / "data" / "manifest.csv",
            name=model_name,
            audit=audit.format(batch_size=batch_size or default_batch) + audit_extra,
            gates=gates,
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def demo_config(demo_inputs: Path) -> Callable[..., Path]:
    """``demo_config(folder, *, preset="tiny", name=, batch_size=, gates=, audit_extra=)``:
    :func:`write_demo_config` on the session's demo inputs (no test module builds its own)."""
    return functools.partial(write_demo_config, demo_inputs=demo_inputs)


#: The test files that take longest (measured with ``--durations``), longest first. Under
#: ``make test`` (two xdist workers, one file per worker at a time) they are handed out first,
#: so the last files to run are short ones and neither worker idles at the end. Order only:
#: every test still runs; a file missing here runs after these, in collection order.
HEAVY_FILES = (
    "test_cam_replica.py",
    "test_docs_run.py",
    "test_hostile_round3.py",
    "test_scale.py",
    "test_compare_flat.py",
    "test_cli_and_resume.py",
    "test_hostile_round4.py",
    "test_groups_e2e.py",
    "test_redteam_round5.py",
    "test_detection_e2e.py",
    "test_detection_benchmark.py",
    "test_compare.py",
    "test_report_signoff.py",
    "test_multilabel_e2e.py",
    "test_wheel.py",
    "test_examples.py",
    "test_interpretability.py",
    "test_streamed.py",
    "test_detection_compare.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first (a stable sort: the order inside a file is kept)."""
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
