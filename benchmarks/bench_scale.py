"""Scaling: audit throughput of 1 process vs ``torchrun`` with 2 ranks (gloo, CPU); GPU row.

Each run audits the demo dataset (``auditor.demo``) into a fresh run directory; throughput is
images / the audit loop's time (``summary.json`` → ``run.timings.audit_loop_s``; for torchrun
the slowest rank's loop, recorded in the shard records). Every process gets one intra-op
thread (torchrun's default, ``OMP_NUM_THREADS=1``), so the ratio measures process scaling and
not thread scaling. The 2-rank ratio cannot exceed the free cores of the machine.

The GPU row (audit of the gradient family vs a plain bf16 inference forward of the same model,
resnet50 and ViT-B/16 at 224²) runs only when CUDA is available; otherwise it prints the reason
it was skipped.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "CI": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
    }


def _run(cmd: list[str]) -> None:
    # the demo model fails its gate on purpose: exit 1 is a completed audit
    res = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")


def _loop_s(run: Path) -> float:
    recs = [json.loads(p.read_text()) for p in (run / "shards").glob("shard-*-of-*.json")]
    return max(float(r.get("loop_s") or 0.0) for r in recs)


def scaling(limit: int) -> tuple[float, float]:
    """(images/s with 1 process, images/s with torchrun 2 ranks)."""
    from auditor.demo import write_demo_inputs

    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_demo_inputs(Path(tmp) / "inputs")
        base = ["run", str(cfg), "--limit", str(limit), "--no-pdf", "--no-progress"]
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        _run([sys.executable, "-m", "auditor", *base, "--out", str(one)])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        _run([*torchrun, "--nproc-per-node", "2", "-m", "auditor", *base, "--out", str(two)])
        return limit / _loop_s(one), limit / _loop_s(two)


def gpu_rows() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["GPU row skipped: CUDA is not available on this machine (no GPU measured yet)"]
    import torchvision

    from auditor.cam import CamEngine

    rows = []
    dev = torch.device("cuda")
    for name, layer in (
        ("resnet50", "layer4"),
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1"),
    ):
        model = getattr(torchvision.models, name)(weights=None).eval().to(dev)
        x = torch.randn(64, 3, 224, 224, device=dev)
        targets = torch.zeros(64, dtype=torch.long, device=dev)

        def plain() -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)

        methods = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
        engine = CamEngine(model, layer, methods, autocast=torch.bfloat16, example=x[:2])

        def audit() -> None:
            with engine:
                engine.run(x, targets)

        times = {}
        for label, fn in (("plain", plain), ("audit", audit)):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            times[label] = (time.perf_counter() - t) / 5
        rows.append(
            f"{name} batch 64 bf16: plain forward {64 / times['plain']:.0f} img/s, gradient "
            f"family {64 / times['audit']:.0f} img/s ({times['plain'] / times['audit']:.2f}x)"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40 images instead of 200")
    p.add_argument("--no-write", action="store_true", help="accepted; this script only prints")
    args = p.parse_args(argv)
    limit = 40 if args.quick else 200
    one, two = scaling(limit)
    cores = os.cpu_count()
    print(f"## Scaling (demo model, {limit} images, 1 thread per process, {cores} cores)")
    print("| processes | images/s | ratio |\n|---|---|---|")
    print(f"| 1 | {one:.1f} | 1.00x |")
    print(f"| 2 (torchrun, gloo) | {two:.1f} | {two / one:.2f}x |")
    for row in gpu_rows():
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
