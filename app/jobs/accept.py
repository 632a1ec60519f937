"""Accepting a job of any kind: admission, Idempotency-Key, the kind's checks, one atomic submit, Prefer: wait.

Every create endpoint of every kind ends here. In order:

1. admit: the caller's rate limit and active-job cap, the queue's depth (``app.access.admission``);
2. the queue must be served lately (or the deployment queues work for workers still to come);
3. the webhook URL passes the SSRF guard;
4. an ``Idempotency-Key`` is claimed (a retry of a created job is answered with that job);
5. the kind checks the request, resolves every default and stores its inputs (``GatewayKind.prepare``);
6. one atomic step stores the record, queues the job and answers the Idempotency-Key (``JobQueue.submit``);
7. with ``Prefer: wait=N``, the answer waits on the job's event stream until it ends (at most N seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Annotated, Any

from fastapi import Header, Response, status
from pydantic import BaseModel

from app.access.admission import admit
from app.access.idempotency import body_hash
from app.deps import Caller
from app.jobs.events import follow
from app.jobs.kind import GatewayKind
from app.jobs.queue import NewJob
from app.state import GatewayState
from sdserve.contract.problems import ModelUnavailable
from sdserve.contract.requests import WebhookSpec
from sdserve.jobs.ids import new_job_id
from sdserve.jobs.record import JobRecord
from sdserve.jobs.view import ViewContext
from sdserve.observe.tracing import current_traceparent, span
from sdserve.storage.base import inputs_prefix
from sdserve.webhooks.guard import check_url

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retry-safe creation: the same key with the same body returns the same job (for 24 h, "
        "however many requests race); with another body it is a 422.",
    ),
]
Prefer = Annotated[
    str | None,
    Header(
        alias="Prefer",
        max_length=200,
        description="`wait=N`: hold the request up to N seconds (at most the server's maximum, 60 by default) "
        "and answer 200 with the finished job if it ends in time, else 202 as usual.",
    ),
]
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


def view_context(state: GatewayState, caller: Caller, position: int | None = None) -> ViewContext:
    return ViewContext(
        store=state.store, base_url=caller.base_url, url_ttl=state.settings.url_ttl_seconds, position=position
    )


async def show(state: GatewayState, gateway_kind: GatewayKind, record: JobRecord, caller: Caller,
               position: int | None = None) -> BaseModel:  # fmt: skip
    """A record as its kind shows it (the queue position looked up unless known)."""
    if position is None:
        position = await state.queue.position(record)
    return gateway_kind.kind.view(record, view_context(state, caller, position))


async def wait_until_done(state: GatewayState, record: JobRecord, seconds: float) -> JobRecord:
    """Block on the job's event stream until it ends or ``seconds`` pass; the record then."""

    async def ended() -> bool:
        return (await state.queue.get(record.id)).status.is_terminal

    stream = state.queue.keys.events(record.id)
    async for _ in follow(state.redis, stream, deadline=time.monotonic() + seconds, ended=ended):
        pass
    return await state.queue.get(record.id)


async def create(
    state: GatewayState,
    gateway_kind: GatewayKind,
    body: Any,
    caller: Caller,
    *,
    idempotency_key: str | None,
) -> tuple[JobRecord, int | None, bool]:
    """Steps 1–6: the record of the job (new, or the one an Idempotency-Key already made), its queue
    position when known, and whether it was a replay."""
    settings = state.settings
    kind = gateway_kind.kind
    queue = gateway_kind.queue_of(body, state)
    await admit(state, caller, queue)
    if settings.unserved_models == "refuse" and not await state.queue.served_recently(
        queue, settings.served_model_ttl_seconds
    ):
        raise ModelUnavailable(
            f"no worker serves queue {queue!r}; GET /v1/models shows which models live workers serve",
            retry_after=30,
        )
    webhook: WebhookSpec | None = getattr(body, "webhook", None)
    if webhook is not None:
        await check_url(webhook.url, state.webhook_policy)
    claim = None
    if idempotency_key is not None:
        digest = body_hash(kind.name, body.model_dump(mode="json"))
        existing = await state.idempotency.claim(caller.owner, idempotency_key, digest)
        if existing is not None:
            return await state.queue.get(existing, caller.owner), None, True
        claim = state.idempotency.completion(caller.owner, idempotency_key, digest)
    job_id = new_job_id()
    try:
        new: NewJob = await gateway_kind.prepare(body, state, caller, job_id)
        with span("sdserve.submit", **{"sdserve.job_id": job_id, "sdserve.kind": kind.name, "sdserve.task": new.task}):
            submitted = await state.queue.submit(
                new, owner=caller.owner, request_id=caller.request_id, idempotency=claim,
                traceparent=current_traceparent(),
            )  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):  # nothing stays behind for a job that was not created
            await asyncio.to_thread(state.store.delete_prefix, inputs_prefix(job_id))
            if idempotency_key is not None:
                await state.idempotency.release(caller.owner, idempotency_key)
        raise
    state.metrics.jobs_submitted.labels(kind.name, new.task, new.model).inc()  # counted once it is queued
    return submitted.record, submitted.position, False


async def accept(
    state: GatewayState,
    gateway_kind: GatewayKind,
    body: Any,
    caller: Caller,
    response: Response,
    *,
    idempotency_key: str | None,
    prefer: str | None,
) -> BaseModel:
    """Create (or, for a known Idempotency-Key, find) the job, wait if asked, and shape the answer."""
    record, position, replayed = await create(state, gateway_kind, body, caller, idempotency_key=idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    wait = _WAIT.search(prefer or "")
    if wait is not None:
        seconds = min(int(wait.group(1)), state.settings.max_wait_seconds)
        response.headers["Preference-Applied"] = f"wait={seconds}"
        if seconds > 0 and not record.status.is_terminal:
            record = await wait_until_done(state, record, seconds)
            position = None  # it has moved up, or left the queue, while we waited
    if record.status.is_terminal:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"{caller.base_url}/v1/{gateway_kind.kind.collection}/{record.id}"
    return await show(state, gateway_kind, record, caller, position)
