"""The one catalogue of problems: every error sdserve can answer with, or record on a job.

Each ``ProblemType`` has a stable ``slug`` (its ``type`` URI is ``/problems/<slug>``), an HTTP ``status``
(``ON_JOB``, 200, for problems only ever recorded on a failed job), a ``title`` and a ``description``. The
gateway's error table (``app.errors``), the ``GET /problems/{slug}`` pages, the worker's and the janitor's
failures all derive from it: nothing else spells a slug. Kinds of work add their own problem types with
``problem(...)`` in their own modules; the catalogue holds them all.

Domain errors carry their problem type::

    SdserveError                  internal (500)
    ├── InvalidRequest            invalid-request (422): the request cannot run as asked
    │   ├── UnknownName           unknown-name: a model / scheduler / style / LoRA the registry lacks
    │   ├── InvalidImage          invalid-image: an image or mask that cannot be used
    │   ├── UnusableInput         unusable-input: an input id that is unknown, expired, deleted or not yours
    │   ├── IdempotencyKeyReused  idempotency-key-reused
    │   └── UnsafeWebhookUrl      unsafe-webhook-url
    ├── NotFound                  not-found (404)
    ├── Conflict                  conflict (409)
    ├── Unauthorized              unauthorized (401)
    ├── Forbidden                 forbidden (403)
    ├── RateLimited               rate-limited (429)
    ├── Unavailable               unavailable (503): a dependency is down
    │   ├── ModelUnavailable      model-unavailable: no live worker serves the model
    │   └── Overloaded            overloaded: healthy, but at capacity (queue full, connections busy)
    ├── StorageFull               storage-full (507)
    └── JobFailed                 job-failed (on a job): the job ran and failed
        ├── OutOfMemory           out-of-memory
        ├── JobTimedOut           timeout
        ├── WorkerLost            worker-lost
        └── StorageFailed         storage-failed: results could not be stored
    JobCanceled                   canceled (on a job): raised inside a job that was canceled
    JobStopped                    the job ended elsewhere (failed by the janitor, superseded): stop quietly
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

ON_JOB = 200
"""The ``status`` of problems that are recorded on a failed job, never answered over HTTP."""

PROBLEM_BASE = "/problems/"
"""Problem ``type`` URIs are relative references under the gateway (``GET /problems/<slug>`` explains one)."""


@dataclass(frozen=True)
class ProblemType:
    """One kind of problem: what its ``type`` URI names."""

    slug: str
    status: int
    title: str
    description: str
    origin: str = field(default="", compare=False)
    """The module that defined it (a kind's own problems name their kind's module)."""

    @property
    def type(self) -> str:
        """The RFC 9457 ``type`` URI."""
        return f"{PROBLEM_BASE}{self.slug}"


_CATALOGUE: dict[str, ProblemType] = {}


def problem(slug: str, status: int, title: str, description: str) -> ProblemType:
    """Define a problem type and add it to the catalogue (a slug is defined once)."""
    if slug in _CATALOGUE:
        raise ValueError(f"problem type {slug!r} is defined twice")
    origin = str(sys._getframe(1).f_globals.get("__name__", ""))
    entry = ProblemType(slug, status, title, description, origin)
    _CATALOGUE[slug] = entry
    return entry


def catalogue() -> dict[str, ProblemType]:
    """Every problem type defined so far (the gateway imports every kind, so it sees them all)."""
    return dict(_CATALOGUE)


def lookup(type_uri: str) -> ProblemType | None:
    """The problem type a ``type`` URI names, if the catalogue has it."""
    return _CATALOGUE.get(type_uri.removeprefix(PROBLEM_BASE))


# --- the generic catalogue -------------------------------------------------------------------------
VALIDATION_ERROR = problem(
    "validation-error", 422, "The request is invalid",
    "A field is missing, malformed or out of bounds; `errors` lists each failing field. Fix the request; "
    "retrying as is fails again.",
)  # fmt: skip
INVALID_REQUEST = problem(
    "invalid-request", 422, "The request cannot run as asked",
    "The request is well-formed but cannot run as asked (e.g. a model that cannot do this task); `errors` names "
    "the fields.",
)  # fmt: skip
BAD_REQUEST = problem(
    "bad-request", 400, "Bad request",
    "The body could not be read at all (JSON that is not UTF-8, broken multipart). Fix the request; retrying as "
    "is fails again.",
)  # fmt: skip
UNKNOWN_NAME = problem(
    "unknown-name", 422, "Unknown name",
    "A model, scheduler, style or LoRA that the registry does not have. GET /v1/models, /v1/schedulers, "
    "/v1/styles or /v1/loras list the valid names.",
)  # fmt: skip
INVALID_IMAGE = problem(
    "invalid-image", 422, "The image is invalid",
    "An input image or mask that cannot be used: not PNG, JPEG or WEBP, corrupt or truncated, over the size "
    "limits, a mask of another size than its image, or a mask with nothing to repaint. `errors` names the field.",
)  # fmt: skip
UNUSABLE_INPUT = problem(
    "unusable-input", 422, "The input cannot be used",
    "An upload id that is unknown, expired, belongs to another API key, or was an input of a job that has been "
    "deleted. Upload the file again and use the new id.",
)  # fmt: skip
REQUEST_TIMEOUT = problem(
    "request-timeout", 408, "The request took too long to arrive",
    "The client sent its request body too slowly; the connection was closed. Send it again at a normal pace.",
)  # fmt: skip
PAYLOAD_TOO_LARGE = problem(
    "payload-too-large", 413, "Request body too large",
    "The body is over the gateway's limit. Send large images through POST /v1/uploads and refer to them by id.",
)  # fmt: skip
UNSAFE_WEBHOOK_URL = problem(
    "unsafe-webhook-url", 422, "The webhook URL is not allowed",
    "Callback URLs must be http(s) on an allowed port and reach only public addresses (no loopback, private, "
    "link-local, CGNAT, multicast or reserved ones), unless the operator allow-lists that host and port.",
)  # fmt: skip
IDEMPOTENCY_KEY_REUSED = problem(
    "idempotency-key-reused", 422, "The Idempotency-Key was used with another request",
    "The same key must come with the same body; use a new key for a new request.",
)  # fmt: skip
CONFLICT = problem(
    "conflict", 409, "Conflict with the current state", "The request does not fit the resource's state now."
)
UNAUTHORIZED = problem(
    "unauthorized", 401, "Authentication required", "Send an API key as `Authorization: Bearer <key>`."
)
FORBIDDEN = problem(
    "forbidden", 403, "Forbidden",
    "The API key lacks the scope this endpoint needs (e.g. `admin`), or a signed URL's signature is wrong or it has "
    "expired (fetch the job again for a fresh URL).",
)  # fmt: skip
RATE_LIMITED = problem(
    "rate-limited", 429, "Too many requests",
    "The key's rate limit or its cap on queued and running jobs is reached; retry after `Retry-After` seconds. "
    "`RateLimit-*` headers show the budget.",
)  # fmt: skip
NOT_FOUND = problem(
    "not-found", 404, "Not found", "No such job, upload or file, or it is not yours, or it has expired."
)
METHOD_NOT_ALLOWED = problem(
    "method-not-allowed", 405, "Method not allowed",
    "This path does not take this HTTP method; the `Allow` header lists those it takes.",
)  # fmt: skip
NOT_ACCEPTABLE = problem(
    "not-acceptable", 406, "Not acceptable", "The `Accept` header asks for a representation this endpoint lacks."
)
UNSUPPORTED_MEDIA_TYPE = problem(
    "unsupported-media-type", 415, "Unsupported media type",
    "The body's `Content-Type` is not one this endpoint reads (JSON bodies: application/json; uploads: "
    "multipart/form-data).",
)  # fmt: skip
UNAVAILABLE = problem(
    "unavailable", 503, "Service unavailable",
    "A dependency (Redis, the object store) is unreachable or refuses writes. Retry after the `Retry-After` "
    "seconds.",
)  # fmt: skip
OVERLOADED = problem(
    "overloaded", 503, "Over capacity",
    "The service is healthy but at capacity (a model's queue is full, or every connection to the job store is "
    "busy). Retry after the `Retry-After` seconds; nothing was created.",
)  # fmt: skip
MODEL_UNAVAILABLE = problem(
    "model-unavailable", 503, "No worker serves this model",
    "No worker has served this model lately, so a job for it would wait forever; GET /v1/models shows what live "
    "workers serve. Operators who scale workers from zero set SDSERVE_UNSERVED_MODELS=queue.",
)  # fmt: skip
STORAGE_FULL = problem(
    "storage-full", 507, "Storage is full",
    "The object store has no room left for the upload or the job's inputs; nothing was stored. Retry after "
    "`Retry-After` seconds, once the operator has made room.",
)  # fmt: skip
INTERNAL = problem(
    "internal", 500, "Internal error", "An unexpected failure; the request id identifies it in the logs."
)
JOB_FAILED = problem("job-failed", ON_JOB, "The job failed", "Set on a failed job: the job ran and could not finish.")
OUT_OF_MEMORY = problem(
    "out-of-memory", ON_JOB, "Out of accelerator memory", "Set on a failed job: try a smaller size or fewer images."
)
TIMEOUT = problem(
    "timeout", ON_JOB, "The job ran out of time",
    "Set on a failed job: it ran longer than its timeout (derived from its size and steps, capped by "
    "SDSERVE_JOB_TIMEOUT_SECONDS).",
)  # fmt: skip
WORKER_LOST = problem(
    "worker-lost", ON_JOB, "The job's worker was lost",
    "Set on a failed job: its worker died (killed, out of memory, node lost) during each of its allowed attempts "
    "(SDSERVE_MAX_ATTEMPTS).",
)  # fmt: skip
STORAGE_FAILED = problem(
    "storage-failed", ON_JOB, "The results could not be stored",
    "Set on a failed job: the object store refused its results (full, or unreachable); none of its files were "
    "kept. Submit it again once storage is back.",
)  # fmt: skip
WEIGHTS_LOAD_FAILED = problem(
    "adapter-load-failed", ON_JOB, "A LoRA or embedding could not be loaded",
    "Set on a failed job: a LoRA or embedding file (the registry's, or one of yours: gone from the store, or not "
    "the file its SHA-256 names) could not be loaded by the worker.",
)  # fmt: skip
CANCELED = problem("canceled", ON_JOB, "The job was canceled", "Set on a canceled job: someone asked it to stop.")


# --- errors ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldError:
    """One failing field: where (``body.width``) and why."""

    field: str
    message: str


class SdserveError(Exception):
    """Base of every error sdserve raises on purpose; its problem type says what it is."""

    problem: ClassVar[ProblemType] = INTERNAL

    def __init__(self, detail: str, *, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries (Retry-After, challenges)."""
        return {}


class InvalidRequest(SdserveError):
    """The request is well-formed JSON but cannot run as asked."""

    problem = INVALID_REQUEST


class UnknownName(InvalidRequest):
    """A name (model, scheduler, style, LoRA) that the registry does not know."""

    problem = UNKNOWN_NAME


class InvalidImage(InvalidRequest):
    """An image or mask that cannot be used: wrong format, corrupt, too large, misaligned, empty."""

    problem = INVALID_IMAGE

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", errors=[FieldError(field, reason)])
        self.field = field


class UnusableInput(InvalidRequest):
    """An input id that cannot be used by this caller (unknown, expired, deleted, another key's)."""

    problem = UNUSABLE_INPUT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", errors=[FieldError(field, reason)])


class IdempotencyKeyReused(InvalidRequest):
    """The key was used before with a different request body."""

    problem = IDEMPOTENCY_KEY_REUSED


class UnsafeWebhookUrl(InvalidRequest):
    """A callback URL that sdserve will not call."""

    problem = UNSAFE_WEBHOOK_URL

    def __init__(self, reason: str, *, permanent: bool = True) -> None:
        super().__init__(f"webhook.url: {reason}", errors=[FieldError("body.webhook.url", reason)])
        self.reason = reason
        self.permanent = permanent


class NotFound(SdserveError):
    """No such job, upload or file (or not yours)."""

    problem = NOT_FOUND


class Conflict(SdserveError):
    """The request does not fit the resource's current state (e.g. redelivering a job that has not ended)."""

    problem = CONFLICT


class PayloadTooLarge(SdserveError):
    """A body, or a file in it, over its limit (an endpoint whose files have several limits checks its own)."""

    problem = PAYLOAD_TOO_LARGE


class UnsupportedMediaType(SdserveError):
    """A body of a content type the endpoint does not read."""

    problem = UNSUPPORTED_MEDIA_TYPE


class Unauthorized(SdserveError):
    """No valid API key."""

    problem = UNAUTHORIZED

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="sdserve"'}


class Forbidden(SdserveError):
    """The key lacks a scope, or a signed URL does not verify."""

    problem = FORBIDDEN


class _Retryable(SdserveError):
    """An error the client should retry after ``retry_after`` seconds."""

    def __init__(self, detail: str, *, retry_after: int = 2, extra_headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.extra_headers = dict(extra_headers or {})

    @property
    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "Retry-After": str(self.retry_after)}


class RateLimited(_Retryable):
    """The caller's rate limit or active-job cap is reached."""

    problem = RATE_LIMITED


class Unavailable(_Retryable):
    """A dependency the request needs is unreachable; retry later."""

    problem = UNAVAILABLE


class ModelUnavailable(Unavailable):
    """No live worker serves the requested model."""

    problem = MODEL_UNAVAILABLE


class Overloaded(Unavailable):
    """The service is at capacity (queue full, connections busy); nothing is broken."""

    problem = OVERLOADED


class StorageFull(_Retryable):
    """The object store has no room (a full disk, a quota)."""

    problem = STORAGE_FULL


class JobFailed(SdserveError):
    """The job ran and failed; recorded on the job, never raised over HTTP."""

    problem = JOB_FAILED


class OutOfMemory(JobFailed):
    """The accelerator ran out of memory for this job (smaller size or fewer images may fit)."""

    problem = OUT_OF_MEMORY


class JobTimedOut(JobFailed):
    """The job ran longer than its timeout."""

    problem = TIMEOUT


class WorkerLost(JobFailed):
    """The job's worker died during every attempt it was allowed."""

    problem = WORKER_LOST


class StorageFailed(JobFailed):
    """The job's results could not be stored."""

    problem = STORAGE_FAILED


class JobCanceled(SdserveError):
    """Raised inside a running job when its cancellation is observed."""

    problem = CANCELED


class JobStopped(SdserveError):
    """Raised inside a running job that ended elsewhere or was given to another worker: stop, record nothing."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason
