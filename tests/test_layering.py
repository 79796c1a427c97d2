"""The package's import picture, read from its source: no import cycles, and the early steps
of the pipeline (data, encoding, model) never import the front ends.

Every ``import`` counts, at module level or inside a function (a function-level import is
a cycle that only waits for its first call); imports under ``if TYPE_CHECKING:`` do not run
and do not count. Run by hand: ``python tests/test_layering.py`` prints the graph's cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "personachat"
EARLY_STEPS = ("personachat.data", "personachat.encoding", "personachat.model")
FRONT_ENDS = ("personachat.serve", "personachat.cli", "personachat.telegram")

# Known offenders, each to be fixed where it lives and then removed from here (none now).
KNOWN_CYCLES: list[list[str]] = []
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of the imports under ``if TYPE_CHECKING:``."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for inner in ast.walk(child):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        lines.add(inner.lineno)
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from a import b`` counts as ``a.b`` when
    that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = pop_component(stack, on_stack, node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def pop_component(stack: list[str], on_stack: set[str], root: str) -> list[str]:
    """The modules on ``stack`` down to ``root``, taken off it: one component."""
    component = []
    while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == root:
            return component


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs where data / encoding / model imports a front end."""
    return {
        (name, target)
        for name, targets in graph.items()
        if name.startswith(EARLY_STEPS)
        for target in targets
        if target.startswith(FRONT_ENDS)
    }


def test_the_package_has_no_import_cycle():
    assert [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES] == []


def test_data_encoding_and_model_never_import_a_front_end():
    assert upward_imports(import_graph()) - KNOWN_UPWARD == set()


def test_the_scan_sees_a_cycle_and_an_upward_import():
    graph = {
        "personachat.model.a": {"personachat.model.b"},
        "personachat.model.b": {"personachat.model.a", "personachat.serve.app"},
        "personachat.serve.app": set(),
    }
    assert cycles(graph) == [["personachat.model.a", "personachat.model.b"]]
    assert upward_imports(graph) == {("personachat.model.b", "personachat.serve.app")}


def test_a_function_level_import_counts():
    graph = import_graph()
    # generate_replies imports the quantizer only when asked for it, inside a function
    assert "personachat.generation.quantize" in graph["personachat.generation.precision"]


if __name__ == "__main__":
    for component in cycles(import_graph()):
        print(" <-> ".join(component), "(known)" if component in KNOWN_CYCLES else "")
    for pair in sorted(upward_imports(import_graph())):
        print(" -> ".join(pair), "(known)" if pair in KNOWN_UPWARD else "")
