"""The one table from errors to HTTP: status codes and RFC 9457 problem+json bodies.

Every error response of the gateway is ``application/problem+json`` with a stable ``type`` per kind
of error, a ``title``, the ``status``, a ``detail``, the ``instance`` (request path), the request id,
and, for validation errors, the failing fields. Never a traceback.
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

from sdserve.errors import (
    Conflict,
    InvalidRequest,
    ModelUnavailable,
    NotFound,
    SdserveError,
    Unavailable,
    problem_type,
)

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


# The table: domain error class → HTTP status. Subclasses inherit their base's row.
STATUS: dict[type[SdserveError], int] = {
    InvalidRequest: 422,
    NotFound: 404,
    Conflict: 409,
    ModelUnavailable: 503,
    Unavailable: 503,
}

# Problems the gateway itself names (not raised as domain errors).
HTTP_SLUGS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "The request is invalid"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def status_of(exc: SdserveError) -> int:
    """The HTTP status of a domain error (first matching row up its class tree)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build a problem+json response."""
    body = Problem(
        type=problem_type(slug),
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
        errors=errors or [],
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SdserveError)
    status = status_of(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    errors = [FieldProblem(field=e.field, message=e.message) for e in exc.errors]
    return problem_response(
        request,
        status=status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        errors=errors,
        headers=headers,
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldProblem(field=_field_name(e.get("loc", ())), message=str(e.get("msg", "invalid")), type=e.get("type"))
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5]) or "invalid request"
    return problem_response(
        request,
        status=422,
        slug="validation-error",
        title="The request is invalid",
        detail=detail,
        errors=errors,
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug, title = HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(
        request,
        status=exc.status_code,
        slug=slug,
        title=title,
        detail=detail,
        headers=headers,
    )


def _allowed_methods(request: Request) -> str:
    """Every method the request's path answers, from the OpenAPI document (the router names only the methods
    of the first route whose path matched)."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in item if m in _METHODS}
    return ", ".join(sorted(methods))


async def _on_redis_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return problem_response(
        request,
        status=503,
        slug="unavailable",
        title="Service unavailable",
        detail="the job store (Redis) is unreachable; retry shortly",
        headers={"Retry-After": "2"},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        status=500,
        slug="internal",
        title="Internal error",
        detail="the gateway failed unexpectedly; the request id identifies it in the logs",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the table above."""
    app.add_exception_handler(SdserveError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _on_redis_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, _on_redis_error)
    app.add_exception_handler(Exception, _on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for these statuses."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": HTTP_SLUGS.get(status, ("", "Error"))[1],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503):
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
            }
        responses[status] = entry
    return responses
