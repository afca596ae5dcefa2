"""The packages import one way: flows -> tasks -> eto_core -> environments, and
flows -> infra -> eto_core (README's layout). Checked on the source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "environments": {"eto_core", "tasks", "flows", "infra"},
    "eto_core": {"tasks", "flows", "infra"},
    "tasks": {"flows", "infra"},
    "infra": {"flows", "tasks"},
    "flows": set(),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_a_reversed_import_is_found(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from flows.cli import main\n    import infra.lifecycle\n")
    assert imported_packages(module) == {"flows", "infra"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    offending = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in offending.items() if v} == {}
