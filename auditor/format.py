"""The one number formatter and the one slug, shared by findings, reports, compare and export.

Nothing here imports torch, Jinja or matplotlib: the analysis formats its finding messages
with the same functions the templates use as filters.

* :func:`finite_or_none`: a float, or ``None`` for ``None``/NaN/±inf/booleans/non-numbers;
* :func:`fmt`: a Python format spec (``".0%"``, ``".2f"``) with a placeholder for a missing
  value (finding messages: ``"n/a"``);
* :func:`fmt_pct`, :func:`fmt_num`, :func:`fmt_ci`: the report's filters (missing → ``"—"``);
* :func:`slugify`: a unique, id- and file-name-safe slug for any class name or sample id;
* :func:`gate_verdict`: the one-line verdict of gate checks, the same for ``auditor run`` and
  ``auditor compare``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "MISSING",
    "finite_or_none",
    "finite_pair",
    "fmt",
    "fmt_ci",
    "fmt_interval",
    "fmt_num",
    "fmt_pct",
    "fmt_signed",
    "gate_verdict",
    "slugify",
    "sort_value",
]

#: What a value that cannot be shown prints as in a report.
MISSING = "—"


def finite_or_none(value: object) -> float | None:
    """``float(value)`` when it is a finite number, else ``None`` (booleans are not numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def finite_pair(value: object) -> list[float | None]:
    """An interval ``[low, high]`` of :func:`finite_or_none` values (``[None, None]`` unless
    ``value`` is a pair)."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return [finite_or_none(value[0]), finite_or_none(value[1])]
    return [None, None]


def fmt(value: object, spec: str = ".2f", *, missing: str = MISSING) -> str:
    """``format(value, spec)`` for a finite number, ``missing`` otherwise.

    >>> fmt(0.1234, ".0%"), fmt(None, ".0%", missing="n/a"), fmt(float("nan"))
    ('12%', 'n/a', '—')
    """
    x = finite_or_none(value)
    return missing if x is None else format(x, spec)


def fmt_interval(
    lo: object, hi: object, spec: str = ".0%", *, sep: str = "–", missing: str = "n/a"
) -> str:
    """An interval in running text, ``lo–hi``, each bound ``format(x, spec)``; bounds that
    differ but would print alike get up to three more digits ("97.6%–98.4%", never
    "98%–98%"; issue 25). ``spec``: ``".Nf"`` or ``".N%"``. A missing bound prints ``missing``.

    >>> fmt_interval(0.976, 0.984), fmt_interval(0.25, 0.29, ".2f"), fmt_interval(None, 0.5)
    ('97.6%–98.4%', '0.25–0.29', 'n/a–50%')
    """
    m = re.fullmatch(r"\.(\d)([f%])", spec)
    if m is None:
        raise ValueError(f"`spec` must look like '.2f' or '.0%', got {spec!r}")
    a, b = fmt(lo, spec, missing=missing), fmt(hi, spec, missing=missing)
    x, y = finite_or_none(lo), finite_or_none(hi)
    if x is not None and y is not None and x != y:
        for d in range(int(m.group(1)), int(m.group(1)) + 4):
            a, b = format(x, f".{d}{m.group(2)}"), format(y, f".{d}{m.group(2)}")
            if a != b:
                break
    return f"{a}{sep}{b}"


def fmt_signed(value: object, digits: int = 3, *, missing: str = MISSING) -> str:
    """A number with an explicit sign (``+0.120``, ``−0.050`` with a real minus sign)."""
    x = finite_or_none(value)
    if x is None:
        return missing
    return f"{x:+.{digits}f}".replace("-", "−")


def fmt_pct(value: object, digits: int = 1) -> str:
    """Format a share ``x`` as ``100·x %``: ``0.123 → "12.3%"``; missing → ``"—"``."""
    x = finite_or_none(value)
    return MISSING if x is None else f"{100.0 * x:.{digits}f}%"


def fmt_num(value: object, digits: int = 2) -> str:
    """Format a number: ints with thousands separators, floats with ``digits`` decimals.

    ``None``, NaN and ±inf print ``"—"``; a non-numeric string is returned unchanged;
    booleans print ``yes``/``no``.
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    x = finite_or_none(value)
    if x is None:
        return MISSING
    return f"{x:,.{digits}f}"


def fmt_ci(value: object, kind: str = "num", digits: int | None = None) -> str:
    """Format an interval ``[lo, hi]`` (a pair, a mapping with ``ci_low``/``ci_high``, or an
    object with those attributes, e.g. :class:`auditor.results.Stat`).

    ``kind`` is ``"pct"`` or ``"num"``. Either bound missing → ``"—"``. Bounds that differ
    but would print alike get up to three more digits.
    """
    lo: object
    hi: object
    if isinstance(value, Mapping):
        lo, hi = value.get("ci_low"), value.get("ci_high")
    elif hasattr(value, "ci_low") and hasattr(value, "ci_high"):
        lo, hi = value.ci_low, value.ci_high
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo, hi = value[0], value[1]
    else:
        return MISSING
    if finite_or_none(lo) is None or finite_or_none(hi) is None:
        return MISSING
    if kind not in ("pct", "num"):
        raise ValueError(f"`kind` must be 'pct' or 'num', got {kind!r}")
    base = (1 if kind == "pct" else 2) if digits is None else digits
    fmt = fmt_pct if kind == "pct" else fmt_num
    # distinct bounds get up to 3 more digits, so that they print differently
    # ("[97.6%, 98.4%]", never "[98%, 98%]")
    for d in range(base, base + 4):
        a, b = fmt(lo, d), fmt(hi, d)
        if a != b or lo == hi:
            break
    return f"[{a}, {b}]"


def sort_value(value: object) -> str:
    """A ``data-value`` attribute for client-side numeric sorting: missing → empty string."""
    x = finite_or_none(value)
    return "" if x is None else repr(x)


def slugify(name: object) -> str:
    """A unique, HTML-id- and file-name-safe slug for an arbitrary class name or sample id.

    ASCII letters/digits of the name (lower-cased, other runs → ``-``, at most 40 characters)
    plus the first 8 hex digits of the name's SHA-256, so two names never collide even when
    they differ only in punctuation, case or script: ``"Cat / Dog" → "cat-dog-5b1d…"``.
    """
    text = str(name)
    stem = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem}-{digest}" if stem else f"c-{digest}"


def gate_verdict(results: Sequence[Mapping[str, object]]) -> str:
    """``"PASSED (n/n passed)"`` counting EVALUATED checks only (``value`` present); a check
    that could not be evaluated is never a pass (``"FAILED (0/0 passed, 2 not evaluated)"``);
    no check at all: ``"none configured"``."""
    if not results:
        return "none configured"
    evaluated = [r for r in results if r.get("value") is not None]
    passed = [r for r in evaluated if r.get("passed")]
    not_eval = len(results) - len(evaluated)
    ok = not_eval == 0 and len(passed) == len(evaluated) and all(r.get("passed") for r in results)
    text = f"{'PASSED' if ok else 'FAILED'} ({len(passed)}/{len(evaluated)} passed"
    return text + (f", {not_eval} not evaluated)" if not_eval else ")")
