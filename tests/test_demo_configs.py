"""The demo's config is written in ONE place (issue 21): the tests' presets and the docs sandbox
take the demo's [model]/[data] tables from ``auditor.demo.shortcut.DEMO_CONFIG``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tomllib

from auditor.demo.configs import demo_config_text, demo_tables
from auditor.demo.shortcut import DEMO_CONFIG


def _demo(variant: str = "shortcut") -> dict[str, object]:
    text = DEMO_CONFIG.format(variant=variant, weights=f"demo-{variant}.pt", config_name="c.toml")
    return tomllib.loads(text)


def test_tables_are_the_demo_configs() -> None:
    demo = _demo()
    got = tomllib.loads(demo_tables("demo-shortcut.pt", name="demo-cnn-shortcut"))
    assert got == {"model": demo["model"], "data": demo["data"]}
    bare = tomllib.loads(demo_tables("/abs/w.pt", "/abs/data/manifest.csv"))
    assert "name" not in bare["model"] and bare["model"]["weights"] == "/abs/w.pt"
    assert bare["data"] == {**demo["data"], "manifest": "/abs/data/manifest.csv"}  # type: ignore[dict-item]


def test_config_text_adds_the_bodies_given() -> None:
    text = demo_config_text(weights="w.pt", audit='methods = ["gradcam"]\n', report="pdf = false\n")
    cfg = tomllib.loads(text)
    assert cfg["audit"] == {"methods": ["gradcam"]} and cfg["report"] == {"pdf": False}
    assert "gates" not in cfg
    assert tomllib.loads(demo_config_text(weights="w", audit="", gates="max_findings_high = 0\n"))[
        "gates"
    ] == {"max_findings_high": 0}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_test_presets_use_the_demo_tables(
    preset: str, demo_config: Callable[..., Path], demo_inputs: Path, tmp_path: Path
) -> None:
    cfg = tomllib.loads(demo_config(tmp_path, preset=preset).read_text("utf-8"))
    demo = _demo()
    assert cfg["data"] == {
        **demo["data"],
        "manifest": str(demo_inputs.parent / "data" / "manifest.csv"),
    }  # type: ignore[dict-item]
    assert cfg["model"]["factory"] == demo["model"]["factory"]  # type: ignore[index]
    assert cfg["model"]["weights"] == str(demo_inputs.parent / "demo-shortcut.pt")
