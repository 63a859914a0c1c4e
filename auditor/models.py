"""Load the model to audit, safely.

Sources (``[model]`` in the config):

* ``factory = "module:callable"`` + ``weights`` (a state_dict): the module may sit beside the
  config file. ``kwargs`` are passed to the callable.
* ``torchvision = "<arch>"`` + ``num_classes`` + ``weights``.
* ``file = "model.pt"``: a TorchScript archive or a fully pickled module. Both can run
  arbitrary code when loaded, so they are refused unless ``trust_model_code = true`` (CLI
  ``--trust-model-code``).

State dicts are read with ``torch.load(..., weights_only=True)`` (no code execution) or from
``.safetensors``. A state dict that does not fit the architecture is reported with its
missing/unexpected keys and shape mismatches.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditor.config import ModelConfig
from auditor.errors import ModelLoadError

TRUST_FLAG = "--trust-model-code"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to audit plus its identity for provenance."""

    module: nn.Module
    name: str
    source: str
    sha256: str
    parameters: int


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a module's state (random-weight models)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def _call_factory(spec: str, base_dir: Path, kwargs: Mapping[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    with _on_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(
                f"[model] factory: cannot import module {module_name!r} "
                f"(looked in {base_dir} and sys.path): {exc}"
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"[model] factory: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"[model] factory: {spec!r} is not callable")
    try:
        model = obj(**kwargs)
    except TypeError as exc:
        raise ModelLoadError(
            f"[model] factory: calling {spec}(**{dict(kwargs)!r}) failed: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"[model] factory: {spec} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _torchvision_model(arch: str, num_classes: int | None) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        import difflib

        close = difflib.get_close_matches(arch, available, n=3)
        raise ModelLoadError(
            f"[model] torchvision: unknown architecture {arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(arch, **kwargs)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code.

    ``torch.load`` runs with ``weights_only=True``: pickles that would call arbitrary
    functions (``__reduce__``) are refused before anything runs. Common wrappers
    (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped; a ``module.`` prefix left by
    DataParallel is stripped.
    """
    if not path.is_file():
        raise ModelLoadError(f"[model] weights: file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"[model] weights: cannot read safetensors {path}: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
            raise ModelLoadError(
                f"[model] weights: {path.name} is not a plain state_dict loadable with "
                f"weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                f"Save it with torch.save(model.state_dict(), ...) or as .safetensors; a full "
                f"pickle or TorchScript file goes in `file =` with {TRUST_FLAG}."
            ) from exc
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelLoadError(f"[model] weights: {path.name} does not contain a state_dict")
    out = {str(k): v for k, v in state.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` strictly; on mismatch list missing/unexpected keys and shape conflicts."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def cap(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {cap(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {cap(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {cap(shapes)}")
        raise ModelLoadError(
            f"[model] weights: {path.name} does not fit the architecture; " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def _load_trusted_file(path: Path, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"[model] file: not found: {path}")
    if not trust:
        raise ModelLoadError(
            f"[model] file: {path.name} is a TorchScript archive or a pickled model; loading "
            f"either can execute arbitrary code from the file, so it is refused by default. "
            f"Use a state_dict (+ factory or torchvision), or opt in with {TRUST_FLAG} "
            f"(or trust_model_code = true) if you trust its author."
        )
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                is_script = any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())
        except zipfile.BadZipFile:
            is_script = False
        if is_script:
            try:
                return torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - many error types from the loader
                raise ModelLoadError(
                    f"[model] file: cannot load TorchScript {path.name}: {exc}"
                ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - opted in
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"[model] file: cannot load {path.name}: {exc}") from exc
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"[model] file: {path.name} holds a {type(obj).__name__}, not a torch.nn.Module; "
            f"for a state_dict use `weights =` with a factory or torchvision architecture"
        )
    return obj


def load_model(
    cfg: ModelConfig, *, num_classes: int | None = None, trust_model_code: bool | None = None
) -> LoadedModel:
    """Build the model described by ``cfg`` and load its weights (see module docstring)."""
    trust = cfg.trust_model_code if trust_model_code is None else trust_model_code
    n_cls = cfg.num_classes if cfg.num_classes is not None else num_classes
    if cfg.file is not None:
        model = _load_trusted_file(cfg.file, trust)
        sha = file_sha256(cfg.file)
        name = cfg.name or cfg.file.stem
    else:
        if cfg.factory:
            model = _call_factory(cfg.factory, cfg.base_dir, cfg.factory_kwargs)
            name = cfg.name or cfg.factory.rpartition(":")[2]
        elif cfg.torchvision:
            model = _torchvision_model(cfg.torchvision, n_cls)
            name = cfg.name or cfg.torchvision
        else:
            raise ModelLoadError("[model] needs one of factory, torchvision or file")
        if cfg.weights is not None:
            apply_state_dict(model, read_state_dict(cfg.weights), cfg.weights)
            sha = file_sha256(cfg.weights)
        else:
            sha = state_dict_sha256(model)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(module=model, name=name, source=cfg.source, sha256=sha, parameters=n_params)
