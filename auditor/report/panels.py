"""Each example image once: later places refer to where it is shown (issue 25).

The same gallery panel can illustrate several findings of one class and also appear in the
class's gallery; repeating it makes the document long and hides what is new. The first place
in reading order (findings by severity, then the galleries) shows the picture; every later
place lists the sample with a link to that place instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.report.view import PanelRef, PanelView

__all__ = ["PanelLedger"]


class PanelLedger:
    """Where each panel was first shown, in reading order.

    A panel is identified by its file (the same file is the same picture); call :meth:`place`
    for the findings in display order, then for the galleries.
    """

    def __init__(self) -> None:
        self._shown: dict[str, tuple[str, str]] = {}

    def place(
        self, panels: Sequence[PanelView], anchor: str, label: str
    ) -> tuple[tuple[PanelView, ...], tuple[PanelRef, ...]]:
        """``panels`` not shown before (now recorded as shown at ``anchor``, the element id of
        the place, named ``label``) and references to the others."""
        keep: list[PanelView] = []
        refs: list[PanelRef] = []
        for p in panels:
            key = str(p.file or p.uri or p.id)
            if key in self._shown:
                where, named = self._shown[key]
                refs.append(PanelRef(id=str(p.id), anchor=where, label=named))
            else:
                self._shown[key] = (anchor, label)
                keep.append(p)
        return tuple(keep), tuple(refs)
