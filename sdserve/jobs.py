"""The job contract: what a client may ask for, and what it gets back.

Every bound a request has is declared here as a pydantic ``Field`` limit, so that the OpenAPI
document (and every SDK generated from it) states the truth. The gateway validates against these
models; the worker receives the *resolved* request (every default filled in by the gateway) and
trusts it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator

# --- limits ---------------------------------------------------------------------------------
MIN_SIDE = 64
"""Smallest width or height, in pixels."""
MAX_SIDE = 3072
"""Largest width or height, in pixels (wide or tall images, within the pixel budget)."""
MAX_PIXELS = 2048 * 2048
"""Largest width × height of one image (4,194,304 pixels)."""
MAX_STEPS = 150
"""Most denoising steps a job may ask for."""
MAX_IMAGES = 8
"""Most images one job may generate."""
MAX_PROMPT_CHARS = 2000
"""Longest prompt or negative prompt, in characters (the text encoder reads the first 77 tokens)."""
MAX_SEED = 2**32 - 1
"""Seeds are unsigned 32-bit integers; image *i* of a job uses ``(seed + i) mod 2**32``."""
MAX_LORAS = 4
"""Most LoRA adapters one job may combine."""
MAX_METADATA_KEYS = 16
"""Most client metadata entries carried by a job."""

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
"""A registry name: lower-case letters, digits, '.', '_' and '-'; never a path or URL."""

SchedulerName = Literal[
    "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "pndm", "unipc", "lcm"
]
SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__  # type: ignore[attr-defined]

Task = Literal["txt2img"]


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


class WebhookEvent(StrEnum):
    """Events a webhook can subscribe to."""

    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_WEBHOOK_EVENTS = [WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELED]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraRef(_Strict):
    """One LoRA adapter to apply, by registry name."""

    name: Name = Field(description="Adapter name, as listed by `GET /v1/loras`.")
    scale: float | None = Field(
        default=None, ge=-2.0, le=2.0, description="Adapter strength; default: the adapter's own default."
    )


class OutputOptions(_Strict):
    """How result images are encoded."""

    format: Literal["png", "jpeg", "webp"] = Field(
        default="png", description="Image format. PNG carries the generation parameters in a text chunk."
    )
    quality: int = Field(default=90, ge=1, le=100, description="JPEG/WEBP quality (ignored for PNG).")


class WebhookSpec(_Strict):
    """Where to POST signed job events (Standard Webhooks)."""

    url: str = Field(
        min_length=8, max_length=2048, pattern=r"^https?://", description="Callback URL, http(s) only."
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(TERMINAL_WEBHOOK_EVENTS),
        min_length=1,
        max_length=5,
        description="Events to deliver; default: the terminal ones.",
    )


class GenerationParams(_Strict):
    """Fields common to every task."""

    model: Name | None = Field(
        default=None, description="Model name (see `GET /v1/models`); default: the service's default model."
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from."
    )
    width: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=8,
        description=f"Image width in pixels, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. "
        "Default: the model's native size.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=8,
        description=f"Image height in pixels, a multiple of 8; width × height ≤ {MAX_PIXELS:,}. "
        "Default: the model's native size.",
    )
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES, description="How many images to generate.")
    steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Denoising steps; default: the model's default."
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=30.0,
        description="Classifier-free guidance; ≤ 1 turns it off. Default: model's.",
    )
    scheduler: SchedulerName | None = Field(
        default=None, description="Sampler; default: the model's default."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first image; image i uses seed + i. Default: chosen at random and reported.",
    )
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS, description="LoRA adapters.")
    style: Name | None = Field(default=None, description="Style preset (see `GET /v1/styles`).")
    output: OutputOptions = Field(default_factory=OutputOptions, description="Output encoding.")
    webhook: WebhookSpec | None = Field(default=None, description="Signed callback for job events.")
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description="Your own key/value pairs, echoed back on the job and its webhooks.",
    )

    @model_validator(mode="after")
    def _pixel_budget(self) -> GenerationParams:
        if self.width is not None and self.height is not None and self.width * self.height > MAX_PIXELS:
            raise ValueError(f"width × height must be at most {MAX_PIXELS:,} pixels")
        names = [lora.name for lora in self.loras]
        if len(names) != len(set(names)):
            raise ValueError("each LoRA may be listed once")
        return self


class Txt2ImgRequest(GenerationParams):
    """Generate images from a text prompt."""

    task: Literal["txt2img"] = Field(default="txt2img", description="Always `txt2img` on this endpoint.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "steps": 12},
                {
                    "prompt": "a red fox in the snow, detailed",
                    "negative_prompt": "blurry",
                    "model": "tiny",
                    "num_images": 2,
                    "seed": 42,
                    "scheduler": "dpmpp_2m_karras",
                    "guidance_scale": 6.5,
                    "output": {"format": "png"},
                    "metadata": {"user": "u-123"},
                },
            ]
        },
    )


JobRequest = Txt2ImgRequest
"""Every task's request model (a union, discriminated on ``task``, as tasks are added)."""


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
    load_ms: float | None = Field(default=None, description="Pipeline (and adapter) preparation.")
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
    error: JobError | None = None
    timings: Timings = Field(default_factory=Timings)
    metadata: dict[str, str] = Field(default_factory=dict)
    links: dict[str, str] = Field(
        default_factory=dict, description="Related resources (self, cancel, events)."
    )
