"""A busy worker keeps proving it is alive: its presence and the running job's heartbeat move on; and a worker
counts as alive for as long as Redis keeps its presence, however long its heartbeat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.jobs.queue import JobQueue, NewJob
from sdserve.jobs.janitor import redis_now
from sdserve.jobs.presence import WorkerPresence, advertise, presence_ttl
from sdserve.jobs.tracker import JobTracker
from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import wait_for
from worker.engine.kind import Claimed, QueueRef

PROBE_QUEUE = "probe"


@dataclass(frozen=True)
class Sample:
    registry_expiry: float
    """The running job's entry in RQ's started registry: the time until which it counts as alive."""
    presence_expiry: float
    """The worker's score in the workers set: the time until which its last beat keeps it alive."""
    job_heartbeat: bytes | None
    """RQ's own heartbeat on its job hash."""
    busy: bool
    """What the worker's presence says."""


class Probe:
    """A kind of work that only watches: its job runs until the worker has beaten while running it.

    Heartbeats are the engine's business, not a kind's: any job shows them.
    """

    kind = "probe"

    def __init__(self, settings: Settings, client: redis.Redis, worker_name: str) -> None:
        self.keys = Keys(settings.key_prefix)
        self.redis = client
        self.worker_name = worker_name
        self.samples: list[Sample] = []

    def queues(self) -> list[QueueRef]:
        return [QueueRef(PROBE_QUEUE)]

    def collect(self, job_id: str, queue: str) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        return {}

    def sample(self, job_id: str) -> Sample:
        registry = StartedJobRegistry(
            self.keys.queue_name(PROBE_QUEUE), connection=self.redis, serializer=JSONSerializer
        )
        scores = dict(self.redis.zrange(registry.key, 0, -1, withscores=True))
        raw = self.redis.get(self.keys.worker(self.worker_name))
        presence = WorkerPresence.model_validate_json(raw) if raw else None
        return Sample(
            registry_expiry=max(scores.values()),
            presence_expiry=self.redis.zscore(self.keys.workers(), self.worker_name) or 0.0,
            job_heartbeat=self.redis.hget(Job.key_for(job_id), "last_heartbeat"),
            busy=bool(presence and presence.busy),
        )

    def run(self, jobs: list[Claimed]) -> dict[str, dict[str, Any]]:
        (job,) = jobs
        first = self.sample(job.id)
        self.samples.append(first)

        def beaten() -> Sample | None:
            now = self.sample(job.id)
            moved = (
                now.presence_expiry > first.presence_expiry
                and now.registry_expiry > first.registry_expiry
                and now.job_heartbeat != first.job_heartbeat
                and now.busy
            )
            return now if moved else None

        self.samples.append(wait_for(beaten, timeout=20, interval=0.1))  # heartbeat_seconds is 1 in the tests
        return {job.id: {}}


def submit_probe(settings: Settings, client: redis.Redis) -> str:
    """Accept one probe job the way the gateway accepts any kind's."""

    async def submit() -> str:
        connection = aioredis.Redis.from_url(settings.redis_url)
        try:
            queue = JobQueue(
                connection, Keys(settings.key_prefix), rq_connection=client, job_ttl=settings.job_ttl_seconds
            )
            job = NewJob(kind=Probe.kind, task="watch", queue=PROBE_QUEUE, request={}, total=1, timeout=60)
            return (await queue.submit(job, owner="anonymous", request_id=None)).record.id
        finally:
            await connection.aclose()

    return asyncio.run(submit())


def test_heartbeats_while_a_job_runs(settings: Settings, run_worker: Any, redis_client: redis.Redis) -> None:
    probe = Probe(settings, redis_client, "hb-worker")
    job_id = submit_probe(settings, redis_client)
    run_worker(name="hb-worker", runners=[probe])
    record = JobTracker(redis_client, Keys(settings.key_prefix), job_ttl=settings.job_ttl_seconds).load(job_id)
    assert record is not None and record.status.value == "succeeded" and record.worker == "hb-worker"
    first, later = probe.samples
    assert later.presence_expiry > first.presence_expiry  # the worker's presence was refreshed during the job
    assert later.registry_expiry > first.registry_expiry  # the running job's registry entry was pushed forward
    assert later.job_heartbeat != first.job_heartbeat  # and RQ's own job heartbeat moved
    assert later.busy  # and its presence says it is busy
    assert first.registry_expiry - redis_now(redis_client) < 60  # a short TTL: a dead worker's job is noticed soon


def live_gauge(client: httpx.Client, model: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "sdserve_live_workers" and sample.labels == {"model": model}:
                return sample.value
    raise AssertionError(f"no sdserve_live_workers for {model}")


def test_a_worker_with_a_long_heartbeat_is_live_for_as_long_as_redis_keeps_its_presence(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    name = "slow-beat.1.abc"
    presence = WorkerPresence(
        name=name, queues=["tiny"], models=["tiny"], resident=["tiny"], kinds=["image"], ready=True,
        heartbeat_seconds=40,
    )  # fmt: skip
    assert presence_ttl(40) == 170
    advertise(redis_client, keys, presence)
    assert 165 <= redis_client.ttl(keys.worker(name)) <= 170
    # 35 s after its last beat, as Redis sees it: 135 s of its presence left, and its workers-set score (the time
    # until which its last beat keeps it alive) says the same.
    beat = redis_now(redis_client) - 35
    redis_client.expire(keys.worker(name), 170 - 35)
    redis_client.zadd(keys.workers(), {name: beat + 170})

    def serving(model: str) -> list[str]:
        models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
        return list(models[model]["workers"])

    assert serving("tiny") == [name]
    assert serving("tiny-sdxl") == []
    assert {m["name"]: m["warm"] for m in client.get("/v1/models").json()["data"]}["tiny"] is True
    queues = {q["queue"]: q["workers"] for q in client.get("/v1/admin/queues").json()["data"]}
    assert queues["tiny"] == [name]
    assert live_gauge(client, "tiny") == 1
    # Once Redis expires its presence it is gone, and readers drop its name.
    redis_client.pexpire(keys.worker(name), 100)
    wait_for(lambda: serving("tiny") == [], timeout=10)
    assert redis_client.zscore(keys.workers(), name) is None
    assert live_gauge(client, "tiny") == 0
