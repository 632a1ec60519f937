"""Dependency aliases: routes declare what they need with these ``Annotated`` names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.state import GatewayState
from sdserve.queue import ANONYMOUS, JobQueue
from sdserve.registry import Registry
from sdserve.settings import Settings
from sdserve.store import ObjectStore


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in
# its threadpool, a thread hop (and a GIL hand-off) per dependency per request.
async def get_state(request: Request) -> GatewayState:
    return _state(request)


async def get_settings(request: Request) -> Settings:
    return _state(request).settings


async def get_queue(request: Request) -> JobQueue:
    return _state(request).queue


async def get_registry(request: Request) -> Registry:
    return _state(request).registry


async def get_store(request: Request) -> ObjectStore:
    return _state(request).store


async def get_base_url(request: Request) -> str:
    """Where clients reach the gateway: the configured public URL, else this request's own base."""
    public = _state(request).settings.public_url
    return str(public).rstrip("/") if public else str(request.base_url).rstrip("/")


async def get_owner(request: Request) -> str:
    """The caller jobs belong to (the API key's name once keys are configured)."""
    value = request.scope.get("state", {}).get("owner")
    return str(value) if value else ANONYMOUS


async def get_request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value else None


@dataclass(frozen=True, slots=True)
class Caller:
    """What a create endpoint needs about its request, solved as one dependency (each dependency FastAPI
    solves costs it per request)."""

    state: GatewayState
    base_url: str
    request_id: str | None
    owner: str


async def get_caller(request: Request) -> Caller:
    state = _state(request)
    public = state.settings.public_url
    base_url = str(public).rstrip("/") if public else str(request.base_url).rstrip("/")
    scope_state = request.scope.get("state", {})
    request_id, owner = scope_state.get("request_id"), scope_state.get("owner")
    return Caller(state, base_url, str(request_id) if request_id else None, str(owner) if owner else ANONYMOUS)


StateDep = Annotated[GatewayState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BaseUrlDep = Annotated[str, Depends(get_base_url)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]
OwnerDep = Annotated[str, Depends(get_owner)]
CallerDep = Annotated[Caller, Depends(get_caller)]
