"""Each example image once: later places refer to where it is shown (issue 25).

The same gallery panel can illustrate several findings of one class and also appear in the
class's gallery; repeating it makes the document long and hides what is new. The first place
in reading order (findings by severity, then the galleries) shows the picture; every later
place lists the sample with a link to that place instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditor.format import slugify

__all__ = ["show_each_panel_once"]


def _split(
    panels: Sequence[dict[str, Any]], shown: dict[str, dict[str, str]], here: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``panels`` not shown before (recorded as shown ``here``) and references to the others."""
    keep: list[dict[str, Any]] = []
    refs: list[dict[str, str]] = []
    for p in panels:
        key = str(p.get("file") or p.get("uri") or p.get("id"))
        if key in shown:
            refs.append({"id": str(p.get("id")), **shown[key]})
        else:
            shown[key] = here
            keep.append(p)
    return keep, refs


def show_each_panel_once(
    findings: Sequence[dict[str, Any]], galleries: Sequence[dict[str, Any]]
) -> None:
    """Keep the first showing of each panel; later ones become ``panel_refs`` (in place).

    ``findings`` in display order (each with ``id`` and ``panels``), then ``galleries`` (each
    with ``slug``, ``class`` and ``panels``). A reference is ``{"id": sample id, "anchor":
    element id of the place it is shown, "label": how that place is named}``. A panel is
    identified by its file (the same file is the same picture).
    """
    shown: dict[str, dict[str, str]] = {}
    for f in findings:
        here = {"anchor": f"finding-{slugify(str(f['id']))}", "label": str(f["id"])}
        f["panels"], f["panel_refs"] = _split(f.get("panels") or [], shown, here)
    for g in galleries:
        here = {"anchor": f"gallery-{g['slug']}", "label": f"gallery of {g['class']}"}
        g["panels"], g["panel_refs"] = _split(g.get("panels") or [], shown, here)
