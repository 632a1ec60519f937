"""Pure ASGI middleware: request ids, and JSON bodies sent with a form content type.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming responses and the event loop stay cheap.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdserve.logs import bind

REQUEST_ID_HEADER = "x-request-id"
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
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        with bind(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class JsonBodyMiddleware:
    """Read bodies of the JSON endpoints as JSON even when the client sent no or a form content type.

    ``curl -d '{...}'`` labels its body ``application/x-www-form-urlencoded``; the create endpoints
    only take JSON, so such a body is parsed as JSON (and refused with a clear 422 if it is not).
    Multipart uploads are left alone.
    """

    def __init__(self, app: ASGIApp, json_prefixes: tuple[str, ...] = ("/v1/",)) -> None:
        self.app = app
        self.json_prefixes = json_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            path: str = scope["path"]
            if path.startswith(self.json_prefixes) and not path.startswith("/v1/uploads"):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
                if (
                    not ctype
                    or ctype.startswith(b"application/x-www-form-urlencoded")
                    or ctype.startswith(b"text/plain")
                ):
                    scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
