"""Jobs as the API reports them: status, progress, results, timings, errors."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from sdserve.limits import MAX_SEED
from sdserve.tasks import JobRequest, Task


class JobStatus(StrEnum):
    """Where a job is in its life: ``queued → running → succeeded | failed | canceled``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change again."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Progress(BaseModel):
    """Denoising progress of a running job."""

    step: int = Field(ge=0, description="Steps done.")
    total: int = Field(ge=0, description="Steps in all.")
    fraction: float = Field(ge=0.0, le=1.0, description="step / total.")


class ImageResult(BaseModel):
    """One generated image."""

    index: int = Field(ge=0, description="Position of the image in the job.")
    url: str = Field(description="Signed, expiring URL of the image.")
    expires_at: datetime = Field(description="When `url` stops working; fetch the job again for a fresh one.")
    seed: int = Field(ge=0, le=MAX_SEED, description="Seed that reproduces this image alone.")
    width: int
    height: int
    content_type: str = Field(description="MIME type of the image.")


class Timings(BaseModel):
    """Where a job's time went, in milliseconds."""

    queued_ms: float | None = Field(default=None, description="From acceptance to a worker starting it.")
    model_load_ms: float | None = Field(
        default=None, description="Fetching the model on the worker (≈0 when warm; a load when it was not resident)."
    )
    adapters_ms: float | None = Field(default=None, description="Loading (if needed) and activating LoRA adapters.")
    load_ms: float | None = Field(default=None, description="Preparing the pipeline (scheduler, derived pipeline).")
    inference_ms: float | None = Field(default=None, description="Text encoding and denoising.")
    decode_ms: float | None = Field(default=None, description="VAE decode and image encoding.")
    upload_ms: float | None = Field(default=None, description="Writing outputs to the object store.")
    run_ms: float | None = Field(default=None, description="From start to finish on the worker.")
    total_ms: float | None = Field(default=None, description="From acceptance to finish.")


class JobError(BaseModel):
    """Why a job failed, as an RFC 9457 problem."""

    type: str
    title: str
    detail: str | None = None


JOB_EXAMPLE: dict[str, JsonValue] = {
    "id": "01a2141e-8035-722a-ae56-08d956773a95",
    "object": "job",
    "task": "txt2img",
    "status": "succeeded",
    "model": "tiny",
    "created_at": "2026-11-25T19:11:12.949050Z",
    "started_at": "2026-11-25T19:11:12.956Z",
    "finished_at": "2026-11-25T19:11:13.640Z",
    "queue_position": None,
    "progress": {"step": 12, "total": 12, "fraction": 1.0},
    "request": {
        "task": "txt2img",
        "model": "tiny",
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "width": 256,
        "height": 256,
        "num_images": 1,
        "steps": 12,
        "guidance_scale": 7.0,
        "scheduler": "euler",
        "seed": 1005314457,
        "loras": [],
        "style": None,
        "output": {"format": "png", "quality": 90},
        "webhook": None,
        "metadata": {},
    },
    "images": [
        {
            "index": 0,
            "url": "http://localhost:8000/v1/files/outputs/01a2141e-8035-722a-ae56-08d956773a95/0.png"
            "?expires=1795637473&signature=101b7aa3",
            "expires_at": "2026-11-25T20:11:13Z",
            "seed": 1005314457,
            "width": 256,
            "height": 256,
            "content_type": "image/png",
        }
    ],
    "manifest_url": "http://localhost:8000/v1/files/outputs/01a2141e-8035-722a-ae56-08d956773a95/manifest.json"
    "?expires=1795637473&signature=5e0c81aa",
    "error": None,
    "timings": {
        "queued_ms": 6.9,
        "load_ms": 2.4,
        "inference_ms": 506.4,
        "decode_ms": 157.7,
        "upload_ms": 22.0,
        "run_ms": 684.5,
        "total_ms": 691.5,
    },
    "metadata": {},
    "links": {
        "self": "http://localhost:8000/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95",
        "events": "http://localhost:8000/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95/events",
        "cancel": "http://localhost:8000/v1/jobs/01a2141e-8035-722a-ae56-08d956773a95/cancel",
    },
}


class Job(BaseModel):
    """A job as the API reports it."""

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str = Field(description="Job id.")
    object: Literal["job"] = "job"
    task: Task
    status: JobStatus
    model: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(
        default=None, description="Jobs ahead of this one in its model's queue (0: next); only while queued."
    )
    progress: Progress | None = None
    request: JobRequest = Field(description="The request as it will run: every default filled in.")
    images: list[ImageResult] = Field(default_factory=list)
    manifest_url: str | None = Field(default=None, description="Signed URL of the job's manifest.json.")
    mask_url: str | None = Field(
        default=None, description="Signed URL of the final mask used (inpaint/outpaint with `return_mask`)."
    )
    error: JobError | None = None
    cancel_requested: bool = Field(
        default=False, description="A cancel was asked for; a running job stops at its next step."
    )
    purged: bool = Field(default=False, description="The job's stored inputs and outputs were deleted.")
    timings: Timings = Field(default_factory=Timings)
    metadata: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict, description="Related resources (self, cancel, events).")


class WebhookJob(BaseModel):
    """The job as a webhook carries it: no request, no internal keys, no traceback."""

    id: str
    object: Literal["job"] = "job"
    task: Task
    status: JobStatus
    model: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    images: list[ImageResult] = Field(default_factory=list)
    error: JobError | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    timings: Timings = Field(default_factory=Timings)
    links: dict[str, str] = Field(default_factory=dict)


class WebhookPayload(BaseModel):
    """The body of every webhook delivery (signed per Standard Webhooks: see the `webhook-*` headers)."""

    type: Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"] = Field(
        description="What happened."
    )
    timestamp: datetime = Field(description="When the delivery was made.")
    data: WebhookJob
