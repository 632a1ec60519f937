"""Liveness and readiness: ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import asyncio

import redis.exceptions
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from app.deps import StateDep
from app.errors import problem_responses
from sdserve.errors import Unavailable

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The gateway's health."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "checks": {"redis": "ok", "store": "ok"}}]}
    )

    status: str = Field(description="`ok`.")
    checks: dict[str, str] = Field(default_factory=dict, description="Each dependency checked and its state.")


@router.get("/healthz", response_model=Health, operation_id="getHealth", summary="Liveness")
async def healthz() -> Health:
    """The process is up and serving HTTP (checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    operation_id="getReadiness",
    summary="Readiness",
    responses=problem_responses(503),
)
async def readyz(state: StateDep) -> Health:
    """Ready to accept jobs: Redis answers and the object store is writable."""
    try:
        await asyncio.wait_for(state.redis.ping(), timeout=state.settings.redis_timeout_seconds)
    except (redis.exceptions.RedisError, TimeoutError) as exc:
        raise Unavailable(f"redis is unreachable: {exc.__class__.__name__}") from exc
    await run_in_threadpool(state.store.check)
    return Health(status="ok", checks={"redis": "ok", "store": "ok"})
