"""The house: imports run down the layers only. Every edgekd import is counted (function-level ones too), per
sub-package; the package graph must have no cycle, and the arrows the layering forbids must be absent."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
# (importer, imported): orchestration and the layers above call down, never the other way
FORBIDDEN = [("engine", "export"), ("export", "train"), ("export", "evaluate"), ("dashboard", "stream"),
             ("runtime", "serve"), ("sinks", "stream"), ("sinks", "dashboard"), ("runtime", "stream"), ("stream", "dashboard"),
             ("export", "pipeline"), ("engine", "pipeline")]


def _unit(path: Path) -> str:
    """The sub-package a file belongs to, or the module's own name for edgekd/*.py."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        importer = _unit(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgekd":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("edgekd.")]
            graph.setdefault(importer, set()).update(n for n in names if n != importer and n != "__version__")
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_between_packages_or_modules():
    assert cycles(package_graph()) == []


def test_no_import_runs_back_up():
    graph = package_graph()
    assert [(a, b) for a, b in FORBIDDEN if b in graph.get(a, set())] == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
