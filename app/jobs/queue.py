"""The gateway's side of the engine: accept, look up, cancel and locate jobs of any kind (redis.asyncio + RQ).

A job is accepted in one Lua call (``APPLY``): the job record, its first event, the active set, the
listing index, the Idempotency-Key's answer, and RQ's own enqueue writes (job hash, queue push), then the
queue's bell. RQ decides *what* it writes (``Queue.enqueue_call`` against a pipeline that is never executed;
``tests/unit/test_rq_enqueue.py`` fails loudly if RQ changes it); this module sends those writes with ours
from the asyncio client, so the event loop never blocks on Redis and RQ's key layout stays RQ's business.
Submits that are ready together share one call (group commit). Times come from Redis (``TIME``).

The RQ job runs ``worker.engine.slot.run_job(job_id)``, named by its dotted path: the gateway never imports
the worker (or torch). Jobs are serialised as JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.serializers import JSONSerializer

from sdserve.contract.lifecycle import JobEvent, JobStatus
from sdserve.contract.problems import CANCELED, NotFound
from sdserve.contract.requests import WebhookSpec
from sdserve.jobs import scripts
from sdserve.jobs.ids import is_job_id, new_job_id
from sdserve.jobs.presence import WorkerPresence, parse
from sdserve.jobs.record import JobRecord, from_hash, to_fields
from sdserve.jobs.tracker import encode, problem_error
from sdserve.keys import Keys
from sdserve.replies import text

RUN_JOB = "worker.engine.slot.run_job"
"""Dotted path of the function a worker runs for every job."""

RQ_RESULT_TTL = 3600
"""Seconds RQ keeps its own finished-job hash (our record is the truth and lives longer)."""


def _flat(commands: list[tuple[Any, ...]]) -> list[Any]:
    """One job's commands as ``APPLY`` arguments: their count, then per command its length and itself."""
    out: list[Any] = [len(commands)]
    for args in commands:
        out.append(len(args))
        out.extend(args)
    return out


class _GroupCommit:
    """Sends the writes of submits that are ready together as one ``APPLY`` call (group commit).

    The first submit goes out at once (on the next loop iteration, with any that arrived in the same
    one); submits that arrive while a call is in flight wait for it and then go out together. Under
    load one round trip carries many jobs; alone, a job waits for nobody. Each job's writes are
    applied together; a job whose writes failed gets the error, the others their results.
    """

    def __init__(self, script: Any) -> None:
        self._script = script
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[tuple[str, list[Any]]]]] = []
        self._sender: asyncio.Future[None] | None = None

    async def apply(self, commands: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """The server time the writes were made at, and one reply per command."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, list[Any]]] = loop.create_future()
        self._pending.append((commands, future))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[list[tuple[Any, ...]], asyncio.Future[tuple[str, list[Any]]]]]) -> None:
        flat: list[Any] = []
        for commands, _ in batch:
            flat.extend(_flat(commands))
        try:
            replies = await self._script(args=flat)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        now, results = text(replies[0]), replies[1:]
        start = 0
        for commands, future in batch:
            mine = results[start : start + len(commands)]
            start += len(commands)
            if future.done():
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)  # 'replayed' jobs carry no error
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((now, mine))


@dataclass(frozen=True)
class NewJob:
    """A job a kind has checked and resolved, ready to be stored and queued."""

    kind: str
    task: str
    queue: str
    request: dict[str, Any]
    total: int
    timeout: int
    model: str = ""
    job_id: str = field(default_factory=new_job_id)
    inputs: Mapping[str, str] = field(default_factory=dict)
    input_ids: list[str] = field(default_factory=list)
    metadata: Mapping[str, str] = field(default_factory=dict)
    webhook: WebhookSpec | None = None
    description: str = ""


@dataclass(frozen=True)
class IdempotencyClaim:
    """The Idempotency-Key a submit answers: its Redis key, body digest and lifetime."""

    key: str
    digest: str
    ttl: int


class Submitted(NamedTuple):
    """A job just accepted: its record, and its place in its queue at that moment (0: next)."""

    record: JobRecord
    position: int | None


class JobQueue:
    """Accept and look up jobs on behalf of the gateway."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, rq_connection: redis.Redis, job_ttl: int) -> None:
        self.redis = client
        self.keys = keys
        self._rq_connection = rq_connection
        self._queues: dict[str, Queue] = {}
        self._job_ttl = job_ttl
        self._server_version: tuple[int, int, int] | None = None
        self._served: tuple[float, float, dict[str, float]] | None = None
        self._commits = _GroupCommit(client.register_script(scripts.APPLY))
        self._cancel = client.register_script(scripts.CANCEL)
        self._redeliver = client.register_script(scripts.REDELIVER)
        self._depth_seen: dict[str, tuple[float, int]] = {}

    async def _queue(self, queue: str) -> Queue:
        rq_queue = self._queues.get(queue)
        if rq_queue is None:
            if self._server_version is None:
                info = await self.redis.info("server")
                parts = str(info.get("redis_version", "7.0.0")).split(".")
                self._server_version = (int(parts[0]), int(parts[1]), int(parts[2]))
            rq_queue = Queue(self.keys.queue_name(queue), connection=self._rq_connection, serializer=JSONSerializer)
            rq_queue.redis_server_version = self._server_version
            self._queues[queue] = rq_queue
        return rq_queue

    async def submit(
        self,
        job: NewJob,
        *,
        owner: str,
        request_id: str | None,
        idempotency: IdempotencyClaim | None = None,
        traceparent: str | None = None,
    ) -> Submitted:
        """Store and enqueue a job atomically (and answer its Idempotency-Key in the same step).

        Returns the new record and its queue position, which comes from RQ's own push (the queue's length
        then), so a submit never scans the queue (``LPOS`` is O(queue depth) for a job at the tail).
        """
        record = JobRecord(
            id=job.job_id, kind=job.kind, task=job.task, model=job.model, queue=job.queue,
            status=JobStatus.QUEUED, owner=owner, request=job.request, created_at=0.0, total=job.total,
            metadata=dict(job.metadata), inputs=dict(job.inputs), input_ids=list(job.input_ids),
            webhook_url=job.webhook.url if job.webhook else None,
            webhook_events=[e.value for e in job.webhook.events] if job.webhook else [],
            traceparent=traceparent, request_id=request_id, timeout=job.timeout,
        )  # fmt: skip
        fields = to_fields(record)
        fields["created_at"] = scripts.NOW_TOKEN
        rq_queue = await self._queue(job.queue)
        # A sync pipeline that is never executed collects the commands: redis-py's own methods build their
        # arguments, and RQ, handed the pipeline inside an open MULTI, adds its enqueue writes (its queue push
        # last: a job whose own writes fail is never queued). They go to Redis in one APPLY call, shared with
        # the submits that are ready at the same time.
        batch = self._rq_connection.pipeline(transaction=True)
        batch.multi()
        k = self.keys
        batch.hset(k.job(job.job_id), mapping=cast("dict[Any, Any]", fields))
        batch.expire(k.job(job.job_id), self._job_ttl)
        batch.xadd(
            k.events(job.job_id),
            {"event": JobEvent.QUEUED.value, "data": encode({"status": JobStatus.QUEUED.value})},
            maxlen=scripts.STREAM_MAXLEN,
            approximate=True,
        )
        batch.expire(k.events(job.job_id), self._job_ttl)
        batch.sadd(k.active(owner), job.job_id)
        index = k.index(job.kind, owner)
        batch.zadd(index, {job.job_id: scripts.NOW_TOKEN})
        batch.zremrangebyscore(index, "-inf", time.time() - self._job_ttl)  # entries whose record has expired
        if idempotency is not None:
            batch.set(idempotency.key, f"{idempotency.digest} {job.job_id}", ex=idempotency.ttl)
        rq_queue.enqueue_call(
            RUN_JOB,
            args=[job.job_id],
            job_id=job.job_id,
            timeout=job.timeout,
            result_ttl=RQ_RESULT_TTL,
            failure_ttl=self._job_ttl,
            description=job.description or f"{job.kind} {job.task} {job.job_id}",
            pipeline=batch,
        )
        batch.lpush(k.bell(job.queue), "1")
        batch.ltrim(k.bell(job.queue), 0, 0)
        commands = [args for args, _ in batch.command_stack]
        now, results = await self._commits.apply(commands)
        if text(results[0]) == "replayed":  # a retry of this very submit, after its reply was lost
            return Submitted(await self.get(job.job_id), None)
        position = None
        for args, result in zip(commands, results, strict=True):
            if args[0] == "RPUSH" and args[1] == rq_queue.key:  # RQ appended to the tail: the new length says where
                position = int(result) - 1
                self._depth_seen[job.queue] = (time.monotonic(), int(result))
        return Submitted(record.model_copy(update={"created_at": float(now)}), position)

    async def get(self, job_id: str, owner: str | None = None, *, kind: str | None = None) -> JobRecord:
        """The record of a job; NotFound when there is none, or when it is another caller's or another kind's."""
        if not is_job_id(job_id):
            raise NotFound(f"no such job {job_id!r}")
        raw = await self.redis.hgetall(self.keys.job(job_id))
        if not raw:
            raise NotFound(f"no such job {job_id!r}")
        record = from_hash(raw)
        if (owner is not None and record.owner != owner) or (kind is not None and record.kind != kind):
            raise NotFound(f"no such job {job_id!r}")
        return record

    async def cancel(self, record: JobRecord) -> str:
        """Cancel a job: a queued one at once, a running one at its next step; harmless when it has ended.

        Returns 'canceled' (ended by this call), 'requested', 'ended' (it had ended already) or 'missing'.
        """
        k = self.keys
        keys = [
            k.job(record.id), k.events(record.id), k.webhooks_due(), k.running(), k.active(record.owner),
            k.queue_key(record.queue), k.claimed(record.queue),
        ]  # fmt: skip
        error = problem_error(CANCELED, "canceled while it waited").model_dump_json()
        return text(await self._cancel(keys=keys, args=[k.delivery_prefix(), self._job_ttl, error]))

    async def redeliver(self, record: JobRecord) -> str:
        """Queue a job's terminal event again under a new webhook id; the delivery id ('' if none was made)."""
        k = self.keys
        keys = [k.job(record.id), k.events(record.id), k.webhooks_due(), k.running(), k.active(record.owner)]
        return text(await self._redeliver(keys=keys, args=[k.delivery_prefix(), self._job_ttl]))

    async def mark_purged(self, job_id: str) -> None:
        """Record that a job's stored inputs and outputs were deleted."""
        await self.redis.hset(self.keys.job(job_id), mapping={"purged": "1", "result": "{}"})

    async def position(self, record: JobRecord) -> int | None:
        """Jobs ahead of a queued job in its queue (0: next), None if not waiting."""
        if record.status is not JobStatus.QUEUED:
            return None
        pos = await self.redis.lpos(self.keys.queue_key(record.queue), record.id)
        return pos if isinstance(pos, int) else None

    async def active_jobs(self, owner: str) -> int:
        """How many of a caller's jobs have not ended (entries whose record expired are dropped)."""
        key = self.keys.active(owner)
        members = [text(m) for m in await self.redis.smembers(key)]
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

    async def active_at_cap(self, owner: str, cap: int) -> bool:
        """Whether a caller has ``cap`` jobs or more that have not ended.

        Jobs leave the active set when they end, so its size is enough to accept (one ``SCARD``); only a
        set at the cap is swept of entries whose record expired before refusing.
        """
        if await self.redis.scard(self.keys.active(owner)) < cap:
            return False
        return await self.active_jobs(owner) >= cap

    async def queue_full(self, queue: str, limit: int) -> bool:
        """Whether a queue holds ``limit`` jobs or more.

        Under load the length this gateway saw at its last submit (RQ's push returns it) is a few
        milliseconds old and answers without a Redis call; Redis is asked when that length is over a
        second old, or says full (so a refusal is always checked against the queue itself).
        """
        seen = self._depth_seen.get(queue)
        if seen is not None and time.monotonic() - seen[0] < 1.0 and seen[1] < limit:
            return False
        return await self.queue_depth(queue) >= limit

    async def queue_depth(self, queue: str) -> int:
        """Jobs waiting in a queue."""
        return int(await self.redis.llen(self.keys.queue_key(queue)))

    async def oldest_age(self, queue: str) -> float:
        """Seconds the job at the head of a queue has waited (0 when it is empty), on Redis's clock."""
        head = await self.redis.lindex(self.keys.queue_key(queue), 0)
        if head is None:
            return 0.0
        created = await self.redis.hget(self.keys.job(text(head)), "created_at")
        return max(0.0, await self.redis_now() - float(created)) if created else 0.0

    async def redis_now(self) -> float:
        """The server's clock."""
        reply: Any = await self.redis.time()
        seconds, micros = reply
        return float(seconds) + float(micros) / 1e6

    async def served_recently(self, queue: str, ttl: float) -> bool:
        """Whether some worker has served a queue within ``ttl`` seconds (Redis's clock; cached for a second)."""
        now = time.monotonic()
        if self._served is None or now - self._served[0] > 1.0:
            raw: Any = await self.redis.zrange(self.keys.served_queues(), 0, -1, withscores=True)
            self._served = (now, await self.redis_now(), {text(name): float(score) for name, score in raw})
        _, server_now, served = self._served
        return served.get(queue, -1.0) >= server_now - ttl

    async def live_workers(self) -> dict[str, WorkerPresence]:
        """Workers whose presence has not expired (Redis's TTL decides), with what they serve."""
        names = [text(n) for n in await self.redis.zrange(self.keys.workers(), 0, -1)]
        if not names:
            return {}
        live, gone = parse(await self.redis.mget([self.keys.worker(n) for n in names]), names)
        if gone:
            await self.redis.zrem(self.keys.workers(), *gone)
        return live

    async def paused(self) -> set[str]:
        """Queues paused by an admin."""
        return {text(m) for m in await self.redis.smembers(self.keys.paused())}

    async def pause(self, queues: list[str]) -> None:
        """Workers take no new job from these queues once this returns (checked atomically as they take one)."""
        await self.redis.sadd(self.keys.paused(), *queues)

    async def resume(self, queues: list[str]) -> None:
        """Workers take jobs from these queues again (their bells are rung, so idle workers wake at once)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self.keys.paused(), *queues)
            for queue in queues:
                pipe.lpush(self.keys.bell(queue), "1")
                pipe.ltrim(self.keys.bell(queue), 0, 0)
            await pipe.execute()
