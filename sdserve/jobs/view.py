"""What every kind's view of a job shares: the engine's fields, signed URLs, times.

A kind builds its own response model (``JobKind.view``) and takes the fields every job has from ``common``:
id, status, times, queue position, progress, error, cancel request, purge, metadata and links.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from sdserve.contract.lifecycle import JobStatus
from sdserve.jobs.record import JobRecord
from sdserve.storage.base import ObjectStore


class Progress(BaseModel):
    """How far a running job has come."""

    step: int = Field(ge=0, description="Steps done.")
    total: int = Field(ge=0, description="Steps in all.")
    fraction: float = Field(ge=0.0, le=1.0, description="step / total.")


@dataclass(frozen=True)
class ViewContext:
    """What shaping a record into a view needs: where to sign URLs for, and the job's place in its queue."""

    store: ObjectStore
    base_url: str
    url_ttl: int
    position: int | None = None

    def url(self, key: str | None) -> str | None:
        """A signed, expiring URL of a stored object (None for None)."""
        return self.store.signed_url(key, expires_in=self.url_ttl, base_url=self.base_url).url if key else None

    def job_url(self, collection: str, job_id: str) -> str:
        return f"{self.base_url}/v1/{collection}/{job_id}"


def when(ts: float | None) -> datetime | None:
    """A Unix time as an aware UTC datetime (None for None)."""
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def progress(record: JobRecord) -> Progress | None:
    """A started job's progress (None while it waits)."""
    if record.status is JobStatus.QUEUED or not record.total:
        return None
    return Progress(step=record.step, total=record.total, fraction=round(min(record.step / record.total, 1.0), 4))


def links(collection: str, record: JobRecord, ctx: ViewContext) -> dict[str, str]:
    self_url = ctx.job_url(collection, record.id)
    return {"self": self_url, "events": f"{self_url}/events", "cancel": f"{self_url}/cancel"}


def common(collection: str, record: JobRecord, ctx: ViewContext) -> dict[str, Any]:
    """The fields every kind's view has, as keyword arguments for its model."""
    return {
        "id": record.id,
        "status": record.status,
        "created_at": when(record.created_at),
        "started_at": when(record.started_at),
        "finished_at": when(record.finished_at),
        "queue_position": ctx.position if record.status is JobStatus.QUEUED else None,
        "progress": progress(record),
        "error": record.error,
        "cancel_requested": record.cancel_requested and not record.status.is_terminal,
        "purged": record.purged,
        "metadata": record.metadata,
        "links": links(collection, record, ctx),
    }
