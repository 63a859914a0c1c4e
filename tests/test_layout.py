"""The package layout keeps its rules (DESIGN.md section 3, issue 21), checked statically (ast):

* no import cycle among ``auditor`` modules (module-level imports; ``TYPE_CHECKING`` blocks and
  imports inside functions are not import-time edges);
* no private name (``_x``) imported from another room of the package (``auditor.audit``,
  ``auditor.analysis``, ...; a top-level module such as ``auditor.config`` is a room of its
  own);
* functions over 80 lines: listed (printed), and only those of :data:`LONG_FUNCTIONS` may be
  that long, never longer than listed there: the list may only shrink;
* docs/architecture.md's module map names every module of ``auditor/``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "auditor"
MAX_LINES = 80

#: Functions over MAX_LINES lines when this test was written, with their length then. Split one
#: and remove it here; a new long function, or a listed one that grows, fails the test.
LONG_FUNCTIONS: dict[str, int] = {
    "auditor.metrics.faithfulness:deletion_insertion": 98,
    "auditor.report.compare:focus_comparison_figure": 111,
    "auditor.report.compare:build_compare_context": 137,
    "auditor.audit.runner:_audit_locked": 193,
    "auditor.compare.streamed:wilcoxon_stream": 101,
    "auditor.compare.streamed:stream_compare": 125,
    "auditor.data.config:parse_data_section": 146,
    "auditor.data.coco:read_coco": 87,
    "auditor.cam.engine:CamEngine.__init__": 126,
    "auditor.cam.engine:CamEngine._compute_maps": 173,
    "auditor.analysis.spray.clusters:spray_clusters": 244,
    "auditor.analysis.spray.subgroups:analyse_class": 138,
    # added by the round-8 merges of issues 22-26 (main 6cbea81): split them next
    "auditor.audit.detection_finish:finish_detection": 102,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text("utf-8"), filename=str(modules()[name]))


def _source(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` reads (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if modules()[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_time_statements(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported (not functions, not TYPE_CHECKING)."""
    for st in stmts:
        if isinstance(st, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(st.test):
                yield from _import_time_statements(st.body)
            yield from _import_time_statements(st.orelse)
        elif isinstance(st, ast.Try):
            for block in (st.body, st.orelse, st.finalbody, *(h.body for h in st.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(st, ast.Import | ast.ImportFrom):
            yield st


def import_edges(module: str) -> set[str]:
    """The auditor modules ``module`` imports when it is imported."""
    mods = modules()
    out: set[str] = set()
    for st in _import_time_statements(tree(module).body):
        if isinstance(st, ast.Import):
            out.update(a.name for a in st.names if a.name in mods)
            continue
        src = _source(module, st)
        if src not in mods:
            continue
        subs = {f"{src}.{a.name}" for a in st.names if f"{src}.{a.name}" in mods}
        out.update(subs)
        if len(subs) < len(st.names):  # names defined in `src` itself (not submodules)
            out.add(src)
    out.discard(module)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def room(module: str) -> str:
    """``auditor.analysis.findings.run`` → ``auditor.analysis``; a top-level module (``auditor.
    config``) is a room of its own; ``auditor`` itself is the package's room."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    if len(parts) > 2 or modules()[module].name == "__init__.py":
        return ".".join(parts[:2])
    return module


def long_functions() -> dict[str, int]:
    """``{"module:Qual.name": lines}`` of every function over MAX_LINES lines."""
    out: dict[str, int] = {}

    def walk(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                if lines > MAX_LINES:
                    out[f"{module}:{prefix}{child.name}"] = lines
                walk(child, module, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, module, f"{prefix}{child.name}.")

    for name in modules():
        walk(tree(name), name, "")
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    graph = {m: import_edges(m) for m in modules()}
    assert graph["auditor.analysis.finalize"], "the import graph is empty: parser broken?"
    assert find_cycles(graph) == []


def test_no_private_name_imported_across_rooms() -> None:
    found = []
    for module in modules():
        for node in ast.walk(tree(module)):
            if not isinstance(node, ast.ImportFrom):
                continue
            src = _source(module, node)
            if src not in modules() or room(src) == room(module):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module} imports {alias.name} from {src}")
    assert found == []


def test_long_functions_only_shrink() -> None:
    now = long_functions()
    for name, lines in sorted(now.items(), key=lambda kv: -kv[1]):
        print(f"{lines:4d}  {name}")  # the listing (pytest -s shows it)
    new = {k: v for k, v in now.items() if k not in LONG_FUNCTIONS}
    grown = {k: (LONG_FUNCTIONS[k], v) for k, v in now.items() if v > LONG_FUNCTIONS.get(k, v)}
    shrunk = sorted(k for k in LONG_FUNCTIONS if k not in now)
    assert new == {}, f"new functions over {MAX_LINES} lines (split them): {new}"
    assert grown == {}, f"listed long functions grew (listed, now): {grown}"
    assert shrunk == [], f"now at most {MAX_LINES} lines or gone: remove from LONG_FUNCTIONS"


def test_architecture_module_map_names_every_module() -> None:
    """Every module file appears in docs/architecture.md: by its path under ``auditor/``
    (``audit/runner.py``), or by its name on a line that names its folder (``data/`` ...
    ``api.py``); a package by its folder (``analysis/findings/``)."""
    doc = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    lines = doc.splitlines()
    missing = []
    for path in modules().values():
        rel = path.relative_to(PKG).as_posix()
        if path.name == "__init__.py":
            if path.parent == PKG:
                continue
            rel = path.parent.relative_to(PKG).as_posix() + "/"
        if f"`{rel}`" in doc or f"`auditor/{rel}`" in doc:
            continue
        folder = path.parent.relative_to(PKG).as_posix() + "/"
        if any(f"`{folder}`" in ln and f"`{path.name}`" in ln for ln in lines):
            continue
        missing.append(rel)
    assert missing == [], f"modules not named in docs/architecture.md's module map: {missing}"
