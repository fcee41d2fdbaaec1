"""The package's shape, checked from its source (AST): no import cycles inside
vggtl, no command module importing another, no function over 60 lines outside
a short allow-list of data tables."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "vggtl"
COMMANDS = {"vggtl.extract", "vggtl.train", "vggtl.predict", "vggtl.classify", "vggtl.summary", "vggtl.weights", "vggtl.runs"}
MAX_FUNCTION_LINES = 60
# Functions that are one data literal (a table), not logic.
LONG_ALLOWED: set[str] = set()


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_modules(name: str, path: Path, known) -> set[str]:
    """vggtl modules ``name`` imports anywhere in its body (functions too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # "from vggtl.backbones import build" names a module; "from vggtl.data import SPLITS" a name in one.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "vggtl":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported_modules(name, path, mods) for name, path in mods.items()}


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "vggtl.features.store" in graph["vggtl.features.pipeline"]
    assert COMMANDS <= set(graph)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_command_imports_another_command():
    graph = import_graph()
    offenders = {name: sorted(graph[name] & COMMANDS) for name in COMMANDS if graph[name] & COMMANDS}
    assert not offenders, f"commands importing commands: {offenders}"


def test_library_never_imports_a_command():
    graph = import_graph()
    library = set(graph) - COMMANDS - {"vggtl.cli"}
    offenders = {name: sorted(graph[name] & COMMANDS) for name in library if graph[name] & COMMANDS}
    assert not offenders, f"library modules importing commands: {offenders}"


def function_lines(node) -> int:
    """Lines of a function from its ``def`` to its end, the docstring not counted
    (argument docs in the Keras style are wanted, not a sign of a long function)."""
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str)
    doc_lines = body[0].end_lineno - body[0].lineno + 1 if has_doc and len(body) > 1 else 0
    return node.end_lineno - node.lineno + 1 - doc_lines


def long_functions():
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = function_lines(node)
                where = f"{name}.{node.name}"
                if length > MAX_FUNCTION_LINES and where not in LONG_ALLOWED:
                    yield f"{where} ({length} lines, {path.relative_to(REPO)}:{node.lineno})"


def test_functions_are_short():
    offenders = list(long_functions())
    assert not offenders, "functions over 60 lines: " + "; ".join(offenders)


def test_the_checks_can_fail(tmp_path):
    """The cycle finder and the line counter see what they must."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    code = 'def f():\n    """Doc.\n\n    More.\n    """\n' + "    x = 1\n" * 70
    assert function_lines(ast.parse(code).body[0]) == 71
