"""The package's shape, as DESIGN.md fixes it: small modules, small classes, no import cycles.

Read from the source with :mod:`ast`, so a breach names the file. Imports under
``if TYPE_CHECKING:`` do not count: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent / "src" / "anydgram"
_MODULE_LIMIT = 500
_CLASS_LIMIT = 400


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in sorted(_PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports at run time, at module level or in a function.

    A function-level import still makes a cycle (it only hides it until the call), so it
    counts; an ``if TYPE_CHECKING:`` block never runs and does not.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for item in ast.walk(node):
            if isinstance(item, ast.ImportFrom):
                if item.level:
                    base = package.rsplit(".", item.level - 1)[0] if item.level > 1 else package
                    target = f"{base}.{item.module}" if item.module else base
                else:
                    target = item.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in item.names]
                found.update(c for c in candidates if c in known and c != name)
            elif isinstance(item, ast.Import):
                found.update(a.name for a in item.names if a.name in known and a.name != name)
    return found


def test_no_module_is_over_the_limit() -> None:
    too_long = {
        str(path.relative_to(_PACKAGE)): lines
        for path in _modules().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > _MODULE_LIMIT
    }
    assert not too_long, f"modules over {_MODULE_LIMIT} lines: {too_long}"


def test_no_class_is_over_the_limit() -> None:
    too_long: dict[str, int] = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > _CLASS_LIMIT:
                    too_long[f"{path.relative_to(_PACKAGE)}:{node.name}"] = size
    assert not too_long, f"classes over {_CLASS_LIMIT} lines: {too_long}"


def test_no_import_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _runtime_imports(name, path, known) for name, path in modules.items()}
    # The package's __init__ re-exports its modules: importing one of them first imports the
    # package anyway, so edges into "anydgram" itself are not cycles of the modules' making.
    for name in graph:
        graph[name].discard("anydgram")
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def test_production_code_never_imports_the_test_helpers() -> None:
    modules = _modules()
    offenders = sorted(
        module
        for module, path in modules.items()
        if not module.startswith("anydgram.testing")
        and "anydgram.testing" in _runtime_imports(module, path, set(modules))
    )
    assert not offenders, f"modules importing anydgram.testing: {offenders}"
