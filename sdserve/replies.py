"""Redis replies: as text (RQ needs a binary connection, so replies may be bytes or str), and the errors that
mean "not now" rather than "no".
"""

from __future__ import annotations

from typing import Any

import redis.exceptions

UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
)
"""Redis cannot take the command now (restarting, unreachable, or over its maxmemory with noeviction):
worth retrying later, unlike any other error reply."""


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
