"""Pure ASGI middleware: request ids, the access log and HTTP metrics, headers every answer carries, JSON
bodies sent with a form content type, and the body limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming responses and the event loop stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import CALLER, REQUEST_ID, Caller
from sdserve.contract.problems import PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT, VALIDATION_ERROR, ProblemType
from sdserve.observe.logs import bind
from sdserve.observe.metrics import Metrics

log = logging.getLogger("sdserve.http")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` if sane), echo it, and log with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _VALID_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope[REQUEST_ID] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        with bind(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class CallerHeadersMiddleware:
    """Add the headers a request's caller collected (``RateLimit-*``) to whatever answers it, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            caller = scope.get(CALLER)
            if message["type"] == "http.response.start" and isinstance(caller, Caller) and caller.headers:
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in caller.headers.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLogMiddleware:
    """One JSON log line and the HTTP metrics per request (by route template, method and status)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_duration.labels(route, method).observe(elapsed)
            log.info(
                "%s %s %d", method, scope["path"], status,
                extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )  # fmt: skip


class JsonBodyMiddleware:
    """Read bodies of the JSON endpoints as JSON even when the client sent no or a form content type.

    ``curl -d '{...}'`` labels its body ``application/x-www-form-urlencoded``; the create endpoints
    only take JSON, so such a body is parsed as JSON (and refused with a clear 422 if it is not).
    Multipart endpoints (``multipart``: path prefixes) are left alone.
    """

    def __init__(self, app: ASGIApp, json_prefixes: tuple[str, ...] = ("/v1/",),
                 multipart: tuple[str, ...] = ("/v1/uploads",)) -> None:  # fmt: skip
        self.app = app
        self.json_prefixes = json_prefixes
        self.multipart = multipart

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            path: str = scope["path"]
            if path.startswith(self.json_prefixes) and not path.startswith(self.multipart):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
                if (
                    not ctype
                    or ctype.startswith(b"application/x-www-form-urlencoded")
                    or ctype.startswith(b"text/plain")
                ):
                    scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


class DuplicateKeysMiddleware:
    """Refuse a JSON body that names a key twice (422), instead of reading the last one as JSON parsers do.

    A proxy or a WAF in front of sdserve may read the first of two equal keys: both must see the same request.
    Runs inside the body limit, so at most the limit is buffered; a body that is not JSON at all is left to
    the endpoint, which answers it as usual.
    """

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = ("/v1/",)) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if not scope["path"].startswith(self.prefixes) or not ctype.startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            json.loads(body, object_pairs_hook=_refuse_duplicates)
        except DuplicateKeyError as exc:
            error = {"field": f"body.{exc.path}", "message": "appears twice", "type": "duplicate_key"}
            detail = f"body: the key {exc.path!r} appears twice"
            await _send_problem(scope, send, 422, VALIDATION_ERROR, detail, [error])
            return
        except ValueError:
            pass  # not JSON: the endpoint refuses it in its own words
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BodyLimitMiddleware:
    """Refuse request bodies over a limit with a 413 problem, whether or not they declare a length.

    A declared ``Content-Length`` over the limit is answered before a byte of the body is read; a
    chunked body is counted as it streams and stopped as soon as it passes the limit. Either way the
    gateway never holds more than the limit in memory for one request. ``limits`` gives some paths
    their own limit (uploads: a file plus multipart overhead).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.max_bytes)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_too_large(scope, send, limit)
            return
        seen = 0
        answered = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(status_code=413, detail=_too_large_detail(limit))
            return message

        async def noting_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except HTTPException as exc:
            # A middleware inside this one read the body (the endpoint's own reads become a problem in FastAPI's
            # handler): the 413 is answered here, not turned into a 500.
            if exc.status_code != 413 or answered:
                raise
            await _send_too_large(scope, send, limit)


def _too_large_detail(limit: int) -> str:
    return f"the request body is over {limit:,} bytes; send large images through POST /v1/uploads"


async def _send_too_large(scope: Scope, send: Send, limit: int) -> None:
    await _send_problem(scope, send, 413, PAYLOAD_TOO_LARGE, _too_large_detail(limit), close=True)


async def _send_problem(
    scope: Scope,
    send: Send,
    status: int,
    problem: ProblemType,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Answer with a problem+json before the app has seen the request."""
    body = json.dumps(
        {
            "type": problem.type, "title": problem.title, "status": status, "detail": detail,
            "instance": scope["path"], "request_id": scope.get(REQUEST_ID), "errors": errors or [],
        }
    ).encode()  # fmt: skip
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooSlow(Exception):
    """The body missed its deadline (raised from ``receive``, wherever in the app the body was being read)."""


class BodyTimeoutMiddleware:
    """408 ``request-timeout``, and the connection closed, for a body that takes longer than ``seconds`` to arrive.

    It sits inside the request-id and access-log middlewares (the 408 carries the request id and is logged) and
    outside every reader of the body (the JSON checks, the routes, multipart parsing).
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline: float | None = None
        done = False
        started = False

        async def bounded() -> Message:
            nonlocal deadline, done
            if done:
                return await receive()  # the body is in: what follows is a disconnect, wait for it freely
            if deadline is None:
                deadline = time.monotonic() + self.seconds
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise _BodyTooSlow from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded, noting_send)
        except _BodyTooSlow:
            log.info("request body too slow: closing the connection", extra={"path": scope["path"]})
            if not started:
                detail = f"the request body took longer than {self.seconds:g} s to arrive"
                await _send_problem(scope, send, 408, REQUEST_TIMEOUT, detail, close=True)
