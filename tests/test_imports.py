"""What the package imports at run time, read from its source: every import statement, those inside
functions included (they run too, later), and none under ``if TYPE_CHECKING:`` (they never run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import example_app
import flask_musiccallback

PACKAGE = Path(flask_musiccallback.__file__).parent
EXAMPLE = Path(example_app.__file__).parent

#: The one module that may load pytest and the testing kit: the plugin, which only pytest loads.
PLUGIN = "flask_musiccallback.pytest_plugin"
TEST_KIT = {"flask_musiccallback.testing", PLUGIN}
#: The store contract's tests, which a store author's own test suite imports: pytest, never the kit.
CONTRACT = "flask_musiccallback.contract"


def for_tests_only(module: str) -> bool:
    return module.split(".")[0] in ("pytest", "_pytest") or module in TEST_KIT


def modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by its dotted name."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child):
            for other in child.orelse:
                yield other
                yield from _run_time_nodes(other)
            continue
        yield child
        yield from _run_time_nodes(child)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports when it runs, absolute; ``from a import b`` is ``a.b`` when
    ``b`` is a module of ``known``, else ``a``. The parent packages Python imports on the way are
    left out: every module would otherwise be in a cycle with ``__init__``, which re-exports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    found.discard(name)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which module of ``package`` imports which other, at run time."""
    known = modules(package)
    return {name: imports(name, path, known) & set(known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that reaches itself through imports, with the path it takes."""
    found = []
    for start in sorted(graph):
        paths = [[start]]
        seen = set()
        while paths:
            path = paths.pop()
            for target in sorted(graph[path[-1]]):
                if target == start:
                    found.append([*path, start])
                elif target not in seen:
                    seen.add(target)
                    paths.append([*path, target])
    return found


def test_only_the_plugin_imports_pytest_or_the_test_kit() -> None:
    """Production code (the CLI's ``simulate``, the example app) must not load pytest where it
    happens to be installed, nor the test kit; the kit's helpers need no pytest either."""
    offenders = {}
    for package in (PACKAGE, EXAMPLE):
        known = modules(package)
        for name, path in known.items():
            wrong = sorted(filter(for_tests_only, imports(name, path, known)))
            if name == CONTRACT:
                wrong = [module for module in wrong if module in TEST_KIT]
            if wrong and name != PLUGIN:
                offenders[name] = wrong

    assert offenders == {}


def test_the_package_has_no_import_cycle() -> None:
    """A cycle makes a module's behaviour depend on which of the two was imported first."""
    assert cycles(import_graph(PACKAGE)) == []


SIMULATE = """
import sys
from flask import Flask
from flask_musiccallback import MusicCallback

app = Flask("host")
app.config["MUSICCALLBACK_TOKEN"] = "token"
MusicCallback(app)
result = app.test_cli_runner().invoke(args=["musiccallback", "simulate"])
assert result.exit_code == 0, result.output
print("\\n".join(sys.modules))
"""


def test_simulate_in_a_process_loads_neither_pytest_nor_the_test_kit(tmp_path: Path) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", SIMULATE],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(PACKAGE.parent)},
        timeout=60,
    ).stdout.split()

    assert list(filter(for_tests_only, loaded)) == []
