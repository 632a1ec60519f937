"""Dependency aliases: routes declare what they need with these ``Annotated`` names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.state import GatewayState
from sdserve.queue import ANONYMOUS, JobQueue
from sdserve.registry import Registry
from sdserve.settings import Settings
from sdserve.store import ObjectStore


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_queue(request: Request) -> JobQueue:
    return get_state(request).queue


def get_registry(request: Request) -> Registry:
    return get_state(request).registry


def get_store(request: Request) -> ObjectStore:
    return get_state(request).store


def get_base_url(request: Request) -> str:
    """Where clients reach the gateway: the configured public URL, else this request's own base."""
    public = get_state(request).settings.public_url
    return str(public).rstrip("/") if public else str(request.base_url).rstrip("/")


def get_owner(request: Request) -> str:
    """The caller jobs belong to (the API key's name once keys are configured)."""
    value = request.scope.get("state", {}).get("owner")
    return str(value) if value else ANONYMOUS


def get_request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value else None


StateDep = Annotated[GatewayState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
BaseUrlDep = Annotated[str, Depends(get_base_url)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]
OwnerDep = Annotated[str, Depends(get_owner)]
