"""Who is calling and what they may do: API keys and scopes.

Routers declare their scope with ``dependencies=[Depends(require("jobs"))]``. With no key configured the
gateway runs open (everything belongs to ``anonymous``): allowed only on a loopback address, where
``create_app`` warns about it; bound elsewhere it refuses to start. Limits on creating work are admission's
business (``app.access.admission``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from app.deps import caller_of
from app.state import GatewayState
from sdserve.access.api_keys import ApiKey, Scope
from sdserve.contract.problems import Forbidden, Unauthorized


def authenticate(request: Request) -> ApiKey | None:
    """The key of this request (None in open mode); Unauthorized when keys are configured and none is valid."""
    state: GatewayState = request.app.state.gateway
    if not len(state.keys):
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    key = state.keys.find(token.strip())
    if key is None:
        raise Unauthorized("the API key is not valid")
    return key


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A dependency that lets through callers holding ``scope`` and records who they are."""

    async def dependency(request: Request) -> None:
        key = authenticate(request)
        if key is not None and scope not in key.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope")
        caller = caller_of(request)
        caller.key = key
        if key is not None:
            caller.owner = key.name

    return dependency
