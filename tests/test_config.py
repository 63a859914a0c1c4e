"""Config validation: unknown keys name the key and the file; types and ranges are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.config import load_config
from auditor.errors import ConfigError

BASE = """
[model]
factory = "auditor.demo:build_model"

[data]
manifest = "data/manifest.csv"
classes = ["a", "b"]
input_size = 32
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.csv").write_text("image,label\nx.png,a\n")
    p = tmp_path / "audit.toml"
    p.write_text(text)
    return p


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.audit.methods == ("gradcam",)
    assert cfg.audit.target == "label"
    # the randomisation check re-draws the target layer's block too (auditor.metrics.sanity)
    assert cfg.audit.sanity_randomise == "cascade"
    assert cfg.model.factory == "auditor.demo:build_model"
    assert cfg.data.input_size == (32, 32)
    # the one default gate: require_interpretable (issue 22), on unless set to false
    assert [g.name for g in cfg.gates] == ["require_interpretable"]
    assert len(cfg.sha256) == 64


@pytest.mark.parametrize(
    "extra, key",
    [
        ("[audit]\nmethdos = ['gradcam']\n", "methdos"),
        ("[gates]\nmax_backgroud_focus = 0.5\n", "max_backgroud_focus"),
        ("[report]\ntitel = 'x'\n", "titel"),
        ("[modell]\nx = 1\n", "modell"),
    ],
)
def test_unknown_keys_are_errors_naming_key_and_file(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE + extra))
    assert key in str(err.value)
    assert "audit.toml" in str(err.value)


def test_typo_suggests_the_right_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_background_focus'"):
        load_config(write(tmp_path, BASE + "[gates]\nmax_backgroud_focus = 0.5\n"))


def test_unknown_key_in_model_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[model\] wieghts"):
        load_config(write(tmp_path, BASE.replace("[model]", "[model]\nwieghts = 'x.pt'")))


@pytest.mark.parametrize(
    "audit, match",
    [
        ("methods = ['gradcamm']", "unknown method 'gradcamm'"),
        ("batch_size = 0", "batch_size must be >= 1"),
        ("batch_size = true", "batch_size must be int"),
        ("target = 'other'", "target must be 'label' or 'predicted'"),
        ("confidence = 1.5", "confidence must be in"),
        ("primary_method = 'layercam'", "primary_method 'layercam' is not in methods"),
        (
            "sanity_randomise = 'all'",
            r"\[audit\] sanity_randomise must be 'head' or 'cascade', got 'all'",
        ),
        ("sanity_randomise = 1", "sanity_randomise must be str"),
    ],
)
def test_bad_audit_values(tmp_path: Path, audit: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, BASE + "[audit]\n" + audit + "\n"))


def test_model_needs_exactly_one_source(tmp_path: Path) -> None:
    text = BASE.replace("[model]\n", '[model]\ntorchvision = "resnet18"\n')
    with pytest.raises(ConfigError, match="exactly one of factory, torchvision"):
        load_config(write(tmp_path, text))


def test_gate_shorthands_and_rules(tmp_path: Path) -> None:
    text = (
        BASE
        + """
[gates]
max_background_focus = 0.6
min_overall_accuracy = 0.8
max_findings_high = 0

[[gates.rule]]
metric = "energy_in_mask"
stat = "ci_low"
min = 0.3
classes = ["a"]
"""
    )
    cfg = load_config(write(tmp_path, text))
    by_name = {g.name: g for g in cfg.gates}
    assert by_name["max_background_focus"].quantity == "background_focus"
    assert by_name["max_background_focus"].scope == "class"
    assert by_name["max_background_focus"].max == 0.6
    assert by_name["min_overall_accuracy"].scope == "overall"
    assert by_name["min_overall_accuracy"].min == 0.8
    assert by_name["max_findings_high"].scope == "findings"
    rule = by_name["rule1:energy_in_mask"]
    assert (rule.stat, rule.min, rule.classes) == ("ci_low", 0.3, ("a",))


def test_gate_value_must_be_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[gates\] max_background_focus must be a number"):
        load_config(write(tmp_path, BASE + "[gates]\nmax_background_focus = '0.6'\n"))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit.toml: invalid TOML"):
        load_config(write(tmp_path, BASE + "[audit\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/audit.toml")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    text = BASE.replace("[model]\n", '[model]\nweights = "w/model.pt"\n')
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.weights == (tmp_path / "w" / "model.pt").resolve()
