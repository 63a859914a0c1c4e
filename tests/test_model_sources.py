"""Model sources end to end (issue 11): `auditor run` with no target_layer on timm, Hugging
Face and torchvision models; refusals (no weights, missing extras, bad directories) exit 2 with
one line naming what to set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from auditor.cli import main
from auditor.config import ModelConfig
from auditor.errors import ModelLoadError
from auditor.models import load_model
from tests.fixtures_data import make_csv_masks

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

AUDIT = """
[data]
manifest = "{manifest}"
classes = ["cat", "dog"]
input_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam", "layercam"]
batch_size = 4
bootstrap = 50
faithfulness_samples = 2
faithfulness_steps = 4
sanity_samples = 3
clusters = false
gallery_per_class = 1

[gates]
# random weights on five images: not interpretable on purpose (tests/test_interpretability.py)
require_interpretable = false

[report]
pdf = false
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_csv_masks(tmp_path_factory.mktemp("sources"))["manifest"]


def _run(tmp: Path, model_toml: str, manifest: str) -> tuple[int, dict]:
    cfg = tmp / "audit.toml"
    cfg.write_text("[model]\n" + model_toml + AUDIT.format(manifest=manifest))
    out = tmp / "run"
    code = main(["run", str(cfg), "--out", str(out), "--no-pdf"])
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return code, summary


TIMM_VIT = """timm = "vit_small_patch16_224"
random_weights = true
kwargs = { img_size = 32, patch_size = 8, depth = 2, embed_dim = 16, num_heads = 2 }
"""


def test_run_timm_vit_random_weights(tmp_path: Path, manifest: str) -> None:
    code, summary = _run(tmp_path, TIMM_VIT, manifest)
    assert code == 0
    model = summary["model"]
    assert model["target_layer"] == "blocks.1.norm1"
    assert model["reshape"] == {
        "kind": "tokens",
        "prefix_tokens": 1,
        "grid": [4, 4],
        "source": "the model's num_prefix_tokens and patch_embed.grid_size",
    }
    assert "first norm of the last block" in model["target_layer_reason"]
    status = summary["sanity_status"]
    assert status["run"] is True
    # the default cascade: the final norm, the head and the last block that contains the
    # target layer (was: the rest of that block after blocks.1.norm1), not the whole transformer
    assert status["randomised"] == ["norm", "head", "blocks.1"]
    assert not any(name.startswith("blocks.0") for name in status["randomised"])
    assert summary["sanity"]["gradcam"]["n"] >= 1
    html = (tmp_path / "run" / "report.html").read_text()
    assert "blocks.1.norm1" in html and "1 prefix token(s) dropped, 4x4 grid" in html


def test_run_transformers_dir_and_faithfulness(tmp_path: Path, manifest: str) -> None:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    model_dir = tmp_path / "hf-vit"
    transformers.ViTForImageClassification(cfg).save_pretrained(model_dir)
    assert (model_dir / "model.safetensors").is_file()
    code, summary = _run(tmp_path, 'transformers = "hf-vit"\n', manifest)
    assert code == 0
    assert summary["model"]["target_layer"].endswith("layers.1.layernorm_before")
    assert summary["model"]["reshape"]["prefix_tokens"] == 1
    assert summary["model"]["source"].startswith("transformers:")
    faith = summary["faithfulness"]
    assert faith and "gradcam" in faith  # HF output objects are unwrapped there too
    assert summary["sanity_status"]["run"] is True
    assert summary["sanity_status"]["randomised"][-1].endswith("layers.1")  # the target's block


def test_run_timm_swin_with_safetensors_weights(tmp_path: Path, manifest: str) -> None:
    from safetensors.torch import save_file

    kwargs = {"img_size": 32, "embed_dim": 16, "depths": (1, 1), "num_heads": (2, 2)}
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, window_size=4, num_classes=2, **kwargs
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors"
    )
    toml = (
        'timm = "swin_tiny_patch4_window7_224"\nweights = "w.safetensors"\n'
        "kwargs = { img_size = 32, embed_dim = 16, depths = [1, 1], num_heads = [2, 2], "
        "window_size = 4 }\n"
    )
    code, summary = _run(tmp_path, toml, manifest)
    assert code == 0
    assert summary["model"]["target_layer"] == "norm"
    assert summary["model"]["reshape"]["kind"] == "channels_last"


def test_torchvision_without_weights_exits_2(tmp_path: Path, manifest: str, capsys) -> None:
    code, _ = _run(tmp_path, 'torchvision = "vgg11"\n', manifest)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "random_weights = true" in err[0] and "vgg11" in err[0]


def test_transformers_dir_without_safetensors_exits_2(
    tmp_path: Path, manifest: str, capsys
) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    code, _ = _run(tmp_path, 'transformers = "hf"\n', manifest)
    assert code == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelLoadError, match=r"pip install 'cam-auditor\[timm\]'"):
        load_model(ModelConfig(timm="resnet18", random_weights=True))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"cam-auditor\[hf\]"):
        load_model(ModelConfig(transformers=tmp_path, random_weights=True))


def test_random_weights_are_seeded_and_pretrained_refused() -> None:
    cfg = ModelConfig(timm="resnet18", random_weights=True, num_classes=2)
    assert load_model(cfg).sha256 == load_model(cfg).sha256
    with pytest.raises(ModelLoadError, match="pretrained"):
        load_model(
            ModelConfig(timm="resnet18", random_weights=True, factory_kwargs={"pretrained": True})
        )
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model(ModelConfig(timm="resnet1888", random_weights=True))
