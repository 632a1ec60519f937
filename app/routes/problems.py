"""``GET /problems/{slug}``: what each problem ``type`` means (problem types resolve here)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict

from app.errors import problem_responses
from sdserve.errors import NotFound

router = APIRouter(tags=["problems"])

PROBLEMS: dict[str, tuple[int, str, str]] = {
    "validation-error": (
        422,
        "The request is invalid",
        "A field is missing, malformed or out of bounds; "
        "`errors` lists each failing field. Fix the request; retrying as is fails again.",
    ),
    "invalid-request": (422, "The request is invalid", "The request is well-formed but cannot run as asked."),
    "bad-request": (
        400,
        "Bad request",
        "The body could not be read at all (JSON that is not UTF-8, broken multipart). Fix the request; "
        "retrying as is fails again.",
    ),
    "unknown-name": (
        422,
        "Unknown name",
        "A model, scheduler, style or LoRA that the registry does not "
        "have. GET /v1/models, /v1/schedulers, /v1/styles or /v1/loras list the valid names.",
    ),
    "invalid-image": (
        422,
        "The image is invalid",
        "An input image or mask that cannot be used: not PNG, JPEG "
        "or WEBP, corrupt or truncated, over the size limits, a mask of another size than its "
        "image, or a mask with nothing to repaint. `errors` names the field.",
    ),
    "payload-too-large": (
        413,
        "Request body too large",
        "The body is over the gateway's limit. Send large images through POST /v1/uploads and refer to them by id.",
    ),
    "unsafe-webhook-url": (
        422,
        "The webhook URL is not allowed",
        "Callback URLs must be http(s) on an allowed "
        "port and reach only public addresses (no loopback, private, link-local, CGNAT, "
        "multicast or reserved ones).",
    ),
    "idempotency-key-reused": (
        422,
        "The Idempotency-Key was used with another request",
        "The same key must come with the same body; use a new key for a new request.",
    ),
    "conflict": (409, "Conflict with the current state", "The request does not fit the resource's state now."),
    "unauthorized": (401, "Authentication required", "Send an API key as `Authorization: Bearer <key>`."),
    "rate-limited": (
        429,
        "Too many requests",
        "The key's rate limit or its cap on queued and running jobs is "
        "reached; retry after `Retry-After` seconds. `RateLimit-*` headers show the budget.",
    ),
    "worker-lost": (
        200,
        "The job's worker was lost",
        "Set on a failed job: its worker died (killed, out of "
        "memory, node lost) during each of its allowed attempts (SDSERVE_MAX_ATTEMPTS).",
    ),
    "timeout": (
        200,
        "The job ran out of time",
        "Set on a failed job: it ran longer than its timeout (derived "
        "from its size and steps, capped by SDSERVE_JOB_TIMEOUT_SECONDS).",
    ),
    "not-found": (404, "Not found", "No such job or file, or it has expired."),
    "forbidden": (
        403,
        "Forbidden",
        "The API key lacks the scope this endpoint needs (e.g. `admin`), or a signed URL's signature is wrong "
        "or it has expired (fetch the job again for a fresh URL).",
    ),
    "method-not-allowed": (
        405,
        "Method not allowed",
        "This path does not take this HTTP method; the `Allow` header lists those it takes.",
    ),
    "not-acceptable": (406, "Not acceptable", "The `Accept` header asks for a representation this endpoint lacks."),
    "unsupported-media-type": (
        415,
        "Unsupported media type",
        "The body's `Content-Type` is not one this endpoint reads (JSON bodies: application/json; uploads: "
        "multipart/form-data).",
    ),
    "unavailable": (
        503,
        "Service unavailable",
        "A dependency (Redis, the object store) is unreachable. Retry after the `Retry-After` seconds.",
    ),
    "model-unavailable": (
        503,
        "No worker serves this model",
        "No worker has served this model lately, so a "
        "job for it would wait forever; GET /v1/models shows what live workers serve. Operators "
        "who scale workers from zero set SDSERVE_UNSERVED_MODELS=queue.",
    ),
    "adapter-load-failed": (
        200,
        "An adapter could not be loaded",
        "Set on a failed job: a LoRA or embedding file of the registry could not be loaded by the worker.",
    ),
    "internal": (500, "Internal error", "An unexpected failure; the request id identifies it in the logs."),
    "job-failed": (200, "The job failed", "Set on a failed job: the job ran and could not finish."),
    "out-of-memory": (
        200,
        "Out of accelerator memory",
        "Set on a failed job: try a smaller size or fewer images.",
    ),
    "canceled": (200, "The job was canceled", "Set on a canceled job."),
}


class ProblemType(BaseModel):
    """The documentation of one problem type."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/not-found",
                    "title": "Not found",
                    "status": 404,
                    "description": "No such job or file, or it has expired.",
                }
            ]
        }
    )

    type: str
    title: str
    status: int
    description: str


@router.get(
    "/problems/{slug}",
    response_model=ProblemType,
    operation_id="getProblemType",
    summary="Explain a problem type",
    description="What a problem `type` means: every error response's `type` resolves here.",
    responses=problem_responses(404, 422),
)
async def get_problem_type(
    slug: Annotated[str, Path(max_length=64, description="Problem slug.", examples=["not-found"])],
) -> ProblemType:
    try:
        status, title, description = PROBLEMS[slug]
    except KeyError:
        raise NotFound(f"no problem type {slug!r}") from None
    return ProblemType(type=f"/problems/{slug}", title=title, status=status, description=description)
