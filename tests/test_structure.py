"""The library's shape, checked on its source (AST): small modules and functions, imports at module
level only, and no private name used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ssfeat

PACKAGE = Path(ssfeat.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_module_and_function_sizes(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)}: {lines} lines (at most {MAX_MODULE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{_name(path)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def _internal(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == "ssfeat"


@pytest.mark.parametrize("path", SOURCES, ids=_name)
def test_imports(path):
    """ssfeat modules are imported at module level (no import inside a function to dodge a cycle:
    the layers of pyproject.toml's import-linter contracts point one way), and no private
    ``_name`` is imported from another module."""
    tree = _tree(path)
    top = set(tree.body)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not _internal(node):
            continue
        if node not in top:
            problems.append(f"line {node.lineno}: import inside a function or class")
        private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        if private:
            problems.append(f"line {node.lineno}: private names imported: {', '.join(private)}")
    assert not problems, f"{_name(path)}: " + "; ".join(problems)
