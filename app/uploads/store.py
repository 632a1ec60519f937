"""Uploaded inputs: stored once in the object store, described by a Redis record, owned by the key that sent them.

``POST /v1/uploads`` and every image sent inline in a job body end up here: the normalised PNG goes to the
store (``uploads/<id>.png`` for uploads, ``inputs/<job>/<field>.png`` for inline images) and a small record
keeps its owner, size, hash and mask facts, so that a job can be checked against it without reading pixels
again. Jobs then carry the upload id, never the image.

Uploads are owned like jobs: another key's upload is "not found", in its metadata and as a job input. An
upload stops being usable when it expires, and when a job that used it is deleted (its record goes).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel

from app.uploads.images import DecodedImage, UploadKind
from sdserve.contract.problems import NotFound
from sdserve.keys import Keys
from sdserve.replies import text
from sdserve.storage.base import ObjectStore, check_key


def new_upload_id() -> str:
    return f"upl_{secrets.token_hex(16)}"


class UploadRecord(BaseModel):
    """What the gateway knows about a stored input image."""

    id: str
    kind: UploadKind
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
    owner: str
    job_id: str | None = None


class DatasetRecord(BaseModel):
    """What the gateway knows about an uploaded training dataset (its images and manifest in the store)."""

    id: str
    kind: Literal["dataset"] = "dataset"
    prefix: str
    manifest_key: str
    images: int
    captioned: int
    sha256: str
    size_bytes: int
    created_at: float
    expires_at: float
    owner: str


class Uploads:
    """Create, look up and revoke input images (asyncio; the gateway's side)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, store: ObjectStore, *, ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self.store = store
        self.ttl = ttl

    async def create(
        self,
        decoded: DecodedImage,
        *,
        kind: UploadKind,
        owner: str,
        key: str | None = None,
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
        await self.redis.set(self.keys.upload(upload_id), record.model_dump_json(), ex=self.ttl)
        return record

    async def get(self, upload_id: str, owner: str) -> UploadRecord:
        """An upload's record; NotFound when unknown, expired, revoked, or another caller's."""
        raw = await self.redis.get(self.keys.upload(upload_id))
        if raw is None:
            raise NotFound(f"no upload {upload_id!r} (unknown or expired)")
        record = UploadRecord.model_validate_json(text(raw))
        if record.owner != owner:
            raise NotFound(f"no upload {upload_id!r} (unknown or expired)")
        return record

    async def add_dataset(self, record: DatasetRecord) -> None:
        """Record a dataset whose files are stored (``app.trainings.datasets``)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.dataset(record.id), record.model_dump_json(), ex=self.ttl)
        pipe.set(self.keys.dataset_by_hash(record.owner, record.sha256), record.id, ex=self.ttl)
        await pipe.execute()

    async def find_dataset(self, owner: str, sha256: str) -> DatasetRecord | None:
        """The caller's live dataset upload with this hash, if any."""
        upload_id = await self.redis.get(self.keys.dataset_by_hash(owner, sha256))
        if upload_id is None:
            return None
        try:
            return await self.get_dataset(text(upload_id), owner)
        except NotFound:
            return None

    async def get_dataset(self, upload_id: str, owner: str) -> DatasetRecord:
        """A dataset upload's record; NotFound when unknown, expired, revoked, or another caller's."""
        raw = await self.redis.get(self.keys.dataset(upload_id))
        record = DatasetRecord.model_validate_json(text(raw)) if raw is not None else None
        if record is None or record.owner != owner:
            raise NotFound(f"no dataset upload {upload_id!r} (unknown or expired)")
        return record

    async def revoke(self, upload_ids: Iterable[str]) -> None:
        """Make upload ids unusable from now on (a job that used them was deleted)."""
        names = [name for u in upload_ids for name in (self.keys.upload(u), self.keys.dataset(u))]
        if names:
            await self.redis.delete(*names)
