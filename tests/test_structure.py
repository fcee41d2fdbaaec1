"""The package's shape, checked from its source (AST): no import cycles inside
vggtl, no command module importing another, no function over 60 lines or with
more than 7 parameters, and every test that selects an optional extra marked
so that it skips, naming the extra, on the core install."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO
from vggtl import cli

PACKAGE = REPO / "vggtl"
COMMANDS = {f"vggtl.{name}" for name in cli.COMMANDS}
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 7
MAX_CONFIG_MODULE_LINES = 300
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
    """Lines of a function from its ``def`` to its end, docstring included."""
    return node.end_lineno - node.lineno + 1


def parameter_count(node) -> int:
    """Parameters of a function, ``self`` and ``cls`` not counted (``*args`` and ``**kwargs`` are)."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([name for name in names if name not in ("self", "cls")])


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


def test_functions_take_few_parameters():
    offenders = [
        f"{name}.{node.name} ({parameter_count(node)}, {path.relative_to(REPO)}:{node.lineno})"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS
    ]
    assert not offenders, f"functions with more than {MAX_PARAMETERS} parameters: " + "; ".join(offenders)


def test_config_modules_are_small():
    sizes = {path.name: len(path.read_text().splitlines()) for path in (PACKAGE / "config").glob("*.py")}
    assert {"schema.py", "validate.py", "load.py"} <= set(sizes)
    assert all(n <= MAX_CONFIG_MODULE_LINES for n in sizes.values()), sizes


def test_the_checks_can_fail(tmp_path):
    """The cycle finder and the line counter see what they must."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    code = 'def f():\n    """Doc.\n\n    More.\n    """\n' + "    x = 1\n" * 70
    assert function_lines(ast.parse(code).body[0]) == 75  # def + 4 docstring lines + 70
    assert parameter_count(ast.parse("def f(self, a, b=1, *c, d, **e): pass").body[0]) == 5


# --------------------------------------------------------------------------- tests of optional extras

# A string constant that selects a path only an extra provides: a --format or
# extract.runtime value, or a --set override choosing one.
EXTRA_VALUES = {"onnx", "openvino", "onnxruntime", "ray"}
EXTRA_OVERRIDES = ("extract.engine=ray", "extract.runtime=openvino", "extract.runtime=onnxruntime")


def _selects_an_extra(node) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            if sub.value in EXTRA_VALUES or sub.value.startswith(EXTRA_OVERRIDES):
                return True
    return False


def _is_extra_mark(node) -> bool:
    """``needs_extra(...)``, ``needs_ray`` or ``pytest.mark.extra(...)``."""
    text = ast.unparse(node)
    return text.startswith(("needs_extra(", "needs_ray", "pytest.mark.extra(")) or "needs_extra(" in text and text.startswith("[")


def _simulates_a_missing_extra(func) -> bool:
    """Tests of the missing-extra message hide the module; they need no extra."""
    text = ast.unparse(func)
    return "find_spec" in text or "sys.modules" in text


def _unmarked_params(decorator) -> bool:
    """A parametrize whose cases select an extra without carrying the mark."""
    if not (isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("parametrize")):
        return False
    cases = decorator.args[1] if len(decorator.args) > 1 else None
    if isinstance(cases, ast.Name):
        return False  # a module-level list: checked where it is defined (see below)
    for case in getattr(cases, "elts", []):
        marked = isinstance(case, ast.Call) and any(k.arg == "marks" and _is_extra_mark(k.value) for k in case.keywords)
        if not marked and _selects_an_extra(case):
            return True
    return False


def unmarked_extra_tests(tree: ast.Module, where: str):
    """Test functions in ``tree`` that select an optional extra's path but would
    not skip, naming the extra, when it is missing."""
    module_marked = any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets) and _is_extra_mark(n.value)
        for n in tree.body
    )
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")) or module_marked:
            continue
        if any(_is_extra_mark(d) for d in node.decorator_list) or _simulates_a_missing_extra(node):
            continue
        if any(_unmarked_params(d) for d in node.decorator_list):
            yield f"{where}::{node.name} (a parametrized case)"
            continue
        # cases marked one by one: the body may branch on them
        cases_marked = any("needs_extra(" in ast.unparse(d) for d in node.decorator_list)
        if not cases_marked and any(_selects_an_extra(stmt) for stmt in node.body) and "require_extra(" not in ast.unparse(node):
            yield f"{where}::{node.name}"


def test_every_test_of_an_optional_path_is_marked_with_its_extra():
    offenders = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        offenders += unmarked_extra_tests(ast.parse(path.read_text()), path.name)
    assert not offenders, "tests that select an optional extra without needs_extra(...): " + "; ".join(offenders)


def test_the_extra_check_can_fail():
    code = """
@pytest.mark.parametrize("fmt", ["savedmodel", "onnx"])
def test_a(fmt): pass

def test_b(): export.main(["--format", "openvino"])

@needs_extra("onnx")
def test_c(): export.main(["--format", "onnx"])

@pytest.mark.parametrize("fmt", ["savedmodel", pytest.param("onnx", marks=needs_extra("onnx"))])
def test_d(fmt): pass

def test_e(monkeypatch): monkeypatch.setitem(sys.modules, "onnxruntime", None); export.main(["--format", "onnx"])
"""
    assert list(unmarked_extra_tests(ast.parse(code), "t.py")) == ["t.py::test_a (a parametrized case)", "t.py::test_b"]
