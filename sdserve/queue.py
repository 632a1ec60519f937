"""The gateway's side of the queue: accept, look up and locate jobs (redis.asyncio + RQ).

A job is accepted in one Redis transaction: the job record, its first event, the listing index and
RQ's own enqueue writes (job hash, queue push) either all land or none does. RQ decides *what* to
write (``Queue.enqueue_call`` against a recording pipeline); this module replays those writes on the
asyncio client inside the same MULTI/EXEC as ours, so the event loop never blocks on Redis and RQ's
key layout stays RQ's business.

The RQ job runs ``worker.jobs.run_job(job_id)``, referenced by its dotted path: the gateway never
imports the worker (or torch). Jobs are serialised as JSON, never pickle.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.serializers import JSONSerializer

from sdserve import transitions
from sdserve.errors import NotFound
from sdserve.events import STREAM_MAXLEN, EventName, encode_data
from sdserve.jobs import JobStatus
from sdserve.keys import Keys
from sdserve.records import JobRecord
from sdserve.tasks import JobRequest
from sdserve.tracing import current_traceparent

ANONYMOUS = "anonymous"
"""The owner of jobs created without an API key."""

RUN_JOB = "worker.jobs.run_job"
"""Dotted path of the function a worker runs for every job."""

RQ_RESULT_TTL = 3600
"""Seconds RQ keeps its own finished-job hash (our record is the truth and lives longer)."""


def new_job_id() -> str:
    """A UUIDv7: time-ordered, so ids sort by creation, with 74 random bits."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def is_job_id(value: str) -> bool:
    """Whether a string has the shape of a job id (cheap check before touching Redis)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class _RecordingPipeline:
    """Stands in for a redis-py pipeline and records the commands RQ issues on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _RecordingPipeline:
            self.calls.append((name, args, kwargs))
            return self

        return record

    def replay(self, pipe: aioredis.client.Pipeline) -> list[str]:
        """Queue the recorded commands on an asyncio pipeline; returns their names in order."""
        for name, args, kwargs in self.calls:
            getattr(pipe, name)(*args, **kwargs)
        return [name for name, _, _ in self.calls]


def rq_queue(connection: redis.Redis, keys: Keys, model: str) -> Queue:
    """The RQ queue of a model (JSON serializer), shared by gateway and worker."""
    return Queue(keys.queue_name(model), connection=connection, serializer=JSONSerializer)


class JobQueue:
    """Accept and look up jobs on behalf of the gateway."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        *,
        rq_connection: redis.Redis,
        job_ttl: int,
        job_timeout: int,
    ) -> None:
        self.redis = client
        self.keys = keys
        self._rq_connection = rq_connection
        self._queues: dict[str, Queue] = {}
        self._job_ttl = job_ttl
        self._job_timeout = job_timeout
        self._server_version: tuple[int, int, int] | None = None
        self._served_cache: tuple[float, set[str]] | None = None

    async def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            if self._server_version is None:
                info = await self.redis.info("server")
                parts = str(info.get("redis_version", "7.0.0")).split(".")
                self._server_version = (int(parts[0]), int(parts[1]), int(parts[2]))
            queue = rq_queue(self._rq_connection, self.keys, model)
            queue.redis_server_version = self._server_version
            self._queues[model] = queue
        return queue

    async def submit(
        self,
        request: JobRequest,
        *,
        job_id: str | None = None,
        total_steps: int | None = None,
        inputs: Mapping[str, str] | None = None,
        owner: str | None = None,
        request_id: str | None = None,
        timeout: int | None = None,
    ) -> JobRecord:
        """Store and enqueue a resolved request atomically; returns the new record.

        ``inputs`` maps input names (``image``, ``mask``) to the object keys the worker reads.
        """
        assert request.model is not None and request.steps is not None, "submit takes resolved requests"
        job_id = job_id or new_job_id()
        now = time.time()
        fields = JobRecord.new_fields(
            job_id=job_id,
            task=request.task,
            model=request.model,
            request=request.model_dump(mode="json"),
            created_at=now,
            total=total_steps or request.steps,
            metadata=request.metadata,
            owner=owner,
            request_id=request_id,
            inputs=inputs,
            webhook=(request.webhook.url, [e.value for e in request.webhook.events]) if request.webhook else None,
            traceparent=current_traceparent(),
        )
        timeout = timeout or self._job_timeout
        fields["timeout"] = str(timeout)
        queue = await self._queue(request.model)
        recorder = _RecordingPipeline()
        queue.enqueue_call(
            RUN_JOB,
            args=[job_id],
            job_id=job_id,
            timeout=timeout,
            result_ttl=RQ_RESULT_TTL,
            failure_ttl=self._job_ttl,
            description=f"{request.task} {request.model} {job_id}",
            pipeline=recorder,  # type: ignore[arg-type]
        )
        job_key, events_key = self.keys.job(job_id), self.keys.events(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key, mapping=cast("dict[Any, Any]", fields))
            pipe.expire(job_key, self._job_ttl)
            pipe.xadd(
                events_key,
                {"event": EventName.QUEUED.value, "data": encode_data({"status": "queued"})},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
            pipe.expire(events_key, self._job_ttl)
            pipe.sadd(self.keys.active(owner or ANONYMOUS), job_id)
            index = self.keys.jobs_index(owner or ANONYMOUS)
            pipe.zadd(index, {job_id: now})
            pipe.zremrangebyscore(index, "-inf", now - self._job_ttl)  # records older than this have expired
            recorder.replay(pipe)
            await pipe.execute()
        return JobRecord.from_hash(fields)

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The record of a job; NotFound when there is none, or when it is another caller's."""
        if not is_job_id(job_id):
            raise NotFound(f"no job {job_id!r}")
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise NotFound(f"no job {job_id!r}")
        record = JobRecord.from_hash(raw)
        if owner is not None and (record.owner or ANONYMOUS) != owner:
            raise NotFound(f"no job {job_id!r}")
        return record

    async def cancel(self, record: JobRecord) -> str:
        """Cancel a job: a queued one at once, a running one at its next step; harmless when it has ended.

        Returns 'canceled', 'requested' or the terminal status the job already had.
        """
        script = self.redis.register_script(transitions.CANCEL)
        keys = [
            self.keys.job(record.id),
            self.keys.events(record.id),
            self.keys.webhooks_due(),
            (await self._queue(record.model)).key,
        ]
        result = await script(
            keys=keys, args=[repr(time.time()), self.keys.delivery_prefix(), encode_data({"status": "canceled"})]
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def mark_purged(self, job_id: str) -> None:
        """Record that a job's stored inputs and outputs were deleted."""
        await self.redis.hset(
            self.keys.job(job_id), mapping={"purged": "1", "images": "[]", "manifest": "", "mask": ""}
        )

    async def position(self, record: JobRecord) -> int | None:
        """Jobs ahead of a queued job in its model's queue (0: next), None if not waiting."""
        if record.status is not JobStatus.QUEUED:
            return None
        queue_key = (await self._queue(record.model)).key
        pos = await self.redis.lpos(queue_key, record.id)
        return pos if isinstance(pos, int) else None

    async def active_jobs(self, owner: str) -> int:
        """How many of a caller's jobs have not ended (entries whose record expired are dropped)."""
        key = self.keys.active(owner)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in await self.redis.smembers(key)]
        if not members:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in members:
                pipe.exists(self.keys.job(job_id))
            exists = await pipe.execute()
        gone = [m for m, e in zip(members, exists, strict=True) if not e]
        if gone:
            await self.redis.srem(key, *gone)
        return len(members) - len(gone)

    async def queue_depth(self, model: str) -> int:
        """Jobs waiting in a model's queue."""
        return int(await self.redis.llen((await self._queue(model)).key))

    async def served_models(self, ttl: float) -> set[str]:
        """Models some worker has served within ``ttl`` seconds (cached for a second)."""
        now = time.monotonic()
        if self._served_cache is None or now - self._served_cache[0] > 1.0:
            names = await self.redis.zrangebyscore(self.keys.served_models(), time.time() - ttl, "+inf")
            self._served_cache = (now, {n.decode() if isinstance(n, bytes) else str(n) for n in names})
        return self._served_cache[1]

    async def live_workers(self) -> dict[str, dict[str, str]]:
        """Workers whose heartbeat is recent, with what they serve."""
        names = await self.redis.zrangebyscore(self.keys.workers(), time.time() - 30, "+inf")
        workers: dict[str, dict[str, str]] = {}
        for raw in names:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = await self.redis.hgetall(self.keys.worker(name))
            if info:
                workers[name] = {
                    (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in info.items()
                }
        return workers
