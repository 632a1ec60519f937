"""The import rules: the gateway never touches torch or the worker; the worker never touches FastAPI; the
webhook dispatcher touches neither; the shared package touches no process. Checked twice: statically over
every import statement (lazy ones included) and dynamically, by importing each side in a fresh interpreter.
The import-linter contracts (pyproject.toml) add the layers inside each package."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TORCH = {"torch", "diffusers", "transformers", "compel"}
WEB = {"fastapi", "starlette", "uvicorn", "sse_starlette"}

FORBIDDEN = {
    "app": {"worker", "dispatcher"} | TORCH,
    "worker": {"app", "dispatcher"} | WEB,
    "dispatcher": {"app", "worker"} | TORCH | WEB,
    "sdserve": {"app", "worker", "dispatcher"} | TORCH | WEB,
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


def test_every_package_has_its_rules() -> None:
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench", "tools", "train"}
    assert packages == set(FORBIDDEN)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import_statements(package: str) -> None:
    sources = list((ROOT / package).rglob("*.py"))
    assert sources
    offenders = {str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package]) for path in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


FRESH_IMPORTS = {
    "app.main": ["torch", "diffusers", "transformers", "worker", "dispatcher"],
    "worker.main": ["fastapi", "starlette", "uvicorn", "app", "dispatcher"],
    "dispatcher.main": ["torch", "diffusers", "fastapi", "starlette", "app", "worker"],
    "sdserve.cli.main": ["torch", "diffusers", "fastapi", "starlette", "app", "worker", "dispatcher"],
}
"""Module → what importing it in a fresh interpreter must not load."""


@pytest.fixture(scope="module")
def fresh_imports() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """One fresh interpreter per module, all started at once (importing torch is most of their time)."""
    procs = {}
    for module, absent in FRESH_IMPORTS.items():
        code = f"import sys, {module}; print(','.join(m for m in {absent!r} if m in sys.modules))"
        procs[module] = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("module", sorted(FRESH_IMPORTS))
def test_importing_one_side_does_not_load_the_other(
    module: str, fresh_imports: dict[str, subprocess.Popen[str]]
) -> None:
    out, err = fresh_imports[module].communicate(timeout=120)
    assert fresh_imports[module].returncode == 0, err
    assert out.strip() == "", f"importing {module} loaded {out.strip()}"


def test_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
