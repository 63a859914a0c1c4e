"""Model loading: factory / torchvision / safetensors, weights_only, trust flag, key mismatches."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from auditor.config import ModelConfig
from auditor.errors import ModelLoadError
from auditor.models import load_model, read_state_dict

FACTORY_MODULE = """
import torch
from torch import nn

def build(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""


@pytest.fixture()
def factory_dir(tmp_path: Path) -> Path:
    (tmp_path / "my_nets_mod.py").write_text(FACTORY_MODULE)
    return tmp_path


def build_ref(num_classes: int = 3, width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def test_factory_beside_config_with_state_dict(factory_dir: Path) -> None:
    ref = build_ref()
    torch.save(ref.state_dict(), factory_dir / "w.pt")
    cfg = ModelConfig(
        factory="my_nets_mod:build", weights=factory_dir / "w.pt", base_dir=factory_dir
    )
    loaded = load_model(cfg)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(loaded.module(x), ref(x))
    assert not loaded.module.training
    assert len(loaded.sha256) == 64


def test_safetensors_weights(factory_dir: Path) -> None:
    from safetensors.torch import save_file

    ref = build_ref()
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()}, factory_dir / "w.safetensors"
    )
    cfg = ModelConfig(
        factory="my_nets_mod:build", weights=factory_dir / "w.safetensors", base_dir=factory_dir
    )
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(load_model(cfg).module(x), ref(x))


def test_mismatched_state_dict_lists_keys(factory_dir: Path) -> None:
    state = build_ref().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["4.bias"]
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(state, factory_dir / "bad.pt")
    cfg = ModelConfig(
        factory="my_nets_mod:build", weights=factory_dir / "bad.pt", base_dir=factory_dir
    )
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg)
    msg = str(err.value)
    assert "missing keys: 4.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "0.weight: checkpoint (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_malicious_pickle_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    payload = tmp_path / "evil.pt"
    with open(payload, "wb") as fh:
        pickle.dump({"weight": _Evil(str(target))}, fh)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        read_state_dict(payload)
    assert not target.exists()


def test_full_pickle_refused_without_trust_and_loads_with_it(tmp_path: Path) -> None:
    model = build_ref()
    torch.save(model, tmp_path / "full.pt")
    cfg = ModelConfig(file=tmp_path / "full.pt", base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="--trust-model-code"):
        load_model(cfg)
    loaded = load_model(cfg, trust_model_code=True)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.module(x), model(x))


def test_torchscript_refused_without_trust_and_with_it_names_the_eager_route(
    tmp_path: Path,
) -> None:
    # issue 13: a trusted TorchScript archive loaded, then failed at the first hook
    # ("register_forward_hook is not supported on ScriptModules"); it is refused up front
    scripted = torch.jit.script(build_ref())
    scripted.save(str(tmp_path / "m.ts"))
    cfg = ModelConfig(file=tmp_path / "m.ts", base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model(cfg)
    with pytest.raises(ModelLoadError, match="hooks.*state_dict.*full pickle"):
        load_model(cfg, trust_model_code=True)
    # the eager route works: a full pickle of the module, trusted
    torch.save(build_ref(), tmp_path / "m.pt")
    loaded = load_model(
        ModelConfig(file=tmp_path / "m.pt", base_dir=tmp_path), trust_model_code=True
    )
    assert loaded.module(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_torchvision_with_num_classes() -> None:
    loaded = load_model(ModelConfig(torchvision="resnet18", num_classes=5, random_weights=True))
    assert loaded.module.fc.out_features == 5
    assert loaded.parameters > 10_000_000


def test_unknown_torchvision_arch_suggests() -> None:
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_model(ModelConfig(torchvision="resnet81", num_classes=2, random_weights=True))


def test_factory_import_error_names_module(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no_such_module"):
        load_model(ModelConfig(factory="no_such_module:build", base_dir=tmp_path))


def test_state_dict_wrappers_and_module_prefix(factory_dir: Path) -> None:
    ref = build_ref()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, factory_dir / "wrapped.pt")
    cfg = ModelConfig(
        factory="my_nets_mod:build", weights=factory_dir / "wrapped.pt", base_dir=factory_dir
    )
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(load_model(cfg).module(x), ref(x))


def test_missing_weights_file(factory_dir: Path) -> None:
    cfg = ModelConfig(
        factory="my_nets_mod:build", weights=factory_dir / "nope.pt", base_dir=factory_dir
    )
    with pytest.raises(ModelLoadError, match="file not found"):
        load_model(cfg)
    assert os.path.exists(factory_dir)
