"""The transplant intervention's forwards (issue 22): runner phase ``transplant``, after the
findings are built.

For each class the candidate (:func:`auditor.analysis.transplant.candidates`) and its region
(:func:`~auditor.analysis.transplant.region_heat`, :func:`~auditor.analysis.transplant.
choose_region`) are chosen from the stored maps and masks; the region of source image
``k mod S`` is pasted onto recipient ``k`` (and, for the control, the same region of donor
``k``: the next recipient, an image of another class); both edited batches are predicted in
batches of ``[audit] batch_size``, no gradient, on the run's device; the counts go to
:func:`~auditor.analysis.transplant.decide`. The statistics and the decision live in
:mod:`auditor.analysis.transplant`; this module only runs the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.analysis.transplant import (
    Candidate,
    TransplantRules,
    apply_transplants,
    candidates,
    choose_region,
    decide,
    not_run,
    region_heat,
)
from auditor.errors import SampleSkipped
from auditor.results import AuditResult
from auditor.results.transplant import TransplantResult

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

__all__ = ["border_band", "make_transplant", "run_transplant"]

log = logging.getLogger("auditor")

#: recipients drawn in the report's figure per class
FIGURE_EXAMPLES = 4


def make_transplant(
    model: torch.nn.Module, engine: Any, dataset: Any, settings: Any, device: torch.device
) -> Callable[[Path, AuditResult, Mapping[int, np.ndarray], pa.Table], AuditResult]:
    """The finalisation hook: ``hook(run_dir, result, cams, prim) -> result`` runs the
    transplant with ``model`` on ``device`` in eval mode (moved back and its flags restored
    afterwards, also on error)."""

    def hook(
        run_dir: Path, result: AuditResult, cams: Mapping[int, np.ndarray], prim: pa.Table
    ) -> AuditResult:
        import torch

        from auditor.audit.modelstate import preserved_training_flags

        before = next((p.device for p in model.parameters()), torch.device("cpu"))
        model.to(device)
        try:
            with preserved_training_flags(model, eval=True):

                def predict(x: torch.Tensor) -> np.ndarray:
                    out = []
                    for k in range(0, x.shape[0], settings.batch_size):
                        logits = engine.forward_logits(
                            x[k : k + settings.batch_size].to(device), autocast=False
                        )
                        logits = logits.float()
                        # NaN/Inf logits are no prediction (-1), never argmax's class 0
                        pred = torch.where(torch.isfinite(logits).all(1), logits.argmax(1), -1)
                        out.append(pred.cpu().numpy())
                    return np.concatenate(out)

                return run_transplant(run_dir, result, cams, prim, dataset, settings, predict)
        finally:
            model.to(before)

    return hook


def run_transplant(
    run_dir: Path,
    result: AuditResult,
    cams: Mapping[int, np.ndarray],
    prim: pa.Table,
    dataset: Any,
    settings: Any,
    predict: Callable[[Any], np.ndarray],
    rules: TransplantRules | None = None,
) -> AuditResult:
    """Every class's transplant; the result with ``classes[c]["transplant"]`` set and the
    confirmed findings raised (:func:`~auditor.analysis.transplant.apply_transplants`).

    ``predict``: normalised images ``[N, C, H, W]`` (a torch tensor) → predicted class indices.
    """
    from auditor.progress import phase

    rules = rules or TransplantRules()
    classes = list(dataset.classes)
    size = (int(dataset.config.input_size[0]), int(dataset.config.input_size[1]))
    annotated = bool(
        prim.num_rows
        and "has_mask" in prim.column_names
        and any(prim.column("has_mask").to_pylist())
    )
    plans = candidates(
        result, prim, classes, max_images=settings.transplant_max_images, seed=settings.seed,
        annotated=annotated, rules=rules,
    )  # fmt: skip
    phase("transplant", f"pasting each class's candidate region onto other classes ({len(plans)})")
    outcomes: dict[str, TransplantResult] = {}
    samples = _Samples(dataset)
    for name, plan in plans.items():
        if isinstance(plan, TransplantResult):
            outcomes[name] = plan
            continue
        outcomes[name] = _one_class(run_dir, plan, cams, samples, size, classes, predict, rules,
                                    settings.confidence, settings.border_width)  # fmt: skip
        t = outcomes[name]
        log.info("transplant '%s': %s%s", name, t.status, f" ({t.reason})" if t.reason else "")
    return apply_transplants(
        result, outcomes, size=size, border_width=settings.border_width, annotated=annotated
    )


class _Samples:
    """Loaded samples shared by the classes' transplants (recipients overlap between classes),
    kept up to ``CACHE_BYTES`` of images; ``None`` for a sample that is skipped."""

    CACHE_BYTES = 256 * 2**20

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.cache: dict[int, Any] = {}
        self.nbytes = 0

    def load(self, indices: Sequence[int]) -> dict[int, Any]:
        """``{index: EvalSample}`` of the samples that load (skipped ones are left out)."""
        out = {}
        for i in map(int, indices):
            if i in self.cache:
                sample = self.cache[i]
            else:
                try:
                    sample = self.dataset.load(i)
                except SampleSkipped:
                    sample = None
                size = 0 if sample is None else sample.image.element_size() * sample.image.numel()
                if self.nbytes + size <= self.CACHE_BYTES:
                    self.cache[i] = sample
                    self.nbytes += size
            if sample is not None:
                out[i] = sample
        return out


def _one_class(
    run_dir: Path,
    plan: Candidate,
    cams: Mapping[int, np.ndarray],
    samples: _Samples,
    size: tuple[int, int],
    classes: Sequence[str],
    predict: Callable[[Any], np.ndarray],
    rules: TransplantRules,
    confidence: float,
    border_width: float = 0.1,
) -> TransplantResult:
    """One class's transplant (see the module). A ``border_band`` candidate pastes the outer
    band of ``border_width`` of each side (the band of the ``border_focus`` metric)."""
    import torch

    src = samples.load([i for i in plan.sources if i in cams])
    masks = [None if s.mask is None else s.mask.cpu().numpy().astype(bool) for s in src.values()]
    if plan.source == "border_band":
        if not src:
            return not_run("no source image could be loaded", plan.source)
        region: tuple[int, ...] = (0, 0, size[1], size[0])
        try:
            band = border_band(size, border_width)
        except ValueError as exc:  # an image too small for a band (the metric refuses it too)
            return not_run(str(exc), plan.source)
        where = [band if m is None else band & ~np.asarray(m, bool) for m in masks]
    else:
        heat, why = region_heat([cams[i] for i in src], masks, size, rules)
        if heat is None:
            return not_run(why or "no region", plan.source)
        region = choose_region(heat, rules, grid=np.shape(cams[next(iter(src))]))
        where = [_paste_mask(region, size, m) for m in masks]  # per source image
    rec = samples.load(plan.recipients)
    keep = [
        k for k, (r, d) in enumerate(zip(plan.recipients, plan.donors)) if r in rec and d in rec
    ]
    if len(keep) < rules.min_recipients or len(src) < rules.min_sources:
        return not_run(
            f"{len(keep)} recipient(s) and {len(src)} source image(s) could be loaded", plan.source
        )
    sources = [src[i].image for i in src]
    recipients = torch.stack([rec[plan.recipients[k]].image for k in keep])
    pasted, control = recipients.clone(), recipients.clone()
    for j, k in enumerate(keep):
        m = torch.from_numpy(where[j % len(sources)])
        pasted[j] = torch.where(m, sources[j % len(sources)], pasted[j])
        control[j] = torch.where(m, rec[plan.donors[k]].image, control[j])
    try:
        pred_p, pred_c = predict(pasted), predict(control)
    except Exception as exc:  # noqa: BLE001 - the model's own error: this class is not run
        return not_run(f"the model raised {type(exc).__name__}: {str(exc)[:200]}", plan.source)
    result = decide(
        int((pred_p == plan.index).sum()),
        int((pred_c == plan.index).sum()),
        len(keep),
        confidence=confidence,
        rules=rules,
        source=plan.source,
        region=region,
        n_sources=len(src),
    )
    if not result.confirmed:  # the figure is drawn for the confirmed classes only
        return result
    figure = _figure(
        run_dir, plan, keep, list(src), where, region, (pred_p, pred_c), samples.dataset, classes
    )
    return replace(result, figure=figure)


def border_band(size: tuple[int, int], border_width: float) -> np.ndarray:
    """``[H, W]`` bool: the outer band the ``border_focus`` metric measures on the input grid
    (:func:`auditor.metrics.localisation.band_width`)."""
    from auditor.metrics.localisation import band_width

    height, width = int(size[0]), int(size[1])
    band = band_width(height, width, border_width)
    out = np.ones((height, width), bool)
    out[band : height - band, band : width - band] = False
    return out


def _paste_mask(
    region: tuple[int, ...], size: tuple[int, int], mask: np.ndarray | None
) -> np.ndarray:
    """``[H, W]`` bool: the pixels pasted from one source image: the region, less the source's
    object when it has a mask (the candidate is what lies OUTSIDE the object)."""
    x0, y0, x1, y1 = region
    out = np.zeros(size, bool)
    out[y0:y1, x0:x1] = True
    return out if mask is None else out & ~np.asarray(mask, bool)


def _name(classes: Sequence[str], pred: int) -> str:
    return classes[pred] if 0 <= pred < len(classes) else "no prediction"


def _figure(
    run_dir: Path,
    plan: Candidate,
    keep: Sequence[int],
    src: Sequence[int],
    where: Sequence[np.ndarray],
    region: tuple[int, ...],
    preds: tuple[np.ndarray, np.ndarray],
    dataset: Any,
    classes: Sequence[str],
) -> str | None:
    """Draw the first recipients (pasted and control, display pixels) under
    ``gallery/transplant-<class>.png``; the relative path, or ``None`` when no image could be
    shown."""
    from auditor.format import slugify
    from auditor.report.html import atomic_write
    from auditor.report.transplant import transplant_panel

    x0, y0, x1, y1 = region
    pred_p, pred_c = preds
    pasted, controls, pp, pc = [], [], [], []
    try:
        for j, k in enumerate(keep[:FIGURE_EXAMPLES]):
            img = np.array(dataset.load_display(plan.recipients[k])[0], np.uint8)
            donor = np.asarray(dataset.load_display(plan.donors[k])[0], np.uint8)
            source = np.asarray(dataset.load_display(src[j % len(src)])[0], np.uint8)
            m = where[j % len(src)]
            p, c = img.copy(), img.copy()
            p[m], c[m] = source[m], donor[m]
            pasted.append(p)
            controls.append(c)
            pp.append(_name(classes, int(pred_p[j])))
            pc.append(_name(classes, int(pred_c[j])))
    except (SampleSkipped, ValueError, IndexError) as exc:
        log.info("transplant figure of '%s' not drawn: %s", plan.cls, exc)
        return None
    if not pasted or pasted[0].ndim != 3 or pasted[0].shape[2] != 3:
        return None
    png = transplant_panel(
        pasted, controls, pp, pc, (x0, y0, x1, y1),
        title=f"'{plan.cls}': its region pasted onto other classes (top) vs a control patch",
    )  # fmt: skip
    rel = f"gallery/transplant-{slugify(plan.cls)}.png"
    (Path(run_dir) / "gallery").mkdir(exist_ok=True)
    atomic_write(Path(run_dir) / rel, png)
    return rel
