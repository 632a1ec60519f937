"""Shape job records into the API's ``Job`` view: signed URLs, progress, links."""

from __future__ import annotations

from datetime import UTC, datetime

from sdserve.jobs import ImageResult, Job, JobStatus, Progress, Timings
from sdserve.records import JobRecord
from sdserve.store import ObjectStore
from sdserve.tasks import parse_request


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def job_view(
    record: JobRecord,
    *,
    position: int | None,
    store: ObjectStore,
    base_url: str,
    url_ttl: int,
) -> Job:
    """The public view of a job record."""
    images = []
    for img in record.images:
        signed = store.signed_url(img.key, expires_in=url_ttl, base_url=base_url)
        images.append(
            ImageResult(
                index=img.index,
                url=signed.url,
                expires_at=datetime.fromtimestamp(signed.expires_at, UTC),
                seed=img.seed,
                width=img.width,
                height=img.height,
                content_type=img.content_type,
            )
        )
    manifest_url = (
        store.signed_url(record.manifest_key, expires_in=url_ttl, base_url=base_url).url
        if record.manifest_key
        else None
    )
    mask_url = store.signed_url(record.mask_key, expires_in=url_ttl, base_url=base_url).url if record.mask_key else None
    progress = None
    if record.status is not JobStatus.QUEUED and record.total:
        progress = Progress(step=record.step, total=record.total, fraction=round(record.step / record.total, 4))
    self_url = f"{base_url}/v1/jobs/{record.id}"
    return Job(
        id=record.id,
        task=record.task,
        status=record.status,
        model=record.model,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        started_at=_dt(record.started_at),
        finished_at=_dt(record.finished_at),
        queue_position=position,
        progress=progress,
        request=parse_request(record.request),
        images=images,
        manifest_url=manifest_url,
        mask_url=mask_url,
        error=record.error,
        cancel_requested=record.cancel_requested and not record.status.is_terminal,
        purged=record.purged,
        timings=Timings.model_validate({k: round(v, 2) for k, v in record.timings.items()}),
        metadata=record.metadata,
        links={"self": self_url, "events": f"{self_url}/events", "cancel": f"{self_url}/cancel"},
    )
