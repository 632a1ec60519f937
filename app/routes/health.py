"""Liveness and readiness: ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import redis.exceptions
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from app.deps import StateDep
from app.errors import problem_responses
from app.state import GatewayState
from sdserve.errors import Unavailable
from sdserve.metrics import LIVE_WORKERS, QUEUE_DEPTH, QUEUE_OLDEST

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


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    description="The gateway's metrics (HTTP requests, submissions) and the queues' (depth, oldest job's age, "
    "live workers), in the Prometheus text format. Workers and the dispatcher serve their own.",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def metrics(state: StateDep) -> Response:
    with contextlib.suppress(redis.exceptions.RedisError):  # a scrape must not fail because Redis is down
        await refresh_queue_metrics(state)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def refresh_queue_metrics(state: GatewayState) -> None:
    """Queue depth, the oldest waiting job's age and live workers, per model, read from Redis."""
    workers = await state.queue.live_workers()
    now = time.time()
    for name in state.registry.models:
        queue_key = (await state.queue._queue(name)).key
        QUEUE_DEPTH.labels(name).set(await state.redis.llen(queue_key))
        head = await state.redis.lindex(queue_key, 0)
        head_id = head.decode() if isinstance(head, bytes) else str(head or "")
        created = await state.redis.hget(state.queue.keys.job(head_id), "created_at") if head_id else None
        QUEUE_OLDEST.labels(name).set(now - float(created) if created else 0)
        LIVE_WORKERS.labels(name).set(
            sum(1 for info in workers.values() if name in json.loads(info.get("models", "[]")))
        )
