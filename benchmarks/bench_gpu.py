"""GPU row (issue 14): audit throughput of the gradient family vs a plain bf16 forward.

Runs only where ``torch.cuda.is_available()``; elsewhere it prints ``skipped: no CUDA`` and
exits 0 (so ``make bench`` and CI stay CPU-only). resnet50 (target ``layer4``) and ViT-B/16
(torchvision ``vit_b_16``, target ``encoder.layers.encoder_layer_11.ln_1``, tokens reshaped to
the 14x14 grid), random weights (no download), 224x224, batch 64, channels_last for the CNN:

* **plain bf16 forward**: ``model(x)`` under ``torch.autocast("cuda", torch.bfloat16)`` and
  ``torch.inference_mode()``: what a production inference job costs;
* **audit, gradient family**: :class:`auditor.cam.CamEngine` with the gradient methods
  (``gradcam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``hirescam``) and
  ``autocast=torch.bfloat16``: one forward + one backward from the target layer, all maps;
* **audit + GPU JPEG decode** (optional, ``--decode``): adds nvJPEG decoding and resizing of
  64 synthetic 500x375 JPEGs per batch (``auditor.data.gpu_decode``).

Each row: images/s over ``--iters`` timed batches after ``--warmup`` (CUDA-synchronised),
median of ``--repeats``. Prints a markdown table; writes "## GPU" of docs/performance.md
unless ``--no-write``. Target: audit ≥ 0.9× the plain forward.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py [--batch 64] [--iters 20]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, markdown_table, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
SECTION = "## GPU"
FAMILY = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def _sync_time(fn: Callable[[], object], iters: int, warmup: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` rounds of ``iters`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / iters)
    return statistics.median(rounds)


def _model(name: str) -> tuple[torch.nn.Module, str, Any]:
    import torchvision

    from auditor.cam import vit_reshape

    torch.manual_seed(0)
    if name == "resnet50":
        model = torchvision.models.resnet50(weights=None).eval()
        return model.cuda().to(memory_format=torch.channels_last), "layer4", None
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():  # torchvision initialises the head to zero: constant logits
        model.heads.head.weight.normal_(0, 0.02)
    return model.cuda(), "encoder.layers.encoder_layer_11.ln_1", vit_reshape(1)


def _jpegs(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench(
    name: str, batch: int, iters: int, warmup: int, repeats: int, decode: bool
) -> list[list[str]]:
    from auditor.cam import CamEngine

    model, layer, reshape = _model(name)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    if name == "resnet50":
        x = x.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch,), device="cuda")

    def plain() -> object:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x)

    engine = CamEngine(model, layer, FAMILY, autocast=torch.bfloat16, reshape=reshape)
    engine.__enter__()  # hooks on for the timed calls, removed at the end

    def audit() -> object:
        return engine.run(x, targets)

    t_plain = _sync_time(plain, iters, warmup, repeats)
    t_audit = _sync_time(audit, iters, warmup, repeats)
    rows = [
        [name, "plain bf16 forward (inference_mode)", f"{batch / t_plain:,.0f}", "1.00×"],
        [
            name,
            f"audit: {len(FAMILY)} gradient methods, bf16 autocast",
            f"{batch / t_audit:,.0f}",
            f"{t_plain / t_audit:.2f}×",
        ],
    ]
    if decode:
        from auditor.data.gpu_decode import decode_resize

        data = _jpegs(batch)

        def decoded_audit() -> object:
            imgs = torch.stack(
                [decode_resize(d, (224, 224), "shorter_center_crop", "cuda") for d in data]
            )
            xx = (imgs.float() / 255.0 - 0.45) / 0.225
            return engine.run(xx, targets)

        t_dec = _sync_time(decoded_audit, max(1, iters // 4), 1, repeats)
        rows.append(
            [
                name,
                "audit + nvJPEG decode/resize of 500x375 JPEGs",
                f"{batch / t_dec:,.0f}",
                f"{t_plain / t_dec:.2f}×",
            ]
        )
    engine.__exit__(None, None, None)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet50,vit_b_16")
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    torch.backends.cudnn.benchmark = True
    rows: list[list[str]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows += bench(name, args.batch, args.iters, args.warmup, args.repeats, args.decode)
    table = markdown_table(["model", "row", "images/s", "vs plain forward"], rows)
    body = f"""
`benchmarks/bench_gpu.py`: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch
{args.batch}, 224x224, random weights; median of {args.repeats} rounds of {args.iters}
CUDA-synchronised batches. Target: the audit of the gradient family ≥ 0.9× the plain bf16
forward.

{table}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
