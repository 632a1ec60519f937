"""Follow and control jobs: get, list, cancel, delete, stream events, webhook deliveries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from app.deps import BaseUrlDep, OwnerDep, StateDep
from app.errors import problem_responses
from app.state import GatewayState
from sdserve.errors import FieldError, InvalidRequest
from sdserve.events import Event, EventName, read_events, valid_event_id
from sdserve.jobs import Job, JobStatus
from sdserve.limits import MAX_NAME_CHARS
from sdserve.listing import list_jobs
from sdserve.records import JobRecord
from sdserve.views import job_view

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENT_SCHEMA = {
    "description": "One Server-Sent Event (OpenAPI before 3.2 describes a stream by its events).",
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "Stream position; send it back as `Last-Event-ID` to resume."},
        "event": {"type": "string", "enum": [name.value for name in EventName]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "The event's JSON."},
    },
}

JobId = Annotated[
    str, Path(description="The job's id.", examples=["01a2141e-8035-722a-ae56-08d956773a95"], max_length=64)
]


def _iso_only(value: object) -> object:
    """Refuse bare numbers (pydantic would read them as Unix seconds; the schema says ISO 8601)."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("an ISO 8601 date-time, e.g. 2026-11-25T19:00:00Z")
    return value


async def view(state: GatewayState, record: JobRecord, base_url: str) -> Job:
    position = await state.queue.position(record)
    return job_view(
        record, position=position, store=state.store, base_url=base_url, url_ttl=state.settings.url_ttl_seconds
    )


class JobList(BaseModel):
    """A page of jobs, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "next_cursor": None}]})

    data: list[Job]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


@router.get(
    "",
    response_model=JobList,
    operation_id="listJobs",
    summary="List your jobs",
    description="Your jobs, newest first, optionally filtered; `queue_position` is set on queued ones.",
    responses=problem_responses(422, 503),
)
async def list_my_jobs(
    state: StateDep,
    owner: OwnerDep,
    base_url: BaseUrlDep,
    status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this state.")] = None,
    model: Annotated[str | None, Query(max_length=MAX_NAME_CHARS, description="Only jobs of this model.")] = None,
    created_after: Annotated[
        datetime | None,
        BeforeValidator(_iso_only),
        Query(description="Only jobs created after this time (ISO 8601)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="From `next_cursor`.")] = None,
) -> JobList:
    page = await list_jobs(
        state.redis,
        state.queue.keys,
        owner,
        status=status_,
        model=model,
        created_after=created_after.timestamp() if created_after else None,
        limit=limit,
        cursor=cursor,
    )
    return JobList(data=[await view(state, r, base_url) for r in page.records], next_cursor=page.next_cursor)


@router.get(
    "/{job_id}",
    response_model=Job,
    operation_id="getJob",
    summary="Get a job",
    description="The job's status, queue position, progress, timings and, once it succeeded, one signed, "
    "expiring URL per image (fetch the job again for fresh URLs).",
    responses=problem_responses(404, 422, 503),
)
async def get_job(job_id: JobId, state: StateDep, owner: OwnerDep, base_url: BaseUrlDep) -> Job:
    return await view(state, await state.queue.get(job_id, owner), base_url)


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    operation_id="cancelJob",
    summary="Cancel a job",
    description="A queued job is canceled at once; a running one stops within one denoising step "
    "(`cancel_requested` is true until it does) and stores nothing. Canceling an ended job changes nothing, "
    "so repeating the call is harmless.",
    responses=problem_responses(404, 422, 503),
)
async def cancel_job(job_id: JobId, state: StateDep, owner: OwnerDep, base_url: BaseUrlDep) -> Job:
    record = await state.queue.get(job_id, owner)
    await state.queue.cancel(record)
    return await view(state, await state.queue.get(job_id, owner), base_url)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="deleteJob",
    summary="Delete a job's stored files",
    description="Purges the job's stored inputs and outputs (a job that has not ended is canceled first). "
    "The job record stays, marked `purged`, until it expires.",
    responses={204: {"description": "Purged."}, **problem_responses(404, 422, 503)},
)
async def delete_job(job_id: JobId, state: StateDep, owner: OwnerDep) -> Response:
    record = await state.queue.get(job_id, owner)
    if not record.status.is_terminal:
        await state.queue.cancel(record)
    store = state.store

    def purge() -> None:  # the job's own inputs and outputs; uploads shared by id stay
        store.delete_prefix(f"outputs/{record.id}")
        store.delete_prefix(f"inputs/{record.id}")

    await asyncio.to_thread(purge)
    await state.queue.mark_purged(record.id)
    return Response(status_code=204)


# --- events ------------------------------------------------------------------------------------
async def _enrich(state: GatewayState, event: Event, record_id: str, owner: str, base_url: str) -> dict[str, Any]:
    data = dict(event.data)
    if event.name is EventName.QUEUED:
        record = await state.queue.get(record_id, owner)
        data["queue_position"] = await state.queue.position(record)
    elif event.name.is_terminal:
        job = await view(state, await state.queue.get(record_id, owner), base_url)
        data["job"] = job.model_dump(mode="json")
    return {"id": event.id, "event": event.name.value, "data": json.dumps(data, separators=(",", ":"))}


async def stream_events(
    state: GatewayState, job_id: str, owner: str, base_url: str, after: str
) -> AsyncIterator[dict[str, Any]]:
    """The job's events after ``after``, then new ones as they happen, until a terminal event."""
    stream = state.queue.keys.events(job_id)
    while True:
        events = await read_events(state.redis, stream, after=after)
        if not events:
            events = await read_events(state.redis, stream, after=after, block_ms=1000)
        if not events and (await state.queue.get(job_id, owner)).status.is_terminal:
            events = await read_events(state.redis, stream, after=after)  # the end may have just landed
            if not events:
                return  # ended, and its terminal event was already sent (or expired with the stream)
        for event in events:
            after = event.id
            yield await _enrich(state, event, job_id, owner, base_url)
            if event.name.is_terminal:
                return


@router.get(
    "/{job_id}/events",
    operation_id="streamJobEvents",
    summary="Stream a job's events (SSE)",
    description="Server-Sent Events: `queued` (with `queue_position`), `started`, `progress` (`step`, "
    "`total`, `fraction`; every few steps a small `preview` data URI), then `succeeded`, `failed` or "
    "`canceled` (with the whole `job`), then the stream closes. Each event's `id` is a stream position: "
    "reconnect with `Last-Event-ID` to resume without loss or duplicates. A client that connects after "
    "the job ended gets its whole history.",
    responses={
        200: {"description": "An event stream.", "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}},
        **problem_responses(404, 422, 503),
    },
    response_class=EventSourceResponse,
)
async def job_events(
    job_id: JobId,
    state: StateDep,
    owner: OwnerDep,
    base_url: BaseUrlDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=40, description="Resume after this event.")
    ] = None,
) -> EventSourceResponse:
    await state.queue.get(job_id, owner)  # 404 before the stream starts
    after = last_event_id or "0"
    if not valid_event_id(after) and after != "0":
        raise InvalidRequest(
            "Last-Event-ID must be an event id from this stream",
            errors=[FieldError("header.last-event-id", "not an event id")],
        )
    return EventSourceResponse(stream_events(state, job_id, owner, base_url, after), ping=15)


# --- webhook deliveries -------------------------------------------------------------------------
class Delivery(BaseModel):
    """One attempt to deliver a webhook."""

    webhook_id: str = Field(description="The `webhook-id` header sent (the same for every retry of one event).")
    event: str
    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(description="Why the attempt failed, if it did.")
    duration_ms: float
    ok: bool
    next_attempt_in: float | None = Field(
        default=None, description="Seconds until the next retry; null when this was the last attempt."
    )


class DeliveryList(BaseModel):
    """A job's webhook delivery attempts, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "pending": 0}]})

    data: list[Delivery]
    pending: int = Field(description="Deliveries still waiting to be sent or retried.")


@router.get(
    "/{job_id}/webhook-deliveries",
    response_model=DeliveryList,
    operation_id="listWebhookDeliveries",
    summary="List a job's webhook delivery attempts",
    description="Every attempt to deliver the job's webhook events (time, status code or error, duration), oldest "
    "first, and how many deliveries are still pending.",
    responses=problem_responses(404, 422, 503),
)
async def list_deliveries(job_id: JobId, state: StateDep, owner: OwnerDep) -> DeliveryList:
    await state.queue.get(job_id, owner)
    log, pending = await state.deliveries.log(job_id)
    return DeliveryList(data=[Delivery.model_validate(entry) for entry in log], pending=pending)


@router.post(
    "/{job_id}/webhook-deliveries/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryList,
    operation_id="redeliverWebhook",
    summary="Send the terminal webhook again",
    description="Queues the job's terminal event for delivery again, with a new `webhook-id`.",
    responses=problem_responses(404, 409, 422, 503),
)
async def redeliver(job_id: JobId, state: StateDep, owner: OwnerDep) -> DeliveryList:
    record = await state.queue.get(job_id, owner)
    await state.deliveries.redeliver(record)
    log, pending = await state.deliveries.log(job_id)
    return DeliveryList(data=[Delivery.model_validate(entry) for entry in log], pending=pending)
