"""Create jobs: ``POST /v1/txt2img`` (img2img, inpaint and outpaint join here)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.deps import BaseUrlDep, QueueDep, RegistryDep, RequestIdDep, SettingsDep, StoreDep
from app.errors import problem_responses
from app.views import job_view
from sdserve.errors import FieldError, InvalidRequest
from sdserve.jobs import Job
from sdserve.resolve import resolve_request
from sdserve.tasks import Txt2ImgRequest

router = APIRouter(prefix="/v1", tags=["images"])


@router.post(
    "/txt2img",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    operation_id="createTxt2ImgJob",
    summary="Generate images from a prompt",
    description="Accept a txt2img job and queue it. Answers 202 with the job and a `Location` header; "
    "poll that URL (or stream its events) until the job `succeeded`, then fetch each image's signed URL.",
    responses={
        202: {"description": "The job is queued.", "headers": {"Location": {"schema": {"type": "string"}}}},
        **problem_responses(422, 503),
    },
)
async def create_txt2img(
    body: Txt2ImgRequest,
    response: Response,
    queue: QueueDep,
    registry: RegistryDep,
    store: StoreDep,
    settings: SettingsDep,
    base_url: BaseUrlDep,
    request_id: RequestIdDep,
) -> Job:
    if body.webhook is not None:
        raise InvalidRequest(
            "webhooks are not enabled on this deployment yet",
            errors=[FieldError("body.webhook", "webhook delivery is not enabled")],
        )
    resolved = resolve_request(body, registry)
    record = await queue.submit(resolved, request_id=request_id)
    position = await queue.position(record)
    response.headers["Location"] = f"{base_url}/v1/jobs/{record.id}"
    return job_view(
        record, position=position, store=store, base_url=base_url, url_ttl=settings.url_ttl_seconds
    )
