"""Dependency aliases: routes declare what they need with these ``Annotated`` names.

Who is calling is resolved once per request into a typed ``Caller`` (``app.access.auth`` stores it on the
request), never read from string-keyed request state elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.state import GatewayState
from sdserve.access.api_keys import ApiKey
from sdserve.jobs.record import ANONYMOUS

REQUEST_ID = "sdserve.request_id"
"""The request-scope key of the request's id (set by ``app.middleware.RequestIdMiddleware``)."""
CALLER = "sdserve.caller"
"""The request-scope key under which ``app.access.auth`` keeps the request's ``Caller``."""


@dataclass(slots=True)
class Caller:
    """Who is calling, and what every answer needs to know about the request."""

    owner: str = ANONYMOUS
    key: ApiKey | None = None
    request_id: str | None = None
    base_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def base_url(request: Request) -> str:
    """Where clients reach the gateway: the configured public URL, else this request's own base."""
    public = _state(request).settings.public_url
    return str(public).rstrip("/") if public else str(request.base_url).rstrip("/")


def caller_of(request: Request) -> Caller:
    """The request's caller (made on first use; ``app.access.auth`` fills in who it is)."""
    found = request.scope.get(CALLER)
    if isinstance(found, Caller):
        return found
    caller = Caller(request_id=request.scope.get(REQUEST_ID), base_url=base_url(request))
    request.scope[CALLER] = caller
    return caller


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in
# its threadpool, a thread hop (and a GIL hand-off) per dependency per request.
async def get_state(request: Request) -> GatewayState:
    return _state(request)


async def get_caller(request: Request) -> Caller:
    return caller_of(request)


StateDep = Annotated[GatewayState, Depends(get_state)]
CallerDep = Annotated[Caller, Depends(get_caller)]
