"""Neutralising user strings (class names, ids, titles, error messages) for terminals and XML.

A class name or file name is user data: printed raw it can carry ANSI/OSC escape sequences
(recolour the terminal, rewrite earlier lines, set the window title, OSC 8 fake links) or
Unicode bidirectional overrides that make text read differently from what it is; in XML the
C0 control characters other than tab/newline/carriage return are not allowed at all (XML 1.0
section 2.2: ``Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | ...``), so one such
character makes ``junit.xml`` not well-formed.

Both helpers replace each offending character by its visible escape (``\\x1b``, ``\\u202e``),
so the information stays readable and nothing is executed or lost silently.
"""

from __future__ import annotations

import re

__all__ = ["one_line", "terminal_safe", "xml_safe"]

# C0 controls, DEL, C1 controls; bidi embeddings/overrides/isolates; line/paragraph separators
_TERMINAL_BAD = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")
# characters that XML 1.0 forbids, plus C1 controls and bidi controls (allowed but misleading)
_XML_BAD = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with every control / bidi character shown as an escape (inert).

    ``keep_newlines`` keeps ``\n`` (multi-line output of our own); every other control
    character, ESC included, is still escaped.
    """
    if keep_newlines:
        return "\n".join(_TERMINAL_BAD.sub(_escape, line) for line in str(text).split("\n"))
    return _TERMINAL_BAD.sub(_escape, str(text))


def one_line(text: object, limit: int = 2000) -> str:
    """A one-line, terminal-safe message: newlines and tabs become spaces, then escapes."""
    flat = " ".join(str(text).split("\n"))
    flat = flat.replace("\t", " ").replace("\r", " ")
    out = terminal_safe(flat)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def xml_safe(text: object) -> str:
    """``text`` with characters XML 1.0 forbids (and C1/bidi controls) shown as escapes.

    The result still needs the usual XML escaping (``quoteattr``/``escape``) for ``<&>"``.
    """
    return _XML_BAD.sub(_escape, str(text))
