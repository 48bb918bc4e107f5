"""No module imports another module's private names: what is shared is named as shared;
and no package imports a layer above its own (import-linter's contracts in pyproject)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("core", "broker", "worker", "api", "client", "tui", "serve", "bench", "tests")


def private_imports(source: str) -> list[str]:
    """``module:name`` for each private name a ``from xb... import`` takes."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xb."):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.module}:{alias.name}")
    return found


def test_the_check_sees_a_private_import() -> None:
    source = "from xb.client.cli import _call, console\ndef f():\n    from xb.a import _b\n"
    assert private_imports(source) == ["xb.client.cli:_call", "xb.a:_b"]


def test_no_private_name_is_imported_across_modules() -> None:
    offenders = {
        str(path.relative_to(ROOT)): names
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (names := private_imports(path.read_text()))
    }
    assert not offenders, offenders


def test_the_layer_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
