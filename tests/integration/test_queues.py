"""How workers take jobs from their queues: an admin pause holds even a job already taken, and a worker serving
several queues runs their jobs oldest first."""

from __future__ import annotations

import json
from typing import Any

import httpx
import redis

from sdserve.jobs.record import JobRecord
from sdserve.jobs.tracker import JobTracker
from sdserve.keys import Keys
from sdserve.settings import Settings
from tests.conftest import worker_parts
from worker.engine import slot
from worker.main import make_worker

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def submit(client: httpx.Client, **fields: Any) -> str:
    answer = client.post("/v1/txt2img", json={**BODY, **fields})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def record(settings: Settings, redis_client: redis.Redis, job_id: str) -> JobRecord:
    found = JobTracker(redis_client, Keys(settings.key_prefix), job_ttl=settings.job_ttl_seconds).load(job_id)
    assert found is not None, job_id
    return found


def event_names(settings: Settings, redis_client: redis.Redis, job_id: str) -> list[str]:
    return [f[b"event"].decode() for _, f in redis_client.xrange(Keys(settings.key_prefix).events(job_id))]


def paused_flags(answer: httpx.Response) -> dict[str, bool]:
    assert answer.status_code == 200, answer.text
    return {q["queue"]: q["paused"] for q in answer.json()["data"]}


def test_a_pause_holds_every_job_of_the_queue_even_one_taken_just_before_it(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis, pipelines: Any
) -> None:
    keys = Keys(settings.key_prefix)
    first, second = submit(client), submit(client)
    worker = make_worker(worker_parts(settings, pipelines), redis_client)
    try:
        taken = worker.take()  # the worker's POP: the job moves to the queue's claimed list...
        assert taken is not None
        job, queue = taken
        assert job.id == first
        assert redis_client.lrange(keys.claimed("tiny"), 0, -1) == [first.encode()]
        assert paused_flags(client.post("/v1/admin/queues/tiny/pause"))["tiny"] is True  # ...then the pause answers
        worker.execute_job(job, queue)  # and only now does the worker try to start the job it took
    finally:
        slot.install(None)
    held = record(settings, redis_client, first)
    assert held.status.value == "queued" and held.attempts == 0 and held.started_at is None and held.worker is None
    assert "started" not in event_names(settings, redis_client, first)
    # Refused and put back at the front of its queue, ahead of the job behind it; nothing left claimed.
    assert redis_client.lrange(keys.queue_key("tiny"), 0, -1) == [first.encode(), second.encode()]
    assert redis_client.llen(keys.claimed("tiny")) == 0
    view = client.get(f"/v1/jobs/{first}").json()
    assert view["status"] == "queued" and view["queue_position"] == 0

    # While paused no worker starts a job of the queue; new jobs still queue; other queues are served.
    third = submit(client)
    assert client.get(f"/v1/jobs/{third}").json()["queue_position"] == 2
    other = submit(client, model="tiny-sdxl")
    run_worker()
    assert client.get(f"/v1/jobs/{other}").json()["status"] == "succeeded"
    for job_id in (first, second, third):
        held = record(settings, redis_client, job_id)
        assert held.status.value == "queued" and held.started_at is None, job_id
    assert redis_client.lrange(keys.queue_key("tiny"), 0, -1) == [j.encode() for j in (first, second, third)]

    # Resume rings the queue's bell (an idle worker blocked on it wakes at once), and the jobs run in order.
    redis_client.delete(keys.bell("tiny"))
    assert paused_flags(client.post("/v1/admin/queues/tiny/resume"))["tiny"] is False
    assert redis_client.lrange(keys.bell("tiny"), 0, -1) == [b"1"]
    run_worker()
    done = [record(settings, redis_client, job_id) for job_id in (first, second, third)]
    assert [r.status.value for r in done] == ["succeeded"] * 3
    assert [r.attempts for r in done] == [1, 1, 1]  # the refused start consumed no attempt
    started = [r.started_at or 0.0 for r in done]
    assert started == sorted(started)
    assert event_names(settings, redis_client, first).count("started") == 1


def test_a_worker_runs_the_oldest_job_across_its_queues_first(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    assert settings.worker_models == ["tiny", "tiny-sdxl"]  # the worker lists tiny first
    ids = [submit(client, model="tiny-sdxl"), submit(client), submit(client)]
    positions = [client.get(f"/v1/jobs/{job_id}").json()["queue_position"] for job_id in ids]
    assert positions == [0, 0, 1]
    run_worker()
    records = [record(settings, redis_client, job_id) for job_id in ids]
    assert [r.status.value for r in records] == ["succeeded"] * 3, [r.error for r in records]
    accepted = [r.created_at for r in records]
    assert accepted == sorted(accepted) and len(set(accepted)) == 3
    started = [r.started_at or 0.0 for r in records]
    assert started == sorted(started) and len(set(started)) == 3, json.dumps(started)  # acceptance order
    # queue_position 0 is a promise: no job accepted later starts before this one, whatever its queue.
    for i, position in enumerate(positions):
        if position == 0:
            assert all(started[i] < started[j] for j in range(i + 1, len(ids))), (i, started)
