"""Docs that run (issue 23): every shell command and Python snippet of README.md, docs/*.md and
the example READMEs, and every docstring example (``>>>``) in ``auditor/``, is executed.

Fenced code blocks are read by their language: ``bash``/``sh`` commands and ``python``
snippets run; ``toml`` blocks are parsed and their sections and ``[audit]``/``[gates]`` keys
checked against the config's; ``yaml``/``json`` blocks are parsed; ``text``/``jsonc`` blocks
are illustrations. A fence without a language fails (say what it is). An HTML comment on the
line before a fence (blank lines allowed) steers the block:

* ``<!-- docs-test: skip: REASON -->``: not run here (GPU, torchrun with many ranks, ``make``,
  ``pip install``, a network service, hours of benchmark). The reason is required; the skips are
  listed by :func:`test_skipped_blocks_have_reasons` and shown by ``pytest -rs``.
* ``<!-- docs-test: exit: N -->``: every command of the block must exit ``N`` (default 0).

Commands run in-process (``auditor ...`` through :func:`auditor.cli.main`, ``python -m X``
through :mod:`runpy`), so no interpreter start-up is paid per command; anything else is an
error unless the block is skipped. Everything runs in one sandbox folder per session, in
document order (README.md, then docs/ alphabetically, then the example READMEs), so a later
block sees what an earlier one wrote, as a reader following the docs would. The sandbox holds
what the docs assume a reader has:

* ``audit.toml``: the session's demo data (``demo_inputs`` in conftest.py) and the demo's
  fixed model (a factory + state_dict), 8 images, HTML only, a ``max_background_focus`` gate:
  README's ``auditor run audit.toml --out runs/v2`` writes the "new model" run that later
  blocks read;
* ``runs/v1``: the same 8 images audited with the shortcut model, the "previous model" (a
  paired comparison needs the same images in both runs);
* ``gates.toml``: the comparison gates of ``example_audits/demo/compare-gates.toml``.

Python snippets additionally get the objects their prose says the reader brings: ``model`` (a
random-weight torchvision resnet18 with 4 classes: it has ``layer4``), ``images`` / ``labels`` /
``targets`` / ``masks`` (4 demo images, 64 px), ``loader`` (one such batch), ``dataset`` (the 4
demo samples as an :class:`auditor.data.EvalDataset`: README's ``auditor.audit`` runs its default
faithfulness and sanity checks on every sample) and ``my_dataset`` (a torch-style dataset of
``(PIL image, label)``). Nothing else: a missing import in a snippet fails. Metrics and finding
rules a snippet registers are unregistered after it.
"""

from __future__ import annotations

import doctest
import importlib
import io
import json
import re
import runpy
import shlex
import shutil
import sys
import textwrap
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = (
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "example_audits").glob("*/README.md")),
)
SHELL = ("bash", "sh", "shell", "console")
PYTHON = ("python", "py")
PARSED = ("toml", "yaml", "yml", "json")
ILLUSTRATION = ("text", "jsonc")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*:?\s*(?P<arg>.*?)\s*-->")
DEMO_CLASSES = ["circle", "square", "triangle", "cross"]

#: The docs' `audit.toml`: the demo dataset and its fixed model, like README's "Audit your own
#: model" (a factory + state_dict; the demo's [model]/[data] from
#: :func:`auditor.demo.configs.demo_config_text`). 8 images and no PDF keep the docs test cheap.
SANDBOX_AUDIT = """\
methods = ["gradcam", "gradcam++", "layercam"]
target = "label"
batch_size = 8
seed = 0
limit = 8
faithfulness_samples = 0
sanity_samples = 8
gallery_per_class = 1
"""
SANDBOX_GATES = """\
max_background_focus = 0.6
require_interpretable = false   # 8 images: the accuracy interval alone cannot show it
"""


def sandbox_config(weights: str) -> str:
    """The sandbox's config text on the demo weights file ``weights`` (relative)."""
    from auditor.demo.configs import demo_config_text

    return demo_config_text(
        weights=weights, audit=SANDBOX_AUDIT, gates=SANDBOX_GATES, report="pdf = false\n"
    )


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    path: str  # repository-relative
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: tuple[tuple[str, str], ...]  # (kind, argument) of the comments before it

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def marker(self, kind: str) -> str | None:
        return next((arg for k, arg in self.markers if k == kind), None)


def parse_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``path`` and the problems of its markers (unknown, dangling)."""
    rel = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            indent = fence.group("indent")
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                problems.append(f"{rel}:{i + 1}: unclosed code fence")
                break
            body = (
                textwrap.dedent("\n".join(lines[i + 1 : end]))
                if indent
                else "\n".join(lines[i + 1 : end])
            )
            blocks.append(Block(rel, i + 1, fence.group("lang"), body + "\n", tuple(pending)))
            pending = []
            i = end + 1
            continue
        for m in MARKER.finditer(lines[i]):
            if m.group("kind") not in ("skip", "exit"):
                problems.append(f"{rel}:{i + 1}: unknown docs-test marker {m.group('kind')!r}")
            pending.append((m.group("kind"), m.group("arg")))
        if lines[i].strip() and not MARKER.search(lines[i]) and pending:
            problems.append(f"{rel}:{i + 1}: docs-test marker not followed by a code block")
            pending = []
        i += 1
    if pending:
        problems.append(f"{rel}: docs-test marker at the end of the file")
    return blocks, problems


def _all_blocks() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in DOC_FILES:
        b, p = parse_blocks(path)
        blocks += b
        problems += p
    return blocks, problems


BLOCKS, MARKER_PROBLEMS = _all_blocks()
RUNNABLE = [b for b in BLOCKS if b.lang in SHELL + PYTHON]


def commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: ``\\``-continued lines joined, comments dropped."""
    logical = block.code.replace("\\\n", " ")
    out = []
    for line in logical.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


# --------------------------------------------------------------------------------------------
# the structure of the docs


def test_every_block_has_a_known_language_and_every_marker_belongs_to_one() -> None:
    assert not MARKER_PROBLEMS, "\n".join(MARKER_PROBLEMS)
    known = SHELL + PYTHON + PARSED + ILLUSTRATION
    unlabelled = [f"{b.id} ({b.lang or 'no language'})" for b in BLOCKS if b.lang not in known]
    assert not unlabelled, (
        "code blocks need a language the docs test knows "
        f"({', '.join(known)}): " + ", ".join(unlabelled)
    )
    for b in BLOCKS:
        if b.marker("exit") is not None:
            assert b.lang in SHELL, f"{b.id}: an exit marker on a {b.lang} block"
            assert re.fullmatch(r"\d+", b.marker("exit") or ""), f"{b.id}: exit must be a number"
        if b.marker("skip") is not None:
            assert b.lang in SHELL + PYTHON, f"{b.id}: only commands and snippets are skipped"


def test_skipped_blocks_have_reasons() -> None:
    """Every skip names why the block cannot run here; the list is printed (``-s``)."""
    skipped = [(b.id, b.marker("skip") or "") for b in RUNNABLE if b.marker("skip") is not None]
    for where, reason in skipped:
        assert len(reason.split()) >= 3, f"{where}: a skip needs a reason, got {reason!r}"
    print("\ndocs blocks not run here:")
    for where, reason in skipped:
        print(f"  {where}: {reason}")
    ran = [b for b in RUNNABLE if b.marker("skip") is None]
    n_commands = sum(len(commands(b)) for b in ran if b.lang in SHELL)
    # the extraction itself must not silently lose the docs' commands and snippets
    assert n_commands >= 8 and sum(b.lang in PYTHON for b in ran) >= 6, (n_commands, ran)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"], ids=lambda b: b.id)
def test_toml_block_is_a_valid_config_fragment(block: Block) -> None:
    """Parses, and its sections and ``[audit]``/``[gates]`` keys are the config's own."""
    from auditor.analysis.gate_registry import gate_spec
    from auditor.config import TOP_LEVEL_SECTIONS, AuditSettings

    raw = tomllib.loads(block.code)
    unknown = [s for s in raw if s not in TOP_LEVEL_SECTIONS]
    assert not unknown, f"{block.id}: unknown sections {unknown}"
    audit_keys = {f.name for f in fields(AuditSettings)}
    bad = [k for k in raw.get("audit", {}) if k not in audit_keys]
    bad += [k for k in raw.get("gates", {}) if k != "rule" and gate_spec(k) is None]
    assert not bad, f"{block.id}: keys the config does not know: {bad}"


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.lang in ("yaml", "yml", "json")], ids=lambda b: b.id
)
def test_yaml_and_json_blocks_parse(block: Block) -> None:
    if block.lang == "json":
        json.loads(block.code)
    else:
        import yaml

        assert yaml.safe_load(block.code) is not None


# --------------------------------------------------------------------------------------------
# the sandbox: what the docs assume the reader has


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, demo_inputs: Path) -> Path:
    """The docs' working folder: the session's demo data, ``audit.toml``, ``gates.toml`` and
    ``runs/v1`` (the same 8 images audited with the shortcut model: a paired comparison needs
    both runs on the same images, and the session's 200-image ``demo_run`` would need a second
    200-image audit for ``runs/v2``)."""
    import auditor
    from auditor.demo import weights_path

    root = tmp_path_factory.mktemp("docs-sandbox")
    shutil.copytree(demo_inputs.parent / "data", root / "data")
    for variant in ("fixed", "shortcut"):
        shutil.copyfile(weights_path(variant), root / f"demo-{variant}.pt")
    (root / "audit.toml").write_text(sandbox_config("demo-fixed.pt"), encoding="utf-8")
    v1 = root / "v1.toml"
    v1.write_text(sandbox_config("demo-shortcut.pt"), encoding="utf-8")
    shutil.copyfile(REPO / "example_audits" / "demo" / "compare-gates.toml", root / "gates.toml")
    auditor.run_audit(auditor.load_config(v1), root / "runs" / "v1", progress=False)
    return root


@pytest.fixture(scope="module")
def reader_objects(sandbox: Path) -> dict[str, Any]:
    """The objects the Python snippets' prose says the reader brings."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    from auditor.data import dataset_from_torch

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    rows = (sandbox / "data" / "manifest.csv").read_text(encoding="utf-8").splitlines()[1:9]
    items = []
    for row in rows:
        image, label, mask = row.split(",")
        pil = Image.open(sandbox / "data" / image).convert("RGB")
        m = np.asarray(Image.open(sandbox / "data" / mask).convert("L")) > 127
        items.append((pil, DEMO_CLASSES.index(label), m))
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    images = torch.stack(
        [
            (torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 - mean[:, None, None])
            / std[:, None, None]
            for p, _, _ in items[:4]
        ]
    )
    labels = torch.tensor([lab for _, lab, _ in items[:4]])
    masks = torch.from_numpy(np.stack([m for _, _, m in items[:4]]))
    dataset = dataset_from_torch(
        items[:4], classes=DEMO_CLASSES, input_size=64, mean=[0.5] * 3, std=[0.25] * 3
    )
    my_dataset = [(p, i % 2) for i, (p, _, _) in enumerate(items[:4])]
    return {
        "model": model,
        "images": images,
        "labels": labels,
        "targets": labels,
        "masks": masks,
        "loader": [(images, labels)],
        "dataset": dataset,
        "my_dataset": my_dataset,
    }


def _run_command(argv: list[str]) -> tuple[int, str]:
    """Run one documented command in-process; (exit code, its stdout + stderr)."""
    from auditor.cli import main

    out = io.StringIO()
    saved_argv = sys.argv
    try:
        with redirect_stdout(out), redirect_stderr(out):
            if argv[0] == "auditor":
                code: Any = main(argv[1:])
            elif argv[0] in ("python", "python3") and len(argv) > 2 and argv[1] == "-m":
                sys.argv = [argv[2], *argv[3:]]
                runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
                code = 0
            else:
                raise AssertionError(
                    f"`{shlex.join(argv)}` cannot run in the docs test: put "
                    "`<!-- docs-test: skip: REASON -->` before its block"
                )
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = saved_argv
    if code is None:
        code = 0
    return (code if isinstance(code, int) else 1), out.getvalue()


@pytest.fixture()
def in_sandbox(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("CI", "1")
    yield sandbox


def _registered() -> tuple[set[str], set[str]]:
    from auditor.analysis.findings import FINDING_RULES
    from auditor.metrics.registry import METRICS

    return set(METRICS), set(FINDING_RULES)


def _unregister(before: tuple[set[str], set[str]]) -> None:
    from auditor.analysis.findings.registry import unregister_rule
    from auditor.metrics.registry import unregister

    metrics, rules = _registered()
    for name in metrics - before[0]:
        unregister(name)
    for name in rules - before[1]:
        unregister_rule(name)


# --------------------------------------------------------------------------------------------
# every command and snippet, in document order


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_doc_block_runs(block: Block, in_sandbox: Path, reader_objects: dict[str, Any]) -> None:
    reason = block.marker("skip")
    if reason is not None:
        pytest.skip(f"{block.id}: {reason}")
    if block.lang in SHELL:
        expected = int(block.marker("exit") or 0)
        for argv in commands(block):
            code, output = _run_command(argv)
            assert code == expected, (
                f"{block.id}: `{shlex.join(argv)}` exited {code}, the docs say {expected}\n"
                + output[-3000:]
            )
        return
    namespace: dict[str, Any] = {"__name__": "__docs__", **reader_objects}
    before = _registered()
    try:
        exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102 - the docs' code
    finally:
        _unregister(before)


# --------------------------------------------------------------------------------------------
# docstring examples


def _doctest_modules() -> list[str]:
    names = []
    for path in sorted((REPO / "auditor").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            names.append(".".join(parts))
    return names


DOCTEST_MODULES = _doctest_modules()


def test_docstring_examples_are_found() -> None:
    assert len(DOCTEST_MODULES) >= 4, DOCTEST_MODULES


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_docstring_examples_run(module: str, reader_objects: dict[str, Any]) -> None:
    """``>>>`` examples, with the reader's ``model``/``images``/``labels`` for those that
    take them; a ``+SKIP`` directive is not allowed (make the example run instead)."""
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mod, extraglobs=reader_objects) if t.examples]
    assert tests, f"{module}: no docstring example found"
    for test in tests:
        for example in test.examples:
            assert doctest.SKIP not in example.options, (
                f"{test.name}: a skipped docstring example: make it run"
            )
        out = io.StringIO()
        result = runner.run(test, out=out.write)
        assert result.failed == 0, out.getvalue()
