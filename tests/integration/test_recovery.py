"""No accepted job is lost: the janitor requeues jobs of dead workers, bounds attempts and run time;
SIGTERM drains; a worker rides out a Redis outage; unsafe Redis settings are reported."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sdserve.jobs.janitor import Janitor
from sdserve.jobs.presence import WorkerPresence, advertise
from sdserve.jobs.tracker import Attempt, JobTracker
from sdserve.keys import Keys
from sdserve.observe.metrics import Metrics
from sdserve.observe.redischeck import redis_warnings
from sdserve.settings import Settings
from sdserve.storage.base import attempt_prefix
from tests.conftest import wait_for, worker_env
from worker.images.steps import StepCallback

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 3}
JOB_LABELS = {"kind": "image", "task": "txt2img", "model": "tiny"}
SDSERVE = [sys.executable, "-m", "sdserve.cli"]
"""The `sdserve` command, as `sdserve up` starts its children."""


def make_janitor(settings: Settings, client: redis.Redis, attempts: int = 3, **options: Any) -> Janitor:
    return Janitor(
        client, Keys(settings.key_prefix), max_attempts=attempts, job_ttl=settings.job_ttl_seconds,
        metrics=Metrics(), **options,
    )  # fmt: skip


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def start_on_ghost(settings: Settings, client: redis.Redis, job_id: str, worker: str = "ghost.1") -> Attempt:
    """What a worker does when it takes a job, before being killed (-9): take it and mark it running."""
    keys = Keys(settings.key_prefix)
    assert client.lmove(keys.queue_key("tiny"), keys.claimed("tiny"), "LEFT", "RIGHT") == job_id.encode()
    tracker = JobTracker(client, keys, job_ttl=settings.job_ttl_seconds)
    record = tracker.load(job_id)
    assert record is not None
    started = tracker.start(record, worker)
    assert isinstance(started, Attempt), started
    return started


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
    assert janitor.sweep() and count(janitor.metrics, "sdserve_jobs_recovered_total", action="requeued") == 1
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
    # The janitor ended it, so the janitor counts it.
    assert count(janitor.metrics, "sdserve_jobs_recovered_total", action="failed") == 1
    assert count(janitor.metrics, "sdserve_jobs_finished_total", **JOB_LABELS, status="failed") == 1
    assert count(janitor.metrics, "sdserve_job_failures_total", **JOB_LABELS, problem="worker-lost") == 1


def test_a_running_job_never_outlives_its_timeout_by_more_than_a_minute(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    job = client.post("/v1/txt2img", json=BODY).json()
    keys = Keys(settings.key_prefix)
    timeout = int(redis_client.hget(keys.job(job["id"]), "timeout") or 0)
    assert 60 <= timeout <= settings.job_timeout_seconds  # derived from the job's size and steps
    start_on_ghost(settings, redis_client, job["id"], worker="alive.1")
    advertise(redis_client, keys, WorkerPresence(name="alive.1", queues=["tiny"], heartbeat_seconds=1))
    redis_client.hset(keys.job(job["id"]), "started_at", repr(time.time() - timeout - 50))  # its worker is alive...
    janitor = make_janitor(settings, redis_client)
    assert janitor.sweep()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"  # ...and within its grace minute
    redis_client.hset(keys.job(job["id"]), "started_at", repr(time.time() - timeout - 61))  # ...but now it hangs
    assert janitor.sweep()
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "/problems/timeout"
    assert count(janitor.metrics, "sdserve_jobs_finished_total", **JOB_LABELS, status="failed") == 1
    assert count(janitor.metrics, "sdserve_job_failures_total", **JOB_LABELS, problem="timeout") == 1


def test_a_job_timed_out_while_its_worker_runs_it_is_left_to_the_janitor(
    client: httpx.Client,
    run_worker: Any,
    settings: Settings,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = Keys(settings.key_prefix)
    janitor = make_janitor(settings, redis_client)
    report = StepCallback.report
    seen: list[int] = []
    written: list[str] = []

    def hang_past_the_timeout(self: StepCallback, step: int, latents: Any = None) -> None:
        seen.append(step)
        if step == 2:
            job = self.members[0].job
            written.append(job.artifacts.put("partial.bin", b"made by this run", "application/octet-stream"))
            # The run hangs past its timeout and grace minute: the janitor fails it, its worker alive and busy.
            started = time.time() - job.record.timeout - 61
            redis_client.hset(keys.job(job.id), "started_at", repr(started))
            assert janitor.sweep()
            assert redis_client.hget(keys.job(job.id), "status") == b"failed"
        report(self, step, latents)

    monkeypatch.setattr(StepCallback, "report", hang_past_the_timeout)
    job_id = client.post("/v1/txt2img", json={**BODY, "steps": 10}).json()["id"]
    worker = run_worker()
    assert max(seen) == 2  # the worker stopped at the step that found the job ended
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "/problems/timeout"
    assert job["images"] == []
    names = [name for name, _ in events(redis_client, settings, job_id)]
    assert "canceled" not in names and names.count("failed") == 1
    assert redis_client.hget(keys.job(job_id), "cancel_requested") in (None, b"0")
    # The worker did not end the job, so it counts nothing; the janitor did, and counts it as failed.
    for status in ("canceled", "failed", "succeeded"):
        assert count(worker.engine.metrics, "sdserve_jobs_finished_total", **JOB_LABELS, status=status) == 0
    assert count(janitor.metrics, "sdserve_jobs_finished_total", **JOB_LABELS, status="failed") == 1
    assert count(janitor.metrics, "sdserve_job_failures_total", **JOB_LABELS, problem="timeout") == 1
    # The run's own files are gone.
    assert written and written[0].startswith(attempt_prefix(job_id, 1))
    assert not (settings.objects_dir / attempt_prefix(job_id, 1)).exists()


def test_a_job_popped_but_never_started_is_requeued(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(settings.key_prefix)
    job_id = client.post("/v1/txt2img", json=BODY).json()["id"]
    queue, claimed = keys.queue_key("tiny"), keys.claimed("tiny")
    redis_client.lmove(queue, claimed, "LEFT", "RIGHT")  # a worker popped it, then died
    assert redis_client.llen(queue) == 0
    patient = make_janitor(settings, redis_client)
    assert patient.sweep()  # first seen taken now: within the grace it may still be started
    assert redis_client.lrange(claimed, 0, -1) == [job_id.encode()] and redis_client.llen(queue) == 0
    janitor = make_janitor(settings, redis_client, claimed_grace=0)
    assert janitor.sweep()
    assert redis_client.lrange(queue, 0, -1) == [job_id.encode()]
    assert redis_client.llen(claimed) == 0
    assert count(janitor.metrics, "sdserve_jobs_recovered_total", action="requeued") == 1
    assert client.get(f"/v1/jobs/{job_id}").json()["queue_position"] == 0


def test_sigterm_drains_the_current_job_without_consuming_an_attempt(
    client: httpx.Client, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    first = client.post("/v1/txt2img", json={**BODY, "steps": 40, "width": 128, "height": 128}).json()["id"]
    second = client.post("/v1/txt2img", json=BODY).json()["id"]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [*SDSERVE, "worker"],
        cwd=tmp_path,  # no stray .env is read
        env=worker_env(settings),
        stdout=log,
        stderr=log,
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
