"""The distribution: the gateway installs without torch; the worker brings diffusers."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import sdserve.cli.main

ROOT = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requirements}


def test_gateway_extra_needs_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _names(project["dependencies"])
    gateway = _names(project["optional-dependencies"]["gateway"])
    worker = _names(project["optional-dependencies"]["worker"])
    assert not ({"torch", "diffusers", "transformers"} & (base | gateway))
    assert {"fastapi", "uvicorn"} <= gateway
    assert {"torch", "diffusers", "transformers", "safetensors"} <= worker
    assert "fastapi" not in worker
    assert project["scripts"]["sdserve"] == "sdserve.cli.main:main"


def test_the_console_script_names_a_function() -> None:
    """`sdserve` runs ``module:attr``: the attribute must be the command's function, not a module."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["sdserve"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert inspect.isfunction(entry)
    assert entry is sdserve.cli.main.main
