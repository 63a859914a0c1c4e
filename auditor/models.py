"""Load the model to audit, safely.

Sources (``[model]`` in the config):

* ``factory = "module:callable"`` + ``weights`` (a state_dict): the module may sit beside the
  config file. ``kwargs`` are passed to the callable.
* ``torchvision = "<arch>"`` + ``num_classes`` + ``weights``.
* ``timm = "<name>"`` + ``num_classes`` + ``weights`` (``.safetensors`` or a state_dict); built
  with ``pretrained=False`` (nothing is ever downloaded). Needs ``pip install cam-auditor[timm]``.
* ``transformers = "DIR"``: a local Hugging Face model directory (``config.json`` +
  ``model.safetensors``) loaded offline (``local_files_only``, never remote code); its output
  object is unwrapped to logits everywhere (:func:`auditor.cam.outputs.logits_of`). Needs
  ``pip install cam-auditor[hf]``.
* ``random_weights = true``: torchvision/timm/transformers without weights, built under a fixed
  seed (0) so that the same config gives the same model. Without it a missing ``weights`` is an
  error (an unseeded random model must never be audited by accident). ``kwargs`` are passed to
  the factory, the torchvision builder or ``timm.create_model`` (e.g. a reduced depth).
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


def _optional(module: str, extra: str, key: str) -> Any:
    """Import an optional dependency or fail with the install command (exit code 2)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(
            f"[model] {key}: needs the optional package {module!r}, which is not installed "
            f"({exc}); install it with: pip install 'cam-auditor[{extra}]'"
        ) from exc


def _timm_model(
    name: str, num_classes: int | None, in_chans: int | None, kwargs: Mapping[str, Any]
) -> nn.Module:
    timm = _optional("timm", "timm", "timm")
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ModelLoadError(
            f"[model] timm: unknown model {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    if "pretrained" in kwargs or "pretrained_cfg_overlay" in kwargs:
        raise ModelLoadError(
            "[model] kwargs: `pretrained` is not allowed (nothing is downloaded); give the "
            "weights file in `weights`"
        )
    args: dict[str, Any] = {"pretrained": False, **kwargs}
    if num_classes is not None:
        args["num_classes"] = num_classes
    if in_chans is not None and in_chans != 3:
        args["in_chans"] = in_chans
    try:
        model = timm.create_model(name, **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"[model] timm: cannot build {name!r} with {args!r}: {exc}") from exc
    return model


def _transformers_model(
    directory: Path, num_classes: int | None, random_weights: bool
) -> tuple[nn.Module, str]:
    """A local Hugging Face image classifier, offline; returns (model, sha256 of its files)."""
    import os

    if not directory.is_dir():
        raise ModelLoadError(f"[model] transformers: not a directory: {directory}")
    config_file = directory / "config.json"
    weights = directory / "model.safetensors"
    if not config_file.is_file():
        raise ModelLoadError(f"[model] transformers: {directory} has no config.json")
    if not random_weights and not weights.is_file():
        found = sorted(p.name for p in directory.iterdir())[:8]
        raise ModelLoadError(
            f"[model] transformers: {directory} has no model.safetensors (found {found}); "
            "only safetensors weights are read (pickled .bin files can run code), or set "
            "random_weights = true"
        )
    transformers = _optional("transformers", "hf", "transformers")
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
        auto = transformers.AutoModelForImageClassification
        if random_weights:
            model = auto.from_config(config)
        else:
            model = auto.from_pretrained(
                str(directory),
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"[model] transformers: cannot load an image classifier from {directory}: {first}"
        ) from exc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    n_labels = getattr(model.config, "num_labels", None)
    if num_classes is not None and n_labels is not None and n_labels != num_classes:
        raise ModelLoadError(
            f"[model] transformers: {directory.name} has {n_labels} labels (config.json "
            f"num_labels) but {num_classes} classes are expected"
        )
    h = hashlib.sha256()
    for part in (config_file, weights):
        if part.is_file():
            h.update(part.name.encode())
            h.update(bytes.fromhex(file_sha256(part)))
    sha = h.hexdigest() if not random_weights else state_dict_sha256(model)
    return model, sha


def check_torchvision_name(arch: str) -> None:
    """Refuse a torchvision architecture name it does not know, with the closest 3."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        import difflib

        close = difflib.get_close_matches(arch, available, n=3)
        raise ModelLoadError(
            f"[model] torchvision: unknown model {arch!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )


def _torchvision_model(
    arch: str, num_classes: int | None, kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    import torchvision

    check_torchvision_name(arch)
    args: dict[str, Any] = {"weights": None, **(kwargs or {})}
    if num_classes is not None:
        args["num_classes"] = num_classes
    try:
        return torchvision.models.get_model(arch, **args)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"[model] torchvision: cannot build {arch!r} with {args!r}: {exc}"
        ) from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code.

    ``torch.load`` runs with ``weights_only=True``: pickles that would call arbitrary
    functions (``__reduce__``) are refused before anything runs. Common wrappers
    (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped; a ``module.`` prefix left by
    DataParallel is stripped.
    """
    if not path.is_file():
        raise ModelLoadError(f"[model] weights: file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(
            f"[model] weights: {path} is empty (0 bytes): an interrupted download or copy?"
        )
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


#: TorchScript is refused even when trusted: the CAM engine needs forward and backward hooks
#: on the target layer, and ScriptModules support neither (``register_forward_hook is not
#: supported on ScriptModules``); nor can a compiled graph be turned back into the eager module.
_SCRIPT_REFUSED = (
    "[model] file: {name} is a TorchScript archive; TorchScript modules cannot be audited "
    "because they do not support the forward/backward hooks CAM methods need on the target "
    "layer. Give the eager model instead: its state_dict in `weights =` with `factory =` or "
    "`torchvision =` (safe), or a full pickle (torch.save(model, 'model.pt')) in `file =` "
    f"with {TRUST_FLAG}"
)


def _load_trusted_file(path: Path, trust: bool) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"[model] file: not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"[model] file: {path} is empty (0 bytes)")
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
            raise ModelLoadError(_SCRIPT_REFUSED.format(name=path.name))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - opted in
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"[model] file: cannot load {path.name}: {exc}") from exc
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelLoadError(_SCRIPT_REFUSED.format(name=path.name))
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(
            f"[model] file: {path.name} holds a {type(obj).__name__}, not a torch.nn.Module; "
            f"for a state_dict use `weights =` with a factory or torchvision architecture"
        )
    return obj


def load_model(
    cfg: ModelConfig,
    *,
    num_classes: int | None = None,
    trust_model_code: bool | None = None,
    in_channels: int | None = None,
) -> LoadedModel:
    """Build the model described by ``cfg`` and load its weights (see module docstring).

    ``in_channels``: the dataset's channels (``[data] channels``); timm builds the model with
    ``in_chans``, the other sources are checked against it.
    """
    trust = cfg.trust_model_code if trust_model_code is None else trust_model_code
    n_cls = cfg.num_classes if cfg.num_classes is not None else num_classes
    builtin = cfg.torchvision or cfg.timm or cfg.transformers is not None
    if cfg.torchvision:  # an unknown name first: "has no weights" would mislead (issue 27)
        check_torchvision_name(cfg.torchvision)
    if builtin and cfg.weights is None and cfg.transformers is None and not cfg.random_weights:
        key = "torchvision" if cfg.torchvision else "timm"
        raise ModelLoadError(
            f"[model] {key} = {cfg.torchvision or cfg.timm!r} has no `weights`: the audit would "
            "explain a randomly initialised network; set weights, or random_weights = true"
        )
    if cfg.file is not None:
        model = _load_trusted_file(cfg.file, trust)
        sha = file_sha256(cfg.file)
        name = cfg.name or cfg.file.stem
    elif cfg.transformers is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, sha = _transformers_model(cfg.transformers, n_cls, cfg.random_weights)
        name = cfg.name or cfg.transformers.name
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random_weights: the same config gives the same model
            if cfg.factory:
                model = _call_factory(cfg.factory, cfg.base_dir, cfg.factory_kwargs)
                name = cfg.name or cfg.factory.rpartition(":")[2]
            elif cfg.torchvision:
                model = _torchvision_model(cfg.torchvision, n_cls, cfg.factory_kwargs)
                name = cfg.name or cfg.torchvision
            elif cfg.timm:
                model = _timm_model(cfg.timm, n_cls, in_channels, cfg.factory_kwargs)
                name = cfg.name or cfg.timm
            else:
                raise ModelLoadError(
                    "[model] needs one of factory, torchvision, timm, transformers or file"
                )
        if cfg.weights is not None:
            apply_state_dict(model, read_state_dict(cfg.weights), cfg.weights)
            sha = file_sha256(cfg.weights)
        else:
            sha = state_dict_sha256(model)
    model.eval()
    if in_channels is not None:
        _check_channels(model, in_channels)
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(module=model, name=name, source=cfg.source, sha256=sha, parameters=n_params)


def _check_channels(model: nn.Module, channels: int) -> None:
    """The first convolution must take the dataset's channels (``[data] channels``)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and first.in_channels != channels:
        raise ModelLoadError(
            f"[model]: the model's first convolution takes {first.in_channels} channel(s) but "
            f"[data] channels = {channels}; set [data] channels = {first.in_channels} (with a "
            f"mean/std of that length) or use a model built for {channels} channel(s) "
            "(timm builds one with in_chans)"
        )
