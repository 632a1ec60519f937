"""Who is calling, what they may do, and how much: API keys, scopes, rate limits, job caps.

Routers declare their scope with ``dependencies=[Depends(require("jobs"))]``. With no key configured
the gateway runs open (everything belongs to ``anonymous``): allowed only on a loopback address,
where ``create_app`` warns about it; bound elsewhere it refuses to start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response

from app.state import GatewayState
from sdserve.auth import ApiKey, Scope
from sdserve.errors import Unavailable
from sdserve.queue import ANONYMOUS

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sdserve"'}


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def caller(request: Request) -> ApiKey | None:
    """The key of this request (None in open mode); 401 when keys are configured and none is valid."""
    state = _state(request)
    if not len(state.keys):
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "an API key is required: Authorization: Bearer <key>", headers=_CHALLENGE)
    key = state.keys.find(token.strip())
    if key is None:
        raise HTTPException(401, "the API key is not valid", headers=_CHALLENGE)
    return key


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A dependency that lets through callers holding ``scope`` and records who they are."""

    async def dependency(request: Request) -> None:
        key = caller(request)
        if key is not None and scope not in key.scopes:
            raise HTTPException(403, f"this API key lacks the {scope!r} scope")
        request.scope.setdefault("state", {})["owner"] = key.name if key is not None else ANONYMOUS
        request.scope["state"]["api_key"] = key

    return dependency


async def admit(request: Request, response: Response, model: str | None) -> None:
    """Limits on creating work: the key's rate limit and active-job cap, and the model's queue depth."""
    state = _state(request)
    settings = state.settings
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    if key is not None:
        per_minute = key.rate_per_minute or settings.rate_limit_per_minute
        burst = key.burst or settings.rate_limit_burst
        decision = await state.rate_limiter.take(key.name, per_minute, burst)
        # Every answer to this request carries them, errors included (added by RequestIdMiddleware).
        request.scope.setdefault("state", {})["extra_headers"] = decision.headers()
        if not decision.allowed:
            raise HTTPException(
                429, f"rate limit: {per_minute} per minute, bursts of {burst}", headers=decision.headers()
            )
        cap = key.max_active_jobs or settings.max_active_jobs_per_key
        if model is not None and await state.queue.active_at_cap(key.name, cap):
            raise HTTPException(
                429,
                f"this key already has {cap} queued or running jobs; wait for some to end",
                headers={"Retry-After": "5"},
            )
    if model is not None and await state.queue.queue_full(model, settings.max_queue_depth):
        raise Unavailable(
            f"the queue of model {model!r} is full ({settings.max_queue_depth} jobs waiting); retry later",
            retry_after=10,
        )
