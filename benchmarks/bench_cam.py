"""Benchmark the CAM engine against a plain forward and the reference libraries (``make bench``).

resnet18 and resnet50 (``weights=None``, eval), 224x224, batch 16, ``torch.set_num_threads(2)``.
Each row is timed after one warm-up call; the best of ``repeats`` runs is kept (the minimum is the
least noisy estimate on a shared machine). Score-CAM runs ``K`` masked forwards per image (512
for resnet18, 2048 for resnet50), so it is timed on one and three images (resnet18) and on one
image (resnet50), interleaved with pytorch-grad-cam. Baselines (pytorch-grad-cam, Captum,
torch-cam) run only when installed (the ``bench`` extra).

Prints a markdown table and writes it to ``docs/performance.md`` under ``## CAM engine``
(replacing only that section).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from auditor.cam import GRADIENT_METHODS, CamEngine

ROOT = Path(__file__).resolve().parents[1]
PGC_FIVE = ("GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "HiResCAM")


NOTES = """Notes (read before comparing numbers):
* The timings are from a shared 2-core machine; single-run baselines (best of 1) vary by +-30 %.
  Rows of one table are interleaved round-robin so that load spikes hit them alike.
* Our gradient family costs one forward (pre-target part under no_grad) + a backward through
  the layers after the target only (resnet: avgpool + fc) + cheap einsums. Profile on resnet50,
  batch 16, 7 methods: 90 % of the time in the network's own ops (conv, bn, relu, pool), ~10 %
  in the methods (elementwise ops on [16, 2048, 7, 7], Eigen-Grad-CAM's eigendecomposition).
* Score-CAM needs K = 512 (resnet18) / 2048 (resnet50) masked forwards per image (the paper's
  definition), exactly like pytorch-grad-cam's, so it is bound by the model's forward. We run
  them (a) in chunks of 16 on CPU (128 ran 20-25 % slower per image here), (b) on a validated
  inference copy of the model: BatchNorm folded into the convolutions, channels_last, and on CPU
  a frozen TorchScript trace with oneDNN Graph fusion (docs/cam-engine.md), and (c) share the
  forwards of constant and bit-identical masks. With random weights (c) saves ~1 % (trained
  networks have far more all-zero channels); the copy is what makes the difference. Nothing is
  approximated: fewer forwards would need a different method (e.g. channel subsampling), which we
  do not do silently."""


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(
    cases: list[tuple[str, Callable[[], object], int]], rounds: int
) -> list[tuple[str, float]]:
    """Time every case once per round, round-robin (machine noise hits all rows alike).

    Each case timed more than once gets one warm-up call first (single-run baselines take seconds,
    their first-call overhead is negligible); it runs in the first ``repeats`` rounds and the best
    time is kept.
    """
    for _, fn, repeats in cases:
        if repeats > 1:
            fn()
    best = {label: float("inf") for label, _, _ in cases}
    for r in range(rounds):
        for label, fn, repeats in cases:
            if r < repeats:
                start, cpu = time.perf_counter(), time.process_time()
                fn()
                wall = time.perf_counter() - start
                if wall < best[label]:
                    best[label] = wall
                    CPU_SECONDS[label] = time.process_time() - cpu
    return [(label, best[label]) for label, _, _ in cases]


CPU_SECONDS: dict[str, float] = {}
"""Process CPU time of the call that gave each :func:`interleaved` row its best wall time."""


def _quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """Silence tqdm progress bars of the baselines."""

    def run() -> object:
        with contextlib.redirect_stderr(io.StringIO()):
            return fn()

    return run


def bench_model(name: str, batch: int, repeats: int, slow_repeats: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    rows: list[tuple[str, Callable[[], object], int]] = []

    def plain() -> object:
        with torch.inference_mode():
            return model(images)

    rows.append(("plain forward (inference_mode)", plain, repeats))

    def ours(methods: tuple[str, ...]) -> Callable[[], object]:
        def run() -> object:
            with CamEngine(model, "layer4", methods) as engine:
                return engine.run(images, targets)

        return run

    rows.append(("ours: gradcam", ours(("gradcam",)), repeats))
    family = (*GRADIENT_METHODS, "cam")
    rows.append((f"ours: {len(family)} methods ({', '.join(family)})", ours(family), repeats))

    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        pgc = None
    if pgc is not None:
        cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def pgc_run(names: tuple[str, ...]) -> Callable[[], object]:
            def run() -> object:
                for cls_name in names:
                    with getattr(pgc, cls_name)(model=model, target_layers=[model.layer4]) as cam:
                        cam(images, targets=cam_targets)
                return None

            return run

        rows.append(("pytorch-grad-cam: GradCAM", _quiet(pgc_run(("GradCAM",))), slow_repeats))
        rows.append(
            (
                "pytorch-grad-cam: 5 methods one after another (" + ", ".join(PGC_FIVE) + ")",
                _quiet(pgc_run(PGC_FIVE)),
                slow_repeats,
            )
        )
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        LayerGradCam = None  # noqa: N806
    if LayerGradCam is not None:
        captum_cam = LayerGradCam(model, model.layer4)

        def captum_run() -> object:
            return captum_cam.attribute(images, target=targets, relu_attributions=True)

        rows.append(("Captum: LayerGradCam", captum_run, slow_repeats))
    try:
        from torchcam.methods import GradCAM as TorchCamGradCAM
    except ImportError:
        TorchCamGradCAM = None  # noqa: N806
    if TorchCamGradCAM is not None:

        def torchcam_run() -> object:
            with TorchCamGradCAM(model, target_layer="layer4") as extractor:
                scores = model(images)
                return extractor(class_idx=targets.tolist(), scores=scores)

        rows.append(("torch-cam: GradCAM", _quiet(torchcam_run), slow_repeats))
    return interleaved(rows, max(repeats, slow_repeats))


PGC_PARITY = {
    "gradcam_elementwise": "GradCAMElementWise",
    "fem": "FEM",
    "kpcacam": "KPCA_CAM",
    "shapleycam": "ShapleyCAM",
    "randomcam": "RandomCAM",
}


def interleaved_median(
    cases: list[tuple[str, Callable[[], object]]], rounds: int
) -> list[tuple[str, float, float]]:
    """``(label, median seconds, first-call seconds)`` per case: one warm-up call each (timed:
    it pays one-off costs such as the inference copy's build and trace), then ``rounds`` rounds
    round-robin, so that a load spike on the shared machine hits every row alike."""
    first = {}
    for label, fn in cases:
        start = time.perf_counter()
        fn()
        first[label] = time.perf_counter() - start
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    for _ in range(rounds):
        for label, fn in cases:
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return [(label, statistics.median(times[label]), first[label]) for label, _ in cases]


PARITY_PLAIN = "plain forward (inference_mode)"


def bench_parity(
    name: str, batch: int, samples: int, rounds: int = 3
) -> tuple[list[tuple[str, float, float]], dict[str, str]]:
    """The parity methods, ours vs the peer that defines them, same model, batch and samples.

    Ours runs as the runner does: one :class:`CamEngine` per configuration, built once and
    entered per call (``capture_copy=True``, the inference copy reused). Capture-only methods
    each alone and all together (one capture); noisy and swept methods with ``samples`` noisy
    copies / integration steps on both sides (the peers' defaults are 4, 35 and 10; the cost is
    linear in them), SS-CAM / IS-CAM on one 64x64 image (512 x ``samples`` masked forwards).
    Returns the rows and, per "ours" row, the label of its peer's row.
    """
    from auditor.cam import methods as method_module

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    small = images[:1, :, :64, :64].contiguous()
    method_module.SSCAM_SAMPLES = method_module.ISCAM_SAMPLES = samples
    rows: list[tuple[str, Callable[[], object]]] = []
    peers: dict[str, str] = {}

    def plain() -> object:
        with torch.inference_mode():
            return model(images)

    rows.append((PARITY_PLAIN, plain))

    def ours(methods: tuple[str, ...], x: Tensor, t: Tensor, **kw: Any) -> Callable[[], object]:
        engine = CamEngine(model, "layer4", methods, capture_copy=True, **kw)

        def run() -> object:
            with engine:
                return engine.run(x, t)

        return run

    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
    from torchcam import methods as tc

    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    with torch.no_grad():
        logits = model(images)
    finer_targets = []
    for i, c in enumerate(targets.tolist()):
        gap = (logits[i] - logits[i, c]).abs()
        gap[c] = float("inf")
        finer_targets.append(FinerWeightedTarget(c, gap.argsort()[:3].tolist(), 1.0))

    def pgc_run(cls_name: str, cam_t: list[Any] = cam_targets, **kw: Any) -> Callable[[], object]:
        def run() -> object:
            with getattr(pgc, cls_name)(model=model, target_layers=[model.layer4]) as cam:
                return cam(images, targets=cam_t, **kw)

        return _quiet(run)

    family = (*GRADIENT_METHODS, "fem", "kpcacam", "randomcam")
    rows.append((f"ours: gradient family + fem, kpcacam, randomcam ({len(family)} methods, one "
                 "capture)", ours(family, images, targets)))  # fmt: skip
    capture_only = (*PGC_PARITY, "finercam")
    rows.append((f"ours: {', '.join(capture_only)} (one capture)",
                 ours(capture_only, images, targets)))  # fmt: skip
    for ours_name, cls_name in (*PGC_PARITY.items(), ("finercam", "FinerCAM")):
        label = f"ours: {ours_name}"
        rows.append((label, ours((ours_name,), images, targets)))
        peer = f"pytorch-grad-cam: {cls_name}"
        extra = {"cam_t": finer_targets} if ours_name == "finercam" else {}
        rows.append((peer, pgc_run(cls_name, **extra)))
        peers[label] = peer
    rows.append(("ours: gradcam aug_smooth", ours(("gradcam",), images, targets, aug_smooth=True)))
    rows.append(("pytorch-grad-cam: GradCAM aug_smooth", pgc_run("GradCAM", aug_smooth=True)))
    peers["ours: gradcam aug_smooth"] = "pytorch-grad-cam: GradCAM aug_smooth"
    rows.append(("ours: smoothgradcam++", ours(("smoothgradcam++",), images, targets)))

    def tc_smooth() -> object:
        with tc.SmoothGradCAMpp(model, target_layer="layer4") as extractor:
            model(images)
            return extractor(class_idx=targets.tolist())

    rows.append(("torch-cam: SmoothGradCAMpp", _quiet(tc_smooth)))
    peers["ours: smoothgradcam++"] = "torch-cam: SmoothGradCAMpp"
    for method, cls in (("sscam", tc.SSCAM), ("iscam", tc.ISCAM)):
        label = f"ours: {method}, 1 image 64x64, {samples} samples"
        rows.append((label, ours((method,), small, targets[:1])))

        def tc_run(cls: Any = cls) -> object:
            with cls(model, target_layer="layer4", batch_size=16, num_samples=samples) as extractor:
                with torch.no_grad():
                    model(small)
                return extractor(class_idx=targets[:1].tolist())

        rows.append((f"torch-cam: {cls.__name__}, same", _quiet(tc_run)))
        peers[label] = f"torch-cam: {cls.__name__}, same"
    return interleaved_median(rows, rounds), peers


def parity_table(
    title: str, rows: list[tuple[str, float, float]], peers: dict[str, str], n_images: int
) -> str:
    """Markdown: median time, first call, ratio vs the plain forward and speed-up vs the peer."""
    median = {label: t for label, t, _ in rows}
    base = median[PARITY_PLAIN]
    lines = [
        f"### {title}",
        "",
        "| ratio vs plain forward | images/s | median s per call | first call s | vs peer | what |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for label, seconds, first in rows:
        peer = peers.get(label)
        versus = f"{median[peer] / seconds:.2f}x" if peer else ""
        lines.append(
            f"| {base / seconds:.3g}x | {n_images / seconds:.3g} | {seconds:.3g} | {first:.3g} "
            f"| {versus} | {label} |"
        )
    return "\n".join(lines)


def bench_fullgrad(name: str, batch: int, rounds: int) -> list[tuple[str, float]]:
    """FullGrad, ours vs pytorch-grad-cam's ``FullGrad``: same model, batch and targets.

    Ours alone: FullGrad's own forward from the input (it is the capture: logits, statuses) +
    one backward to the input (no parameter gradient); "old path": the engine's separate
    capture forward first (``own_pass_capture = False``, the code before issue 16's last item);
    the peer: one forward + ``loss.backward()`` (parameter gradients too) + a cv2 resize per
    channel of every bias layer. ``fullgrad + gradcam`` shows the marginal cost next to the
    gradient family (shared capture + FullGrad's pass).
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    rows: list[tuple[str, Callable[[], object], int]] = []

    def plain() -> object:
        with torch.inference_mode():
            return model(images)

    def ours(methods: tuple[str, ...], fast: bool = True) -> Callable[[], object]:
        def run() -> object:
            with CamEngine(model, "layer4", methods) as engine:
                engine.own_pass_capture = fast
                return engine.run(images, targets)

        return run

    rows.append(("plain forward (inference_mode)", plain, rounds))
    alone = ("fullgrad",)
    rows.append(("ours: fullgrad (its pass is the capture: 1 forward)", ours(alone), rounds))
    old_path = ours(alone, fast=False)
    rows.append(("ours: fullgrad, old path (capture + pass: 2 forwards)", old_path, rounds))
    rows.append(("ours: fullgrad + gradcam", ours(("fullgrad", "gradcam")), rounds))
    with contextlib.suppress(ImportError):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def theirs() -> object:
            with contextlib.redirect_stdout(io.StringIO()):  # its "target_layers ignored" print
                with pgc.FullGrad(model=model, target_layers=[]) as cam:
                    return cam(images, targets=cam_targets)

        rows.append(("pytorch-grad-cam: FullGrad", _quiet(theirs), rounds))
    return interleaved(rows, rounds)


def bench_scorecam(
    arch: str, counts: list[int], rounds: int
) -> tuple[list[tuple[str, float]], str]:
    """Score-CAM side by side, interleaved round-robin, every call from scratch.

    Each of our calls enters a fresh engine, so it includes building and validating the
    inference copy (trace, BatchNorm folding, oneDNN Graph warm-up). With two image counts the
    note also gives the marginal seconds per image, ``(t(n2) - t(n1)) / (n2 - n1)`` (set-up
    excluded, as in a real audit where the copy is built once). Returns the rows (times per
    call, for ``counts[0]`` images unless the label says otherwise) and the note.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    n_max = max(counts)
    all_images = torch.randn(n_max, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    info: dict[str, str] = {}

    def plain() -> object:
        with torch.inference_mode():
            return model(all_images[:1])

    def ours(n: int, copy: bool) -> Callable[[], object]:
        def run() -> object:
            with CamEngine(model, "layer4", ("scorecam",), inference_copy=copy) as engine:
                out = engine.run(all_images[:n], torch.arange(n))
            info[f"forwards{n}"] = str(engine.masked_forwards)
            if copy:
                info["status"] = engine.replica_status
            return out

        return run

    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    except ImportError:
        pgc = None

    def theirs(n: int) -> Callable[[], object]:
        def run() -> object:
            with pgc.ScoreCAM(model=model, target_layers=[model.layer4]) as cam:
                return cam(
                    all_images[:n], targets=[ClassifierOutputSoftmaxTarget(t) for t in range(n)]
                )

        return _quiet(run)

    cases: list[tuple[str, Callable[[], object]]] = [("plain forward, 1 image", plain)]
    for n in counts:
        cases.append((f"ours: scorecam, {n} img (defaults)", ours(n, True)))
        if pgc is not None:
            cases.append((f"pytorch-grad-cam: ScoreCAM, {n} img (its batch_size=16)", theirs(n)))
    cases.append((f"ours: scorecam, {counts[0]} img, inference_copy=False", ours(counts[0], False)))
    # no warm-up call for the Score-CAM rows: each call is from scratch anyway
    best = {label: float("inf") for label, _ in cases}
    plain()
    for _ in range(rounds):
        for label, fn in cases:
            start = time.perf_counter()
            fn()
            best[label] = min(best[label], time.perf_counter() - start)
    rows = [(label, best[label]) for label, _ in cases]
    forwards = ", ".join(f"{info.get(f'forwards{n}')} for {n} img" for n in counts)
    note = (
        f"{arch}: masked forwards run {forwards} (channels x images, minus shared "
        f"constant/duplicate masks); inference copy {info.get('status')}."
    )
    if pgc is not None:
        n1 = counts[0]
        ratio = (
            best[f"pytorch-grad-cam: ScoreCAM, {n1} img (its batch_size=16)"]
            / best[f"ours: scorecam, {n1} img (defaults)"]
        )
        note += (
            f" **Score-CAM, {n1} image from scratch: {ratio:.2f}x pytorch-grad-cam** (target >= 2x"
            + (", met)" if ratio >= 2 else ", not met)")
        )
        if len(counts) > 1:
            n2 = counts[-1]

            def marginal(prefix: str, suffix: str) -> float:
                t1 = best[f"{prefix}, {n1} img{suffix}"]
                t2 = best[f"{prefix}, {n2} img{suffix}"]
                return (t2 - t1) / (n2 - n1)

            m_ours = marginal("ours: scorecam", " (defaults)")
            m_pgc = marginal("pytorch-grad-cam: ScoreCAM", " (its batch_size=16)")
            note += (
                f"; marginal per image ({n2} - {n1} images, set-up excluded): ours "
                f"{m_ours:.2f} s, pytorch-grad-cam {m_pgc:.2f} s = **{m_pgc / m_ours:.2f}x**"
            )
        note += " (time ratios, same inputs, same machine, interleaved)."
    return rows, note


def bench_legrad(batch: int, depth: int, rounds: int = 2) -> list[tuple[str, float]]:
    """LeGrad on a ViT-S/16-like torchvision ViT (224x224, ``depth`` blocks, random weights):
    ours (engine: the pass is the capture; the old path with a separate capture forward; the
    pass alone) vs torch-cam's ``LeGrad`` on every block, plus ours on the timm ViT of the same
    size (no peer supports timm's attention)."""
    import timm
    from torchcam.methods import LeGrad

    from auditor.cam.legrad import legrad_maps

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=224,
        patch_size=16,
        num_layers=depth,
        num_heads=6,
        hidden_dim=384,
        mlp_dim=1536,
        num_classes=1000,
    ).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    timm_model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, depth=depth, num_classes=1000
    ).eval()
    rows: list[tuple[str, Callable[[], object], int]] = []

    def plain() -> object:
        with torch.inference_mode():
            return model(images)

    def ours(net: torch.nn.Module, fast: bool = True) -> Callable[[], object]:
        engine = CamEngine(net, None, ("legrad",), example=images[:1])  # built once, as the runner
        engine.own_pass_capture = fast

        def run() -> object:
            with engine:
                return engine.run(images, targets)

        return run

    def ours_pass() -> object:
        return legrad_maps(model, images, targets)

    def torchcam_run() -> object:
        with LeGrad(model, list(model.encoder.layers)) as extractor:
            return extractor(targets.tolist(), model(images))

    rows.append(("plain forward (inference_mode)", plain, rounds))
    rows.append(("ours: legrad (engine, its pass is the capture: 1 forward)", ours(model), rounds))
    rows.append(
        ("ours: legrad, old path (capture + pass: 2 forwards)", ours(model, False), rounds)
    )
    rows.append(("ours: legrad pass alone (legrad_maps)", ours_pass, rounds))
    rows.append((f"torch-cam: LeGrad, all {depth} blocks", _quiet(torchcam_run), rounds))
    rows.append(("ours: legrad on timm vit_small (same size)", ours(timm_model), rounds))
    return interleaved(rows, rounds)


def family_note(rows: list[tuple[str, float]]) -> str:
    """The issue's two gradient-family targets, computed from the table's rows."""
    times = dict(rows)
    plain = times.get("plain forward (inference_mode)")
    ours = next((t for label, t in rows if label.startswith("ours: ") and "methods" in label), None)
    theirs = next((t for label, t in rows if label.startswith("pytorch-grad-cam: 5")), None)
    if plain is None or ours is None:
        return ""
    ratio = plain / ours
    note = f"\n\nGradient family + `cam` vs plain forward: **{ratio:.2f}x** (target >= 0.95x"
    note += ", met)" if ratio >= 0.95 else ", not met in this run)"
    if theirs is not None:
        speedup = theirs / ours
        note += f"; vs pytorch-grad-cam's five methods: **{speedup:.1f}x** (target >= 10x"
        note += ", met)." if speedup >= 10 else ", not met)."
    return note


def table(title: str, rows: list[tuple[str, float]], n_images: int, cpu: bool = False) -> str:
    """A markdown table; ``cpu``: add the CPU seconds of each row's best call (``interleaved``)."""
    base = rows[0][1]
    extra = (" CPU s |", "---:|") if cpu else ("", "")
    lines = [
        f"### {title}",
        "",
        f"| ratio vs plain forward | images/s | s per batch |{extra[0]} what |",
        f"|---:|---:|---:|{extra[1]}---|",
    ]
    for label, seconds in rows:
        cell = f" {CPU_SECONDS.get(label, float('nan')):.3g} |" if cpu else ""
        lines.append(
            f"| {base / seconds:.3g}x | {n_images / seconds:.3g} | {seconds:.3g} |{cell} {label} |"
        )
    return "\n".join(lines)


def _load() -> str:
    """The 1/5/15-minute load averages (``uptime``), or ``"n/a"``."""
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_section(text: str) -> Path:
    path = ROOT / "docs" / "performance.md"
    section = "## CAM engine\n\n" + text.strip() + "\n"
    if path.exists():
        old = path.read_text()
        pattern = re.compile(r"^## CAM engine\n.*?(?=^## |\Z)", re.S | re.M)
        new = (
            pattern.sub(section + "\n", old)
            if pattern.search(old)
            else old.rstrip() + "\n\n" + section
        )
    else:
        new = "# Performance\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-repeats", type=int, default=1)
    parser.add_argument(
        "--scorecam",
        action="append",
        metavar="ARCH:N1[,N2][:ROUNDS]",
        help=(
            "a Score-CAM case (repeatable; default resnet18:1,3:2 and resnet50:1:1); "
            "'none' skips Score-CAM"
        ),
    )
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument(
        "--parity",
        default="resnet18:4:2",
        help="ARCH:BATCH:SAMPLES for the parity methods vs their peers; 'none' skips them",
    )
    parser.add_argument(
        "--fullgrad",
        default="resnet18:8:3",
        help="ARCH:BATCH:ROUNDS for FullGrad vs pytorch-grad-cam (interleaved); 'none' skips it",
    )
    parser.add_argument(
        "--legrad",
        default="4:6",
        help="BATCH:DEPTH[:ROUNDS] of the ViT for LeGrad vs torch-cam; 'none' skips it",
    )
    parser.add_argument("--parity-rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    parts = [
        f"Machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU. Batch {args.batch}, 224x224, weights=None, "
        f"best of {args.repeats} (baselines: best of {args.slow_repeats}) after a warm-up.",
    ]
    for name in filter(None, args.models.split(",")):
        rows = bench_model(name, args.batch, args.repeats, args.slow_repeats)
        parts.append(table(f"{name}, batch {args.batch}", rows, args.batch) + family_note(rows))
        print(parts[-1], "\n", flush=True)
    if args.parity != "none":
        arch, pbatch, psamples = args.parity.split(":")
        load_before = _load()
        prows, peers = bench_parity(arch, int(pbatch), int(psamples), args.parity_rounds)
        title = (
            f"parity methods vs their peers, {arch}, batch {pbatch}, median of "
            f"{args.parity_rounds} interleaved rounds (load average before: {load_before})"
        )
        parts.append(parity_table(title, prows, peers, int(pbatch)))
        parts.append(f"Load average after the parity rows: {_load()}.")
        print(parts[-2], flush=True)
        print(parts[-1], "\n", flush=True)
    if args.fullgrad != "none":
        arch, fbatch, frounds = args.fullgrad.split(":")
        load_before = _load()
        rows = bench_fullgrad(arch, int(fbatch), int(frounds))
        title = (
            f"FullGrad vs pytorch-grad-cam, {arch}, batch {fbatch}, best of {frounds} interleaved "
            f"(load average before {load_before}, after {_load()})"
        )
        parts.append(table(title, rows, int(fbatch), cpu=True))
        print(parts[-1], "\n", flush=True)
    if args.legrad != "none":
        lbatch, ldepth, *lmore = args.legrad.split(":")
        lrounds = int(lmore[0]) if lmore else 2
        load_before = _load()
        rows = bench_legrad(int(lbatch), int(ldepth), lrounds)
        title = (
            f"LeGrad vs torch-cam, ViT-S/16-like with {ldepth} blocks, batch {lbatch}, best of "
            f"{lrounds} interleaved (load average before {load_before}, after {_load()})"
        )
        parts.append(table(title, rows, int(lbatch), cpu=True))
        print(parts[-1], "\n", flush=True)
    for spec in args.scorecam or ["resnet18:1,3:2", "resnet50:1:1"]:
        if spec == "none":
            continue
        name, images, *more = spec.split(":")
        counts = [int(c) for c in images.split(",")]
        rounds = int(more[0]) if more else 2
        rows, note = bench_scorecam(name, counts, rounds)
        title = f"Score-CAM, {name}, best of {rounds} interleaved round(s)"
        lines = [f"### {title}", "", "| s per call | what |", "|---:|---|"]
        lines += [f"| {seconds:.3g} | {label} |" for label, seconds in rows]
        parts.append("\n".join(lines) + "\n\n" + note)
        print(parts[-1], "\n", flush=True)
    parts.append(NOTES)
    parts.append(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    text = "\n\n".join(parts)
    if not args.no_write:
        print("written to", write_section(text))


if __name__ == "__main__":
    main()
