"""The import rules: the gateway never touches torch or the worker; the worker never touches FastAPI;
the contract touches neither. Checked twice: statically over every import statement (lazy ones
included) and dynamically, by importing each side in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "app": {"worker", "torch", "diffusers", "transformers"},
    "worker": {"app", "fastapi", "starlette", "uvicorn"},
    "sdserve": {"app", "worker", "fastapi", "starlette", "torch", "diffusers", "transformers"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import_statements(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("app.main", ["torch", "diffusers", "transformers", "worker"]),
        ("worker.main", ["fastapi", "starlette", "uvicorn", "app"]),
        ("sdserve.queue", ["torch", "fastapi", "app", "worker"]),
        ("sdserve.cli", ["torch", "fastapi", "app", "worker"]),
    ],
)
def test_importing_one_side_does_not_load_the_other(module: str, absent: list[str]) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
