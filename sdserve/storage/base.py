"""Object storage for job inputs, outputs and manifests: the one interface, and where each object lives.

Keys look like ``outputs/<job>/<attempt>/0.png``; they are validated so that no key can climb out of the
store. Every run of a job writes its outputs under its own attempt (``outputs/<job>/<attempt>/``): they
become the job's outputs only in the step that marks it succeeded, and a superseded run deletes only its
own. Inputs a job was given inline live under ``inputs/<job>/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from sdserve.contract.problems import InvalidRequest

KEY_PATTERN = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_key(key: str) -> str:
    """Refuse keys that could name anything outside the store (``..``, absolute, empty parts)."""
    if len(key) > 512 or not KEY_PATTERN.fullmatch(key) or ".." in key.split("/"):
        raise InvalidRequest(f"invalid object key {key!r}")
    return key


def outputs_prefix(job_id: str) -> str:
    """Everything a job's runs wrote."""
    return check_key(f"outputs/{job_id}")


def attempt_prefix(job_id: str, attempt: int) -> str:
    """What one run of a job writes."""
    return check_key(f"outputs/{job_id}/{attempt}")


def inputs_prefix(job_id: str) -> str:
    """The inputs a job was given inline."""
    return check_key(f"inputs/{job_id}")


def input_key(job_id: str, name: str) -> str:
    """Where one of a job's inline inputs lives."""
    return check_key(f"inputs/{job_id}/{name}")


@dataclass(frozen=True)
class SignedUrl:
    """A URL that works until ``expires_at`` (Unix seconds)."""

    url: str
    expires_at: int


class ObjectStore(Protocol):
    """What the gateway and the worker need from object storage.

    Failures are domain errors: ``NotFound`` for an absent object, ``StorageFull`` when the store has no room,
    ``Unavailable`` when it cannot be reached or refuses; a failed write leaves nothing behind.
    """

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write an object; writing the same key again replaces it atomically."""

    def get(self, key: str) -> bytes:
        """Read an object; NotFound if absent."""

    def exists(self, key: str) -> bool:
        """Whether an object exists."""

    def delete(self, key: str) -> bool:
        """Delete one object; whether it existed."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many were deleted."""

    def signed_url(self, key: str, *, expires_in: int, base_url: str) -> SignedUrl:
        """A URL a client can GET without credentials until it expires."""

    def check(self) -> None:
        """Raise Unavailable (or StorageFull) if the store cannot be written."""
