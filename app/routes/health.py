"""Liveness and readiness: ``GET /healthz``, ``GET /readyz``."""

from __future__ import annotations

import asyncio
import logging

import redis.exceptions
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from app.deps import StateDep
from app.errors import problem_responses
from app.state import GatewayState
from sdserve.contract.problems import Unavailable

log = logging.getLogger(__name__)

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
    try:
        await refresh_queue_metrics(state)
    except redis.exceptions.RedisError as exc:  # a scrape must not fail because Redis is down; the numbers go stale
        log.warning("queue metrics not refreshed: redis unavailable (%s)", exc.__class__.__name__)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def refresh_queue_metrics(state: GatewayState) -> None:
    """Depth and the oldest waiting job's age per queue, and live workers per model, read from Redis."""
    workers = await state.queue.live_workers()
    metrics = state.metrics
    models: set[str] = set()
    for kind in state.kinds:
        for queue, model in kind.queues(state.registry).items():
            models.add(model)
            metrics.queue_depth.labels(queue, model).set(await state.queue.queue_depth(queue))
            metrics.queue_oldest.labels(queue, model).set(await state.queue.oldest_age(queue))
    for model in models:
        metrics.live_workers.labels(model).set(sum(1 for w in workers.values() if model in w.models))
