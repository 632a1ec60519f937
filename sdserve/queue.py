"""The gateway's side of the queue: accept, look up and locate jobs (redis.asyncio + RQ).

A job is accepted in one Lua call (``APPLY``): the job record, its first event, the active set, the
listing index and RQ's own enqueue writes (job hash, queue push, last). RQ decides *what* to write
(``Queue.enqueue_call`` against a pipeline that is never executed); this module sends those writes with
ours from the asyncio client, so the event loop never blocks on Redis and RQ's key layout stays RQ's
business. Submits that are ready together share one call (group commit).

The RQ job runs ``worker.jobs.run_job(job_id)``, referenced by its dotted path: the gateway never
imports the worker (or torch). Jobs are serialised as JSON, never pickle.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple, cast

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

APPLY = """
local out, i = {}, 1
while i <= #ARGV do
  local count, failed = tonumber(ARGV[i]), false
  i = i + 1
  for _ = 1, count do
    local n = tonumber(ARGV[i])
    if failed then
      out[#out + 1] = false
    else
      local reply = redis.pcall(unpack(ARGV, i + 1, i + n))
      failed = type(reply) == 'table' and reply.err ~= nil
      out[#out + 1] = reply
    end
    i = i + n + 1
  end
end
return out
"""
"""Apply the writes of one or more jobs in one atomic script call: ARGV holds, per job, its command
count, then per command its argument count and arguments. A job's commands stop at its first error
(its queue push comes last, so a job that failed is never queued); other jobs are not affected."""

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
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]] = []
        self._sender: asyncio.Future[None] | None = None

    async def apply(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
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

    async def _send(self, batch: list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]]) -> None:
        flat: list[Any] = []
        for commands, _ in batch:
            flat.extend(_flat(commands))
        try:
            results = await self._script(args=flat)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for commands, future in batch:
            mine = results[start : start + len(commands)]
            start += len(commands)
            if future.done():
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(mine)


class Submitted(NamedTuple):
    """A job just accepted: its record, and its place in its model's queue at that moment (0: next)."""

    record: JobRecord
    position: int | None


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
        self._commits = _GroupCommit(client.register_script(APPLY))
        self._depth_seen: dict[str, tuple[float, int]] = {}

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
    ) -> Submitted:
        """Store and enqueue a resolved request atomically; returns the new record and its queue position.

        ``inputs`` maps input names (``image``, ``mask``) to the object keys the worker reads. The
        position comes from RQ's own push (the queue's length then), so a submit never scans the
        queue (``LPOS`` is O(queue depth) for a job at the tail).
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
        # A sync pipeline that is never executed collects the commands: redis-py's own methods build
        # their arguments, and RQ, handed the pipeline inside an open MULTI, adds its enqueue writes
        # (last: a job whose own writes fail is never queued). They go to Redis in one APPLY call,
        # shared with the submits that are ready at the same time.
        batch = self._rq_connection.pipeline(transaction=True)
        batch.multi()
        job_key, events_key = self.keys.job(job_id), self.keys.events(job_id)
        batch.hset(job_key, mapping=cast("dict[Any, Any]", fields))
        batch.expire(job_key, self._job_ttl)
        batch.xadd(
            events_key,
            {"event": EventName.QUEUED.value, "data": encode_data({"status": "queued"})},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        batch.expire(events_key, self._job_ttl)
        batch.sadd(self.keys.active(owner or ANONYMOUS), job_id)
        index = self.keys.jobs_index(owner or ANONYMOUS)
        batch.zadd(index, {job_id: now})
        batch.zremrangebyscore(index, "-inf", now - self._job_ttl)  # records older than this have expired
        queue.enqueue_call(
            RUN_JOB,
            args=[job_id],
            job_id=job_id,
            timeout=timeout,
            result_ttl=RQ_RESULT_TTL,
            failure_ttl=self._job_ttl,
            description=f"{request.task} {request.model} {job_id}",
            pipeline=batch,
        )
        commands = [args for args, _ in batch.command_stack]
        results = await self._commits.apply(commands)
        position = None
        for args, result in zip(commands, results, strict=True):
            if args[0] == "RPUSH" and args[1] == queue.key:  # RQ appended to the tail: the new length says where
                position = int(result) - 1
                self._depth_seen[request.model] = (time.monotonic(), int(result))
        return Submitted(JobRecord.from_hash(fields), position)

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

    async def active_at_cap(self, owner: str, cap: int) -> bool:
        """Whether a caller has ``cap`` jobs or more that have not ended.

        Jobs leave the active set when they end, so its size is enough to accept (one ``SCARD``);
        only a set at the cap is swept of entries whose record expired before refusing.
        """
        if await self.redis.scard(self.keys.active(owner)) < cap:
            return False
        return await self.active_jobs(owner) >= cap

    async def queue_full(self, model: str, limit: int) -> bool:
        """Whether a model's queue holds ``limit`` jobs or more.

        Under load the length this gateway saw at its last submit (RQ's push returns it) is a few
        milliseconds old and answers without a Redis call; Redis is asked when that length is over a
        second old, or says full (so a refusal is always checked against the queue itself).
        """
        seen = self._depth_seen.get(model)
        if seen is not None and time.monotonic() - seen[0] < 1.0 and seen[1] < limit:
            return False
        return await self.queue_depth(model) >= limit

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
