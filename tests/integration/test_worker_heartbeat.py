"""A busy worker keeps proving it is alive: its presence and the running job's heartbeat move on."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from sdserve.keys import Keys
from sdserve.settings import Settings

pytestmark = pytest.mark.integration


def test_heartbeats_while_a_job_runs(
    client: httpx.Client,
    run_worker: Any,
    settings: Settings,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import runtime

    keys = Keys(settings.key_prefix)
    cls, recipe = runtime.TASKS["txt2img"]
    samples: list[tuple[float, float, bytes | None]] = []

    def sample(job_id: str, worker_name: str) -> None:
        registry = StartedJobRegistry(keys.queue_name("tiny"), connection=redis_client, serializer=JSONSerializer)
        scores = dict(redis_client.zrange(registry.key, 0, -1, withscores=True))
        expiry = max(scores.values())
        seen = float(redis_client.hget(keys.worker(worker_name), "seen_at") or 0)
        samples.append((expiry, seen, redis_client.hget(f"rq:job:{job_id}", "last_heartbeat")))

    def slow(ctx: Any, request: Any) -> Any:
        sample(ctx.job_id, runtime_name[0])
        time.sleep(2.6)  # heartbeat_seconds is 1 in the tests
        sample(ctx.job_id, runtime_name[0])
        return recipe(ctx, request)

    runtime_name = ["hb-worker"]
    monkeypatch.setitem(runtime.TASKS, "txt2img", (cls, slow))
    job_id = client.post("/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2}).json()["id"]
    run_worker(name="hb-worker")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    (exp0, seen0, beat0), (exp1, seen1, beat1) = samples
    assert seen1 > seen0  # the worker's presence was refreshed during the job
    assert exp1 > exp0  # the running job's registry entry was pushed forward
    assert beat1 != beat0  # and RQ's own job heartbeat moved
    assert exp0 - time.time() < 60  # with a short TTL: a dead worker's job is noticed quickly
