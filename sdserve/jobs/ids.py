"""Job ids: UUIDv7 (RFC 9562), time-ordered, so ids sort by creation, with 74 random bits."""

from __future__ import annotations

import uuid

from uuid6 import uuid7


def new_job_id() -> str:
    """A fresh job id."""
    return str(uuid7())


def is_job_id(value: str) -> bool:
    """Whether a string has the shape of a job id (a cheap check before touching Redis)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
