"""End-to-end throughput of ``auditor run`` against a plain decode + inference loop (not a test).

Target (issue): the audit (decode → CAMs → metrics → shards; report excluded) runs at >= 0.8x
the throughput of a plain loop that decodes the same images and runs one inference forward.

Measured as the **marginal** cost per image, so that fixed costs (imports, model loading,
target-layer detection, analysis of a fixed-size subset, gallery) cancel::

    throughput = (N_large - N_small) / (t_large - t_small)        [images / s]
    ratio      = throughput(auditor) / throughput(plain loop)

Setup: synthetic shapes with masks (``auditor.demo`` renderer at 64 px upscaled to 224x224
PNGs), torchvision ``resnet18`` (``weights=None``, 4 classes, seeded) loaded from a saved
state_dict through the ``[model] torchvision`` config path, batch 32, ``torch.set_num_threads(2)``,
``run_audit(cfg, out, render=False, progress=False)``. Rows:

* plain loop, PIL: ``Image.open → RGB → resize → (x/255 - mean)/std``, ``model(x)`` under
  ``torch.inference_mode()`` (the issue's baseline);
* plain loop, auditor reader: the same forward over ``auditor.data.iter_batches`` (which also
  decodes the masks and hashes the files, so decode cost is identical to the audit's);
* audit, ``gradcam``, heavy extras off (interventions, faithfulness, sanity, clusters): the
  engine's number, compared with the target;
* audit with the default extras on (interventions = 3 more inference forwards per batch, sanity
  check, clusters; faithfulness on a fixed subset of ``--faith`` images): a feature cost.

Each time is the best of ``--repeats`` rounds after one warm-up run (lazy imports, allocator);
the rows are timed round-robin within a round, so that drifts of the machine's speed hit them
alike.
Writes the "## End to end" section of ``docs/performance.md`` unless ``--no-write``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_e2e.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

_common.ensure_root_on_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

SECTION = "## End to end"
SIZE = 224
BATCH = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TARGET = 0.8
EXTRAS_OFF = {
    "interventions": False,
    "faithfulness_samples": 0,
    "sanity_check": False,
    "clusters": False,
}


@dataclass
class Row:
    name: str
    t_small: float
    t_large: float
    n_small: int
    n_large: int
    loop_small: float | None = None
    loop_large: float | None = None
    cpu_small: float = float("nan")
    cpu_large: float = float("nan")

    @property
    def marginal_s(self) -> float:
        """Seconds per image between the small and the large run."""
        return (self.t_large - self.t_small) / (self.n_large - self.n_small)

    @property
    def throughput(self) -> float:
        d = self.t_large - self.t_small
        return (self.n_large - self.n_small) / d if d > 0 else float("nan")

    @property
    def cpu_throughput(self) -> float:
        """Marginal images per CPU-second (all threads of this process): robust to a busy
        machine, where wall time also counts the waits for a core."""
        d = self.cpu_large - self.cpu_small
        return (self.n_large - self.n_small) / d if d > 0 else float("nan")

    @property
    def loop_throughput(self) -> float | None:
        if self.loop_small is None or self.loop_large is None:
            return None
        d = self.loop_large - self.loop_small
        return (self.n_large - self.n_small) / d if d > 0 else float("nan")


def build_model(path: Path) -> None:
    """Seeded resnet18 with 4 classes, saved as a state_dict (loaded by the config)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    torch.save(model.state_dict(), path)


def load_model(path: Path) -> torch.nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def plain_pil_loop(model: torch.nn.Module, paths: list[Path]) -> int:
    """Decode with PIL, resize, normalise, batch, ``model(x)`` under inference_mode."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    done = 0
    for k in range(0, len(paths), BATCH):
        arrays = []
        for p in paths[k : k + BATCH]:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (SIZE, SIZE):
                    im = im.resize((SIZE, SIZE), Image.BILINEAR)
                arrays.append(np.asarray(im))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std
        with torch.inference_mode():
            done += int(model(x).argmax(1).numel())
    return done


def reader_loop(model: torch.nn.Module, dataset: object, n: int) -> int:
    """The auditor's own reader (``iter_batches``) followed by one inference forward."""
    from auditor.data import iter_batches

    done = 0
    for batch in iter_batches(dataset, list(range(n)), BATCH):  # type: ignore[arg-type]
        with torch.inference_mode():
            done += int(model(batch.images).argmax(1).numel())
    return done


def best_of(fn: Callable[[], float | None], repeats: int) -> tuple[float, float | None, float]:
    """Best wall time over ``repeats`` calls, with the inner (loop) time ``fn`` may return and
    the least CPU time (``time.process_time``: every thread of this process) of the calls.

    Every call runs under :func:`auditor.audit.heap.kept_heap`, the allocator setting of the audit
    loop, so the plain loops are not slowed by page faults the audit avoids."""
    from auditor.audit.heap import kept_heap

    best, best_inner, best_cpu = float("inf"), None, float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        with kept_heap():
            inner = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        best_cpu = min(best_cpu, c)
        if t < best:
            best, best_inner = t, inner
    return best, best_inner, best_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-large", type=int, default=256)
    parser.add_argument("--n-small", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--faith",
        type=int,
        default=0,
        help="faithfulness_samples of the 'defaults on' row (default 0: it is a "
        "fixed-size subset, so its cost cancels in the marginal anyway)",
    )
    parser.add_argument("--no-defaults-row", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one large audit (extras off) and print the top costs",
    )
    parser.add_argument("--quick", action="store_true", help="96 / 32 images, no defaults row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = parser.parse_args()
    if args.quick:
        args.n_large, args.n_small, args.no_defaults_row = 96, 32, True
    if not 0 < args.n_small < args.n_large:
        parser.error(f"need 0 < --n-small < --n-large, got {args.n_small}, {args.n_large}")
    _common.set_threads(args.threads)

    from auditor.audit.runner import run_audit
    from auditor.config import load_config
    from auditor.data import open_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        t0 = time.perf_counter()
        manifest = _common.make_dataset(tmp / "data", args.n_large, SIZE, seed=0)
        build_model(tmp / "resnet18.pt")
        print(
            f"dataset: {args.n_large} PNGs {SIZE}x{SIZE} in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        model_cfg = {
            "torchvision": "resnet18",
            "num_classes": 4,
            "weights": "resnet18.pt",
            "target_layer": "layer4",
        }
        base_audit = {"methods": ["gradcam"], "batch_size": BATCH, "seed": 0}
        cfg_off = load_config(
            _common.write_config(
                tmp / "off.toml",
                model=model_cfg,
                manifest=manifest,
                input_size=SIZE,
                audit={**base_audit, **EXTRAS_OFF},
            )
        )
        cfg_on = load_config(
            _common.write_config(
                tmp / "on.toml",
                model=model_cfg,
                manifest=manifest,
                input_size=SIZE,
                audit={**base_audit, "faithfulness_samples": args.faith},
            )
        )
        model = load_model(tmp / "resnet18.pt")
        paths = [
            tmp / "data" / "images" / p.name for p in sorted((tmp / "data" / "images").iterdir())
        ]
        dataset = open_dataset(cfg_off.data)
        run_no = [0]

        def audit(cfg: object, n: int) -> Callable[[], float]:
            def run() -> float:
                run_no[0] += 1
                out = tmp / f"run-{run_no[0]}"
                res = run_audit(cfg, out, limit=n, render=False, progress=False)  # type: ignore[arg-type]
                if res.summary["dataset"]["n_evaluated"] != n:
                    raise RuntimeError(f"audited {res.summary['dataset']['n_evaluated']} != {n}")
                shutil.rmtree(out, ignore_errors=True)
                return float(res.summary["run"]["timings"]["audit_loop_s"])

            return run

        cases: list[tuple[str, Callable[[int], Callable[[], float | None]]]] = [
            (
                "plain loop: PIL decode + inference forward",
                lambda n: lambda: (plain_pil_loop(model, paths[:n]), None)[1],
            ),
            (
                "plain loop: auditor reader + inference forward",
                lambda n: lambda: (reader_loop(model, dataset, n), None)[1],
            ),
            ("audit: gradcam, extras off", lambda n: audit(cfg_off, n)),
        ]
        if not args.no_defaults_row:
            cases.append(
                (
                    "audit: gradcam, default extras on (interventions, sanity, clusters"
                    + (f", faithfulness {args.faith}" if args.faith else "")
                    + ")",
                    lambda n: audit(cfg_on, n),
                )
            )
        for _, make in cases:
            best_of(make(min(16, args.n_small)), 1)  # warm-up
        # round-robin: every row is timed once per round, so that the machine's speed drifts
        # (a shared VM) hit all rows alike; the best of the rounds is kept per row and size
        best: dict[tuple[str, int], tuple[float, float | None, float]] = {}
        for _ in range(args.repeats):
            for name, make in cases:
                for n in (args.n_small, args.n_large):
                    t, inner, cpu = best_of(make(n), 1)
                    old = best.get((name, n))
                    if old is None or t < old[0]:
                        best[(name, n)] = (t, inner, min(cpu, old[2]) if old else cpu)
        rows = []
        for name, _ in cases:
            ts, ls, cs = best[(name, args.n_small)]
            tl, ll, cl = best[(name, args.n_large)]
            row = Row(name, ts, tl, args.n_small, args.n_large, ls, ll, cs, cl)
            print(
                f"  {name}: {ts:.2f}s / {tl:.2f}s -> {row.throughput:.1f} img/s "
                f"(CPU {cs:.1f}s / {cl:.1f}s -> {row.cpu_throughput:.2f} img/CPU-s)",
                flush=True,
            )
            rows.append(row)

        profile_text = ""
        if args.profile:
            prof = cProfile.Profile()
            out = tmp / "profiled"
            prof.enable()
            run_audit(cfg_off, out, limit=args.n_large, render=False, progress=False)
            prof.disable()
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf).strip_dirs()
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            profile_text = buf.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain, reader, off = rows[0], rows[1], rows[2]
    table_rows = []
    for r in rows:
        lt = r.loop_throughput
        table_rows.append(
            [
                r.name,
                f"{r.t_small:.2f}",
                f"{r.t_large:.2f}",
                f"{1000 * r.marginal_s:.1f}",
                f"{r.throughput:.1f}",
                "" if lt is None else f"{lt:.1f}",
                f"{r.throughput / plain.throughput:.2f}x",
                f"{r.cpu_throughput:.2f}",
                f"{r.cpu_throughput / plain.cpu_throughput:.2f}x",
            ]
        )
    table = _common.markdown_table(
        [
            "",
            f"t({args.n_small}) s",
            f"t({args.n_large}) s",
            "marginal ms/img",
            "marginal img/s",
            "loop-only img/s",
            "vs plain PIL loop",
            "img/CPU-s",
            "vs plain (CPU time)",
        ],
        table_rows,
    )
    ratio = off.throughput / plain.throughput
    cpu_ratio = off.cpu_throughput / plain.cpu_throughput
    verdict = "met" if ratio >= TARGET else "NOT met"
    lines = [
        table,
        "",
        f"Target: audit (extras off) >= {TARGET}x the plain loop's marginal throughput: "
        f"**{ratio:.2f}x wall time, {verdict}**; {cpu_ratio:.2f}x in CPU time (vs the loop "
        f"over the auditor's own reader: {off.throughput / reader.throughput:.2f}x wall, "
        f"{off.cpu_throughput / reader.cpu_throughput:.2f}x CPU).",
    ]
    if len(rows) > 3:
        on = rows[3]
        lines.append(
            f"Default extras on: {on.throughput / plain.throughput:.2f}x the plain loop, "
            f"{on.throughput / off.throughput:.2f}x the extras-off audit (interventions add three "
            "inference forwards per batch: a feature cost, not the engine's)."
        )
    lines.append(
        "Wall time is the target's measure on an idle machine; when the load average exceeds "
        "the core count, wall times also count waiting for a core and the CPU-time columns "
        "are the steadier figure (they weigh the single-threaded decode less than an idle "
        "2-core wall clock would)."
    )
    print()
    print("\n".join(lines))
    if profile_text:
        print(f"\ncProfile of one audit run (extras off, {args.n_large} images):\n{profile_text}")
    if not args.no_write:
        body = "\n".join(
            [
                f"`benchmarks/bench_e2e.py`: resnet18 (`weights=None`, 4 classes), {SIZE}x{SIZE} "
                f"synthetic PNGs with masks, batch {BATCH}, `run_audit(..., render=False)`. "
                f"Marginal throughput = (N_large - N_small) / (t_large - t_small) with N = "
                f"{args.n_large} / {args.n_small}, best of {args.repeats} after a warm-up; "
                "'loop-only' uses the runner's own audit-loop timer (no model loading, analysis, "
                "gallery).",
                "",
                *lines,
                "",
                f"Machine: {_common.machine_info()}; load average {_common.load_average()}.",
            ]
        )
        _common.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
