"""Uploaded input images: stored once in the object store, described by a Redis record.

``POST /v1/uploads`` and every image sent inline in a job body end up here: the normalised PNG goes
to the store (``uploads/<id>.png`` for uploads, ``inputs/<job>/<field>.png`` for inline images) and a
small record keeps its size, hash and mask facts, so that a job can be checked against it without
reading pixels again. Jobs then carry the upload id, never the image.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import cast

import redis.asyncio as aioredis

from sdserve.errors import NotFound
from sdserve.images import DecodedImage, Kind
from sdserve.keys import Keys
from sdserve.store import ObjectStore, check_key


def new_upload_id() -> str:
    return f"upl_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class UploadRecord:
    """What the gateway knows about a stored input image."""

    id: str
    kind: Kind
    key: str
    width: int
    height: int
    sha256: str
    format: str
    size_bytes: int
    has_alpha: bool
    luma_max: int
    alpha_min: int
    created_at: float
    expires_at: float
    owner: str | None = None
    job_id: str | None = None


class Uploads:
    """Create and look up input images (asyncio; the gateway's side)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, store: ObjectStore, *, ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.store = store
        self.ttl = ttl

    async def create(
        self,
        decoded: DecodedImage,
        *,
        kind: Kind,
        key: str | None = None,
        owner: str | None = None,
        job_id: str | None = None,
    ) -> UploadRecord:
        """Store a decoded image and record it; returns the record (with its id)."""
        upload_id = new_upload_id()
        key = check_key(key or f"uploads/{upload_id}.png")
        png = await asyncio.to_thread(decoded.png)
        await asyncio.to_thread(self.store.put, key, png, "image/png")
        now = time.time()
        record = UploadRecord(
            id=upload_id,
            kind=kind,
            key=key,
            width=decoded.width,
            height=decoded.height,
            sha256=decoded.sha256,
            format=decoded.format,
            size_bytes=decoded.size_bytes,
            has_alpha=decoded.has_alpha,
            luma_max=decoded.luma_max,
            alpha_min=decoded.alpha_min,
            created_at=now,
            expires_at=now + self.ttl,
            owner=owner,
            job_id=job_id,
        )
        await self.redis.set(self.keys.upload(upload_id), json.dumps(asdict(record)), ex=self.ttl)
        return record

    async def get(self, upload_id: str) -> UploadRecord:
        """An upload's record; NotFound when unknown or expired."""
        raw = await self.redis.get(self.keys.upload(upload_id))
        if raw is None:
            raise NotFound(f"no upload {upload_id!r} (unknown or expired)")
        return UploadRecord(**json.loads(cast("bytes", raw)))
