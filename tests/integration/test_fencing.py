"""No zombie writes: a worker that stalled while the janitor gave its job to another cannot touch the rerun.

Every write of a run names its attempt (the fencing token ``START`` handed out); the scripts refuse a
superseded attempt; a run's files live under its own attempt and become the job's only in the step that
marks it succeeded; a superseded run deletes its own files and nothing else.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis

from sdserve.contract.problems import TIMEOUT
from sdserve.jobs.janitor import Janitor
from sdserve.jobs.record import from_hash
from sdserve.jobs.tracker import Attempt, JobTracker
from sdserve.keys import Keys
from sdserve.observe.metrics import Metrics
from sdserve.settings import Settings
from sdserve.storage.factory import open_store
from tests.conftest import wait_for, worker_env
from worker.engine.artifacts import Artifacts

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}


def janitor(settings: Settings, client: redis.Redis) -> Janitor:
    return Janitor(
        client, Keys(settings.key_prefix), max_attempts=3, job_ttl=settings.job_ttl_seconds, metrics=Metrics()
    )


def test_a_superseded_run_can_neither_write_nor_delete_the_rerun(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    tracker = JobTracker(redis_client, keys, job_ttl=settings.job_ttl_seconds)
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    # A worker takes the job and starts it, writes an output, then stalls (no heartbeat: no presence).
    assert redis_client.lrem(keys.queue_key("tiny"), 1, job_id) == 1
    stale = tracker.start(from_hash(redis_client.hgetall(keys.job(job_id))), "stalled.1")
    assert isinstance(stale, Attempt) and stale.number == 1
    store = open_store(settings, signing_key=None)
    stale_files = Artifacts(store, job_id, stale.number, {})
    stale_files.put("0.png", b"half-written", "image/png")
    assert tracker.progress(stale, 2, 3, {"step": 2, "total": 3, "fraction": 0.67}) == "ok"

    # The janitor gives the job to another worker, which runs it to success (attempt 2).
    assert janitor(settings, redis_client).sweep()
    run_worker()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and "/outputs/" in job["images"][0]["url"]
    assert f"/{job_id}/2/" in job["images"][0]["url"]
    steps = redis_client.hmget(keys.job(job_id), ["step", "total"])

    # The stalled worker wakes up: every write it tries is refused, and it can only delete its own files.
    assert tracker.progress(stale, 3, 3, {"step": 3, "total": 3, "fraction": 1.0}) == "superseded"
    assert tracker.succeed(stale, result={"images": []}, timings={}, total=3) == "superseded"
    assert tracker.fail(stale, TIMEOUT, "it ran longer than its timeout", {}) == "superseded"
    assert tracker.cancel(stale) == "superseded"
    assert stale_files.discard() == 1
    after = client.get(f"/v1/jobs/{job_id}").json()
    assert after["status"] == "succeeded" and after["error"] is None
    assert redis_client.hmget(keys.job(job_id), ["step", "total"]) == steps  # its progress did not go back
    assert httpx.get(after["images"][0]["url"]).status_code == 200  # the rerun's files are all still there
    assert httpx.get(after["manifest_url"]).status_code == 200


def test_a_worker_stopped_and_resumed_stops_its_superseded_job_at_the_next_step(
    client: httpx.Client, run_worker: Any, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    job_id = client.post("/v1/txt2img", json={**BODY, "steps": 30, "width": 96, "height": 96}).json()["id"]
    log = (tmp_path / "worker.log").open("w")
    stalled = subprocess.Popen(
        [str(Path(sys.executable).with_name("sdserve")), "worker"],
        env=worker_env(settings, HEARTBEAT_SECONDS="0.5"),
        stdout=log,
        stderr=log,
    )
    try:
        wait_for(lambda: int(redis_client.hget(keys.job(job_id), "step") or 0) >= 2, timeout=120)
        stalled.send_signal(signal.SIGSTOP)  # a GC pause, a network partition: it holds the job, silent
        name = redis_client.hget(keys.job(job_id), "worker").decode()
        wait_for(lambda: not redis_client.exists(keys.worker(name)), timeout=30)  # its presence expires
        assert janitor(settings, redis_client).sweep()
        assert redis_client.hget(keys.job(job_id), "status") == b"queued"
        run_worker()  # another worker runs it to the end (attempt 2)
        done = client.get(f"/v1/jobs/{job_id}").json()
        assert done["status"] == "succeeded", (done["error"], done["timings"])
        stalled.send_signal(signal.SIGCONT)  # it wakes up at its next step, sees the job is no longer its own
        attempt_one = settings.objects_dir / "outputs" / job_id / "1"
        wait_for(lambda: b"superseded" in (tmp_path / "worker.log").read_bytes(), timeout=60)
        stalled.send_signal(signal.SIGTERM)
        assert stalled.wait(timeout=60) == 0
    finally:
        if stalled.poll() is None:
            stalled.send_signal(signal.SIGCONT)
            stalled.kill()
    after = client.get(f"/v1/jobs/{job_id}").json()
    assert after["status"] == "succeeded" and after["error"] is None  # not failed, not canceled by the zombie
    assert all(httpx.get(image["url"]).status_code == 200 for image in after["images"])
    assert not attempt_one.exists()  # it wrote nothing that stays
    assert redis_client.hget(keys.job(job_id), "attempts") == b"2"
