"""Redis replies as text: RQ needs a binary connection, so replies may be bytes or str."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
