"""Read jobs: ``GET /v1/jobs/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.deps import BaseUrlDep, QueueDep, SettingsDep, StoreDep
from app.errors import problem_responses
from app.views import job_view
from sdserve.jobs import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[
    str, Path(description="The job's id.", examples=["01a2141e-8035-722a-ae56-08d956773a95"], max_length=64)
]


@router.get(
    "/{job_id}",
    response_model=Job,
    operation_id="getJob",
    summary="Get a job",
    description="The job's status, queue position, progress, timings and, once it succeeded, one signed, "
    "expiring URL per image (fetch the job again for fresh URLs).",
    responses=problem_responses(404, 503),
)
async def get_job(job_id: JobId, queue: QueueDep, store: StoreDep, settings: SettingsDep, base_url: BaseUrlDep) -> Job:
    record = await queue.get(job_id)
    position = await queue.position(record)
    return job_view(record, position=position, store=store, base_url=base_url, url_ttl=settings.url_ttl_seconds)
