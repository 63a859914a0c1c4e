"""Shared fixtures: a small demo run directory built once per session (no PDF)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
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

_DEMO_CONFIG = """
[model]
factory = "auditor.demo:build_model"
weights = "{weights}"
name = "{model_name}"

[data]
manifest = "{manifest}"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
{audit}{audit_extra}
{gates}
"""


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
    """A cheap config on the demo's weights and data, written to ``folder/name``.

    ``preset``: "tiny" or "small" (:data:`_AUDIT_PRESETS`); ``batch_size``: the preset's by
    default; ``gates``: a ``[gates]`` body (none when empty); ``audit_extra``: more ``[audit]``
    lines.
    """
    model_name, audit, default_batch = _AUDIT_PRESETS[preset]
    src = demo_inputs.parent
    path = folder / (name or f"{preset}.toml")
    path.write_text(
        _DEMO_CONFIG.format(
            weights=src / "demo-shortcut.pt",
            manifest=src / "data" / "manifest.csv",
            model_name=model_name,
            audit=audit.format(batch_size=batch_size or default_batch),
            audit_extra=audit_extra,
            gates="[gates]\n" + gates if gates else "",
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def demo_config(demo_inputs: Path) -> Callable[..., Path]:
    """``demo_config(folder, *, preset="tiny", name=, batch_size=, gates=, audit_extra=)``:
    :func:`write_demo_config` on the session's demo inputs (no test module builds its own)."""
    return functools.partial(write_demo_config, demo_inputs=demo_inputs)
