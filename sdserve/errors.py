"""Domain errors, shared by the gateway and the worker.

Each error names a stable problem ``slug``; the gateway's one table (``app/errors.py``) maps the
class to an HTTP status and an RFC 9457 ``type`` URI built from the slug. The worker records the
same slug on a failed job, so a client sees one vocabulary everywhere.

    SdserveError
    ├── InvalidRequest          the request cannot run as asked (422)
    │   └── UnknownName         a model / scheduler / style / LoRA that the registry does not have
    ├── NotFound                no such job or file (404)
    ├── Unavailable             a dependency (Redis, the store) is down (503)
    ├── ModelUnavailable        no live worker serves the model (503)
    ├── JobFailed               the job ran and failed (worker side)
    └── JobCanceled             the job was canceled while it ran (worker side)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One failing field: where (``body.width``) and why."""

    field: str
    message: str


class SdserveError(Exception):
    """Base of every error sdserve raises on purpose."""

    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class InvalidRequest(SdserveError):
    """The request is well-formed JSON but cannot run as asked."""

    slug = "invalid-request"
    title = "The request is invalid"


class UnknownName(InvalidRequest):
    """A name (model, scheduler, style, LoRA) that the registry does not know."""

    slug = "unknown-name"
    title = "Unknown name"


class NotFound(SdserveError):
    """No such job or file (or not yours)."""

    slug = "not-found"
    title = "Not found"


class Conflict(SdserveError):
    """The request does not fit the resource's current state (e.g. redelivering a job that has not ended)."""

    slug = "conflict"
    title = "Conflict with the current state"


class Unavailable(SdserveError):
    """A dependency the request needs is unreachable; retry later."""

    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ModelUnavailable(Unavailable):
    """No live worker serves the requested model."""

    slug = "model-unavailable"
    title = "No worker serves this model"


class JobFailed(SdserveError):
    """The job ran and failed; recorded on the job, never raised over HTTP."""

    slug = "job-failed"
    title = "The job failed"


class JobCanceled(SdserveError):
    """Raised inside a running job when its cancellation is observed."""

    slug = "canceled"
    title = "The job was canceled"


PROBLEM_BASE = "/problems/"
"""Problem ``type`` URIs are relative references under the gateway (``GET /problems/<slug>`` explains one)."""


def problem_type(slug: str) -> str:
    """The RFC 9457 ``type`` URI of a problem slug."""
    return f"{PROBLEM_BASE}{slug}"


class OutOfMemory(JobFailed):
    """The accelerator ran out of memory for this job (smaller size or fewer images may fit)."""

    slug = "out-of-memory"
    title = "Out of accelerator memory"
