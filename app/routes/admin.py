"""Operations, for keys with the ``admin`` scope: registry reload, queue pause/resume, worker drain."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from rq.command import send_shutdown_command

from app.deps import StateDep
from app.errors import problem_responses
from app.state import GatewayState

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class RegistryInfo(BaseModel):
    """What the registry holds after a reload."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"models": 3, "loras": 3, "embeddings": 1, "styles": 12, "version": 2}]}
    )

    models: int
    loras: int
    embeddings: int
    styles: int
    version: int = Field(description="Bumped by every reload; workers reload their registry when it changes.")


class QueueInfo(BaseModel):
    model: str
    queue: str = Field(description="The queue's name (image jobs wait in their model's queue).")
    waiting: int
    paused: bool
    workers: list[str]


class QueueList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"data": [{"model": "tiny", "queue": "tiny", "waiting": 0, "paused": False, "workers": ["gpu-1.77"]}]}
            ]
        }
    )

    data: list[QueueInfo]


class DrainRequest(BaseModel):
    """Which workers to drain (all live ones by default)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=64, description="Only workers serving this model.")


class Drained(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"workers": ["gpu-1.77"]}]})

    workers: list[str] = Field(description="Workers told to finish their current job and stop.")


def _all_queues(state: GatewayState) -> dict[str, str]:
    """Every queue of every kind, and the model it serves."""
    found: dict[str, str] = {}
    for kind in state.kinds:
        found.update(kind.queues(state.registry))
    return found


def _queues_of(state: GatewayState, model: str) -> list[str]:
    state.registry.model(model)  # 422 for a name the registry lacks
    return [queue for queue, of in _all_queues(state).items() if of == model]


async def _queues(state: GatewayState) -> QueueList:
    workers = await state.queue.live_workers()
    paused = await state.queue.paused()
    data = []
    for queue, model in _all_queues(state).items():
        serving = sorted(name for name, w in workers.items() if queue in w.queues)
        depth = await state.queue.queue_depth(queue)
        data.append(QueueInfo(model=model, queue=queue, waiting=depth, paused=queue in paused, workers=serving))
    return QueueList(data=data)


@router.post(
    "/registry/reload",
    response_model=RegistryInfo,
    operation_id="reloadRegistry",
    summary="Reload the registry file",
    description="Re-reads the registry file in this gateway and tells every process to do the same.",
    responses=problem_responses(422, 503),
)
async def reload_registry(state: StateDep) -> RegistryInfo:
    registry = await asyncio.to_thread(state.registry_holder.reload)
    version = await state.redis.incr(state.queue.keys.registry_version())
    return RegistryInfo(
        models=len(registry.models), loras=len(registry.loras), embeddings=len(registry.embeddings),
        styles=len(registry.styles), version=version,
    )  # fmt: skip


@router.get(
    "/queues",
    response_model=QueueList,
    operation_id="listQueues",
    summary="Queues: waiting jobs, pause state, workers",
    responses=problem_responses(503),
)
async def list_queues(state: StateDep) -> QueueList:
    return await _queues(state)


@router.post(
    "/queues/{model}/pause",
    response_model=QueueList,
    operation_id="pauseQueue",
    summary="Pause a model's queue",
    description="Once this answers, workers start no new job of this model (a running one finishes); new jobs "
    "still queue.",
    responses=problem_responses(404, 422, 503),
)
async def pause_queue(model: str, state: StateDep) -> QueueList:
    await state.queue.pause(_queues_of(state, model))
    return await _queues(state)


@router.post(
    "/queues/{model}/resume",
    response_model=QueueList,
    operation_id="resumeQueue",
    summary="Resume a model's queue",
    responses=problem_responses(404, 422, 503),
)
async def resume_queue(model: str, state: StateDep) -> QueueList:
    await state.queue.resume(_queues_of(state, model))
    return await _queues(state)


@router.post(
    "/drain",
    response_model=Drained,
    operation_id="drainWorkers",
    summary="Drain workers",
    description="Live workers (of one model, or all) finish the job they are running, take no new one, and stop; "
    "no attempt of any job is consumed. Their orchestrator then replaces or removes them.",
    responses=problem_responses(422, 503),
)
async def drain(state: StateDep, body: DrainRequest | None = None) -> Drained:
    workers = await state.queue.live_workers()
    model = body.model if body else None
    chosen = sorted(name for name, w in workers.items() if model is None or model in w.models)
    for name in chosen:
        await asyncio.to_thread(send_shutdown_command, state.rq_connection, name)
    return Drained(workers=chosen)
