"""One field-driven JSON codec for the typed results (issue 21).

Every result class is a frozen dataclass; its JSON form is DERIVED from its fields: the field's
type says how a JSON value is read (``float | None``, ``tuple[str, ...]``, a nested result, a
mapping of results, ...), and ``field(metadata=...)`` built with :func:`jfield` says what the
type cannot: a renamed key (``cls`` ↔ ``"class"``), a key left out when empty, a key written
after the unknown ones, a default taken from another key. A class's ``to_json``/``from_json``
are thin calls into :func:`encode`/:func:`decode`.

Rules (the behaviour of the hand-written pairs this module replaced, kept exactly, so that
``summary.json`` stays byte-identical):

* keys are written in field order, or in the class's ``_JSON_ORDER`` (JSON key names) where
  the documented order differs from the constructor's;
* the field marked ``extra`` keeps the keys a class does not know; they are written after the
  known keys (an unknown key never overrides a known one), then the ``late`` fields;
* reading is lenient by default: a missing key or ``null`` gives the field's default (``None``
  for an optional value: never an invented number), a number that cannot be read gives
  ``None``; a class with ``_JSON_STRICT = True`` raises instead; ``_JSON_KEEP_NUMBERS = True``
  keeps JSON numbers as written (``1`` stays an ``int``);
* lists are read as tuples and objects as read-only mappings (:func:`freeze`).

No import of torch or numpy here (``finalize``, ``report`` and ``compare`` run without torch).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "JSON",
    "JsonSpec",
    "decode",
    "encode",
    "extra_field",
    "freeze",
    "jfield",
    "json_keys",
    "number",
    "opt_float",
    "opt_int",
    "require_object",
    "thaw",
]

#: the ``field(metadata=...)`` key under which a :class:`JsonSpec` is stored
JSON = "json"

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: ``decode`` hook of a field: (the raw JSON value, the whole JSON object, the key of the
#: enclosing mapping or ``None``) → the field's value
DecodeHook = Callable[[Any, Mapping[str, Any], "str | None"], Any]


class _Unset:
    """No ``missing`` value given (the field's default applies)."""

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


@dataclass(frozen=True)
class JsonSpec:
    """How one dataclass field maps to JSON (stored in ``field(metadata={JSON: spec})``).

    Attributes:
        key: the JSON key (default: the field's name).
        skip: not part of the JSON object (``from_name`` fields and run-time attributes).
        from_name: filled from the key of the mapping that holds the object
            (``classes[<name>]`` → ``ClassResult.name``).
        omit: leave the key out when ``omit(value)`` is true (e.g. ``None`` for a key added
            later to the schema, so older outputs stay byte-identical).
        late: written after the unknown (``extra``) keys.
        extra: this field holds the keys the class does not know.
        missing: the value a missing/``null`` key reads as, where it differs from the
            field's default.
        decode: replaces the type-driven reading (``(raw, obj, name) -> value``).
        encode: replaces the type-driven writing (``value -> JSON``).
    """

    key: str | None = None
    skip: bool = False
    from_name: bool = False
    omit: Callable[[Any], bool] | None = None
    late: bool = False
    extra: bool = False
    missing: Any = _UNSET
    decode: DecodeHook | None = None
    encode: Callable[[Any], Any] | None = None


def jfield(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    compare: bool = True,
    **spec: Any,
) -> Any:
    """A dataclass field with its JSON rules (:class:`JsonSpec` keywords)."""
    meta = {JSON: JsonSpec(**spec)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, compare=compare, metadata=meta)
    return dataclasses.field(default=default, compare=compare, metadata=meta)


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def extra_field() -> Any:
    """The ``extra`` field: unknown keys, kept and written back (not compared)."""
    return jfield(default_factory=_empty, compare=False, extra=True)


# --------------------------------------------------------------------------------------------
# plain values
# --------------------------------------------------------------------------------------------
def freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value: dicts → mappingproxy, lists → tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON data from a frozen value (mappings → dict, tuples → list, results → JSON:
    their ``to_json``, else :func:`encode`)."""
    if hasattr(value, "to_json") and not isinstance(value, type):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)  # a result class without its own to_json
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def require_object(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object (``None`` → empty); ``TypeError`` naming ``where`` else."""
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise TypeError(f"`{where}` must be a JSON object, got {type(value).__name__}")
    return value


def opt_float(value: Any) -> float | None:
    """A float, or ``None`` for null, a boolean or what is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def opt_int(value: Any) -> int | None:
    """An int, or ``None`` for null, a boolean or what is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def number(value: Any) -> int | float | None:
    """A JSON number kept as written (an int stays an int), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _strict_float(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------------
# type-driven readers
# --------------------------------------------------------------------------------------------
#: a reader: (raw JSON value, where it is, the enclosing mapping's key) → Python value
_Reader = Callable[[Any, str, "str | None"], Any]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` was allowed)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            if len(args) != 1:
                raise TypeError(f"a result field holds one type or None, got {tp!r}")
            return args[0], True
    return tp, False


def _holds_result(tp: Any) -> bool:
    """Whether a type contains a result dataclass (then mappings/lists are read item by item)."""
    if dataclasses.is_dataclass(tp):
        return True
    return any(_holds_result(a) for a in typing.get_args(tp) if a is not Ellipsis)


@dataclass(frozen=True)
class _Mode:
    strict: bool = False
    keep_numbers: bool = False


def _element_reader(tp: Any, mode: _Mode) -> _Reader:
    """How an item inside a list is read (no field default applies there)."""
    inner, optional = _optional(tp)
    if dataclasses.is_dataclass(inner) or typing.get_origin(inner) is not None:
        read = _value_reader(inner, mode)
        if optional:
            return lambda raw, where, name: None if raw is None else read(raw, where, name)
        return read
    if inner is float:
        if mode.keep_numbers:
            return lambda raw, where, name: number(raw)
        return lambda raw, where, name: (_strict_float if mode.strict else opt_float)(raw)
    if inner is int:
        return lambda raw, where, name: int(raw)
    if inner is str:
        return lambda raw, where, name: str(raw)
    return lambda raw, where, name: raw


def _value_reader(tp: Any, mode: _Mode) -> _Reader:
    """How a container or nested result is read (``raw`` is not ``None`` or means empty)."""
    if dataclasses.is_dataclass(tp):
        cls = typing.cast(type, tp)
        return lambda raw, where, name: decode(cls, raw, where, name=name)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Mapping, dict, MappingProxyType):
        if not _holds_result(tp):
            return lambda raw, where, name: freeze(require_object(raw, where))
        item = _element_reader(args[1], mode)
        return lambda raw, where, name: MappingProxyType(
            {
                str(k): item(v, _join(where, str(k)), str(k))
                for k, v in require_object(raw, where).items()
            }
        )
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _element_reader(args[0], mode)
            return lambda raw, where, name: tuple(
                item(v, f"{where}[{i}]", None) for i, v in enumerate(raw or ())
            )
        items = [_element_reader(a, mode) for a in args]

        def fixed(raw: Any, where: str, name: str | None) -> Any:
            if not isinstance(raw, list | tuple) or len(raw) != len(items):
                if mode.strict and raw is not None:
                    raise ValueError(f"`{where}` must be a list of {len(items)}, got {raw!r}")
                return tuple(None for _ in items)
            return tuple(r(v, f"{where}[{i}]", None) for i, (r, v) in enumerate(zip(items, raw)))

        return fixed
    if origin is typing.Literal or tp is Any:
        return lambda raw, where, name: raw
    raise TypeError(f"no JSON reader for the type {tp!r}")


def _field_reader(f: dataclasses.Field[Any], tp: Any, spec: JsonSpec, mode: _Mode) -> _Reader:
    """How the JSON value of one field is read, from its type, default and spec."""
    inner, optional = _optional(tp)
    if spec.missing is not _UNSET:
        default: Any = spec.missing
    elif f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        factory = f.default_factory
        default = _Factory(factory)
    else:
        default = {str: "", int: 0, bool: False}.get(inner)

    def fallback() -> Any:
        return default() if isinstance(default, _Factory) else default

    if inner is str:
        if optional:
            return lambda raw, where, name: None if raw is None else str(raw)
        return lambda raw, where, name: str(raw or fallback())
    if inner is bool:
        if optional:
            return lambda raw, where, name: None if raw is None else bool(raw)
        return lambda raw, where, name: bool(raw)  # an absent key: :func:`_absent_value`
    if inner is int:
        if mode.strict:
            return lambda raw, where, name: (
                None if optional and raw is None else int(raw or fallback())
            )
        if optional:
            return lambda raw, where, name: opt_int(raw)

        def read_int(raw: Any, where: str, name: str | None) -> Any:
            value = opt_int(raw)
            return fallback() if value is None else value

        return read_int
    if inner is float:
        conv: Callable[[Any], Any] = (
            number if mode.keep_numbers else _strict_float if mode.strict else opt_float
        )
        if optional:
            return lambda raw, where, name: conv(raw)

        def read_float(raw: Any, where: str, name: str | None) -> Any:
            value = conv(raw)
            return fallback() if value is None else value

        return read_float
    read = _value_reader(inner, mode)
    targs = typing.get_args(inner)
    fixed_tuple = typing.get_origin(inner) is tuple and not (
        len(targs) == 2 and targs[1] is Ellipsis
    )
    if optional:
        if fixed_tuple:  # a fixed-length tuple that may be None: a malformed one reads as None
            n = len(targs)

            def read_opt_fixed(raw: Any, where: str, name: str | None) -> Any:
                if not isinstance(raw, list | tuple) or len(raw) != n:
                    return None
                return read(raw, where, name)

            return read_opt_fixed
        return lambda raw, where, name: None if raw is None else read(raw, where, name)
    if dataclasses.is_dataclass(inner):  # a nested result that is always there
        return lambda raw, where, name: fallback() if raw is None else read(raw, where, name)
    return read


def _absent_value(f: dataclasses.Field[Any], tp: Any, spec: JsonSpec) -> Callable[[], Any] | None:
    """What an ABSENT key reads as where that differs from ``null``: a ``bool`` field's default
    (``null`` reads as ``False``)."""
    inner, optional = _optional(tp)
    if inner is not bool or optional:
        return None
    value = spec.missing if spec.missing is not _UNSET else f.default
    value = False if value is MISSING else value
    return lambda: value


class _Factory:
    """A field's ``default_factory`` (called for each missing value)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __call__(self) -> Any:
        return self.factory()


# --------------------------------------------------------------------------------------------
# type-driven writers (``None``: the value is written as it is)
# --------------------------------------------------------------------------------------------
_Writer = Callable[[Any], Any]


def _writer(tp: Any) -> _Writer | None:
    """How a value of type ``tp`` becomes JSON: the same data as :func:`thaw`, with the
    containers of results (``tuple[Finding, ...]``, ``Mapping[str, Stat]``) decided once per
    field instead of per value."""
    inner, optional = _optional(tp)
    write = _inner_writer(inner)
    if write is None or not optional:
        return write
    return lambda v: None if v is None else write(v)


def _inner_writer(tp: Any) -> _Writer | None:
    if tp in (str, int, float, bool) or typing.get_origin(tp) is typing.Literal:
        return None
    if dataclasses.is_dataclass(tp):
        if callable(getattr(tp, "to_json", None)):
            return lambda v: v.to_json()
        return encode
    if not _holds_result(tp):
        return thaw  # plain data (lists, objects, Any): as the hand-written pairs wrote it
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        items = {_writer(a) for a in args if a is not Ellipsis}
        if len(items) == 1:
            item = next(iter(items))
            assert item is not None
            return lambda v: [item(x) for x in v]
        return thaw
    if origin in (Mapping, dict, MappingProxyType) and len(args) == 2:
        value = _writer(args[1])
        if value is not None:
            return lambda v: {k: value(x) for k, x in v.items()}
    return thaw


# --------------------------------------------------------------------------------------------
# the plan of a class
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    spec: JsonSpec
    read: _Reader
    absent: Callable[[], Any] | None  # the value of an absent key, where not that of null
    write: _Writer | None  # None: written as it is
    scalar: bool  # read without a place in the document (no nested error can name it)


@dataclass(frozen=True)
class _Plan:
    fields: tuple[_Field, ...]  # constructor order
    written: tuple[_Field, ...]  # JSON order (known keys, not late)
    out: tuple[tuple[str, str, _Writer | None, Callable[[Any], bool] | None], ...]  # the same
    late: tuple[_Field, ...]
    named: tuple[str, ...]  # fields filled from the enclosing mapping's key
    extra: str | None
    keys: frozenset[str]


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _build_plan(cls)
    return plan


def _build_plan(cls: type) -> _Plan:
    hints = typing.get_type_hints(cls)
    mode = _Mode(
        strict=bool(getattr(cls, "_JSON_STRICT", False)),
        keep_numbers=bool(getattr(cls, "_JSON_KEEP_NUMBERS", False)),
    )
    fields: list[_Field] = []
    named: list[str] = []
    extra: str | None = None
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(JSON) or JsonSpec()
        if spec.extra:
            extra = f.name
            continue
        if spec.from_name:
            named.append(f.name)
            continue
        if spec.skip:
            continue
        read = _field_reader(f, hints[f.name], spec, mode)
        absent = _absent_value(f, hints[f.name], spec)
        write = spec.encode if spec.encode is not None else _writer(hints[f.name])
        scalar = _optional(hints[f.name])[0] in (str, int, float, bool)
        fields.append(_Field(f.name, spec.key or f.name, spec, read, absent, write, scalar))
    by_key = {fl.key: fl for fl in fields}
    order = getattr(cls, "_JSON_ORDER", None)
    if order is not None:
        if sorted(order) != sorted(by_key):
            raise TypeError(
                f"{cls.__name__}._JSON_ORDER must list its JSON keys {sorted(by_key)}, "
                f"got {sorted(order)}"
            )
        ordered = [by_key[k] for k in order]
    else:
        ordered = list(fields)
    written = tuple(fl for fl in ordered if not fl.spec.late)
    return _Plan(
        fields=tuple(fields),
        written=written,
        out=tuple((fl.key, fl.name, fl.write, fl.spec.omit) for fl in written),
        late=tuple(fl for fl in ordered if fl.spec.late),
        named=tuple(named),
        extra=extra,
        keys=frozenset(by_key),
    )


def json_keys(cls: type) -> tuple[str, ...]:
    """The JSON keys a result class knows, in the order they are written."""
    plan = _plan(cls)
    return tuple(f.key for f in plan.written + plan.late)


# --------------------------------------------------------------------------------------------
# encode / decode
# --------------------------------------------------------------------------------------------
def _put(out: dict[str, Any], fl: _Field, value: Any) -> None:
    if fl.spec.omit is not None and fl.spec.omit(value):
        return
    out[fl.key] = value if fl.write is None else fl.write(value)


def encode(obj: Any) -> dict[str, Any]:
    """The JSON object of a result: known keys in order, then unknown keys, then late ones."""
    plan = _PLANS.get(type(obj)) or _plan(type(obj))
    out: dict[str, Any] = {}
    for key, name, write, omit in plan.out:  # the loop of _put, unrolled (the hot path)
        value = getattr(obj, name)
        if omit is None or not omit(value):
            out[key] = value if write is None else write(value)
    if plan.extra is not None:
        extra = getattr(obj, plan.extra)
        if extra:
            for k, v in extra.items():
                if k not in out:
                    out[k] = thaw(v)
    for fl in plan.late:
        _put(out, fl, getattr(obj, fl.name))
    return out


_T = typing.TypeVar("_T")


def decode(cls: type[_T], value: Any, where: str, *, name: str | None = None) -> _T:
    """A result of class ``cls`` from its JSON object.

    Args:
        value: the JSON object (``None`` reads as an empty one).
        where: the object's place in the document, for error messages (``classes.cat``).
        name: the key of the mapping holding the object (fills ``from_name`` fields).

    Raises:
        TypeError: ``value`` (or a nested object) is not a JSON object.
        ValueError: the class refuses a value (its ``__post_init__``), or a strict class
            reads a value that is not a number.
    """
    plan = _PLANS.get(cls) or _plan(cls)
    d = require_object(value, where or cls.__name__)
    kw: dict[str, Any] = {n: str(name) for n in plan.named}
    prefix = f"{where}." if where else ""
    for fl in plan.fields:
        if fl.spec.decode is not None:
            kw[fl.name] = fl.spec.decode(d.get(fl.key), d, name)
        elif fl.absent is not None and fl.key not in d:
            kw[fl.name] = fl.absent()
        else:
            kw[fl.name] = fl.read(d.get(fl.key), "" if fl.scalar else prefix + fl.key, name)
    if plan.extra is not None:
        kw[plan.extra] = freeze({k: v for k, v in d.items() if k not in plan.keys})
    return cls(**kw)
