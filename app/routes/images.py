"""Create jobs: ``POST /v1/txt2img``, ``/v1/img2img``, ``/v1/inpaint``, ``/v1/outpaint``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from app.deps import BaseUrlDep, RequestIdDep, StateDep
from app.errors import problem_responses
from app.submit import create_job
from app.views import job_view
from sdserve.errors import FieldError, InvalidRequest
from sdserve.jobs import Job
from sdserve.tasks import Img2ImgRequest, InpaintRequest, JobRequest, OutpaintRequest, Txt2ImgRequest

router = APIRouter(prefix="/v1", tags=["images"])

_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "The job is queued; `Location` is its URL.",
        "headers": {"Location": {"description": "URL of the job.", "schema": {"type": "string"}}},
    },
    **problem_responses(413, 422, 503),
}

_FOLLOW = (
    " Answers 202 with the job and a `Location` header; poll that URL (or stream its events) until the job "
    "`succeeded`, then fetch each image's signed URL."
)


async def _accept(body: JobRequest, response: Response, state: StateDep, base_url: str, request_id: str | None) -> Job:
    if body.webhook is not None:
        raise InvalidRequest(
            "webhooks are not enabled on this deployment yet",
            errors=[FieldError("body.webhook", "webhook delivery is not enabled")],
        )
    record = await create_job(body, state=state, request_id=request_id)
    position = await state.queue.position(record)
    response.headers["Location"] = f"{base_url}/v1/jobs/{record.id}"
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
    body: Txt2ImgRequest, response: Response, state: StateDep, base_url: BaseUrlDep, request_id: RequestIdDep
) -> Job:
    return await _accept(body, response, state, base_url, request_id)


@router.post(
    "/img2img",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createImg2ImgJob",
    summary="Transform an image guided by a prompt",
    description="Accept an img2img job: `strength` sets how far the result departs from `image`; the output "
    "is the image's size rounded to a multiple of 8 unless `width`/`height` say otherwise (`resize_mode`)." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_img2img(
    body: Img2ImgRequest, response: Response, state: StateDep, base_url: BaseUrlDep, request_id: RequestIdDep
) -> Job:
    return await _accept(body, response, state, base_url, request_id)


@router.post(
    "/inpaint",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createInpaintJob",
    summary="Repaint the masked part of an image",
    description="Accept an inpaint job: white in `mask` (or transparency, with `mask_source: alpha`) is "
    "repainted; wherever the final mask (after `mask_grow` and `mask_blur`) is 0, the output equals the input "
    "bit for bit." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_inpaint(
    body: InpaintRequest, response: Response, state: StateDep, base_url: BaseUrlDep, request_id: RequestIdDep
) -> Job:
    return await _accept(body, response, state, base_url, request_id)


@router.post(
    "/outpaint",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createOutpaintJob",
    summary="Extend an image beyond its borders",
    description="Accept an outpaint job: the output is the image extended by exactly `left`, `right`, `top` "
    "and `bottom` pixels; original pixels farther than `feather` from the new area are unchanged." + _FOLLOW,
    responses=_ACCEPTED,
)
async def create_outpaint(
    body: OutpaintRequest, response: Response, state: StateDep, base_url: BaseUrlDep, request_id: RequestIdDep
) -> Job:
    return await _accept(body, response, state, base_url, request_id)
