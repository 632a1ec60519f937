"""No accepted job is lost: the janitor requeues jobs of dead workers, bounds attempts and run time;
SIGTERM drains; a worker rides out a Redis outage; unsafe Redis settings are reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sdserve import janitor as janitor_module
from sdserve.janitor import Janitor
from sdserve.keys import Keys
from sdserve.queue import rq_queue
from sdserve.redischeck import redis_warnings
from sdserve.settings import Settings
from sdserve.tracker import JobTracker
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}


def make_janitor(settings: Settings, client: redis.Redis, attempts: int = 3) -> Janitor:
    keys = Keys(settings.key_prefix)
    return Janitor(client, keys, max_attempts=attempts, queue_key=lambda m: rq_queue(client, keys, m).key)


def start_on_ghost(settings: Settings, client: redis.Redis, job_id: str, worker: str = "ghost.1") -> None:
    """What a worker does when it takes a job, before being killed (-9): pop it and mark it running."""
    keys = Keys(settings.key_prefix)
    queue = rq_queue(client, keys, "tiny").key
    assert client.lrem(queue, 1, job_id) == 1
    assert JobTracker(client, keys).start(job_id, worker) == "ok"


def events(client: redis.Redis, settings: Settings, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    raw = client.xrange(Keys(settings.key_prefix).events(job_id))
    return [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in raw]


def test_a_job_whose_worker_died_runs_again_elsewhere(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    start_on_ghost(settings, redis_client, job_id)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    janitor = make_janitor(settings, redis_client)
    assert janitor.sweep() and janitor.requeued == 1
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert ("queued", {"status": "queued", "reason": "worker-lost", "attempts": 1}) in events(
        redis_client, settings, job_id
    )
    run_worker()
    done = client.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded" and len(done["images"]) == 1
    assert redis_client.hget(Keys(settings.key_prefix).job(job_id), "attempts") == b"2"
    assert [name for name, _ in events(redis_client, settings, job_id)].count("succeeded") == 1


def test_after_max_attempts_the_job_fails_with_worker_lost(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    keys = Keys(settings.key_prefix)
    janitor = make_janitor(settings, redis_client, attempts=2)
    start_on_ghost(settings, redis_client, job_id)
    janitor.sweep()
    start_on_ghost(settings, redis_client, job_id, worker="ghost.2")
    janitor.sweep()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "/problems/worker-lost"
    assert redis_client.zscore(keys.running(), job_id) is None
    assert client.get(job["error"]["type"]).status_code == 200


def test_a_running_job_never_outlives_its_timeout_by_more_than_a_minute(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    job = client.post("/v1/txt2img", json=BODY).json()
    keys = Keys(settings.key_prefix)
    timeout = int(redis_client.hget(keys.job(job["id"]), "timeout") or 0)
    assert 60 <= timeout <= settings.job_timeout_seconds  # derived from the job's size and steps
    start_on_ghost(settings, redis_client, job["id"], worker="alive.1")
    redis_client.set(keys.worker("alive.1"), "1")  # its worker still looks alive...
    redis_client.hset(keys.job(job["id"]), "started_at", repr(time.time() - timeout - 61))  # ...but it hangs
    make_janitor(settings, redis_client).sweep()
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "/problems/timeout"


def test_a_job_popped_but_never_started_is_requeued(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(janitor_module, "STUCK_POPPED_SECONDS", 0)
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    queue = rq_queue(redis_client, Keys(settings.key_prefix), "tiny").key
    redis_client.lmove(queue, f"{queue}:intermediate", "LEFT", "RIGHT")  # a worker popped it, then died
    assert redis_client.llen(queue) == 0
    make_janitor(settings, redis_client).sweep()
    assert redis_client.lrange(queue, 0, -1) == [job_id.encode()]
    assert redis_client.llen(f"{queue}:intermediate") == 0


def _worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "SDSERVE_REDIS_URL": settings.redis_url,
        "SDSERVE_KEY_PREFIX": settings.key_prefix,
        "SDSERVE_DATA_DIR": str(settings.data_dir),
        "SDSERVE_MODELS_CACHE_DIR": str(settings.models_dir),
        "SDSERVE_WORKER_MODELS": "tiny",
        "SDSERVE_WARMUP": "false",
        "SDSERVE_HEARTBEAT_SECONDS": "1",
        "SDSERVE_LOG_LEVEL": "warning",
        "SDSERVE_TORCH_THREADS": "1",
    }


def test_sigterm_drains_the_current_job_without_consuming_an_attempt(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    first = client.post("/v1/txt2img", json={**BODY, "steps": 40, "width": 128, "height": 128}).json()["id"]
    second = client.post("/v1/txt2img", json=BODY).json()["id"]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("sdserve")), "worker"], env=_worker_env(settings), stdout=log, stderr=log
    )
    try:
        wait_for(lambda: redis_client.hget(keys.job(first), "status") == b"running", timeout=120, interval=0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    done = client.get(f"/v1/jobs/{first}").json()
    assert done["status"] == "succeeded"  # the running job finished...
    assert redis_client.hget(keys.job(first), "attempts") == b"1"  # ...in its one and only attempt
    assert client.get(f"/v1/jobs/{second}").json()["status"] == "queued"  # and nothing new was taken


def test_unsafe_redis_settings_are_reported(redis_client: redis.Redis) -> None:
    config = redis_client.config_get("appendonly")
    problems = redis_warnings(redis_client)
    if config.get("appendonly") == "no":
        assert any("append-only" in p for p in problems)
    assert all(isinstance(p, str) for p in problems)
