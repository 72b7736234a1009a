"""No import cycles among the product's modules (issue 14 ended ``inbound ⇄ dmarc_check``).

Reads the source with ast, like test_layers.py: every import counts, also those under
``if TYPE_CHECKING:`` and inside functions (a cycle there is one edit away from a real one).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = {"mattermail": "mattermail", "milter": "mattermail.milter", "router": "mattermail.router",
           "ctl": "mattermail.ctl"}


def _graph() -> dict[str, set[str]]:
    paths = {}
    for folder, package in PRODUCT.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            paths[".".join([package, *rel.parts]).removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                    base = ".".join([*parts, base] if base else parts)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                # the module itself, or the package whose attribute it names (a submodule counts as itself)
                target = name if name in paths else name.rpartition(".")[0] if name.rpartition(".")[0] in paths else ""
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_milter_modules_import_no_cycle() -> None:
    graph = _graph()
    assert "mattermail.milter.verdicts" in graph["mattermail.milter.dmarc_check"]
    assert "mattermail.milter.inbound" not in graph["mattermail.milter.dmarc_check"]
    cycles = [c for c in _cycles(graph) if any(m.startswith("mattermail.milter") for m in c)]
    assert cycles == [], cycles


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
