"""Draw the report's gallery: the PNG panels of the samples the analysis chose.

Which samples are shown is decided in :func:`auditor.analysis.gallery.choose_gallery` (and by
the findings and clusters of the result); this module only draws them
(:func:`auditor.report.figures.gallery_panel`, :func:`~auditor.report.figures.cluster_panel`),
writes them atomically under ``RUN_DIR/gallery/`` and returns the result with the file names
filled in. No statistic is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from auditor.format import slugify
from auditor.report.background_only import BACKGROUND_ONLY_FILLS, background_only_display
from auditor.report.figures import cluster_panel, gallery_panel
from auditor.report.html import atomic_write
from auditor.results import AuditResult, ClassClusters, GalleryPanel, SubgroupDetail

__all__ = ["draw_gallery", "draw_subgroup_panels"]

#: at most this many exemplar images per cluster / subgroup panel
_EXEMPLARS = 4
#: clusters drawn per class (the rest keep no picture)
_MAX_CLUSTERS_DRAWN = 6


def draw_gallery(
    run_dir: Path,
    cams: Mapping[int, np.ndarray],
    dataset: Any,
    table: pa.Table,
    result: AuditResult,
    settings: Any,
) -> AuditResult:
    """Draw the gallery panels chosen by :func:`auditor.analysis.gallery.choose_gallery`, the
    background-sufficiency examples and the cluster/subgroup exemplar panels; return the result
    with ``gallery`` and the clusters' ``gallery`` files filled in.

    ``cams``: the primary method's low-resolution maps by dataset index; ``table``: the rows
    (at least the primary method's); ``settings``: the run's ``AuditSettings`` (``primary``,
    ``gallery_per_class``).
    """
    if table.num_rows == 0 or settings.gallery_per_class == 0:
        return result
    from auditor.progress import phase

    phase("gallery", "example panels per class")
    (run_dir / "gallery").mkdir(exist_ok=True)
    out = _class_panels(run_dir, cams, dataset, table, result, settings.gallery_per_class)
    prim = table.filter(pc.equal(table.column("method"), settings.primary))
    hits = _rows_of(prim, _wanted_ids(result))
    id_to_index = {
        str(a): int(b)
        for a, b in zip(hits.column("id").to_pylist(), hits.column("index").to_pylist())
    }
    id_to_pred = dict(zip(map(str, hits.column("id").to_pylist()), hits.column("pred").to_pylist()))
    names = list(result.dataset.classes) or list(result.classes)
    for f in result.findings:
        if f.kind != "background_sufficiency" or f.cls is None:
            continue
        extra = _sufficiency_panels(
            run_dir, f.cls, f.examples, out.get(f.cls, ()), (id_to_index, id_to_pred), names,
            dataset, cams, _only_bg_fill(result, settings),
        )  # fmt: skip
        if extra:
            out[f.cls] = tuple(out.get(f.cls, ())) + tuple(extra)
    clusters: dict[str, ClassClusters] = {
        cname: _cluster_panels(run_dir, cname, res, id_to_index, dataset, cams)
        for cname, res in (result.clusters or {}).items()
    }
    return result.replace(
        gallery=MappingProxyType(out),
        clusters=MappingProxyType(clusters) if result.clusters is not None else None,
    )


def _class_panels(
    run_dir: Path,
    cams: Mapping[int, np.ndarray],
    dataset: Any,
    table: pa.Table,
    result: AuditResult,
    per_class: int,
) -> dict[str, tuple[GalleryPanel, ...]]:
    """The per-class panels chosen by :func:`auditor.analysis.gallery.choose_gallery`."""
    from auditor.analysis.gallery import choose_gallery

    out: dict[str, tuple[GalleryPanel, ...]] = {}
    for cname, picks in choose_gallery(result, table, per_class).items():
        entries = []
        for rank, pick in enumerate(picks):
            if pick.index not in cams:
                continue
            image, mask = dataset.load_display(pick.index)
            bfv = pick.panel.background_focus
            png = gallery_panel(
                image,
                mask,
                cams[pick.index],
                title=pick.panel.id,
                subtitle=f"label {cname} · predicted {pick.panel.pred} · background focus {bfv:.0%}"
                if bfv is not None
                else "",
            )
            fname = f"gallery/{slugify(cname)}-{rank}.png"
            atomic_write(run_dir / fname, png)
            entries.append(replace(pick.panel, file=fname))
        out[cname] = tuple(entries)
    return out


def _wanted_ids(result: AuditResult) -> set[str]:
    """The sample ids drawn beyond the class panels (only these are looked up: a dict of every
    id is ~270 MB at 1M samples)."""
    wanted: set[str] = set()
    for f in result.findings:
        if f.kind == "background_sufficiency" and f.cls is not None:
            wanted.update(map(str, f.examples))
    for res in (result.clusters or {}).values():
        for cl in res.clusters:
            wanted.update(map(str, cl.exemplars))
        for sg in res.subgroups or ():
            wanted.update(map(str, sg.exemplars))
            wanted.update(map(str, sg.rest_exemplars))
    return wanted


def _rows_of(prim: pa.Table, ids: set[str]) -> pa.Table:
    """The rows of ``prim`` whose ``id`` is one of ``ids``."""
    return prim.filter(
        pc.is_in(
            pc.cast(prim.column("id"), pa.string()),
            value_set=pa.array(sorted(ids), pa.string()),
        )
    )


def _only_bg_fill(result: AuditResult, settings: Any) -> str:
    """The fill of the only-background images the findings read: the one
    :mod:`auditor.analysis.fill_choice` used, else the configured ``intervention_fill``."""
    record = (result.extra or {}).get("intervention_fills")
    used = None
    if isinstance(record, Mapping) and isinstance(record.get("only_bg"), Mapping):
        used = record["only_bg"].get("used")
    fill = used or getattr(settings, "intervention_fill", "mean")
    return str(fill) if fill in BACKGROUND_ONLY_FILLS else "mean"


def _sufficiency_panels(
    run_dir: Path,
    cls: str,
    examples: Sequence[str],
    have_panels: Sequence[GalleryPanel],
    lookup: tuple[Mapping[str, int], Mapping[str, Any]],
    names: Sequence[str],
    dataset: Any,
    cams: Mapping[int, np.ndarray],
    fill: str = "mean",
) -> list[GalleryPanel]:
    """A background-sufficiency finding's examples: the images whose background alone is
    called the class (those not already in the class's panels, at most four), each drawn
    with the only-background image the model was shown (``fill``) in its first tile.

    ``lookup``: (sample id → dataset index, sample id → predicted class index).
    """
    id_to_index, id_to_pred = lookup
    have = {g.id for g in have_panels}
    panels: list[GalleryPanel] = []
    for k, sid in enumerate([e for e in examples if e not in have][:_EXEMPLARS]):
        i = id_to_index.get(sid)
        if i is None or i not in cams:
            continue
        image, mask = dataset.load_display(i)
        edited = None
        cfg: Any = getattr(dataset, "config", None)  # the normalisation the model saw
        if mask is not None and mask.any() and not mask.all() and hasattr(cfg, "mean"):
            edited = background_only_display(image, mask, fill, cfg.mean, cfg.std, seed=i)
        png = gallery_panel(
            image,
            mask,
            cams[i],
            title=sid,
            subtitle=f"label {cls} · background alone ({fill} fill) predicted '{cls}'",
            model_input=edited,
        )
        fname = f"gallery/{slugify(cls)}-sufficiency-{k}.png"
        atomic_write(run_dir / fname, png)
        pred = int(id_to_pred.get(sid, -1))
        panels.append(
            GalleryPanel(
                id=sid,
                file=fname,
                label=cls,
                pred=names[int(id_to_pred[sid])] if 0 <= pred < len(names) else None,
                why=f"background alone ({fill} fill, left tile) predicted as the class",
            )
        )
    return panels


def _cluster_panels(
    run_dir: Path,
    cname: str,
    res: ClassClusters,
    id_to_index: Mapping[str, int],
    dataset: Any,
    cams: Mapping[int, np.ndarray],
) -> ClassClusters:
    """One class's cluster exemplar panels (mean map beside up to four exemplars, for the
    first six clusters) and its subgroups' panels; a class with fewer than two clusters is
    returned as it came."""
    if len(res.clusters) < 2:
        return res
    drawn = []
    for pos, cl in enumerate(res.clusters):
        wanted = [id_to_index[e] for e in cl.exemplars if e in id_to_index][:_EXEMPLARS]
        ex = [(dataset.load_display(i)[0], cams[i]) for i in wanted if i in cams]
        if pos >= _MAX_CLUSTERS_DRAWN or not ex:
            drawn.append(cl)
            continue
        mean_map = np.mean([c for _, c in ex], axis=0)
        png = cluster_panel(mean_map, ex, title=f"{cname}: cluster {cl.id} ({cl.size} images)")
        fname = f"gallery/cluster-{slugify(cname)}-{cl.id}.png"
        atomic_write(run_dir / fname, png)
        drawn.append(replace(cl, gallery=(fname,)))
    return replace(
        res,
        clusters=tuple(drawn),
        subgroups=draw_subgroup_panels(run_dir, cname, res.subgroups, id_to_index, dataset, cams),
    )


def draw_subgroup_panels(
    run_dir: Path,
    cname: str,
    subgroups: Sequence[SubgroupDetail] | None,
    id_to_index: Mapping[str, int],
    dataset: Any,
    cams: Mapping[int, np.ndarray],
) -> tuple[SubgroupDetail, ...] | None:
    """Draw each subgroup's exemplars and, beside them, the rest of its class's exemplars;
    return the subgroups with each ``gallery`` [members, rest] filled."""
    if not subgroups:
        return None if subgroups is None else tuple(subgroups)
    out = []
    for sg in subgroups:
        files: list[str] = []
        for part, wanted_ids in (("members", sg.exemplars), ("rest", sg.rest_exemplars)):
            wanted = [id_to_index[e] for e in wanted_ids if e in id_to_index][:_EXEMPLARS]
            ex = [(dataset.load_display(i)[0], cams[i]) for i in wanted if i in cams]
            if not ex:
                continue
            n = sg.size if part == "members" else sg.class_size - sg.size
            title = (
                f"{cname}: subgroup, {n} images" if part == "members" else f"{cname}: the rest, {n}"
            )
            png = cluster_panel(np.mean([c for _, c in ex], axis=0), ex, title=title)
            fname = f"gallery/subgroup-{slugify(cname)}-{sg.cluster}-{part}.png"
            atomic_write(run_dir / fname, png)
            files.append(fname)
        out.append(replace(sg, gallery=tuple(files)))
    return tuple(out)
