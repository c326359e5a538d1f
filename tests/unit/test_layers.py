"""The layout's rules, checked on the code itself (README "Layout").

- The layer contracts in pyproject.toml ([tool.importlinter]): recgen.core imports
  nothing of server, worker, export, gRPC or torch; the gateway and the workers
  never reach the export; nothing outside export imports torch.
- No import cycles among the project's modules (function-level imports count).
- README.md's Layout block is what tools/readme_layout.py generates from the tree,
  and every module path README.md and docs/*.md name exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

from tools import readme_layout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("recgen", "server", "worker", "export", "tools")


def test_layer_contracts_are_kept():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in PACKAGES)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(edges[start]))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in [("recgen.a", "recgen.b"), ("recgen.b", "recgen.c"), ("recgen.c", "recgen.a")]:
        graph.add_import(importer=a, imported=b)
    graph.add_import(importer="recgen.c", imported="recgen.d")
    assert _cycles(graph) == [["recgen.a", "recgen.b", "recgen.c"]]


def test_core_imports_no_generated_stubs():
    """grimp does not see the generated stub folders (namespace packages); read core's imports."""
    banned = ("recgen.v1", "recgen.worker", "grpc", "google.protobuf", "torch", "server", "worker", "export")
    found = []
    for path in sorted((ROOT / "recgen" / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned or n.startswith(banned)]
    assert found == []


def test_readme_layout_is_generated_from_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_layout.rewrite(readme) == readme, "README Layout is stale: run `make readme-layout`"


def test_readme_and_docs_name_only_modules_that_exist():
    pattern = re.compile(r"(?<![\w./-])((?:recgen|server|worker|export|tools|tests)/[\w/]+\.py)\b")
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        paths = set(pattern.findall(doc.read_text(encoding="utf-8")))
        if doc.name == "README.md":
            assert paths, "README names no module paths: the pattern is wrong"
        assert sorted(p for p in paths if not (ROOT / p).is_file()) == [], doc.name
