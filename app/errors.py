"""Errors as HTTP: RFC 9457 problem+json bodies, every status and title taken from the problem catalogue.

Every error response of the gateway is ``application/problem+json`` with a stable ``type`` per kind of
error, a ``title``, the ``status``, a ``detail``, the ``instance`` (request path), the request id, and, for
validation errors, the failing fields. Never a traceback. Domain errors carry their problem type
(``sdserve.contract.problems``); the few the HTTP layer itself raises (an unknown route, a wrong method)
map through ``HTTP_PROBLEMS``, which is made of the same catalogue.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.deps import REQUEST_ID
from sdserve.contract import problems as p
from sdserve.contract.problems import ProblemType, SdserveError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class FieldProblem(BaseModel):
    """One failing field of a request."""

    field: str = Field(description="Where, e.g. `body.width` or `query.limit`.")
    message: str = Field(description="Why it was refused.")
    type: str | None = Field(default=None, description="Machine-readable reason, e.g. `multiple_of`.")


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/validation-error",
                    "title": "The request is invalid",
                    "status": 422,
                    "detail": "body.width: Input should be a multiple of 8",
                    "instance": "/v1/txt2img",
                    "request_id": "4f1c2a9e8b7d4c55a1f0e2d3c4b5a697",
                    "errors": [
                        {
                            "field": "body.width",
                            "message": "Input should be a multiple of 8",
                            "type": "multiple_of",
                        }
                    ],
                }
            ]
        }
    )

    type: str = Field(description="URI reference naming the kind of problem; `GET` it for an explanation.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong with this request.")
    instance: str | None = Field(default=None, description="The request path.")
    request_id: str | None = Field(default=None, description="The request id (also in `X-Request-ID`).")
    errors: list[FieldProblem] = Field(default_factory=list, description="The failing fields, if any.")


# Problems the HTTP layer itself names (not raised as domain errors): an unknown route, a wrong method, ...
HTTP_PROBLEMS: dict[int, ProblemType] = {
    t.status: t
    for t in (
        p.BAD_REQUEST, p.UNAUTHORIZED, p.FORBIDDEN, p.NOT_FOUND, p.METHOD_NOT_ALLOWED, p.NOT_ACCEPTABLE,
        p.REQUEST_TIMEOUT, p.CONFLICT, p.PAYLOAD_TOO_LARGE, p.UNSUPPORTED_MEDIA_TYPE, p.VALIDATION_ERROR,
        p.RATE_LIMITED, p.INTERNAL, p.UNAVAILABLE, p.STORAGE_FULL,
    )
}  # fmt: skip


def problem_response(
    request: Request,
    problem: ProblemType,
    detail: str | None,
    *,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
    status: int | None = None,
) -> JSONResponse:
    """Build a problem+json response."""
    code = status or problem.status
    body = Problem(
        type=problem.type,
        title=problem.title,
        status=code,
        detail=detail,
        instance=request.url.path,
        request_id=request.scope.get(REQUEST_ID),
        errors=errors or [],
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=code, media_type=PROBLEM_JSON, headers=headers
    )


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SdserveError)
    errors = [FieldProblem(field=e.field, message=e.message) for e in exc.errors]
    return problem_response(request, exc.problem, exc.detail, errors=errors, headers=exc.headers or None)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldProblem(field=_field_name(e.get("loc", ())), message=str(e.get("msg", "invalid")), type=e.get("type"))
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5]) or "invalid request"
    return problem_response(request, p.VALIDATION_ERROR, detail, errors=errors)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    problem = HTTP_PROBLEMS.get(exc.status_code, p.BAD_REQUEST if exc.status_code < 500 else p.INTERNAL)
    detail = exc.detail if isinstance(exc.detail, str) else problem.title
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(request, problem, detail, headers=headers, status=exc.status_code)


def _allowed_methods(request: Request) -> str:
    """Every method the request's path answers, from the OpenAPI document (the router names only the methods
    of the first route whose path matched)."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in item if m in _METHODS}
    return ", ".join(sorted(methods))


POOL_EXHAUSTED = "No connection available."
"""What redis-py's blocking pool raises when every connection stayed busy for the pool's timeout."""


async def _on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, redis.exceptions.ConnectionError) and str(exc) == POOL_EXHAUSTED:
        log.warning("every Redis connection is busy: answering overloaded")
        detail = "every connection to the job store is busy: the gateway is at capacity; retry shortly"
        return problem_response(request, p.OVERLOADED, detail, headers={"Retry-After": "1"})
    log.warning("redis unavailable: %s", exc)
    detail = "the job store (Redis) is unreachable; retry shortly"
    return problem_response(request, p.UNAVAILABLE, detail, headers={"Retry-After": "2"})


async def _on_redis_reply_error(request: Request, exc: Exception) -> JSONResponse:
    if is_out_of_memory(exc):
        log.warning("redis is out of memory: %s", exc)
        detail = "the job store (Redis) is full and refuses writes; nothing was created; retry later"
        return problem_response(request, p.UNAVAILABLE, detail, headers={"Retry-After": "30"})
    return await _on_unexpected(request, exc)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for lack of memory (maxmemory with noeviction), in a script or not."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and ("OOM" in str(exc) or "maxmemory" in str(exc))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = "the gateway failed unexpectedly; the request id identifies it in the logs"
    return problem_response(request, p.INTERNAL, detail)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the table above."""
    app.add_exception_handler(SdserveError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis_error)
    app.add_exception_handler(redis.exceptions.ResponseError, _on_redis_reply_error)
    app.add_exception_handler(Exception, _on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for these statuses."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": HTTP_PROBLEMS[status].title if status in HTTP_PROBLEMS else "Error",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503, 507):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
            }
        responses[status] = entry
    return responses
