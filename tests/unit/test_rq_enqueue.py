"""RQ decides what its enqueue writes; the gateway sends those writes itself, inside its own ``APPLY`` call.

``JobQueue.submit`` hands ``Queue.enqueue_call`` a pipeline that is never executed and takes RQ's commands
from its stack; the worker's ``POP`` script, the janitor and the queue position all assume RQ's key layout.
Nothing here talks to Redis: the clients point at a port where nothing listens, so a command that did go
out would fail the test. If an RQ release changes what its enqueue writes, these tests fail and say what.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from app.jobs.queue import RQ_RESULT_TTL, RUN_JOB, IdempotencyClaim, JobQueue, NewJob
from sdserve.contract.lifecycle import JobStatus
from sdserve.contract.requests import WebhookSpec
from sdserve.jobs import scripts
from sdserve.jobs.record import from_hash
from sdserve.keys import RQ_QUEUE_PREFIX, Keys

NOWHERE = "redis://127.0.0.1:1/0"
"""Nothing listens there: building commands must never connect."""

JOB_ID = "01a2141e-8035-722a-ae56-08d956773a95"
PREFIX = "tq"
QUEUE = "tiny"
RQ_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

RQ_JOB_FIELDS = [
    "created_at", "data", "success_callback_name", "failure_callback_name", "stopped_callback_name",
    "started_at", "ended_at", "last_heartbeat", "worker_name", "group_id", "origin", "description",
    "enqueued_at", "timeout", "result_ttl", "failure_ttl", "status",
]  # fmt: skip
"""The fields of RQ 3's job hash, in the order its enqueue writes them."""


def rq_queue(connection: redis.Redis, name: str) -> Queue:
    queue = Queue(name, connection=connection, serializer=JSONSerializer)
    queue.redis_server_version = (7, 2, 0)  # what JobQueue sets from INFO, once: RQ would ask the server
    return queue


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def pairs(args: tuple[Any, ...]) -> dict[str, Any]:
    assert len(args) % 2 == 0, args
    return {str(args[i]): args[i + 1] for i in range(0, len(args), 2)}


def check_rq_writes(commands: list[tuple[Any, ...]], *, queue: Queue, job_id: str, timeout: int, ttl: int) -> None:
    """RQ 3's enqueue, command by command: register the queue, the job hash (status first), the push last."""
    job_key = f"{Job.redis_job_namespace_prefix}{job_id}"
    assert [c[:2] for c in commands] == [
        ("SADD", Queue.redis_queues_keys),
        ("HSET", job_key),
        ("HSET", job_key),
        ("RPUSH", queue.key),
    ], commands
    assert commands[0][2:] == (queue.key,)
    assert pairs(commands[1][2:]) == {"status": "queued"}
    fields = pairs(commands[2][2:])
    assert list(fields) == RQ_JOB_FIELDS
    assert RQ_TIME.match(fields["created_at"]) and RQ_TIME.match(fields["enqueued_at"])
    assert json.loads(zlib.decompress(fields["data"])) == [RUN_JOB, None, [job_id], {}]  # JSON, never pickle
    assert {k: fields[k] for k in ("origin", "timeout", "result_ttl", "failure_ttl", "status")} == {
        "origin": queue.name,
        "timeout": timeout,
        "result_ttl": RQ_RESULT_TTL,
        "failure_ttl": ttl,
        "status": "queued",
    }
    assert all(fields[k] == "" for k in RQ_JOB_FIELDS[2:10])  # callbacks, times, worker, group: none yet
    assert commands[3][2:] == (job_id,)


def test_rq_key_layout_is_ours() -> None:
    keys = Keys(PREFIX)
    queue = rq_queue(redis.Redis.from_url(NOWHERE), keys.queue_name(QUEUE))
    assert Queue.redis_queue_namespace_prefix == RQ_QUEUE_PREFIX
    assert queue.name == f"{PREFIX}:{QUEUE}"
    assert keys.queue_key(QUEUE) == queue.key == f"rq:queue:{PREFIX}:{QUEUE}"
    assert keys.queue_of_key(queue.key) == QUEUE
    assert keys.claimed(QUEUE) == IntermediateQueue.get_intermediate_queue_key(queue.key)
    assert keys.rq_queues() == Queue.redis_queues_keys


def test_enqueue_call_on_an_unexecuted_pipeline_writes_exactly_this() -> None:
    connection = redis.Redis.from_url(NOWHERE)
    queue = rq_queue(connection, Keys(PREFIX).queue_name(QUEUE))
    batch = connection.pipeline(transaction=True)
    batch.multi()
    queue.enqueue_call(
        RUN_JOB, args=[JOB_ID], job_id=JOB_ID, timeout=321, result_ttl=RQ_RESULT_TTL, failure_ttl=86400,
        description="image txt2img", pipeline=batch,
    )  # fmt: skip
    commands = [args for args, _ in batch.command_stack]
    check_rq_writes(commands, queue=queue, job_id=JOB_ID, timeout=321, ttl=86400)
    assert pairs(commands[2][2:])["description"] == "image txt2img"


class Recorder:
    """Stands in for the group commit: keeps the commands, answers as Redis would have."""

    def __init__(self, queue_length: int) -> None:
        self.queue_length = queue_length
        self.calls: list[list[tuple[Any, ...]]] = []

    async def apply(self, commands: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        self.calls.append(commands)
        replies = [self.queue_length if c[0] == "RPUSH" else 1 for c in commands]
        return "1764700000.250000", replies


def submit(job: NewJob, idempotency: IdempotencyClaim | None, queue_length: int) -> tuple[Any, Recorder, Queue]:
    async def go() -> tuple[Any, Recorder, Queue]:
        client = aioredis.Redis.from_url(NOWHERE)
        rq_connection = redis.Redis.from_url(NOWHERE)
        jobs = JobQueue(client, Keys(PREFIX), rq_connection=rq_connection, job_ttl=86400)
        jobs._server_version = (7, 2, 0)  # else the first submit asks the server (INFO)
        recorder = Recorder(queue_length)
        jobs._commits = recorder  # type: ignore[assignment]
        try:
            submitted = await jobs.submit(job, owner="acme", request_id="req-1", idempotency=idempotency)
            return submitted, recorder, await jobs._queue(job.queue)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_submit_sends_our_writes_then_rqs_then_the_bell() -> None:
    keys = Keys(PREFIX)
    job = NewJob(
        kind="image", task="txt2img", queue=QUEUE, model=QUEUE, request={"prompt": "a cat"}, total=12,
        timeout=300, job_id=JOB_ID, metadata={"order": "42"},
        webhook=WebhookSpec(url="https://example.com/hook"), description="image txt2img",
    )  # fmt: skip
    claim = IdempotencyClaim(key=keys.idempotency("acme", "abc"), digest="d1g3st", ttl=600)
    submitted, recorder, queue = submit(job, claim, queue_length=3)
    [commands] = recorder.calls
    names = [(c[0], c[1]) for c in commands]
    assert names == [
        ("HSET", keys.job(JOB_ID)),
        ("EXPIRE", keys.job(JOB_ID)),
        ("XADD", keys.events(JOB_ID)),
        ("EXPIRE", keys.events(JOB_ID)),
        ("SADD", keys.active("acme")),
        ("ZADD", keys.index("image", "acme")),
        ("ZREMRANGEBYSCORE", keys.index("image", "acme")),
        ("SET", claim.key),
        ("SADD", "rq:queues"),
        ("HSET", f"rq:job:{JOB_ID}"),
        ("HSET", f"rq:job:{JOB_ID}"),
        ("RPUSH", keys.queue_key(QUEUE)),  # the job is queued last: one whose writes failed never is
        ("LPUSH", keys.bell(QUEUE)),
        ("LTRIM", keys.bell(QUEUE)),
    ]
    check_rq_writes(commands[8:12], queue=queue, job_id=JOB_ID, timeout=300, ttl=86400)
    record_fields: Mapping[str, Any] = pairs(commands[0][2:])
    assert record_fields["created_at"] == scripts.NOW_TOKEN  # the server's time, filled in by APPLY
    assert commands[5][2:] == (scripts.NOW_TOKEN, JOB_ID)
    assert commands[7][2:] == (f"d1g3st {JOB_ID}", "EX", 600)
    stored = from_hash({**record_fields, "created_at": "1764700000.25"})
    assert stored == submitted.record
    assert (stored.status, stored.owner, stored.queue, stored.total, stored.timeout) == (
        JobStatus.QUEUED, "acme", QUEUE, 12, 300,
    )  # fmt: skip
    assert stored.webhook_events == ["succeeded", "failed", "canceled"]
    assert submitted.record.created_at == 1764700000.25
    assert submitted.position == 2  # RQ's push answered the queue's length: two jobs ahead


def test_submit_without_an_idempotency_key_writes_no_claim() -> None:
    job = NewJob(kind="image", task="txt2img", queue=QUEUE, request={}, total=1, timeout=60, job_id=JOB_ID)
    submitted, recorder, queue = submit(job, None, queue_length=1)
    [commands] = recorder.calls
    assert [c[0] for c in commands] == [
        "HSET", "EXPIRE", "XADD", "EXPIRE", "SADD", "ZADD", "ZREMRANGEBYSCORE",
        "SADD", "HSET", "HSET", "RPUSH", "LPUSH", "LTRIM",
    ]  # fmt: skip
    check_rq_writes(commands[7:11], queue=queue, job_id=JOB_ID, timeout=60, ttl=86400)
    assert pairs(commands[9][2:])["description"] == f"image txt2img {JOB_ID}"
    assert submitted.position == 0
    assert submitted.record.webhook_url is None and submitted.record.webhook_events == []
