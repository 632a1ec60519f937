"""A kind of work as the gateway sees it: its create endpoints, and how a request becomes a job.

The engine's accept flow (``app.jobs.accept``) calls these in order: ``queue_of`` (cheap: for admission and
the served check), ``prepare`` (check, resolve every default, store inputs), then submits the ``NewJob`` it
returns. The engine's own endpoints (get, list, cancel, delete, events, webhook deliveries) are made for
every kind from its ``JobKind`` declaration (``app.jobs.routes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fastapi import APIRouter
from pydantic import BaseModel

from app.jobs.queue import NewJob
from sdserve.jobs.kind import JobKind

if TYPE_CHECKING:
    from app.deps import Caller
    from app.state import GatewayState


class GatewayKind(Protocol):
    """What a kind of work brings to the gateway."""

    @property
    def kind(self) -> JobKind:
        """The kind's shared declaration."""

    def router(self) -> APIRouter:
        """The kind's create endpoints (``POST /v1/txt2img``, ...): each calls ``app.jobs.accept.accept``."""

    def queue_of(self, body: BaseModel, state: GatewayState) -> str:
        """The queue a request will wait in (cheap: no image is decoded, nothing is stored)."""

    async def prepare(self, body: BaseModel, state: GatewayState, caller: Caller, job_id: str) -> NewJob:
        """Check a request, resolve every default, store its inputs; everything that can be refused is refused
        here (4xx), and a refused request leaves nothing stored."""

    # Optional: ``async def before_delete(state, record, caller) -> None``, called by ``DELETE`` before the job is
    # canceled and purged; it may refuse with ``Conflict`` (nothing has changed then) or remove what the job
    # made outside its own files (a training's adapter).
