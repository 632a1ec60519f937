"""Idempotency-Key: the same key with the same body returns the same job, however many retries race.

A key (hashed, and scoped to the caller) is claimed with ``SET NX`` before the job is created; the
winner creates the job, and the step that stores and queues it also records its id under the key (the claim
holds ``<body hash>``, then ``<body hash> <job id>``), so no crash can leave a job whose key does not name it.
A racing request that finds a claim without a job id waits for it (the winner takes milliseconds); one whose
body differs is refused. A winner that fails before its job exists gives the key back, so a retry can
proceed. Keys live ``idempotency_ttl_seconds`` (24 h by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from app.jobs.queue import IdempotencyClaim
from sdserve.contract.problems import FieldError, IdempotencyKeyReused, InvalidRequest, Unavailable
from sdserve.keys import Keys
from sdserve.replies import text

PENDING_TTL = 60
"""A claim whose job never appears is released after this many seconds (the winner died)."""
KEY_PATTERN_MAX = 255


def body_hash(kind: str, body: dict[str, Any]) -> str:
    """Hash of a validated request (canonical JSON): whitespace and key order do not matter."""
    canonical = json.dumps({"kind": kind, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > KEY_PATTERN_MAX or not key.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable characters",
            errors=[FieldError("header.idempotency-key", "1-255 printable characters")],
        )
    return key


class Idempotency:
    """Claims of Idempotency-Keys in Redis (asyncio)."""

    def __init__(self, client: Any, keys: Keys, ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl = ttl

    def _key(self, owner: str, key: str) -> str:
        return self.keys.idempotency(owner, hashlib.sha256(check_key(key).encode()).hexdigest())

    async def claim(self, owner: str, key: str, digest: str, *, wait: float = 10.0) -> str | None:
        """Claim a key for a new job (returns None), or return the job id an earlier request created.

        Raises IdempotencyKeyReused when the key was used with another body.
        """
        redis_key = self._key(owner, key)
        deadline = time.monotonic() + wait
        while True:
            if await self.redis.set(redis_key, digest, nx=True, ex=PENDING_TTL):
                return None
            value = await self.redis.get(redis_key)
            if value is None:
                continue  # released or expired between our two calls: try to claim again
            stored_digest, _, job_id = text(value).partition(" ")
            if stored_digest != digest:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was already used with a different request body",
                    errors=[FieldError("header.idempotency-key", "reused with a different body")],
                )
            if job_id:
                return job_id
            if time.monotonic() > deadline:
                raise Unavailable("the first request with this Idempotency-Key is still being processed")
            await asyncio.sleep(0.01)

    def completion(self, owner: str, key: str, digest: str) -> IdempotencyClaim:
        """What the submit that creates the job writes under the key, in the same step."""
        return IdempotencyClaim(key=self._key(owner, key), digest=digest, ttl=self.ttl)

    async def release(self, owner: str, key: str) -> None:
        """Give a claim back (the request failed before creating a job)."""
        await self.redis.delete(self._key(owner, key))
