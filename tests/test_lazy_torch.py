"""Reading a run's dataset and clustering its maps never import torch (issue 14).

``import torch`` costs ~650 MB of resident memory, a third of the 2 GiB finalisation budget.
The runner and the dataset readers import it only where a model or a tensor is made; SpRAy
pools maps in numpy. Checked in a fresh interpreter (this test process has torch loaded).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import sys
import numpy as np
import auditor.audit.runner  # noqa: F401
from auditor.config import load_config
from auditor.data import open_dataset
from auditor.analysis.spray.subgroups import analyse_class

ds = open_dataset(load_config(sys.argv[1]).data)
image, mask = ds.load_display(0)
assert image.dtype == np.uint8 and image.shape == (32, 32, 3), image.shape
assert mask is not None and mask.sum() == 16 * 16
maps = np.random.default_rng(0).random((700, 20, 20))  # ARPACK path, pooled to 16 x 16
res = analyse_class(maps, {}, n_classes=2, border_chance_share=0.36, n_boot=200)
assert res.labels.size == 700
print("torch" in sys.modules)
"""


def test_dataset_reading_and_spray_do_not_import_torch(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,label,x0,y0,x1,y1\na.png,cat,8,8,24,24\n")
    (tmp_path / "c.toml").write_text(
        '[model]\nfactory = "auditor.demo:build_model"\n'
        '[data]\nmanifest = "m.csv"\nclasses = ["cat", "dog"]\ninput_size = 32\n'
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path / "c.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


_BLOCKED_PROBE = r"""
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, _NoTorch())
from pathlib import Path

from auditor.metrics.registry import sample_metric_names
from auditor.report import render_html
from auditor.compare import compare_runs

assert "energy_in_mask" in sample_metric_names()
a, b, out = (Path(p) for p in sys.argv[1:4])
render_html(a)
compare_runs(a, b, out=out, pdf=False)
assert (out / "comparison.json").is_file()
print("torch" in sys.modules)
"""


def test_report_and_compare_run_with_torch_blocked(demo_run: Path, tmp_path: Path) -> None:
    """``auditor report`` and ``auditor compare`` (and the metric names they read) need no
    torch: an import of torch raises in the probe, and both still write their outputs."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(demo_run, a)
    shutil.copytree(demo_run, b)
    (a / "report.html").unlink()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _BLOCKED_PROBE, str(a), str(b), str(tmp_path / "cmp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
    assert (a / "report.html").stat().st_size > 0


_FINALIZE_PROBE = r"""
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, _NoTorch())
from pathlib import Path

from auditor.audit.runner import finalize_run
from auditor.config import load_config

run = Path(sys.argv[1])
cfg = load_config(Path(sys.argv[2]))
assert cfg.audit.methods == ("gradcam", "gradcam++", "layercam", "cam"), cfg.audit.methods
try:
    load_config(Path(sys.argv[3]))
except Exception as exc:  # the name check needs no torch either
    print(type(exc).__name__, exc)
reshaped = load_config(Path(sys.argv[4]))  # [model] reshape is checked without torch too
print("reshape", dict(reshaped.model.reshape))
try:
    load_config(Path(sys.argv[5]))
except Exception as exc:
    print(type(exc).__name__, exc)
finalize_run(run, pdf=False, render=False)
print("torch" in sys.modules)
"""


def test_load_config_and_finalize_run_with_torch_blocked(
    demo_run: Path, demo_inputs: Path, tmp_path: Path
) -> None:
    """``auditor finalize`` (``load_config`` with its ``[audit] methods`` and ``[model]
    reshape`` checks, then finalisation) needs no torch (issue 21): an import of torch raises
    in the probe, the method names come from the torch-free registry and the methods' metadata
    from the shard manifest, and summary.json comes out the same as the audit's own, run times
    apart."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    (run / "summary.json").unlink()
    bad = tmp_path / "bad.toml"
    text = demo_inputs.read_text("utf-8")
    assert 'methods = ["gradcam"' in text, text
    text = text.replace('methods = ["gradcam"', 'methods = ["gradcan"')
    for rel in ("data/manifest.csv", "demo-shortcut.pt"):  # bad.toml lies elsewhere
        text = text.replace(f'"{rel}"', json.dumps(str(demo_inputs.parent / rel)))
    bad.write_text(text, "utf-8")
    reshaped, bad_reshape = tmp_path / "reshape.toml", tmp_path / "bad-reshape.toml"
    text = text.replace('methods = ["gradcan"', 'methods = ["gradcam"')
    for path, table in (
        (reshaped, '{kind = "tokens", prefix_tokens = 1, grid = [4, 4]}'),
        (bad_reshape, '{kind = "tokens", prefix_tokens = -1}'),
    ):
        path.write_text(text.replace("[model]\n", f"[model]\nreshape = {table}\n", 1), "utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    probe_args = [str(run), str(demo_inputs), str(bad), str(reshaped), str(bad_reshape)]
    out = subprocess.run(
        [sys.executable, "-c", _FINALIZE_PROBE, *probe_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False", out.stdout
    assert any("unknown method 'gradcan'" in ln and "did you mean 'gradcam'" in ln for ln in lines)
    reshape = "reshape {'kind': 'tokens', 'prefix_tokens': 1, 'grid': [4, 4]}"
    assert reshape in lines, out.stdout
    assert any(
        ln.startswith("ConfigError") and "[model] reshape.prefix_tokens must be an int >= 0" in ln
        for ln in lines
    ), out.stdout

    def stable(path: Path) -> dict[str, object]:
        data = json.loads(path.read_text("utf-8"))
        for key in ("duration_s", "finished", "timings"):
            data["run"].pop(key, None)
        for entry in data["classes"].values():  # finalize holds no model: no transplant
            entry.pop("transplant", None)
        return data

    got = json.loads((run / "summary.json").read_text("utf-8"))
    assert {c["transplant"]["status"] for c in got["classes"].values()} == {"not_run"}
    audited = json.loads((demo_run / "summary.json").read_text("utf-8"))
    # no transplant confirmed on the demo, so no finding was raised by one
    assert "confirmed" not in {c["transplant"]["status"] for c in audited["classes"].values()}
    assert stable(run / "summary.json") == stable(demo_run / "summary.json")
