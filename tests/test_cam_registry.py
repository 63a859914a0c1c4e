"""The torch-free CAM method registry (issue 21): its static list of built-in names agrees with
what :mod:`auditor.cam.methods` registers, and ``auditor.cam`` serves its names lazily."""

from __future__ import annotations

import auditor.cam
from auditor.cam import registry
from auditor.cam.methods import METHODS, register


def test_builtin_names_are_the_registered_ones_in_order() -> None:
    builtin = tuple(n for n in METHODS if n in registry.BUILTIN_METHODS)
    assert builtin == registry.BUILTIN_METHODS
    assert tuple(METHODS)[: len(builtin)] == builtin  # built-ins register first
    assert registry.METHODS is METHODS  # one registry, re-exported


def test_method_names_adds_plugins_after_the_builtins() -> None:
    @register(
        "s9_probe_cam",
        needs_gradients=False,
        kind="activation",
        reference="test",
        title="Probe",
        formula="M = A_0",
        description="test only",
    )
    def _probe(ctx):  # type: ignore[no-untyped-def]
        """``M = A_0``"""
        return ctx.activations[:, 0]

    try:
        names = registry.method_names()
        assert names[: len(registry.BUILTIN_METHODS)] == registry.BUILTIN_METHODS
        assert names[-1] == "s9_probe_cam" and names.count("s9_probe_cam") == 1
    finally:
        registry._REGISTRY.pop("s9_probe_cam")
    assert "s9_probe_cam" not in registry.method_names()


def test_package_names_resolve_lazily() -> None:
    assert auditor.cam.METHODS is METHODS
    assert callable(auditor.cam.compute_cams)
    assert set(auditor.cam.__all__) <= set(dir(auditor.cam))
    try:
        auditor.cam.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
