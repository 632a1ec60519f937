"""Image jobs as the API reports them (``Job``), as webhooks carry them, and the result a worker records."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.limits import MAX_SEED
from sdserve.images.requests import JobRequest, Task
from sdserve.jobs.record import JobError
from sdserve.jobs.view import Progress


class StoredImage(BaseModel):
    """One output image as the worker records it: where it lies, not how to reach it."""

    index: int
    key: str
    seed: int
    width: int
    height: int
    content_type: str


class ImageJobResult(BaseModel):
    """What a succeeded image job's record holds in ``result``."""

    images: list[StoredImage] = Field(default_factory=list)
    manifest_key: str | None = None
    mask_key: str | None = None


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
    adapters_ms: float | None = Field(default=None, description="Loading (if needed) and activating LoRAs.")
    load_ms: float | None = Field(default=None, description="Preparing the pipeline (scheduler, derived pipeline).")
    inference_ms: float | None = Field(default=None, description="Text encoding and denoising.")
    decode_ms: float | None = Field(default=None, description="VAE decode and image encoding.")
    upload_ms: float | None = Field(default=None, description="Writing outputs to the object store.")
    run_ms: float | None = Field(default=None, description="From start to finish on the worker.")
    total_ms: float | None = Field(default=None, description="From acceptance to finish.")


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
        "owned_adapters": [],
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
        default=None,
        description="Jobs ahead of this one in its model's queue (0: next); only while queued. Workers take the "
        "oldest job across every queue they serve, so no job accepted after this one starts before it.",
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
    """The job as a webhook carries it: the fields of ``Job`` without the request, URLs of the manifest and
    mask, queue position or internal flags."""

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
