"""Create jobs: ``POST /v1/txt2img``, ``/v1/img2img``, ``/v1/inpaint``, ``/v1/outpaint``.

Every create takes ``Idempotency-Key`` (retry-safe creation) and ``Prefer: wait=N`` (hold the
request until the job ends, up to N seconds, by blocking on its event stream; no polling).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status

from app.auth import admit
from app.deps import CallerDep
from app.errors import problem_responses
from app.state import GatewayState
from app.submit import create_job
from sdserve.events import read_events
from sdserve.idempotency import body_hash
from sdserve.jobs import Job
from sdserve.records import JobRecord
from sdserve.tasks import Img2ImgRequest, InpaintRequest, JobRequest, OutpaintRequest, Txt2ImgRequest
from sdserve.views import job_view

router = APIRouter(prefix="/v1", tags=["images"])

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job is queued; `Location` is its URL.",
        "headers": {"Location": {"description": "URL of the job.", "schema": {"type": "string"}}},
    },
    200: {
        "description": "With `Prefer: wait=N`: the job ended within N seconds (succeeded, failed or canceled); "
        "or an `Idempotency-Key` replay of a job that has ended.",
        "model": Job,
    },
    **problem_responses(413, 422, 429, 503),
}

_FOLLOW = (
    " Answers 202 with the job and a `Location` header; poll that URL (or stream its events, or pass "
    "`Prefer: wait=N`) until the job `succeeded`, then fetch each image's signed URL."
)

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


async def _wait_until_done(state: GatewayState, record: JobRecord, owner: str, seconds: float) -> JobRecord:
    """Block on the job's event stream until it ends or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    stream = state.queue.keys.events(record.id)
    after = "0"
    while (remaining := deadline - time.monotonic()) > 0:
        block_ms = max(1, int(min(remaining, 1.0) * 1000))
        for event in await read_events(state.redis, stream, after=after, block_ms=block_ms):
            after = event.id
            if event.name.is_terminal:
                return await state.queue.get(record.id, owner)
    return await state.queue.get(record.id, owner)


async def accept(
    request: Request,
    body: JobRequest,
    response: Response,
    state: GatewayState,
    *,
    base_url: str,
    request_id: str | None,
    owner: str,
    idempotency_key: str | None,
    prefer: str | None,
) -> Job:
    """Create (or, for a known Idempotency-Key, find) the job, wait if asked, and shape the answer."""
    await admit(request, response, body.model or state.registry.default_model)
    position: int | None = None  # known without a Redis call for a job this request created
    if idempotency_key is None:
        record, position = await create_job(body, state=state, owner=owner, request_id=request_id)
    else:
        digest = body_hash(body.task, body.model_dump(mode="json"))
        existing = await state.idempotency.claim(owner, idempotency_key, digest)
        if existing is not None:
            record = await state.queue.get(existing, owner)
            response.headers["Idempotent-Replayed"] = "true"
        else:
            try:
                record, position = await create_job(body, state=state, owner=owner, request_id=request_id)
            except BaseException:
                await state.idempotency.release(owner, idempotency_key)
                raise
            await state.idempotency.complete(owner, idempotency_key, digest, record.id)
    wait = _WAIT.search(prefer or "")
    if wait is not None:
        seconds = min(int(wait.group(1)), state.settings.max_wait_seconds)
        response.headers["Preference-Applied"] = f"wait={seconds}"
        if seconds > 0 and not record.status.is_terminal:
            record = await _wait_until_done(state, record, owner, seconds)
            position = None  # it has moved up, or left the queue, while we waited
    if record.status.is_terminal:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"{base_url}/v1/jobs/{record.id}"
    if position is None:
        position = await state.queue.position(record)
    return job_view(
        record, position=position, store=state.store, base_url=base_url, url_ttl=state.settings.url_ttl_seconds
    )


@router.post(
    "/txt2img",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createTxt2ImgJob",
    summary="Generate images from a prompt",
    description="Accept a txt2img job and queue it." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_txt2img(
    body: Txt2ImgRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Job:
    return await accept(
        request, body, response, caller.state, base_url=caller.base_url, request_id=caller.request_id,
        owner=caller.owner, idempotency_key=idempotency_key, prefer=prefer,
    )  # fmt: skip


@router.post(
    "/img2img",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createImg2ImgJob",
    summary="Transform an image guided by a prompt",
    description="Accept an img2img job: `strength` sets how far the result departs from `image`; the output is "
    "the image's size rounded to a multiple of 8 unless `width`/`height` say otherwise (`resize_mode`)." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_img2img(
    body: Img2ImgRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Job:
    return await accept(
        request, body, response, caller.state, base_url=caller.base_url, request_id=caller.request_id,
        owner=caller.owner, idempotency_key=idempotency_key, prefer=prefer,
    )  # fmt: skip


@router.post(
    "/inpaint",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createInpaintJob",
    summary="Repaint the masked part of an image",
    description="Accept an inpaint job: white in `mask` (or transparency, with `mask_source: alpha`) is repainted; "
    "wherever the final mask (after `mask_grow` and `mask_blur`) is 0, the output equals the input bit for bit."
    + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_inpaint(
    body: InpaintRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Job:
    return await accept(
        request, body, response, caller.state, base_url=caller.base_url, request_id=caller.request_id,
        owner=caller.owner, idempotency_key=idempotency_key, prefer=prefer,
    )  # fmt: skip


@router.post(
    "/outpaint",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createOutpaintJob",
    summary="Extend an image beyond its borders",
    description="Accept an outpaint job: the output is the image extended by exactly `left`, `right`, `top` and "
    "`bottom` pixels; original pixels farther than `feather` from the new area are unchanged." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_outpaint(
    body: OutpaintRequest,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Prefer = None,
) -> Job:
    return await accept(
        request, body, response, caller.state, base_url=caller.base_url, request_id=caller.request_id,
        owner=caller.owner, idempotency_key=idempotency_key, prefer=prefer,
    )  # fmt: skip
