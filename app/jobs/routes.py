"""The endpoints every kind's jobs share, made for each kind: list, get, cancel, delete, events, webhook deliveries.

``job_router(kind)`` mounts them under ``/v1/<collection>`` with the kind's own response model and operation
ids (``/v1/jobs`` and ``getJob`` for image jobs): a new kind gets them all without a line of its own.
"""

# No `from __future__ import annotations` here: FastAPI reads these endpoints' annotations, which name
# models chosen at run time (each kind's own), so they must be real objects, not strings.

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from sse_starlette.sse import EventSourceResponse

from app.deps import Caller, CallerDep, StateDep
from app.errors import problem_responses
from app.jobs.accept import show, view_context
from app.jobs.events import Event, follow, valid_event_id
from app.jobs.kind import GatewayKind
from app.jobs.listing import list_jobs
from app.state import GatewayState
from sdserve.contract.lifecycle import JobEvent, JobStatus
from sdserve.contract.limits import MAX_NAME_CHARS
from sdserve.contract.problems import Conflict, FieldError, InvalidRequest, RateLimited
from sdserve.jobs.record import JobRecord
from sdserve.storage.base import inputs_prefix, outputs_prefix
from sdserve.webhooks.deliveries import Delivery

EVENT_STREAM = "text/event-stream"
REDELIVER_BURST = 5
"""Redeliveries one key may ask for at once (then ``webhook_redeliveries_per_minute``)."""


def event_schema(kind_noun: str) -> dict[str, Any]:
    """An event stream, described the way OpenAPI before 3.2 can: ``schema`` describes one event of the stream.

    The string alternative is the stream read whole: what a client that does not parse Server-Sent Events (a
    generated SDK) gets, so it reads the text instead of failing to parse an object.
    """
    event = {
        "type": "object",
        "description": f"One Server-Sent Event of the {kind_noun}'s stream.",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "description": "Stream position; send it back as `Last-Event-ID` to resume."},
            "event": {"type": "string", "enum": [e.value for e in JobEvent]},
            "data": {"type": "string", "contentMediaType": "application/json", "description": "The event's JSON."},
        },
    }
    names = ", ".join(f"`{e.value}`" for e in JobEvent)
    whole = {
        "type": "string",
        "description": f"The stream read whole: blocks of `id:`, `event:` ({names}) and `data:` lines, one per "
        f"event of the {kind_noun}.",
    }
    return {"anyOf": [event, whole]}


def _iso_only(value: object) -> object:
    """Refuse bare numbers (pydantic would read them as Unix seconds; the schema says ISO 8601)."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("an ISO 8601 date-time, e.g. 2026-11-25T19:00:00Z")
    return value


class DeliveryList(BaseModel):
    """A job's webhook delivery attempts, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [], "pending": 0}]})

    data: list[Delivery]
    pending: int = Field(description="Deliveries still waiting to be sent or retried.")


async def deliveries(state: GatewayState, job_id: str) -> DeliveryList:
    """Every delivery attempt of a job so far (oldest first), and how many are still pending."""
    raw = await state.redis.lrange(state.queue.keys.delivery_log(job_id), 0, -1)
    pending = 0
    async for member, _ in state.redis.zscan_iter(state.queue.keys.webhooks_due(), match=f"{job_id}.*"):
        pending += 1 if member else 0
    return DeliveryList(data=[Delivery.model_validate_json(item) for item in raw], pending=pending)


async def purge(state: GatewayState, record: JobRecord) -> None:
    """Delete a job's stored inputs (uploaded ones too: their ids stop working) and outputs (every run's), and
    say so on its record."""
    store = state.store
    await state.uploads.revoke(record.input_ids)

    def delete() -> None:
        store.delete_prefix(outputs_prefix(record.id))
        store.delete_prefix(inputs_prefix(record.id))
        for key in record.inputs.values():
            store.delete(key)

    await asyncio.to_thread(delete)
    await state.queue.mark_purged(record.id)


async def before_delete(gateway_kind: GatewayKind, state: GatewayState, record: JobRecord, caller: Caller) -> None:
    """A kind's own step before a job is deleted: it may refuse (409) while nothing has changed yet, or remove
    what the job made outside its files (a training's adapter)."""
    hook = getattr(gateway_kind, "before_delete", None)
    if hook is not None:
        await hook(state, record, caller)


def job_router(gateway_kind: GatewayKind) -> APIRouter:  # noqa: PLR0915 (one statement per endpoint, declared in one place)
    """The shared endpoints of one kind's jobs."""
    kind = gateway_kind.kind
    noun, view_model = kind.noun, kind.view_model
    router = APIRouter(prefix=f"/v1/{kind.collection}", tags=[kind.collection])
    job_id_path = Annotated[
        str, Path(description=f"The {noun}'s id.", examples=["01a2141e-8035-722a-ae56-08d956773a95"], max_length=64)
    ]
    page_model = create_model(
        f"{kind.title}List",
        __doc__=f"A page of {noun}s, newest first.",
        __config__=ConfigDict(json_schema_extra={"examples": [{"data": [], "next_cursor": None}]}),
        data=(list[view_model], ...),  # type: ignore[valid-type]
        next_cursor=(str | None, Field(description="Pass as `cursor` for the next page; null on the last one.")),
    )

    async def record_of(state: GatewayState, job_id: str, caller: Caller) -> JobRecord:
        return await state.queue.get(job_id, caller.owner, kind=kind.name)

    async def cancel(state: GatewayState, record: JobRecord) -> None:
        if await state.queue.cancel(record) == "canceled":  # ended here, so counted here
            state.metrics.jobs_finished.labels(record.kind, record.task, record.model, JobStatus.CANCELED).inc()

    @router.get(
        "",
        response_model=page_model,
        operation_id=kind.operation_id("list"),
        summary=f"List your {noun}s",
        description=f"Your {noun}s, newest first, optionally filtered; `queue_position` is set on queued ones.",
        responses=problem_responses(422, 503),
    )
    async def list_records(
        state: StateDep,
        caller: CallerDep,
        status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this state.")] = None,
        model: Annotated[str | None, Query(max_length=MAX_NAME_CHARS, description="Only jobs of this model.")] = None,
        created_after: Annotated[
            datetime | None,
            BeforeValidator(_iso_only),
            Query(description="Only jobs created after this time (ISO 8601)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
        cursor: Annotated[str | None, Query(max_length=200, description="From `next_cursor`.")] = None,
    ) -> Any:
        page = await list_jobs(
            state.redis, state.queue.keys, kind.name, caller.owner, status=status_, model=model,
            created_after=created_after.timestamp() if created_after else None, limit=limit, cursor=cursor,
        )  # fmt: skip
        views = [await show(state, gateway_kind, record, caller) for record in page.records]
        return page_model(data=views, next_cursor=page.next_cursor)

    @router.get(
        "/{job_id}",
        response_model=view_model,
        operation_id=kind.operation_id("get"),
        summary=f"Get a {noun}",
        description=f"The {noun}'s status, queue position, progress, timings and, once it succeeded, its results "
        f"(signed, expiring URLs: fetch the {noun} again for fresh ones).",
        responses=problem_responses(404, 422, 503),
    )
    async def get_record(job_id: job_id_path, state: StateDep, caller: CallerDep) -> Any:
        return await show(state, gateway_kind, await record_of(state, job_id, caller), caller)

    @router.post(
        "/{job_id}/cancel",
        response_model=view_model,
        operation_id=kind.operation_id("cancel"),
        summary=f"Cancel a {noun}",
        description=f"A queued {noun} is canceled at once; a running one stops at its next step "
        "(`cancel_requested` is true until it does) and stores nothing. Canceling an ended one changes nothing, "
        "so repeating the call is harmless.",
        responses=problem_responses(404, 422, 503),
    )
    async def cancel_record(job_id: job_id_path, state: StateDep, caller: CallerDep) -> Any:
        await cancel(state, await record_of(state, job_id, caller))
        return await show(state, gateway_kind, await record_of(state, job_id, caller), caller)

    @router.delete(
        "/{job_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        operation_id=kind.operation_id("delete"),
        summary=f"Delete a {noun}'s stored files",
        description=f"Purges the {noun}'s stored inputs and outputs (one that has not ended is canceled first). "
        "The record stays, marked `purged`, until it expires.",
        responses={204: {"description": "Purged."}, **problem_responses(404, 422, 503)},
    )
    async def delete_record(job_id: job_id_path, state: StateDep, caller: CallerDep) -> Response:
        record = await record_of(state, job_id, caller)
        await before_delete(gateway_kind, state, record, caller)
        if not record.status.is_terminal:
            await cancel(state, record)
        await purge(state, record)
        return Response(status_code=204)

    async def enrich(state: GatewayState, event: Event, job_id: str, caller: Caller) -> dict[str, Any]:
        data = kind.event_data(event.name, event.data, view_context(state, caller))
        if event.name is JobEvent.QUEUED:
            data["queue_position"] = await state.queue.position(await record_of(state, job_id, caller))
        elif event.name.is_terminal:
            view = await show(state, gateway_kind, await record_of(state, job_id, caller), caller)
            data[noun] = view.model_dump(mode="json")
        return {"id": event.id, "event": event.name.value, "data": json.dumps(data, separators=(",", ":"))}

    async def stream(state: GatewayState, job_id: str, caller: Caller, after: str) -> AsyncIterator[dict[str, Any]]:
        async def ended() -> bool:
            return (await record_of(state, job_id, caller)).status.is_terminal

        async for event in follow(state.redis, state.queue.keys.events(job_id), after=after, ended=ended):
            yield await enrich(state, event, job_id, caller)

    @router.get(
        "/{job_id}/events",
        operation_id=kind.operation_id("events"),
        summary=f"Stream a {noun}'s events (SSE)",
        description="Server-Sent Events: `queued` (with `queue_position`), `started`, `progress` (`step`, "
        f"`total`, `fraction`, and the kind's own facts), then `succeeded`, `failed` or `canceled` (with the whole "
        f"`{noun}`), then the stream closes. Each event's `id` is a stream position: reconnect with "
        f"`Last-Event-ID` to resume without loss or duplicates. A client that connects after the {noun} ended gets "
        "its whole history.",
        responses={
            200: {"description": "An event stream.", "content": {EVENT_STREAM: {"schema": event_schema(noun)}}},
            **problem_responses(404, 422, 503),
        },
        response_class=EventSourceResponse,
    )
    async def record_events(
        job_id: job_id_path,
        state: StateDep,
        caller: CallerDep,
        last_event_id: Annotated[
            str | None, Header(alias="Last-Event-ID", max_length=40, description="Resume after this event.")
        ] = None,
    ) -> EventSourceResponse:
        await record_of(state, job_id, caller)  # 404 before the stream starts
        after = last_event_id or "0"
        if not valid_event_id(after) and after != "0":
            raise InvalidRequest(
                "Last-Event-ID must be an event id from this stream",
                errors=[FieldError("header.last-event-id", "not an event id")],
            )
        return EventSourceResponse(stream(state, job_id, caller, after), ping=15)

    @router.get(
        "/{job_id}/webhook-deliveries",
        response_model=DeliveryList,
        operation_id=kind.operation_id("deliveries"),
        summary=f"List a {noun}'s webhook delivery attempts",
        description=f"Every attempt to deliver the {noun}'s webhook events (time, status code or error, duration), "
        "oldest first, and how many deliveries are still pending.",
        responses=problem_responses(404, 422, 503),
    )
    async def list_deliveries(job_id: job_id_path, state: StateDep, caller: CallerDep) -> DeliveryList:
        await record_of(state, job_id, caller)
        return await deliveries(state, job_id)

    @router.post(
        "/{job_id}/webhook-deliveries/redeliver",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=DeliveryList,
        operation_id=kind.operation_id("redeliver"),
        summary="Send the terminal webhook again",
        description=f"Queues the {noun}'s terminal event for delivery again, with a new `webhook-id`.",
        responses=problem_responses(404, 409, 422, 429, 503),
    )
    async def redeliver(job_id: job_id_path, state: StateDep, caller: CallerDep) -> DeliveryList:
        record = await record_of(state, job_id, caller)
        if not record.status.is_terminal:
            raise Conflict(f"{noun} {record.id} has not ended; only its terminal event can be redelivered")
        if not record.webhook_url:
            raise Conflict(f"{noun} {record.id} has no webhook")
        per_minute = state.settings.webhook_redeliveries_per_minute
        decision = await state.redeliver_limiter.take(caller.owner, per_minute, REDELIVER_BURST)
        caller.headers.update(decision.headers())
        if not decision.allowed:
            raise RateLimited(f"redeliveries: {per_minute} per minute, bursts of {REDELIVER_BURST}",
                              retry_after=decision.retry_after)  # fmt: skip
        await state.queue.redeliver(record)
        return await deliveries(state, job_id)

    return router
