"""Red-team round 5: hostile and careless inputs to shards, finalize, torchrun, compare.

Each test is a case that used to end wrong: an internal error (exit 4) where the input was
bad, a hang, a silently dropped batch of skipped samples, a whole audit run where a shard was
asked for, or a finding computed from a meaningless intervention. Real CLI (``main`` or a
subprocess) on the demo's tiny model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from auditor.audit.distributed import parse_shard, torchrun_env
from auditor.cli import main
from auditor.errors import AuditorInputError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    path = env.get("PYTHONPATH", "")
    return {
        **env,
        "CI": "1",
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
        **extra,
    }


def _cli(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def _one_line_error(res: subprocess.CompletedProcess[str] | str) -> str:
    err = res if isinstance(res, str) else res.stderr
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("auditor: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def sharded(
    tmp_path_factory: pytest.TempPathFactory, demo_config: Callable[..., Path]
) -> dict[str, Path]:
    """Two shard jobs (12 samples in batches of 6: shard 0 owns batch 0, shard 1 batch 1),
    not finalised."""
    tmp = tmp_path_factory.mktemp("redteam5")
    cfg = demo_config(tmp, preset="small", batch_size=6, gates="max_background_focus = 0.99")
    out = tmp / "shards"
    base = ["run", str(cfg), "--limit", "12", "--no-pdf", "--no-progress", "--out", str(out)]
    for s in ("0/2", "1/2"):
        assert main([*base, "--shard", s]) == 0
    return {"dir": out, "cfg": cfg}


def _copy(sharded: dict[str, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(sharded["dir"], dst)
    return dst


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


DAMAGE = {
    "truncated part": ("part-00001.parquet", _truncate),
    "garbage part": ("part-00001.parquet", lambda p: p.write_bytes(b"not parquet")),
    "truncated cams": ("cams-00001.npz", _truncate),
    "missing cams": ("cams-00001.npz", lambda p: p.unlink()),
    "missing skip list": ("skipped-00001.json", lambda p: p.unlink()),
    "corrupt skip list": ("skipped-00001.json", lambda p: p.write_text("{")),
    "shard record not an object": ("shard-1-of-2.json", lambda p: p.write_text("[]")),
}


@pytest.mark.parametrize("aggregation", ["exact", "streaming"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_finalize_refuses_a_damaged_shard_file_naming_it(
    sharded: dict[str, Path],
    tmp_path: Path,
    damage: str,
    aggregation: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Was: exit 4 (ArrowInvalid, BadZipFile, JSONDecodeError, AttributeError) or, for a
    missing skip list, exit 0 with that batch's skipped samples silently not counted."""
    run = _copy(sharded, tmp_path)
    name, harm = DAMAGE[damage]
    harm(run / "shards" / name)
    capsys.readouterr()
    code = main(["finalize", str(run), "--no-pdf", "--aggregation", aggregation])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2, line
    assert name in line, line
    assert "--resume" in line, line
    assert not (run / "summary.json").exists()


def test_shard_resume_recomputes_a_truncated_batch(
    sharded: dict[str, Path], tmp_path: Path
) -> None:
    """Was: a shard's --resume trusted any existing part file (docs: a truncated shard is
    computed again), so the run could never be finalised."""
    run = _copy(sharded, tmp_path)
    good = pq.read_table(sharded["dir"] / "shards" / "part-00001.parquet")
    _truncate(run / "shards" / "part-00001.parquet")
    args = ["run", str(sharded["cfg"]), "--limit", "12", "--no-pdf", "--no-progress"]
    assert main([*args, "--out", str(run), "--shard", "1/2", "--resume"]) == 0
    again = pq.read_table(run / "shards" / "part-00001.parquet")
    assert again.to_pandas().equals(good.to_pandas())  # NaN == NaN here
    assert main(["finalize", str(run), "--no-pdf"]) in (0, 1)
    assert (run / "summary.json").is_file()


def test_finalize_with_an_absurd_shard_count_answers_at_once(
    sharded: dict[str, Path], tmp_path: Path
) -> None:
    """Was: `--shard 0/100000000000000000000` ran, then finalize enumerated range(N) to name
    the missing shards (a hang, then one gigantic line)."""
    out = tmp_path / "huge"
    n = 10**20
    args = ["run", str(sharded["cfg"]), "--limit", "6", "--no-pdf", "--no-progress"]
    assert main([*args, "--out", str(out), "--shard", f"0/{n}"]) == 0
    res = _cli("finalize", str(out), "--no-pdf", timeout=120)
    line = _one_line_error(res)
    assert res.returncode == 2, line
    assert f"1/{n}" in line and "more" in line and len(line) < 1500, line


@pytest.mark.parametrize("text", ["", " ", "１/2", "0/2x", "-1/2", "1/1", "0/0"])
def test_bad_shard_values_are_refused(text: str) -> None:
    with pytest.raises(AuditorInputError, match="--shard"):
        parse_shard(text)


def test_empty_shard_argument_does_not_run_the_whole_audit(
    sharded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: `--shard ""` (an unset job-index variable) was falsy, so the job ran the whole
    audit as a single process into the shared directory and exited 0."""
    out = tmp_path / "empty-shard"
    args = ["run", str(sharded["cfg"]), "--limit", "6", "--no-pdf", "--no-progress"]
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--shard", ""]) == 2
    assert "--shard" in _one_line_error(capsys.readouterr().err)
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-3"}, "LOCAL_RANK"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
    ],
)
def test_torchrun_env_garbage_names_the_variable(env: dict[str, str], needle: str) -> None:
    """Was: "--shard must be I/N ..." although no --shard was given; LOCAL_RANK=-3 passed."""
    with pytest.raises(AuditorInputError, match="torchrun environment") as info:
        torchrun_env(env)
    assert needle in str(info.value) and "--shard" not in str(info.value)


def test_rank_variables_without_torchrun_are_bad_input(
    sharded: dict[str, Path], tmp_path: Path
) -> None:
    """Was: exit 4 (torch's ValueError: MASTER_ADDR expected) for a stray RANK/WORLD_SIZE."""
    res = _cli(
        "run", str(sharded["cfg"]), "--limit", "6", "--no-pdf", "--no-progress",
        "--out", str(tmp_path / "stray"), RANK="0", WORLD_SIZE="1",
    )  # fmt: skip
    line = _one_line_error(res)
    assert res.returncode == 2, line
    assert "MASTER_ADDR" in line, line


def _run_timm_vit_64px(demo_inputs: Path, tmp_path: Path, model_lines: str) -> str:
    """``auditor run`` of a random-weight timm ViT-Tiny (``[model]`` plus ``model_lines``) on 4
    demo images at 64 px: asserts exit 2 and returns the one-line error."""
    cfg = tmp_path / "vit.toml"
    cfg.write_text(
        f"""
[model]
timm = "vit_tiny_patch16_224"
random_weights = true
num_classes = 4
{model_lines}

[data]
manifest = "{demo_inputs.parent / "data" / "manifest.csv"}"
classes = ["circle", "square", "triangle", "cross"]
input_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[audit]
methods = ["gradcam"]
sanity_check = false
"""
    )
    res = _cli("run", str(cfg), "--limit", "4", "--no-pdf", "--out", str(tmp_path / "o"))
    line = _one_line_error(res)
    assert res.returncode == 2, line
    return line


def test_model_that_rejects_the_input_size_is_bad_input(demo_inputs: Path, tmp_path: Path) -> None:
    """Was: exit 4 (AssertionError from timm's patch embedding in the target-layer probe)."""
    pytest.importorskip("timm")
    line = _run_timm_vit_64px(demo_inputs, tmp_path, 'reshape = "auto"')
    assert "input_size" in line and "224" in line, line


@pytest.mark.parametrize(
    "reshape",
    [
        '{kind = "tokens", prefix_tokens = 1, grid = [5, 5]}',
        '{kind = "tokens", prefix_tokens = 0, grid = [4, 4]}',
        '"swin"',
    ],
)
def test_reshape_that_does_not_fit_the_layer_is_bad_input(
    demo_inputs: Path, tmp_path: Path, reshape: str
) -> None:
    """Was: exit 4 (ValueError from the reshape inside the first batch)."""
    pytest.importorskip("timm")
    model = f'target_layer = "blocks.11"\nkwargs = {{img_size = 64}}\nreshape = {reshape}'
    line = _run_timm_vit_64px(demo_inputs, tmp_path, model)
    assert "[model] reshape" in line, line


def test_empty_and_whole_image_masks_run_no_intervention(
    demo_inputs: Path, tmp_path: Path, demo_config: Callable[..., Path]
) -> None:
    """Was: an empty mask made "only the background" the whole image, so the model "predicted
    the class from the background alone" (a high-severity background_sufficiency finding)."""
    data = tmp_path / "data"
    shutil.copytree(demo_inputs.parent / "data" / "images", data / "images")
    (data / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "masks" / "empty.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(data / "masks" / "full.png")
    rows = list(csv.DictReader(open(demo_inputs.parent / "data" / "manifest.csv")))[:16]
    with open(data / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "mask"])
        for i, r in enumerate(rows):
            w.writerow([r["image"], r["label"], f"masks/{'empty' if i % 2 else 'full'}.png"])
    cfg = demo_config(tmp_path, preset="small", batch_size=8, gates="max_background_focus = 0.99")
    cfg.write_text(cfg.read_text().replace(str(demo_inputs.parent / "data"), str(data)))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--no-pdf", "--no-progress", "--out", str(out)]) in (0, 1)
    t = pq.read_table(out / "samples.parquet")
    for col in ("only_fg_correct", "only_bg_correct", "mixed_rand_correct"):
        assert all(v is None or np.isnan(v) for v in t.column(col).to_pylist()), col
    assert set(t.column("only_bg_pred").to_pylist()) == {-1}
    summary = json.loads((out / "summary.json").read_text())
    kinds = {f["kind"] for f in summary["findings"]}
    meaningless = {"background_sufficiency", "evidence_disagreement", "background_reliance"}
    assert not kinds & meaningless, kinds


def test_compare_refuses_a_run_compared_with_itself(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: exit 0, "no change", every comparison gate passed (a CI line that can never fail)."""
    capsys.readouterr()
    code = main(["compare", str(demo_run), str(demo_run) + "/", "--no-pdf",
                 "--out", str(tmp_path / "cmp")])  # fmt: skip
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2 and "same run directory" in line, line


def test_batches_without_shard_records_are_not_taken_as_done(
    sharded: dict[str, Path],
    tmp_path: Path,
    demo_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Was: with the shard records deleted, shard jobs of ANOTHER config found every batch
    "done", computed nothing, and finalize reported the old config's numbers as the new."""
    run = _copy(sharded, tmp_path)
    for rec in (run / "shards").glob("shard-*.json"):
        rec.unlink()
    other = demo_config(
        tmp_path,
        preset="small",
        name="other.toml",
        batch_size=6,
        gates="max_background_focus = 0.5",
    )
    args = ["run", str(other), "--limit", "12", "--no-pdf", "--no-progress", "--out", str(run)]
    capsys.readouterr()
    assert main([*args, "--shard", "0/2"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no shard records" in line, line


def test_finalize_of_a_folder_that_is_no_run_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: refused, but only after creating locks/ in the user's folder."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"x")
    capsys.readouterr()
    assert main(["finalize", str(folder)]) == 2
    assert "not a run directory" in _one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.png"]
    assert main(["finalize", str(folder / "cat.png")]) == 2
    assert "not a directory" in _one_line_error(capsys.readouterr().err)


def test_finalize_refuses_batches_the_shards_do_not_cover(
    sharded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a part file beyond the shards' batch count (copied in from a larger run) was
    aggregated with the rest, silently."""
    run = _copy(sharded, tmp_path)
    for kind, ext in (("part", "parquet"), ("cams", "npz"), ("skipped", "json")):
        shutil.copy(run / "shards" / f"{kind}-00001.{ext}", run / "shards" / f"{kind}-00007.{ext}")
    capsys.readouterr()
    assert main(["finalize", str(run), "--no-pdf"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "part-00007.parquet" in line, line


def test_finalize_names_a_missing_config_given_with_config(
    sharded: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "(recorded by the shards) is not there any more: pass --config" for a --config
    the user did pass."""
    run = _copy(sharded, tmp_path)
    capsys.readouterr()
    assert main(["finalize", str(run), "--config", str(tmp_path / "nope.toml")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "--config" in line and "nope.toml" in line and "recorded" not in line, line
