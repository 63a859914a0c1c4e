"""TOML configuration → validated, frozen :class:`AuditConfig`.

Relative paths are relative to the config file's folder. Unknown keys are errors that name the
key and the file (a typo must not silently disable a gate). See DESIGN.md §4.2 and README.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import tomllib

from auditor.errors import ConfigError
from auditor.results.vocab import GATE_SEVERITIES

TOP_LEVEL_SECTIONS = ("model", "data", "audit", "gates", "report")

#: Gate shorthands on per-class statistics other than localisation metrics.
GATE_EXTRA_QUANTITIES = (
    "accuracy",
    "only_fg_drop",
    "background_gap",
    "only_fg_accuracy",
    "only_bg_accuracy",
    "mixed_rand_accuracy",
)
SEVERITIES = GATE_SEVERITIES  # the severities a findings gate counts (auditor.results.vocab)


def _suggest(key: str, allowed: list[str] | tuple[str, ...]) -> str:
    """ " (did you mean 'x'?)" with the closest of ``allowed``; "pp"/"plus" read as "++"
    ("gradcampp" suggests "gradcam++")."""
    canon = {a.replace("++", "pp"): a for a in allowed}
    spelled = key.replace("plus", "pp").replace("++", "pp")
    if spelled in canon and canon[spelled] != key:
        return f" (did you mean {canon[spelled]!r}?)"
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(
    table: Mapping[str, Any], allowed: list[str] | tuple[str, ...], section: str, source: str
) -> None:
    """Raise :class:`ConfigError` for the first key of ``table`` not in ``allowed``."""
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{source}: unknown key [{section}] {key}{_suggest(key, allowed)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )


def _typed(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
    section: str,
    source: str,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is an int subclass: refuse it where a number is expected.
    bad_bool = isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    )
    if not isinstance(value, kind) or bad_bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{source}: [{section}] {key} must be {names}, got {value!r}")
    return value


#: ``[model] output`` values (issue 26: multi-label heads are stated, never guessed).
MODEL_OUTPUTS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` section: where the network comes from and which layer to explain."""

    factory: str | None = None
    torchvision: str | None = None
    timm: str | None = None
    transformers: Path | None = None
    random_weights: bool = False
    weights: Path | None = None
    file: Path | None = None
    num_classes: int | None = None
    #: "softmax" (one label per image, the default) or "sigmoid" (multi-label: independent
    #: per-label probabilities, labels as sets; auditor.data.multilabel, issue 26). Never
    #: inferred: a sigmoid head audited as softmax (or the reverse) gives wrong numbers.
    output: str = "softmax"
    target_layer: str | tuple[str, ...] | None = None
    name: str | None = None
    trust_model_code: bool = False
    reshape: str | Mapping[str, Any] | None = None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    #: "classification" (default) or "detection" (issue 26: auditor.config_detection)
    task: str = "classification"
    #: detection only: a detection counts when its score is >= this
    score_threshold: float | None = None

    @property
    def source(self) -> str:
        if self.factory:
            return f"factory:{self.factory}"
        if self.torchvision:
            return f"torchvision:{self.torchvision}"
        if self.timm:
            return f"timm:{self.timm}"
        if self.transformers is not None:
            return f"transformers:{self.transformers}"
        return f"file:{self.file}"


MODEL_KEYS = (
    "factory",
    "torchvision",
    "timm",
    "transformers",
    "random_weights",
    "weights",
    "file",
    "num_classes",
    "output",
    "target_layer",
    "name",
    "trust_model_code",
    "reshape",
    "kwargs",
    "task",
    "score_threshold",
)


def _parse_model(table: Mapping[str, Any], base: Path, source: str) -> ModelConfig:
    """The ``[model]`` table: exactly one model source, its weights, outputs, target layer."""
    check_keys(table, MODEL_KEYS, "model", source)
    factory = _typed(table, "factory", str, None, "model", source)
    tv = _typed(table, "torchvision", str, None, "model", source)
    file = _typed(table, "file", str, None, "model", source)
    timm_name = _typed(table, "timm", str, None, "model", source)
    hf_dir = _typed(table, "transformers", str, None, "model", source)
    sources = (
        ("factory", factory),
        ("torchvision", tv),
        ("timm", timm_name),
        ("transformers", hf_dir),
        ("file", file),
    )
    given = [k for k, v in sources if v]
    if len(given) != 1:
        raise ConfigError(
            f"{source}: [model] needs exactly one of factory, torchvision, timm, transformers "
            f"or file; got {given or 'none'}"
        )
    if factory and ":" not in factory:
        raise ConfigError(
            f"{source}: [model] factory must look like 'module:callable', got {factory!r}"
        )
    weights, random_weights = _parse_weights(table, tv, timm_name, hf_dir, source)
    num_classes = _typed(table, "num_classes", int, None, "model", source)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"{source}: [model] num_classes must be >= 1, got {num_classes}")
    output = _typed(table, "output", str, "softmax", "model", source)
    if output not in MODEL_OUTPUTS:
        raise ConfigError(
            f"{source}: [model] output must be 'softmax' or 'sigmoid', got {output!r}"
            f"{_suggest(output, list(MODEL_OUTPUTS))}"
        )
    layer, reshape = _parse_target_layer(table, source)
    kwargs = _typed(table, "kwargs", dict, {}, "model", source)
    from auditor.config_detection import parse_task

    task, score_threshold = parse_task(table, source)
    return ModelConfig(
        factory=factory,
        torchvision=tv,
        timm=timm_name,
        transformers=(base / hf_dir).resolve() if hf_dir else None,
        random_weights=random_weights,
        weights=(base / weights).resolve() if weights else None,
        file=(base / file).resolve() if file else None,
        num_classes=num_classes,
        output=output,
        target_layer=layer,
        name=_typed(table, "name", str, None, "model", source),
        trust_model_code=_typed(table, "trust_model_code", bool, False, "model", source),
        reshape=reshape,
        factory_kwargs=dict(kwargs),
        base_dir=base,
        task=task,
        score_threshold=score_threshold,
    )


def _parse_weights(
    table: Mapping[str, Any],
    tv: str | None,
    timm_name: str | None,
    hf_dir: str | None,
    source: str,
) -> tuple[str | None, bool]:
    """``[model] weights`` and ``random_weights``: an architecture by name needs weights (never
    downloaded) unless random weights are asked for; a transformers directory has its own."""
    weights = _typed(table, "weights", str, None, "model", source)
    random_weights = _typed(table, "random_weights", bool, False, "model", source)
    if (tv or timm_name) and weights is None and not random_weights:
        key = "torchvision" if tv else "timm"
        raise ConfigError(
            f"{source}: [model] {key} = {tv or timm_name!r} has no `weights`: the audit would "
            f"explain a randomly initialised network (pretrained weights are never downloaded); "
            f'set weights = "model.safetensors" (or a state_dict file), or random_weights = '
            f"true to audit random weights on purpose"
        )
    if random_weights and weights is not None:
        raise ConfigError(
            f"{source}: [model] random_weights = true contradicts weights = {weights!r}; remove one"
        )
    if hf_dir and weights is not None:
        raise ConfigError(
            f"{source}: [model] transformers = {hf_dir!r} reads its weights from the "
            "directory (model.safetensors); remove `weights`"
        )
    return weights, random_weights


def _parse_target_layer(table: Mapping[str, Any], source: str) -> tuple[Any, Any]:
    """``[model] target_layer`` (a name or a list of names, or ``None``: found) and
    ``reshape`` (checked by :func:`auditor.cam.reshape.parse_reshape`, without torch)."""
    layer = table.get("target_layer")
    if layer is not None:
        if isinstance(layer, list) and layer and all(isinstance(x, str) for x in layer):
            layer = tuple(layer)
        elif not isinstance(layer, str):
            raise ConfigError(
                f"{source}: [model] target_layer must be a string or a list of strings, "
                f"got {layer!r}"
            )
    reshape = _typed(table, "reshape", (str, dict), None, "model", source)
    if reshape is not None:
        from auditor.cam.reshape import parse_reshape  # torch-free

        try:
            parse_reshape(reshape, "[model] reshape")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    return layer, reshape


_DEVICE_RE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")


def check_device(device: Any, where: str) -> str:
    """``device`` if it is a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    Only the spelling is checked here (no torch import); availability is checked by
    :func:`check_device_available` before the model is loaded.
    """
    if not isinstance(device, str) or not _DEVICE_RE.match(device) or device.startswith("cpu:"):
        close = _suggest(str(device), ["cpu", "cuda", "cuda:0", "mps"])
        raise ConfigError(f"{where} must be cpu, cuda, cuda:N or mps, got {device!r}{close}")
    return device


def check_device_available(device: str, where: str = "--device") -> None:
    """Refuse a device this machine does not have (before any model or data is touched)."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} {device}: CUDA is not available on this machine")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"{where} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"{where} {device}: MPS is not available on this machine")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"{where} {device}: XPU is not available on this machine")


#: Fewest bootstrap replicates accepted: an interval needs replicates beyond both ends.
MIN_BOOTSTRAP = 50


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` section: methods, targets and which analyses run."""

    methods: tuple[str, ...] = ("gradcam",)
    primary_method: str | None = None
    target: str = "label"
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    interventions: bool = True
    intervention_fill: str = "mean"
    #: also predict the only-fg/only-bg images with the alternative fills (blur, noise, the
    #: image's own mean), used when the configured fill collapses (issue 22)
    intervention_alternatives: bool = True
    faithfulness_samples: int = 64
    faithfulness_steps: int = 20
    sanity_check: bool = True
    sanity_samples: int = 32
    #: what the randomisation check re-draws (auditor.metrics.sanity): "cascade" (default: the
    #: modules after the target layer and the block that contains it, so that the layer's
    #: activations change too; Adebayo et al. 2018's cascading randomisation) or "head" (only
    #: the modules after the target layer)
    sanity_randomise: str = "cascade"
    clusters: bool = True
    bootstrap: int = 2000
    confidence: float = 0.95
    pointing_tolerance: int = 0
    iou_threshold: float = 0.5
    border_width: float = 0.1
    score_batch_size: int | None = None
    inference_copy: bool = True
    gallery_per_class: int = 4
    autocast: str | None = None
    limit: int | None = None
    #: batches on which the model may raise (their samples are skipped with the error as the
    #: reason) before the run stops with exit code 2 naming the model
    max_failed_batches: int = 3
    #: forwards per image the methods may cost (the capture + Score-CAM's K masked inputs,
    #: SS-CAM's 35 K, ...; estimated before the first batch, auditor.cam.applicability): a run
    #: above it is refused with exit 2 unless raised
    max_forwards_per_image: int = 2048
    #: how finalisation aggregates the rows: "exact" (one table, exact bootstrap), "streaming"
    #: (shard by shard, Poisson bootstrap: auditor.analysis.streamed) or "auto" (streaming
    #: above auditor.analysis.streamed.STREAMING_THRESHOLD evaluated samples)
    aggregation: str = "auto"
    #: multi-label runs ([model] output = "sigmoid"): also explain the k highest-scoring
    #: labels an image does NOT carry (false positives' evidence); 0 = positives only
    explain_negatives: int = 0
    #: multi-label runs: a label is predicted present when sigmoid(logit) >= threshold
    threshold: float = 0.5
    #: causal confirmation by transplant (issue 22, auditor.analysis.transplant): paste each
    #: class's candidate region onto images of other classes after the findings are built
    transplant: bool = True
    #: recipients (images of other classes) per class for the transplant
    transplant_max_images: int = 64

    @property
    def primary(self) -> str:
        return self.primary_method or self.methods[0]


def _parse_audit(table: Mapping[str, Any], source: str) -> AuditSettings:
    """The ``[audit]`` table as :class:`AuditSettings`: each key typed like its default,
    ``methods`` checked against the method registry, then the ranges and choices."""
    allowed = tuple(f.name for f in fields(AuditSettings))
    check_keys(table, allowed, "audit", source)
    defaults = AuditSettings()
    values: dict[str, Any] = {}
    for f in fields(AuditSettings):
        if f.name not in table:
            continue
        default = getattr(defaults, f.name)
        if f.name == "methods":
            values["methods"] = _parse_methods(table[f.name], source)
            continue
        if isinstance(default, bool):
            kind: type | tuple[type, ...] = bool
        elif isinstance(default, int) and f.name != "limit":
            kind = int
        elif isinstance(default, float):
            kind = (int, float)
        else:
            kind = (int,) if f.name in ("limit", "score_batch_size") else (str,)
        values[f.name] = _typed(table, f.name, kind, default, "audit", source)
    settings = AuditSettings(**values)
    _check_audit_counts(settings, source)
    _check_audit_choices(settings, source)
    return settings


def _parse_methods(value: Any, source: str) -> tuple[str, ...]:
    """``[audit] methods``: a name or a non-empty list of distinct registered method names
    (checked without importing torch: :func:`auditor.cam.registry.method_names`)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{source}: [audit] methods must be a non-empty list of names, got {value!r}"
        )
    from auditor.cam.registry import method_names  # torch-free

    known = method_names()
    for name in value:
        if name not in known:
            raise ConfigError(
                f"{source}: [audit] methods: unknown method {name!r}"
                f"{_suggest(name, list(known))}; known: {', '.join(known)}"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: [audit] methods has duplicates: {value!r}")
    return tuple(value)


def _check_audit_counts(settings: AuditSettings, source: str) -> None:
    """``target``, ``primary_method`` and the counts of ``[audit]`` (>= 1 or >= 0)."""
    if settings.target not in ("label", "predicted"):
        raise ConfigError(
            f"{source}: [audit] target must be 'label' or 'predicted', got {settings.target!r}"
        )
    if settings.primary_method is not None and settings.primary_method not in settings.methods:
        raise ConfigError(
            f"{source}: [audit] primary_method {settings.primary_method!r} is not in methods "
            f"{list(settings.methods)}"
        )
    for name in (
        "batch_size",
        "bootstrap",
        "score_batch_size",
        "faithfulness_steps",
        "max_forwards_per_image",
        "transplant_max_images",
    ):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise ConfigError(
                f"{source}: [audit] {name} must be >= 1, got {getattr(settings, name)}"
            )
    for name in (
        "faithfulness_samples",
        "sanity_samples",
        "num_workers",
        "gallery_per_class",
        "pointing_tolerance",
        "max_failed_batches",
        "explain_negatives",
    ):
        if getattr(settings, name) < 0:
            raise ConfigError(
                f"{source}: [audit] {name} must be >= 0, got {getattr(settings, name)}"
            )
    if settings.seed < 0:
        raise ConfigError(f"{source}: [audit] seed must be >= 0, got {settings.seed}")


def _check_audit_choices(settings: AuditSettings, source: str) -> None:
    """The device, the confidence level, the bootstrap size it needs, and the ranges and
    choices of ``[audit]``'s other settings."""
    check_device(settings.device, f"{source}: [audit] device")
    if not 0.5 <= settings.confidence < 1:
        raise ConfigError(
            f"{source}: [audit] confidence must be in [0.5, 1), got {settings.confidence}"
        )
    need = max(MIN_BOOTSTRAP, math.ceil(2 / max(1e-9, 1 - settings.confidence)))
    if settings.bootstrap < need:
        raise ConfigError(
            f"{source}: [audit] bootstrap must be >= {need} (replicates beyond both ends of a "
            f"{settings.confidence:.0%} interval), got {settings.bootstrap}"
        )
    if not 0 < settings.iou_threshold <= 1:
        raise ConfigError(
            f"{source}: [audit] iou_threshold must be in (0, 1], got {settings.iou_threshold}"
        )
    if not 0 < settings.border_width < 0.5:
        raise ConfigError(
            f"{source}: [audit] border_width must be in (0, 0.5), got {settings.border_width}"
        )
    if settings.intervention_fill not in ("mean", "blur", "black", "image_mean", "noise"):
        raise ConfigError(
            f"{source}: [audit] intervention_fill must be 'mean', 'blur', 'black', 'image_mean' "
            f"or 'noise', got "
            f"{settings.intervention_fill!r}"
        )
    if settings.sanity_randomise not in ("head", "cascade"):
        raise ConfigError(
            f"{source}: [audit] sanity_randomise must be 'head' or 'cascade', got "
            f"{settings.sanity_randomise!r}"
        )
    if settings.aggregation not in ("auto", "exact", "streaming"):
        raise ConfigError(
            f"{source}: [audit] aggregation must be 'auto', 'exact' or 'streaming', got "
            f"{settings.aggregation!r}"
        )
    if not 0 < settings.threshold < 1:
        raise ConfigError(
            f"{source}: [audit] threshold must be in (0, 1), got {settings.threshold}"
        )
    if settings.autocast not in (None, "bfloat16", "float16"):
        raise ConfigError(
            f"{source}: [audit] autocast must be 'bfloat16' or 'float16', got {settings.autocast!r}"
        )


@dataclass(frozen=True)
class GateRule:
    """One release gate: ``stat`` of ``quantity`` must stay within [min, max].

    ``scope`` "class" checks every class (or those in ``classes``), "overall" the whole set.
    ``quantity`` is a metric name (``background_focus``...), ``accuracy``, an intervention
    quantity (``only_fg_drop``, ``background_gap``...), or ``findings_<severity>`` (count).
    """

    name: str
    quantity: str
    stat: str = "mean"
    scope: str = "class"
    method: str | None = None
    min: float | None = None
    max: float | None = None
    classes: tuple[str, ...] | None = None
    #: group gates (scope "group"): the attribute, or "attribute=level"; None: every attribute
    group: str | None = None


RULE_KEYS = ("name", "metric", "stat", "scope", "method", "min", "max", "classes")


def _parse_gates(
    table: Mapping[str, Any],
    source: str,
    known_metrics: tuple[str, ...] = (),
    *,
    context: str = "run",
    settings: AuditSettings | None = None,
    baseline: bool = False,
) -> tuple[GateRule, ...]:
    """The ``[gates]`` table as rules, each checked against the gate registry.

    ``context`` is ``"run"`` (run, shard and finalize configs) or ``"compare"``
    (``compare --config``); see :func:`auditor.analysis.gate_registry.check_rule_context`.
    """
    from auditor.analysis.gate_registry import check_rule_context, gate_spec, unknown_gate_error

    rules: list[GateRule] = list(_interpretable_gate(table, source, context))
    for key, value in table.items():
        if key in ("rule", INTERPRETABLE_GATE):
            continue
        spec = gate_spec(key)
        if spec is None:
            raise unknown_gate_error(key, source)
        if spec.level == "group" and "run" in spec.applies:  # {site = 0.8, "site=B" = 0.9}
            if context != "run":
                raise ConfigError(
                    f"{source}: [gates] {key} is a run gate on [data] groups, not a comparison "
                    f"gate; put it in the run's config"
                )
            rules.extend(_group_gates(key, spec.quantity, value, source))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: [gates] {key} must be a number, got {value!r}")
        check_rule_context(
            key, quantity=spec.quantity, level=spec.level, context=context, source=source,
            settings=settings, baseline=baseline,
        )  # fmt: skip
        scope = "compare" if "compare" in spec.applies else spec.level
        kwargs = {spec.bound: float(value)}
        rules.append(GateRule(name=key, quantity=spec.quantity, scope=scope, **kwargs))  # type: ignore[arg-type]
    raw_rules = table.get("rule", [])
    if raw_rules and context == "compare":
        raise ConfigError(
            f"{source}: [[gates.rule]] tables are run gates; `auditor compare --config` takes "
            f"only max_<quantity>_increase / _decrease gates"
        )
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: [gates] rule must be an array of tables ([[gates.rule]])")
    for i, raw in enumerate(raw_rules):
        rules.append(_parse_rule(i, raw, source, settings))
    return tuple(rules)


#: the precondition gate (issue 22): ``[gates] require_interpretable = true | false``, ON when
#: absent in a run config; see :mod:`auditor.analysis.interpretability`
INTERPRETABLE_GATE = "require_interpretable"


def _interpretable_gate(
    table: Mapping[str, Any], source: str, context: str
) -> tuple[GateRule, ...]:
    """The ``require_interpretable`` rule: on by default in run configs, off only when set to
    ``false``; a boolean, never a number (``= 0`` would read as "off" by accident)."""
    value = table.get(INTERPRETABLE_GATE, context == "run")
    if not isinstance(value, bool):
        raise ConfigError(
            f"{source}: [gates] {INTERPRETABLE_GATE} must be true or false, got {value!r}"
        )
    if value and context != "run":
        raise ConfigError(
            f"{source}: [gates] {INTERPRETABLE_GATE} is a run gate (it applies to a single "
            "audit), not a comparison gate; put it in the run's config"
        )
    if not value:
        return ()
    return (GateRule(name=INTERPRETABLE_GATE, quantity="interpretable", scope="overall", min=1.0),)


#: ``[gates]`` table → rules (the compare config's gates too: :mod:`auditor.compare.gates`)
parse_gates = _parse_gates


def _rule_quantities() -> tuple[str, ...]:
    from auditor.analysis.gate_registry import GATES, gate_spec

    gate_spec("max_accuracy")  # fills the registry
    return tuple(
        dict.fromkeys(
            s.quantity for s in GATES.values() if "run" in s.applies and s.level != "group"
        )
    )


def _parse_rule(i: int, raw: Any, source: str, settings: AuditSettings | None) -> GateRule:
    """One ``[[gates.rule]]`` table, checked like the shorthand keys."""
    from auditor.analysis.gate_registry import check_rule_context

    where = f"[[gates.rule]] #{i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a table, got {raw!r}")
    check_keys(raw, RULE_KEYS, f"gates.rule #{i + 1}", source)
    quantities = tuple(q for q in _rule_quantities() if not q.startswith("findings_"))
    metric = raw.get("metric")
    if metric not in quantities:
        raise ConfigError(
            f"{source}: {where} metric must be one of {', '.join(quantities)}, got {metric!r}"
            f"{_suggest(str(metric), quantities)}"
        )
    stat = raw.get("stat", "mean")
    if stat not in ("mean", "ci_low", "ci_high"):
        raise ConfigError(f"{source}: {where} stat must be mean/ci_low/ci_high, got {stat!r}")
    scope = raw.get("scope", "class")
    if scope not in ("class", "overall"):
        raise ConfigError(f"{source}: {where} scope must be 'class' or 'overall', got {scope!r}")
    lo, hi = raw.get("min"), raw.get("max")
    for nm, v in (("min", lo), ("max", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{source}: {where} {nm} must be a number, got {v!r}")
    if lo is None and hi is None:
        raise ConfigError(f"{source}: {where} needs min or max")
    if raw.get("method") is not None and not isinstance(raw.get("method"), str):
        raise ConfigError(f"{source}: {where} method must be a method name, got {raw['method']!r}")
    classes = raw.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError(f"{source}: {where} classes must be a list of names, got {classes!r}")
    if classes is not None and scope == "overall":
        raise ConfigError(
            f'{source}: {where} has scope = "overall" and classes = {classes!r}: an overall '
            f"gate checks the whole set, so `classes` would be ignored; drop one of them"
        )
    if scope == "overall" and stat != "mean" and metric in INTERVENTION_QUANTITIES:
        raise ConfigError(
            f"{source}: {where} an overall {metric} is pooled over the classes and has no "
            f'interval: use stat = "mean"'
        )
    name = str(raw.get("name") or f"rule{i + 1}:{metric}")
    check_rule_context(
        f"{where} ({name})", quantity=metric, level=scope, context="run", source=source,
        settings=settings,
    )  # fmt: skip
    return GateRule(
        name=name,
        quantity=metric,
        stat=stat,
        scope=scope,
        method=raw.get("method"),
        min=None if lo is None else float(lo),
        max=None if hi is None else float(hi),
        classes=tuple(classes) if classes else None,
    )


def _group_gates(key: str, quantity: str, value: Any, source: str) -> list[GateRule]:
    """``[gates] min_group_accuracy = 0.8`` or ``= {site = 0.8, "site=B" = 0.9}``."""
    bound = key.split("_", 1)[0]
    items = value.items() if isinstance(value, Mapping) else [(None, value)]
    out = []
    for where, v in items:
        if isinstance(v, bool) or not isinstance(v, int | float):
            what = key if where is None else f"{key}.{where}"
            raise ConfigError(f"{source}: [gates] {what} must be a number, got {v!r}")
        name = key if where is None else f"{key}[{where}]"
        out.append(
            GateRule(name=name, quantity=quantity, scope="group", group=where,
                     **{bound: float(v)})  # type: ignore[arg-type]
        )  # fmt: skip
    return out


def check_group_gates(gates: tuple[GateRule, ...], groups: tuple[str, ...], source: str) -> None:
    """Group gates need ``[data] groups`` and must name one of its attributes."""
    for rule in gates:
        if rule.scope != "group":
            continue
        if not groups:
            raise ConfigError(f"{source}: [gates] {rule.name} needs [data] groups")
        attr = (rule.group or "").split("=", 1)[0].strip()
        if rule.group is not None and attr not in groups:
            raise ConfigError(
                f"{source}: [gates] {rule.name}: {attr!r} is not one of [data] groups "
                f"{list(groups)}{_suggest(attr, list(groups))}"
            )


#: Gate quantities that exist only when the analysis producing them runs.
INTERVENTION_QUANTITIES = (
    "only_fg_drop",
    "background_gap",
    "only_fg_accuracy",
    "only_bg_accuracy",
    "mixed_rand_accuracy",
)
FAITHFULNESS_QUANTITIES = (
    "deletion_auc",
    "insertion_auc",
    "average_drop",
    "increase_in_confidence",
)


def check_gates(
    gates: tuple[GateRule, ...],
    *,
    settings: AuditSettings,
    classes: Any = None,
    source: str = "<config>",
) -> None:
    """Refuse gates that could never be checked as written (they would pass or fail silently).

    Thresholds must be finite and ``min <= max``; ``method`` must be one of ``[audit]
    methods``; a gate on an intervention or faithfulness quantity needs that analysis on;
    ``classes`` must name classes of the dataset (checked when ``classes`` is given: from
    ``[data] classes`` at load time, else right after the dataset is read, before the model).
    """
    names = None if classes is None else list(classes)
    for rule in gates:
        where = f"{source}: [gates] {rule.name}"
        for bound in ("min", "max"):
            v = getattr(rule, bound)
            if v is not None and not math.isfinite(v):
                raise ConfigError(f"{where}: {bound} must be a finite number, got {v!r}")
        if rule.min is not None and rule.max is not None and rule.min > rule.max:
            raise ConfigError(
                f"{where}: min {rule.min:g} > max {rule.max:g}: no value can pass this gate"
            )
        if rule.scope == "group":
            continue  # checked against [data] groups by check_group_gates
        if rule.scope == "compare":
            raise ConfigError(
                f"{where}: is a comparison gate: it needs a baseline run; evaluate it with "
                f"`auditor run CONFIG --baseline RUN` or `auditor compare RUN_A RUN_B --config`"
            )
        if rule.scope == "class" and rule.quantity in FAITHFULNESS_QUANTITIES:
            raise ConfigError(
                f"{where}: {rule.quantity} is measured on a seeded subset of the whole set, not "
                f"per class; use scope 'overall'"
            )
        if rule.scope == "overall" and rule.classes:
            raise ConfigError(f"{where}: an overall gate cannot name classes {rule.classes!r}")
        if rule.method is not None and rule.method not in settings.methods:
            raise ConfigError(
                f"{where}: method {rule.method!r} is not run ([audit] methods = "
                f"{list(settings.methods)}){_suggest(rule.method, settings.methods)}"
            )
        if rule.quantity in INTERVENTION_QUANTITIES and not settings.interventions:
            raise ConfigError(
                f"{where}: {rule.quantity} needs the interventions, but [audit] interventions "
                f"= false"
            )
        if rule.quantity in FAITHFULNESS_QUANTITIES and settings.faithfulness_samples == 0:
            raise ConfigError(
                f"{where}: {rule.quantity} needs faithfulness, but [audit] faithfulness_samples = 0"
            )
        if rule.classes and names is not None:
            unknown = [c for c in rule.classes if c not in names]
            if unknown:
                raise ConfigError(
                    f"{where}: classes {unknown!r} are not classes of the dataset"
                    f"{_suggest(unknown[0], names)}; classes: {', '.join(names[:10])}"
                    + (" …" if len(names) > 10 else "")
                )


@dataclass(frozen=True)
class ReportSettings:
    """The ``[report]`` section."""

    title: str = "Model attention audit"
    pdf: bool = True
    templates: Path | None = None
    pdf_timeout_s: float = 600.0
    #: groups smaller than this are shown as "< N", never tested, gated or named (issue 24)
    min_group_size: int = 10


def _parse_report(table: Mapping[str, Any], base: Path, source: str) -> ReportSettings:
    from auditor.compliance import COMPLIANCE_KEYS, parse_compliance

    check_keys(
        table,
        ("title", "pdf", "templates", "pdf_timeout_s", "min_group_size", *COMPLIANCE_KEYS),
        "report",
        source,
    )
    parse_compliance(table, source)  # the compliance record is read back from run.config
    min_group = table.get("min_group_size", 10)
    if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
        raise ConfigError(
            f"{source}: [report] min_group_size must be a whole number >= 1, got {min_group!r}"
        )
    tpl = _typed(table, "templates", str, None, "report", source)
    timeout = float(_typed(table, "pdf_timeout_s", (int, float), 600.0, "report", source))
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(
            f"{source}: [report] pdf_timeout_s must be a positive number of seconds, "
            f"got {table.get('pdf_timeout_s')!r}"
        )
    return ReportSettings(
        title=_typed(table, "title", str, ReportSettings.title, "report", source),
        pdf=_typed(table, "pdf", bool, True, "report", source),
        templates=(base / tpl).resolve() if tpl else None,
        pdf_timeout_s=timeout,
        min_group_size=min_group,
    )


@dataclass(frozen=True)
class AuditConfig:
    """The whole validated configuration; ``sha256`` fingerprints the file's bytes."""

    model: ModelConfig
    data: Any  # auditor.data.config.DataConfig
    audit: AuditSettings
    gates: tuple[GateRule, ...]
    report: ReportSettings
    source: Path | None
    sha256: str
    raw: Mapping[str, Any]


def parse_config(
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    source: str = "<config>",
    sha256: str | None = None,
    baseline: bool = False,
) -> AuditConfig:
    """Validate an already-parsed TOML mapping (see :func:`load_config`).

    ``baseline``: comparison gates (``max_<q>_increase``) are allowed (``auditor run
    --baseline RUN`` evaluates them; :func:`split_gates` separates them from the run gates).
    """
    from auditor.data.config import parse_data_section
    from auditor.metrics.registry import METRICS

    check_keys(raw, TOP_LEVEL_SECTIONS, "top level", source)
    for section in ("model", "data"):
        if section not in raw:
            raise ConfigError(f"{source}: missing section [{section}]")
    for section in TOP_LEVEL_SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
    base = base_dir.resolve()
    digest = sha256 or hashlib.sha256(repr(sorted(raw.items())).encode()).hexdigest()
    data = parse_data_section(raw["data"], base, source)
    audit = _parse_audit(raw.get("audit", {}), source)
    model = _parse_model(raw["model"], base, source)
    from auditor.config_detection import check_detection_config, check_task_gates

    check_task_gates(raw.get("gates", {}), model.task, source)
    from auditor.config_multilabel import check_label_gates

    check_label_gates(raw.get("gates", {}), model.output, source)
    if model.task == "detection":  # issue 26: detection's own checks and method defaults
        audit = check_detection_config(raw, data, audit, source)
    gates = _parse_gates(
        raw.get("gates", {}), source, tuple(METRICS), settings=audit, baseline=baseline
    )
    if model.task == "detection":
        # the interpretability preconditions (accuracy above chance, the class map's grid, the
        # randomisation check) are a classifier's; a detection audit never sets that quantity,
        # so its default-on rule would fail unevaluated (issue 22 / 26)
        gates = tuple(g for g in gates if g.name != INTERPRETABLE_GATE)
    run_gates, _ = split_gates(gates)
    check_gates(run_gates, settings=audit, classes=getattr(data, "classes", None), source=source)
    check_group_gates(gates, tuple(getattr(data, "groups", ()) or ()), source)
    if model.output == "sigmoid" and model.task == "detection":
        raise ConfigError(
            f'{source}: [model] output = "sigmoid" is for classifiers; it cannot be combined '
            f'with task = "detection"'
        )
    check_output_settings(model.output, audit, data, source)

    return AuditConfig(
        model=model,
        data=data,
        audit=audit,
        gates=gates,
        report=_parse_report(raw.get("report", {}), base, source),
        source=None,
        sha256=digest,
        raw=raw,
    )


def check_output_settings(output: Any, audit: AuditSettings, data: Any, source: str) -> None:
    """Refuse settings that do not fit ``[model] output`` (issue 26), naming key and value.

    Multi-label keys need ``output = "sigmoid"``; a sigmoid run explains each label an image
    carries (``target = "label"``), aggregates exactly, and has no metadata groups yet.
    """
    if output != "sigmoid":
        if audit.explain_negatives:
            raise ConfigError(
                f"{source}: [audit] explain_negatives = {audit.explain_negatives} needs "
                f'[model] output = "sigmoid" (multi-label), got output = {output!r}'
            )
        if audit.threshold != 0.5:
            raise ConfigError(
                f"{source}: [audit] threshold = {audit.threshold} needs [model] output = "
                f'"sigmoid" (multi-label), got output = {output!r}'
            )
        return
    if audit.target != "label":
        raise ConfigError(
            f"{source}: [audit] target = {audit.target!r} is not supported with [model] output = "
            f'"sigmoid": each label an image carries is explained (use target = "label")'
        )
    if audit.aggregation == "streaming":
        raise ConfigError(
            f'{source}: [audit] aggregation = "streaming" is not supported with [model] output = '
            f'"sigmoid" yet; use "exact" or "auto"'
        )
    if getattr(data, "groups", None):
        raise ConfigError(
            f'{source}: [data] groups is not supported with [model] output = "sigmoid" yet; '
            f"remove it"
        )
    fmt = getattr(data, "format", None)
    if fmt not in ("manifest", "jsonl", "coco"):
        raise ConfigError(
            f'{source}: [model] output = "sigmoid" needs a multi-label dataset: [data] format '
            f'"manifest" or "jsonl" with a `labels` column, or "coco"; got format = {fmt!r}'
        )


def split_gates(gates: tuple[GateRule, ...]) -> tuple[tuple[GateRule, ...], tuple[GateRule, ...]]:
    """``(run gates, comparison gates)`` of ``gates``."""
    return (
        tuple(g for g in gates if g.scope != "compare"),
        tuple(g for g in gates if g.scope == "compare"),
    )


def load_config(path: str | Path, *, baseline: bool = False) -> AuditConfig:
    """Read and validate a TOML config file.

    ``baseline=True`` (``auditor run --baseline RUN``) allows comparison gates. Raises
    :class:`ConfigError` naming the file (and the key) for anything wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = p.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p.name}: invalid TOML: {exc}") from exc
    cfg = parse_config(
        raw,
        base_dir=p.parent,
        source=p.name,
        sha256=hashlib.sha256(data).hexdigest(),
        baseline=baseline,
    )
    return _replace(cfg, source=p.resolve())


def _replace(cfg: AuditConfig, **changes: Any) -> AuditConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def with_overrides(cfg: AuditConfig, **audit_changes: Any) -> AuditConfig:
    """A copy with ``[audit]`` fields replaced (CLI flags such as --device, --limit)."""
    from dataclasses import replace

    changes = {k: v for k, v in audit_changes.items() if v is not None}
    if "device" in changes:
        check_device(changes["device"], "--device")
    if "limit" in changes and (
        isinstance(changes["limit"], bool)
        or not isinstance(changes["limit"], int)
        or changes["limit"] < 1
    ):
        raise ConfigError(f"--limit must be an integer >= 1, got {changes['limit']!r}")
    return replace(cfg, audit=replace(cfg.audit, **changes))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses/paths/tuples → JSON-friendly values (for provenance and summary.json)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
